"""Tests of the scaling study (fm_toy2d.study): outcomes and censoring, the screen and futility rules,
the CLI's usage errors and a tiny end-to-end study (seconds). The statistics (steps to target,
censored medians, power-law fits) are fm_eval.stats, tested in packages/fm-eval/tests/test_eval_stats.py;
the process pool and the CSV logs are fm_train.sweep (packages/fm-train/tests/test_train_sweep.py)."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from fm_toy2d.cli import main
from fm_toy2d.study import (
    EVAL_COLUMNS,
    RUN_COLUMNS,
    StudyConfig,
    analyse,
    hopeless,
    n_filled,
    outcomes,
    run_specs,
    screen_threshold,
)
from fm_toy2d.study_plots import FIGURES


# fmt: off
def _row(run_id="r", recipe="default", grid=8, dim=2, seed=0, step=0, in_support=0.0, min_cell=None, max_steps=2000,
         stage="full"):
    return {"run_id": run_id, "recipe": recipe, "grid": str(grid), "dim": str(dim), "n_filled": str(n_filled(grid, dim)),
            "seed": str(seed), "batch_size": "512", "max_steps": str(max_steps), "step": str(step), "stage": stage,
            "in_support": f"{in_support:.6g}", "min_cell_ratio": "" if min_cell is None else f"{min_cell:.6g}"}
# fmt: on


# ----------------------------------------------------------------------------- rules and outcomes
def test_screen_threshold_is_three_binomial_standard_errors():
    assert screen_threshold(500) == pytest.approx(0.95 - 3 * math.sqrt(0.95 * 0.05 / 500))
    assert screen_threshold(500) == pytest.approx(0.92076, abs=1e-5)


def test_hopeless_only_past_half_the_cap_and_when_the_rate_cannot_reach_the_target():
    # cap 5000, rate 0.05 per 1000 steps: at step 3000 the run can still gain 0.10, so it needs >= 0.85
    assert hopeless(0.849, 3000, 5000, 0.05) and not hopeless(0.851, 3000, 5000, 0.05)
    assert not hopeless(0.10, 2499, 5000, 0.05)  # first half: never
    assert hopeless(0.10, 2500, 5000, 0.05)
    assert not hopeless(0.10, 5000, 5000, 0.05)  # at the cap the run ends as not-reached
    assert not hopeless(0.10, 4000, 5000, 0.0)  # rate 0 turns the rule off


def test_outcomes_censoring_and_statuses():
    evals = (
        [_row("a", step=s, in_support=0.96, min_cell=0.5 + s / 1000) for s in (100, 200, 300, 400)]  # reaches at 300
        + [_row("b", step=s, in_support=0.7, min_cell=0.3, max_steps=400) for s in (100, 200, 300, 400)]  # never: cap
        + [_row("c", step=s, in_support=0.9, min_cell=0.9) for s in (100, 200)]  # stopped by the budget at 200
        + [_row("d", step=100, in_support=0.9, min_cell=0.9)]  # interrupted: no record in runs.csv
    )
    runs = [
        {"run_id": "a", "status": "reached"},
        {"run_id": "b", "status": "not-reached"},
        {"run_id": "c", "status": "stopped"},
        {"run_id": "e", "status": "skipped", "recipe": "default"},
    ]
    res = {o.run_id: o for o in outcomes(evals, runs)}
    assert set(res) == {"a", "b", "c", "d"}  # the skipped run never trained: no outcome
    assert (res["a"].steps, res["a"].censored_at, res["a"].status) == (300, None, "reached")
    assert (res["b"].steps, res["b"].censored_at, res["b"].status) == (None, 400, "not-reached")
    assert (res["c"].steps, res["c"].censored_at, res["c"].status) == (None, 200, "stopped")
    assert (res["d"].steps, res["d"].censored_at, res["d"].status) == (None, 100, "incomplete")
    assert res["a"].n_filled == 32 and res["a"].reached and not res["b"].reached


# ----------------------------------------------------------------------------- configuration
def test_settings_are_unique_and_runs_seed_major():
    cfg = StudyConfig(grids=(4, 8), dims=(2, 3), both_grids=(2, 4), both_dims=(2, 3), seeds=2)
    assert cfg.settings() == [(2, 2), (2, 3), (4, 2), (8, 2), (4, 3)]  # filled cells 2, 4, 8, 32, 32 (ties: dim first)
    specs = run_specs(cfg)
    assert len(specs) == 5 * 2 * 2 and {s.seed for s in specs[:10]} == {0} and specs[0].recipe != specs[1].recipe
    assert cfg.n_eval(n_filled(8, 2)) == 200 * 32 and cfg.n_eval(2) == cfg.min_eval


def test_default_study_covers_the_issue():
    cfg = StudyConfig()
    assert [n_filled(g, 2) for g in cfg.grids] == [8, 18, 32, 72]
    assert min(cfg.dims) == 2 and max(cfg.dims) == 8 and cfg.seeds >= 3 and set(cfg.recipes) == {"default", "post"}
    assert all(cfg.n_eval(n_filled(g, d)) >= 200 * n_filled(g, d) for g, d in cfg.settings())


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    "args, message",
    [
        (["--grids", "1"], "--grids"),
        (["--grids", "4,x"], "--grids"),
        (["--recipes", "fancy"], "--recipes"),
        (["--workers", "0"], "--workers"),
        (["--seeds", "0"], "--seeds"),
        (["--max-steps", "post=0"], "--max-steps"),
        (["--max-steps", "nope=30"], "--max-steps"),
        (["--batch-size", "1"], "--batch-size"),
        (["--screen-n", "-1"], "--screen-n"),
        (["--budget-minutes", "0"], "--budget-minutes"),
        (["--dims", "30"], "too many to evaluate"),
        (["--grids", "none", "--dims", "none", "--both-grids", "none"], "no settings"),
    ],
)
def test_cli_usage_errors_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["study", "--out", str(tmp_path / "s"), *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing started


def test_cli_refuses_an_existing_study_without_resume(tmp_path, capsys):
    (tmp_path / "evaluations.csv").write_text(",".join(EVAL_COLUMNS) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["study", "--quick", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


def test_help_shows_every_default_and_the_measured_time(capsys):
    with pytest.raises(SystemExit) as e:
        main(["study", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert e.value.code == 0 and "%%" not in out and ">= 95% of samples" in out
    # the README's measurement: 54 runs need about 84 minutes of two cores; 55 minutes finish 41 of them
    assert "54 runs" in out and "84 minutes" in out and "55-minute budget finishes about 41" in out
    assert "60 minutes" not in out


def test_the_study_parser_needs_no_argument_types_from_the_caller():
    import argparse

    from fm_toy2d.study import add_study_parser

    parser = argparse.ArgumentParser(prog="x")
    study = add_study_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "--grids", "4,8", "--max-steps", "post=30", "--futility-rate", "0"])
    assert (args.grids, args.max_steps, args.futility_rate, args.seeds) == ((4, 8), {"post": 30}, 0.0, None)
    for action in study._actions:  # every option that takes a value says its default
        if action.option_strings and action.nargs != 0:
            assert "(default: " in action.help, action.option_strings


# ----------------------------------------------------------------------------- end to end
TINY = ["--quick", "--seeds", "1", "--max-steps", "default=20,post=10", "--eval-every", "10", "--hidden", "8",
        "--depth", "1", "--quiet", "--workers", "1"]  # fmt: skip


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), *TINY]) == 0
    for name in ("evaluations.csv", "runs.csv", "summary.txt", "summary.json", "study.json", *FIGURES):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    evals, runs = _read(out / "evaluations.csv"), _read(out / "runs.csv")
    assert list(evals[0]) == list(EVAL_COLUMNS) and list(runs[0]) == list(RUN_COLUMNS)
    boards = {(4, 2), (2, 2), (2, 3)}  # --quick: grid 4 in 2D, grid 2 in 2D and 3D
    assert {(int(r["grid"]), int(r["dim"])) for r in runs} == boards and len(runs) == 3 * 2
    for r in runs:
        rows = [e for e in evals if e["run_id"] == r["run_id"]]
        cap = int(r["max_steps"])
        if r["status"] == "not-reached":  # evaluated every 10 steps up to the cap, no duplicate at the end
            assert [int(e["step"]) for e in rows] == list(range(10, cap + 1, 10))
        cells = int(r["n_filled"])
        assert cells == (int(r["grid"]) ** int(r["dim"]) + 1) // 2
        for e in rows:
            expected_n = 300 if e["stage"] == "screen" else max(200 * cells, 1000)
            assert int(e["n_samples"]) == expected_n and 0.0 <= float(e["in_support"]) <= 1.0
            assert (e["solver"], e["nfe"]) == (("midpoint", "8") if r["recipe"] == "default" else ("euler", "100"))
    assert not (out / "runs" / runs[0]["run_id"] / "checkpoint").exists()  # checkpoints are deleted
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 6 and set(summary["fits"]) == {"default", "post"}
    assert "QUICK MODE" in (out / "summary.txt").read_text()
    capsys.readouterr()

    # resume: a finished study trains nothing more; a run whose record is lost is trained again,
    # and its old evaluation rows are replaced (not duplicated)
    lost = runs[-1]["run_id"]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        w.writeheader()
        w.writerows(r for r in runs if r["run_id"] != lost)
    assert main(["study", "--out", str(out), *TINY, "--resume"]) == 0
    assert "5 runs finished, 1 to do" in capsys.readouterr().out
    evals2, runs2 = _read(out / "evaluations.csv"), _read(out / "runs.csv")
    assert len(runs2) == 6 and sorted(r["run_id"] for r in runs2) == sorted(r["run_id"] for r in runs)
    assert len(evals2) == len(evals)
    assert [e["step"] for e in evals2 if e["run_id"] == lost] == [e["step"] for e in evals if e["run_id"] == lost]

    # resuming with settings that change the numbers is refused
    with pytest.raises(SystemExit) as e:
        main(["study", "--out", str(out), *TINY, "--resume", "--eval-every", "5"])
    assert e.value.code == 2 and "eval_every" in capsys.readouterr().err


def test_a_far_off_run_stops_as_hopeless_at_half_its_cap(tmp_path):
    # a 2-step-trained net is nowhere near 95% in filled cells; with a tiny futility rate the first
    # evaluation at or past half the cap (40 -> step 20) stops it
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), *TINY, "--recipes", "default", "--grids", "none", "--dims", "3",
                 "--max-steps", "default=40", "--futility-rate", "0.001"]) == 0  # fmt: skip
    (run,) = _read(out / "runs.csv")
    evals = _read(out / "evaluations.csv")
    assert run["status"] == "hopeless" and run["last_step"] == "20" and run["steps_to_target"] == ""
    assert [e["step"] for e in evals] == ["10", "20"] and float(evals[-1]["in_support"]) < 0.95 - 0.001 * 20 / 1000
    assert "'hopeless'" in (out / "summary.txt").read_text()


def test_spent_budget_skips_runs_and_still_writes_the_files(tmp_path):
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), *TINY, "--budget-minutes", "1e-9"]) == 0
    runs = _read(out / "runs.csv")
    assert len(runs) == 6 and {r["status"] for r in runs} == {"skipped"}
    assert _read(out / "evaluations.csv") == []
    for name in FIGURES:
        assert (out / name).exists()
    assert "6 skipped" in (out / "summary.txt").read_text()


def test_analyse_fits_reached_runs_only(tmp_path):
    """analyse() on a synthetic study: steps = 25 * cells^1.2 for reached runs; a censored run at a
    much lower step must not pull the exponent."""
    cfg = StudyConfig(recipes=("default",), grids=(4, 6, 8), dims=(), both_grids=(), both_dims=(), seeds=2)
    (tmp_path / "study.json").write_text(json.dumps(cfg.to_dict()))
    evals, runs = [], []
    for g in (4, 6, 8):
        for seed in (0, 1):
            rid = f"default-g{g}-d2-s{seed}"
            cells = n_filled(g, 2)
            if g == 8 and seed == 1:  # censored at step 100 < 25 * 32^1.2
                evals.append(_row(rid, grid=g, seed=seed, step=100, in_support=0.5, min_cell=0.1))
                runs.append({"run_id": rid, "status": "stopped"})
                continue
            s = 25.0 * cells**1.2
            evals.append(_row(rid, grid=g, seed=seed, step=int(s) - 1, in_support=0.9, min_cell=0.5))
            evals.append(_row(rid, grid=g, seed=seed, step=s, in_support=0.97, min_cell=0.9))
            runs.append({"run_id": rid, "status": "reached"})
    for name, cols, rows in (("evaluations.csv", EVAL_COLUMNS, evals), ("runs.csv", RUN_COLUMNS, runs)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", restval="")
            w.writeheader()
            w.writerows(rows)
    analyse(tmp_path)
    # steps are written as "%g" of floats and read back exactly as int(float(...)), so the fit sees
    # int(25 * c^1.2): the slope is 1.2 up to that truncation
    fit = json.loads((tmp_path / "summary.json").read_text())["fits"]["default"]["modes"]
    assert fit["n"] == 5 and fit["coef"][0] == pytest.approx(1.2, abs=0.01)
    text = (tmp_path / "summary.txt").read_text()
    assert ">100" in text and "cells^1.20" in text and "1 censored left out" in text


@pytest.mark.slow
def test_two_worker_processes_write_the_same_kind_of_study(tmp_path):
    """--workers 2: runs in spawned processes (one torch thread each), rows sent back to one writer."""
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), *TINY[:-2], "--workers", "2"]) == 0
    runs, evals = _read(out / "runs.csv"), _read(out / "evaluations.csv")
    assert len(runs) == 6 and {r["status"] for r in runs} <= {"reached", "not-reached"}
    for r in runs:  # every run's rows arrived, each step once
        steps = [int(e["step"]) for e in evals if e["run_id"] == r["run_id"]]
        assert steps == sorted(set(steps)) and steps[-1] == int(r["last_step"])
    for name in FIGURES:
        assert (out / name).stat().st_size > 0
