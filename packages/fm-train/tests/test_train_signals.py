"""SIGINT and SIGTERM during training: the step ends, a checkpoint is written, TrainingInterrupted
names the step; ``resume`` then ends bit for bit where an uninterrupted run ends (weights, EMA and
loss.csv rows but the timing column). A second signal while the checkpoint is written abandons it
and keeps the previous one whole. The signals are real (``os.kill`` of this process, delivered to
Python's handler in the main thread) at seeded random steps and phases of a step.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import fm_train.checkpoint as ck
from fm_train import TrainConfig, Trainer, TrainingInterrupted, load_checkpoint, read_csv_columns

torch.set_num_threads(1)

STEPS = 12
needs_signals = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 3))


def _trainer(run: Path, kill_at: dict | None = None) -> Trainer:
    """A tiny run; ``kill_at = {"step": k, "phase": "batch"|"loss"|"sample", "sig": SIG}`` sends the signal
    to this process during that phase of step k (once)."""

    def maybe_kill(step: int, phase: str) -> None:
        if kill_at and kill_at["step"] == step and kill_at["phase"] == phase and not kill_at.get("sent"):
            kill_at["sent"] = True
            os.kill(os.getpid(), kill_at["sig"])

    def batch_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        maybe_kill(step, "batch")
        return torch.randn(8, 3, generator=gen)

    def loss_fn(model: nn.Module, x: torch.Tensor, ctx) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=ctx.generator)
        loss = ((model(x + 0.1 * noise) - x.flip(1)) ** 2).mean()
        maybe_kill(ctx.step, "loss")
        return loss

    def sample_fn(model: nn.Module, step: int, run_dir: Path) -> None:
        torch.randn(4)  # consumes global randomness: the Trainer isolates it
        maybe_kill(step, "sample")

    cfg = TrainConfig(
        steps=STEPS, batch_size=8, lr=1e-2, log_every=3, ckpt_every=5, sample_every=4, progress=False, device="cpu"
    )
    return Trainer(_model(), loss_fn, batch_fn, cfg, run, sample_fn=sample_fn)


def _final(run: Path):
    c = load_checkpoint(run)
    rows = read_csv_columns(run / "loss.csv", ("step", "loss", "lr"))
    return c.model, c.ema, rows, c.step


def _assert_same(run: Path, ref: Path) -> None:
    m, e, rows, step = _final(run)
    rm, re_, rrows, rstep = _final(ref)
    assert step == rstep == STEPS
    assert all(torch.equal(m[k], rm[k]) for k in rm)
    assert all(torch.equal(e[k], re_[k]) for k in re_)
    assert rows == rrows


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sig") / "ref"
    _trainer(run).train()
    return run


@needs_signals
def test_signals_at_20_random_moments_then_resume_equal_an_uninterrupted_run(reference, tmp_path):
    rng = random.Random(18)
    for i in range(20):
        sig = rng.choice((signal.SIGINT, signal.SIGTERM))
        kill = {"step": rng.randint(1, STEPS - 1), "phase": rng.choice(("batch", "loss", "sample")), "sig": sig}
        if kill["phase"] == "sample" and kill["step"] % 4:
            kill["phase"] = "loss"
        run = tmp_path / f"r{i}"
        handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        with pytest.raises(TrainingInterrupted) as info:
            _trainer(run, kill).train()
        e = info.value
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
        assert e.signum == sig and e.exit_code == 128 + sig and not e.aborted
        assert e.step == kill["step"], (i, kill)  # the step in progress is finished, no further one
        assert load_checkpoint(run).step == kill["step"]
        assert f"interrupted by {signal.Signals(sig).name} at step {kill['step']}" in str(e)
        assert not list(run.glob("checkpoint.*")) and not list(run.glob("*.tmp-*"))
        result = _trainer(run).train(resume=True)
        assert result.steps == STEPS and result.steps_this_call == STEPS - kill["step"]
        _assert_same(run, reference)


@needs_signals
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_the_checkpoint_write_keeps_the_previous_one(reference, tmp_path, monkeypatch, sig):
    """Signal at step 7 (last checkpoint: step 5); a second one while model.safetensors of step 7 is written."""
    real_save = ck._st_save_file

    def save(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        if kill.get("sent") and Path(path).name == "model.safetensors":
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(ck, "_st_save_file", save)
    kill = {"step": 7, "phase": "loss", "sig": sig}
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        _trainer(run, kill).train()
    e = info.value
    assert e.aborted and e.step == 7 and e.checkpoint_step == 5 and e.exit_code == 128 + sig
    assert "previous checkpoint (step 5) is kept" in str(e)
    assert load_checkpoint(run).step == 5
    assert not list(run.glob("*.tmp-*"))  # the abandoned write left nothing behind
    monkeypatch.setattr(ck, "_st_save_file", real_save)
    _trainer(run).train(resume=True)
    _assert_same(run, reference)


@needs_signals
def test_a_signal_during_the_last_step_ends_the_run_normally(tmp_path):
    """The budget is used up: the run ends as usual (checkpoint, samples), nothing is lost."""
    run = tmp_path / "run"
    result = _trainer(run, {"step": STEPS, "phase": "loss", "sig": signal.SIGTERM}).train()
    assert result.steps == STEPS and load_checkpoint(run).step == STEPS


@needs_signals
def test_a_signal_during_the_first_step_set_up(tmp_path):
    run = tmp_path / "run"
    t = _trainer(run)
    old = signal.getsignal(signal.SIGTERM)
    guard_hit = {}

    def lr_for(step, elapsed=None):  # runs before the first step's batch, inside the loop's handlers
        if not guard_hit:
            guard_hit["x"] = True
            os.kill(os.getpid(), signal.SIGTERM)
        return Trainer.lr_for(t, step, elapsed)

    t.lr_for = lr_for
    with pytest.raises(TrainingInterrupted) as info:
        t.train()
    assert signal.getsignal(signal.SIGTERM) == old
    # the signal arrived during step 1's set-up: step 1 is finished and checkpointed
    assert info.value.step == 1 and load_checkpoint(run).step == 1
