"""One owner per run directory and consistent reads: the RUN/.lock flock against real processes
(refused while held, free again when the holder is SIGKILLed), a Trainer refused by a run another
process holds, readers that never mix two checkpoints (generation ids), a symlinked RUN/checkpoint,
and files written with the user's umask.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import fm_train.checkpoint as ck
from fm_train import (
    CheckpointError,
    RunLockedError,
    TrainConfig,
    Trainer,
    atomic_write_text,
    load_checkpoint,
    lock_run,
    save_checkpoint,
)

torch.set_num_threads(1)
posix = pytest.mark.skipif(os.name != "posix", reason="flock and signals are POSIX")

RUNLOCK = Path(__import__("fm_train.runlock").runlock.__file__)
# a holder that does not import torch (starts in well under a second): locks argv[1], says "locked", waits
HOLDER = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("runlock", {str(RUNLOCK)!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
try:
    m.lock_run(sys.argv[1])
except m.RunLockedError as e:
    print("refused", e, flush=True); sys.exit(3)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(run: Path, seconds: float = 60) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), str(seconds)], stdout=subprocess.PIPE, text=True)
    return p


@posix
def test_a_second_process_is_refused_until_the_holder_dies(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as e:
            lock_run(run)
        assert str(e.value) == (
            f"{run} is in use by another process (pid {holder.pid}) that trains or writes there; "
            "wait for it to end or choose another directory"
        )
        holder.send_signal(signal.SIGKILL)  # the OS releases a dead process's lock
        holder.wait(timeout=30)
        with lock_run(run):
            other = _holder(run)
            out, _ = other.communicate(timeout=60)
            assert other.returncode == 3 and f"(pid {os.getpid()})" in out
        other = _holder(run, 0)  # released on exit of the with block
        assert other.communicate(timeout=60)[0].strip() == "locked" and other.returncode == 0
    finally:
        holder.kill()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    a = lock_run(tmp_path)
    b = lock_run(tmp_path)
    b.release()
    b.release()  # twice is harmless
    child = _holder(tmp_path, 0)
    assert child.communicate(timeout=60)[0].startswith("refused")  # a still holds it
    a.release()
    child = _holder(tmp_path, 0)
    assert child.communicate(timeout=60)[0].strip() == "locked"


def _trainer(run: Path, steps: int = 2) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, log_every=1, progress=False, device="cpu")
    return Trainer(
        model,
        lambda m, x, ctx: (m(x) ** 2).mean(),
        lambda step, gen: torch.randn(4, 2, generator=gen),
        cfg,
        run,
    )


@posix
def test_a_trainer_is_refused_while_another_process_holds_the_run(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"is in use by another process \(pid {holder.pid}\)"):
            _trainer(run).train()
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert _trainer(run).train().steps == 2


# ----------------------------------------------------------------------------- readers


def _save(path: Path, step: int, value: float) -> None:
    state = {"w": torch.full((3,), value)}
    save_checkpoint(path, model_state=state, ema_state=state, train_state={"step": step}, config={"step": step})


def test_files_of_two_checkpoints_are_never_read_as_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _save(a, 1, 1.0)
    _save(b, 2, 2.0)
    (b / "ema.safetensors").write_bytes((a / "ema.safetensors").read_bytes())  # a torn mix
    with pytest.raises(CheckpointError, match=r"ema.safetensors: the checkpoint changed 5 times while it was read"):
        load_checkpoint(b)


def test_a_reader_during_a_replacement_reads_the_new_checkpoint_whole(tmp_path, monkeypatch):
    """The writer replaces the checkpoint between the reader's config.json and its weights."""
    path = tmp_path / "ckpt"
    _save(path, 1, 1.0)
    real = ck._read_safetensors
    calls = []

    def read(file, device="cpu"):
        if not calls:
            _save(path, 2, 2.0)  # another process's save, right now
        calls.append(file)
        return real(file, device)

    monkeypatch.setattr(ck, "_read_safetensors", read)
    c = load_checkpoint(path)
    assert c.step == 2 and c.train_state["step"] == 2
    assert torch.equal(c.model["w"], torch.full((3,), 2.0)) and torch.equal(c.ema["w"], torch.full((3,), 2.0))


def test_checkpoints_without_generation_ids_still_load(tmp_path):
    """Checkpoints written before generation ids (fm-train 0.2.0) carry none: they load as before."""
    path = tmp_path / "ckpt"
    _save(path, 1, 1.0)
    cfg = (path / "config.json").read_text()
    (path / "config.json").write_text(cfg.replace('"generation"', '"_unused"'))
    for f in ("model.safetensors", "ema.safetensors"):
        save_file(load_file(str(path / f)), str(path / f), metadata={"format": "pt"})
    assert load_checkpoint(path).step == 1


# ----------------------------------------------------------------------------- symlink, umask


@posix
def test_a_symlinked_checkpoint_directory_stays_a_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target = tmp_path / "big-disk" / "ckpt"
    target.parent.mkdir()
    (run / "checkpoint").symlink_to(target)
    t = _trainer(run, 3)
    t.config.ckpt_every = 1
    t.train()
    assert (run / "checkpoint").is_symlink() and target.is_dir()
    assert load_checkpoint(run).step == 3
    assert not list(target.parent.glob("ckpt.*"))  # no .old or temporary left beside the target


@posix
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _save(tmp_path / "ckpt", 1, 1.0)
        atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    for f in ("model.safetensors", "ema.safetensors", "config.json", "train_state.pt"):
        assert stat.S_IMODE((tmp_path / "ckpt" / f).stat().st_mode) == mode, f
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o777 & ~umask


def test_writer_timing_is_not_needed(tmp_path):
    """Two saves within the same second get different generation ids (random, not a clock)."""
    path = tmp_path / "ckpt"
    _save(path, 1, 1.0)
    g1 = load_checkpoint(path).generation
    t = time.time()
    _save(path, 1, 1.0)
    assert load_checkpoint(path).generation != g1 and time.time() - t < 60
