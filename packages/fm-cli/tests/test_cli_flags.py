"""The shared flags: names, defaults shown in help, and the checks' one-line usage errors."""

from __future__ import annotations

import argparse

import pytest

from fm_cli import flags

FIXED = ("euler", "midpoint", "heun", "rk4")


def usage_error(capsys, fn, *a, **k) -> str:
    """Run ``fn``; it must exit with status 2; returns the last stderr line."""
    with pytest.raises(SystemExit) as e:
        fn(*a, **k)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def full_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-x")
    flags.add_device(p)
    flags.add_threads(p)
    flags.add_seed(p, 0)
    flags.add_out(p)
    flags.add_resume(p)
    flags.add_quiet(p)
    flags.add_bf16(p)
    flags.add_compile(p)
    flags.add_budget(p, "3000")
    flags.add_sampler(p, FIXED)
    flags.add_pictures(p)
    flags.add_data_dir(p)
    return p


def test_defaults_and_parsing(tmp_path):
    p = full_parser()
    a = p.parse_args([])
    assert (a.device, a.threads, a.seed, a.out, a.resume, a.quiet, a.steps, a.minutes) == (
        "auto",
        None,
        0,
        None,
        False,
        False,
        None,
        None,
    )
    assert (a.solver, a.nfe, a.guidance, a.grid, a.gif, a.data_dir, a.bf16, a.compile) == (None,) * 6 + (False, False)
    a = p.parse_args(
        ["--solver", "dopri5", "--seed", "7", "--minutes", "1.5", "--out", str(tmp_path), "--threads", "2"]
    )
    assert (a.solver, a.seed, a.minutes, a.out, a.threads) == ("dopri5", 7, 1.5, tmp_path, 2)


def test_help_shows_every_default():
    text = " ".join(full_parser().format_help().split())
    for needle in (
        "(default: auto)",
        "(default: torch's choice)",
        "random seed (default: 0)",
        "(default: 3000 unless --minutes)",
        "ODE solver (default: the run's)",
        "(default: none)",
        "{euler,midpoint,heun,rk4,dopri5}",
    ):
        assert needle in text, needle


def test_help_escapes_percent():
    p = argparse.ArgumentParser(prog="fm-x")
    flags.add_seed(p, None, default_text="95% of runs")
    assert "(default: 95% of runs)" in p.format_help()


def test_budget_is_one_or_the_other(capsys):
    p = full_parser()
    err = usage_error(capsys, p.parse_args, ["--steps", "5", "--minutes", "1"])
    assert err == "fm-x: error: argument --minutes: not allowed with argument --steps"


def test_sampler_without_adaptive_or_guidance():
    p = argparse.ArgumentParser()
    flags.add_sampler(p, FIXED, adaptive=False, guidance=False)
    a = p.parse_args([])
    assert not hasattr(a, "guidance")
    with pytest.raises(SystemExit):
        p.parse_args(["--solver", "dopri5"])


def test_resolve_sampler(capsys):
    p = argparse.ArgumentParser(prog="fm-x")
    assert flags.resolve_sampler(p, None, None, run_solver="euler", run_nfe=10) == ("euler", 10)
    assert flags.resolve_sampler(p, "rk4", None, run_solver="euler", run_nfe=10) == ("rk4", 8)  # rounded down
    assert flags.resolve_sampler(p, "rk4", None, run_solver="euler", run_nfe=3) == ("rk4", 4)  # at least one step
    assert flags.resolve_sampler(p, "midpoint", 8, run_solver="euler", run_nfe=10) == ("midpoint", 8)
    assert flags.resolve_sampler(p, "dopri5", None, run_solver="euler", run_nfe=10) == ("dopri5", None)
    err = usage_error(capsys, flags.resolve_sampler, p, "midpoint", 7, run_solver="euler", run_nfe=10)
    assert err == "fm-x: error: --nfe 7 is not a multiple of 2, the evaluations per step of midpoint"
    err = usage_error(capsys, flags.resolve_sampler, p, "dopri5", 8, run_solver="euler", run_nfe=10)
    assert err == "fm-x: error: --nfe 8 cannot be used with --solver dopri5 (an adaptive solver picks its own steps)"


def test_refuse_inapplicable(capsys):
    p = argparse.ArgumentParser(prog="fm-x")
    p.add_argument("--model", choices=("fm", "nf"), default="fm")
    p.add_argument("--time", default=None)
    p.add_argument("--coupling", default=None)
    p.add_argument("--pictures", dest="pictures", action="store_false")
    rules = {"--time": "--model nf", "--coupling": "--model nf", "--pictures": "--dataset moons"}
    flags.refuse_inapplicable(p, p.parse_args(["--model", "nf"]), rules)  # nothing given: no error
    err = usage_error(capsys, flags.refuse_inapplicable, p, p.parse_args(["--model", "nf", "--time", "uniform"]), rules)
    assert err == "fm-x: error: --time does not apply to --model nf"
    args = p.parse_args(["--coupling", "ot", "--time", "uniform", "--pictures"])
    err = usage_error(capsys, flags.refuse_inapplicable, p, args, rules)
    assert (
        err
        == "fm-x: error: --time, --coupling do not apply to --model nf; --pictures does not apply to --dataset moons"
    )


def test_flag_given():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    a = p.parse_args(["--lr", "0.1"])
    assert flags.flag_given(p, a, "--lr") and flags.flag_given(p, a, "lr") and not flags.flag_given(p, a, "--seed")
    assert flags.flag_given(p, p.parse_args(["--seed", "3"]), "--seed")


def test_check_output_paths(tmp_path, capsys):
    p = argparse.ArgumentParser(prog="fm-x")
    for kw, flag, suffix in (("out", "--out", ".npz"), ("grid", "--grid", ".png"), ("gif", "--gif", ".gif")):
        bad = tmp_path / "a" / "s.txt"
        err = usage_error(capsys, flags.check_output_paths, p, **{kw: bad})
        assert err == f"fm-x: error: {flag} {str(bad)!r} must end in {suffix}"
    assert not (tmp_path / "a").exists()  # nothing created on a suffix error
    out, grid = tmp_path / "b" / "s.NPZ", tmp_path / "c" / "d" / "g.png"
    flags.check_output_paths(p, out=out, grid=grid)
    assert out.parent.is_dir() and grid.parent.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = usage_error(capsys, flags.check_output_paths, p, out=blocker / "s.npz")
    assert err.startswith(f"fm-x: error: --out {str(blocker / 's.npz')!r}: cannot create its folder (")
    flags.check_output_paths(p, out=tmp_path / "e" / "s.npz", create=False)
    assert not (tmp_path / "e").exists()


def test_check_data_dir(tmp_path, capsys):
    p = argparse.ArgumentParser(prog="fm-x")
    flags.check_data_dir(p, None)
    flags.check_data_dir(p, tmp_path)
    err = usage_error(capsys, flags.check_data_dir, p, tmp_path / "nowhere")
    nowhere = str(tmp_path / "nowhere")
    assert err == f"fm-x: error: --data-dir {nowhere!r} is not a directory (it should hold mnist/ and fashion-mnist/)"


def test_set_threads():
    import torch

    before = torch.get_num_threads()
    try:
        flags.set_threads(None)
        assert torch.get_num_threads() == before
        flags.set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_guidance_problem_needs_a_conditional_run_with_label_dropout():
    from fm_cli.flags import guidance_problem

    assert guidance_problem(None, conditional=False, label_dropout=0.0) is None
    assert guidance_problem(1.0, conditional=False, label_dropout=0.0) is None
    assert guidance_problem(2.0, conditional=True, label_dropout=0.1) is None
    assert guidance_problem(2.0, conditional=False, label_dropout=0.0) == (
        "--guidance 2: the run is unconditional; guidance needs a conditional run"
    )
    assert guidance_problem(1.5, conditional=True, label_dropout=0.0, flags=False) == (
        "guidance=1.5: the run was trained without label dropout, so it has no null label; use guidance=1"
    )
