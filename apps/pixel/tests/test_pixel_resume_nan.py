"""App-level checks of fm-train's guarantees: --resume continues exactly, a diverging run stops
with one clear line naming the step. Needs the MNIST files (skipped with the reason otherwise)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from fm_pixel.cli import main

torch.set_num_threads(1)

pytestmark = pytest.mark.needs_mnist  # apps/conftest.py

BASE = [
    "train",
    "--dataset",
    "mnist",
    "--classes",
    "3,5",
    "--conditional",
    "--channels",
    "8,16",
    "--patch-size",
    "2",
    "--batch-size",
    "8",
    "--warmup-steps",
    "2",
    "--ema-decay",
    "0.9",
    "--quiet",
    "--device",
    "cpu",
    "--sample-every",
    "1000",
]


def _tensors(run, name):
    return load_file(str(run / "checkpoint" / name))


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*BASE, "--steps", "6", "--out", str(straight)]) == 0
    assert main([*BASE, "--steps", "3", "--out", str(split)]) == 0
    # resume needs only --out and the new budget; the stored settings are reused
    assert main(["train", "--out", str(split), "--resume", "--steps", "6", "--quiet", "--device", "cpu"]) == 0
    summary = json.loads((split / "metrics.json").read_text())["train"]
    assert summary["steps"] == 6 and summary["steps_this_call"] == 3
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _tensors(straight, name), _tensors(split, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    with open(split / "loss.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps[-1] == 6 and steps == sorted(steps)


def test_resume_with_nothing_left_to_do(tmp_path, capsys):
    """--resume of a run whose budget is used: one line, exit 0, metrics.json and the checkpoint untouched."""
    run = tmp_path / "done"
    assert main([*BASE, "--steps", "2", "--out", str(run)]) == 0
    metrics = (run / "metrics.json").read_bytes()
    weights = (run / "checkpoint" / "model.safetensors").read_bytes()
    capsys.readouterr()
    for budget in (["--steps", "2"], ["--steps", "1"], []):  # the same budget, a smaller one, the stored one
        assert main(["train", "--out", str(run), "--resume", *budget, "--quiet", "--device", "cpu"]) == 0
        out = capsys.readouterr().out.strip()
        assert len(out.splitlines()) == 1 and "nothing left to do" in out and "trained 2 of" in out, out
        assert (run / "metrics.json").read_bytes() == metrics
        assert (run / "checkpoint" / "model.safetensors").read_bytes() == weights


def test_diverging_run_stops_with_the_step(tmp_path, capsys):
    # lr 1e30: the first AdamW step moves every weight by ~1e30, so the second forward pass overflows
    run = tmp_path / "nan"
    code = main([*BASE, "--steps", "5", "--lr", "1e30", "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fm-pixel train: error: training diverged at step 2:"), err
    assert "no checkpoint had been written yet" in err
    assert not (run / "checkpoint").exists()
