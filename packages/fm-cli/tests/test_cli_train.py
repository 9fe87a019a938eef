"""The shared tail of the train commands, with fm-train's torchrun start replaced by a recorder
(no process group, no training: each test hands run_training its own train callable)."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from fm_cli import train as tr
from fm_train import CheckpointError, TrainingDivergedError, distributed


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="fm-x train")


def usage_error(capsys, fn, *a, **k) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*a, **k)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def fake_run(root: Path, train_section=None) -> Path:
    run = root / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps({"app": "fm-x", "train": train_section if train_section is not None else {"steps": 40}})
    )
    return run


def read_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


# ----------------------------------------------------------------------------- run directory
def test_default_run_dir_is_timestamped_and_unique():
    names = {tr.default_run_dir("mnist").name for _ in range(50)}
    assert all(re.fullmatch(r"mnist-\d{8}-\d{6}-[0-9a-f]{4}", n) for n in names), names
    assert len(names) > 1  # same second, different suffixes
    assert tr.default_run_dir("x", "elsewhere").parent == Path("elsewhere")


def test_choose_run_dir_checks(tmp_path, capsys):
    p = parser()
    err = usage_error(capsys, tr.choose_run_dir, p, None, resume=True, prefix="x")
    assert err == "fm-x train: error: --resume needs --out, the run directory to continue"
    f = tmp_path / "file"
    f.write_text("")
    err = usage_error(capsys, tr.choose_run_dir, p, f, resume=False, prefix="x")
    assert err == f"fm-x train: error: --out {str(f)!r} exists and is not a directory"
    run = fake_run(tmp_path)
    err = usage_error(capsys, tr.choose_run_dir, p, run, resume=False, prefix="x")
    assert err == (
        f"fm-x train: error: --out {str(run)!r} already holds a run; pass --resume to continue it "
        "or choose another directory"
    )


def test_choose_run_dir_results(tmp_path, capsys, monkeypatch):
    p = parser()
    run = fake_run(tmp_path)
    got = tr.choose_run_dir(p, run, resume=True, prefix="x", read_config=read_config)
    assert got.out == run and got.stored == {"app": "fm-x", "train": {"steps": 40}}
    fresh = tr.choose_run_dir(p, tmp_path / "new", resume=True, prefix="x", read_config=read_config)
    assert fresh.out == tmp_path / "new" and fresh.stored is None  # --resume of nothing starts it
    monkeypatch.chdir(tmp_path)
    default = tr.choose_run_dir(p, None, resume=False, prefix="cb")
    assert default.out.parent == Path("runs") and default.out.name.startswith("cb-") and default.stored is None

    def broken(run_dir: Path) -> dict:
        raise ValueError(f"{run_dir / 'config.json'}: not JSON")

    err = usage_error(capsys, tr.choose_run_dir, p, run, resume=True, prefix="x", read_config=broken)
    assert err == f"fm-x train: error: --out {str(run)!r}: {run / 'config.json'}: not JSON"


def test_only_rank_0_checks_for_an_existing_run(tmp_path, monkeypatch):
    run = fake_run(tmp_path)
    monkeypatch.setenv("RANK", "1")
    assert tr.choose_run_dir(parser(), run, resume=False, prefix="x").out == run


@dataclass
class Cfg:
    lr: float = 0.001
    seed: int = 0


def test_resume_conflicts(capsys):
    p = argparse.ArgumentParser(prog="fm-x train")
    for flag in ("--lr", "--seed", "--hidden", "--depth"):
        p.add_argument(flag, type=float, default=None)
    fields = {"lr": "lr", "seed": "seed"}
    tr.resume_conflicts(p, p.parse_args(["--lr", "0.001"]), Cfg(), fields, ("hidden", "depth"))  # agrees: fine
    err = usage_error(
        capsys,
        tr.resume_conflicts,
        p,
        p.parse_args(["--lr", "0.5", "--depth", "3"]),
        Cfg(),
        fields,
        ("hidden", "depth"),
    )
    assert err == (
        "fm-x train: error: --resume keeps the run's settings; these differ: --lr 0.5 (the run has 0.001); "
        "network options --depth (the run's network is fixed)"
    )


def test_resume_budget(tmp_path, capsys):
    p = parser()
    run = fake_run(tmp_path, {"steps": None, "minutes": 2.5})
    stored = tr.RunChoice(run, read_config(run))
    assert tr.resume_budget(p, stored, 7, None, default_steps=3000) == (7, None)
    assert tr.resume_budget(p, stored, None, 1.0, default_steps=3000) == (None, 1.0)
    assert tr.resume_budget(p, stored, None, None, default_steps=3000) == (None, 2.5)
    assert tr.resume_budget(p, tr.RunChoice(run), None, None, default_steps=3000) == (3000, None)
    bad = tr.RunChoice(run, {"train": [1]})
    err = usage_error(capsys, tr.resume_budget, p, bad, None, None, default_steps=3000)
    assert (
        err
        == f'fm-x train: error: --out {str(run)!r}: {run / "config.json"}: bad "train" section: expected a JSON object'
    )


# ----------------------------------------------------------------------------- run_training
@dataclass
class Result:
    steps: int = 120
    steps_this_call: int = 80
    seconds: float = 12.4
    final_loss: float | None = 0.123456


@dataclass
class Summary:
    result: Result
    images_per_s: float = 1234.6
    device: str = "cpu"


@pytest.fixture
def launches(monkeypatch):
    """Replace fm-train's start_training / cleanup by recorders."""
    calls: dict = {"start": [], "cleanup": 0}

    def start_training(batch_size, out_given, device, prog, usage_error, **kw):
        calls["start"].append(((batch_size, out_given, device, prog), kw))
        if batch_size == 3:
            usage_error("--batch-size 3 does not split evenly over 2 processes")

    def cleanup():
        calls["cleanup"] += 1

    monkeypatch.setattr(distributed, "start_training", start_training)
    monkeypatch.setattr(distributed, "cleanup", cleanup)
    return calls


def go(train, out, **kw):
    return tr.run_training(
        "fm-x", parser(), train, out=out, out_given=True, batch_size=kw.pop("batch_size", 64), device="cpu", **kw
    )


def test_run_training_success(launches, capsys, tmp_path):
    assert go(lambda: Summary(Result()), tmp_path / "r") == 0
    assert capsys.readouterr().out == (
        f"trained 120 steps (80 now, 12 s, 1235 images/s on cpu), final loss 0.1235; run in {tmp_path / 'r'}\n"
    )
    names = {"run_dir": "--out", "batch_size": "--batch-size"}
    assert launches["start"] == [((64, True, "cpu", "fm-x train"), {"quiet_others": True, "names": names})]
    assert launches["cleanup"] == 1


def test_run_training_with_its_own_report(launches, capsys, tmp_path):
    assert go(lambda: None, tmp_path, report=lambda summary: f"fm-x: done: {tmp_path} ({summary})") == 0
    assert capsys.readouterr().out == f"fm-x: done: {tmp_path} (None)\n"


def test_run_training_without_a_loss(launches, capsys, tmp_path):
    assert go(lambda: Summary(Result(steps=5, steps_this_call=0, seconds=0.2, final_loss=None)), tmp_path) == 0
    assert "final loss n/a;" in capsys.readouterr().out


class DataError(ValueError):
    pass


@pytest.mark.parametrize(
    "exc, line",
    [
        (
            TrainingDivergedError(7, "loss is nan", None, None),
            "fm-x train: error: training diverged at step 7: loss is nan; no checkpoint had been written yet",
        ),
        (
            CheckpointError("run/checkpoint/model.safetensors: truncated"),
            "fm-x train: error: run/checkpoint/model.safetensors: truncated",
        ),
        (DataError("mnist: could not find the files"), "fm-x train: error: mnist: could not find the files"),
    ],
)
def test_run_training_errors_are_one_line(launches, capsys, tmp_path, exc, line):
    def train():
        raise exc

    assert go(train, tmp_path, errors=(DataError,)) == 1
    cap = capsys.readouterr()
    assert cap.err == line + "\n" and cap.out == ""
    assert launches["cleanup"] == 1


def test_run_training_interrupted(launches, capsys, tmp_path):
    def train():
        raise KeyboardInterrupt

    assert go(train, tmp_path / "r") == 130
    assert (
        capsys.readouterr().err
        == f"\nfm-x train: interrupted; continue with: fm-x train --out {tmp_path / 'r'} --resume\n"
    )
    assert launches["cleanup"] == 1


def test_run_training_bad_launch_is_a_usage_error(launches, capsys, tmp_path):
    reached = []
    with pytest.raises(SystemExit) as e:
        go(lambda: reached.append(1), tmp_path, batch_size=3)
    assert e.value.code == 2 and not reached and launches["cleanup"] == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "fm-x train: error: --batch-size 3 does not split evenly over 2 processes"
    )


def test_run_training_sets_threads(launches, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        go(lambda: Summary(Result()), tmp_path, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_run_training_with_fm_train_itself(capsys, tmp_path, monkeypatch):
    """No recorder: fm-train's own start_training (one process) takes what run_training passes."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert go(lambda: Summary(Result()), tmp_path) == 0
    assert capsys.readouterr().out.startswith("trained 120 steps")


def test_bad_torchrun_launch_names_the_flags(capsys, tmp_path, monkeypatch):
    """Under torchrun (WORLD_SIZE=2) fm-train refuses before joining a process group, in the CLI's words."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    reached = []

    def run(**kw):
        return tr.run_training("fm-x", parser(), lambda: reached.append(1), out=tmp_path, device="cpu", **kw)

    with pytest.raises(SystemExit):
        run(out_given=False, batch_size=64)
    assert "fm-x train: error: under torchrun give --out:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(out_given=True, batch_size=63)
    assert "fm-x train: error: --batch-size 63 does not split evenly over 2 processes" in capsys.readouterr().err
    assert not reached
