"""fm_cli.train's resume helpers added for the image apps: nothing_left (a used-up budget) and
resume_conflicts reaching into a nested config; fm_cli.progress_enabled."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import torch

from fm_cli import RunChoice, nothing_left, progress_enabled, resume_conflicts
from fm_train import save_checkpoint


def _run(tmp_path, step: int, elapsed: float) -> RunChoice:
    out = tmp_path / "run"
    w = {"w": torch.zeros(1)}
    save_checkpoint(out / "checkpoint", model_state=w, ema_state=w, config={"step": step},
                    train_state={"step": step, "elapsed": elapsed})  # fmt: skip
    return RunChoice(out, stored={"train": {}})


def test_nothing_left_by_steps_and_minutes(tmp_path):
    run = _run(tmp_path, step=40, elapsed=90.0)
    assert nothing_left(run, 40, None) == (
        f"{run.out}: the run has trained 40 of 40 steps; nothing left to do (raise --steps to continue)"
    )
    assert nothing_left(run, 30, None) is not None  # a smaller budget: nothing to do either
    assert nothing_left(run, 41, None) is None
    assert nothing_left(run, None, 1.5) == (
        f"{run.out}: the run has trained 1.50 of 1.5 minutes; nothing left to do (raise --minutes to continue)"
    )
    assert nothing_left(run, None, 1.6) is None  # 90 s of 96
    assert nothing_left(RunChoice(run.out), 40, None) is None  # not a resume


def test_nothing_left_leaves_a_broken_checkpoint_to_training(tmp_path):
    run = _run(tmp_path, step=40, elapsed=90.0)
    (run.out / "checkpoint" / "config.json").write_text("{not json")
    assert nothing_left(run, 40, None) is None
    assert nothing_left(RunChoice(tmp_path / "nowhere", stored={}), 40, None) is None  # no checkpoint at all


@dataclass
class Train:
    lr: float = 0.001


@dataclass
class Cfg:
    nfe: int = 10
    train: Train = field(default_factory=Train)


def test_resume_conflicts_reaches_nested_fields(capsys):
    p = argparse.ArgumentParser(prog="fm-x train")
    args = argparse.Namespace(lr=0.5, nfe=10)
    with pytest.raises(SystemExit):
        resume_conflicts(p, args, Cfg(), {"lr": "train.lr", "nfe": "nfe"})
    err = capsys.readouterr().err
    assert "these differ: --lr 0.5 (the run has 0.001)" in err and "--nfe" not in err
    resume_conflicts(p, argparse.Namespace(lr=0.001, nfe=None), Cfg(), {"lr": "train.lr", "nfe": "nfe"})  # agrees


class _Stderr:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty, quiet, shown", [(True, False, True), (True, True, False), (False, False, False)])
def test_progress_enabled(monkeypatch, tty, quiet, shown):
    monkeypatch.setattr("sys.stderr", _Stderr(tty))
    assert progress_enabled(quiet) is shown
