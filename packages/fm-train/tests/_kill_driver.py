"""Driver of the kill test (test_train_faults.py): a tiny deterministic training run that
reports where it is and waits for permission at every point where a kill is interesting.

Protocol: before each interesting point the driver writes one line ``EVENT STEP`` to the
event stream and then blocks until it reads one byte (``g``) from the go stream. The test
either answers ``g`` or SIGKILLs the process while it is blocked there, so a kill lands
exactly at the chosen point: in the middle of a step, with a half-written file in
``checkpoint.tmp-*``, between the two renames, or after them before ``checkpoint.old`` is removed.

Events (``STEP`` is the optimizer step being taken or checkpointed)::

    batch          start of a training step (between checkpoints)
    write-model    checkpoint.tmp-* holds config.json; model.safetensors is about to be written
    half-ema       ema.safetensors is half written (truncated) inside checkpoint.tmp-*
    rename-old     all files written and fsync'ed; checkpoint -> checkpoint.old is next
    rename-new     checkpoint.old exists, checkpoint does not; tmp -> checkpoint is next
    after-renames  the new checkpoint is in place; checkpoint.old not yet removed
    loss-csv       loss.csv.tmp-* half written (after the checkpoint)
    saved          (no wait) the checkpoint of STEP is complete

Run in a forked child (``child_main``) or as a script (``python _kill_driver.py RUN_DIR``:
events on stdout, go bytes on stdin), always with one thread.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fm_train.checkpoint as ck
import fm_train.history as hist
from fm_train import TrainConfig, Trainer

STEPS = 16  # default budget; the tests pass their own
CKPT_EVERY = 2
DATA = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.1), nn.SiLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def config(steps: int = STEPS) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup_steps=3, schedule="cosine", ema_decay=0.9,
                       log_every=3, ckpt_every=CKPT_EVERY, ckpt_minutes=None, progress=False, device="cpu")  # fmt: skip


def loss_fn(model, x, ctx):
    # randomness from the Trainer's generator and from torch's, NumPy's and Python's global RNGs
    noise = torch.randn(x.shape, generator=ctx.generator)
    w = 1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
    return w * ((model(x + noise) - x) ** 2).mean()


def batch_fn(step, g):
    return DATA[torch.randint(0, len(DATA), (8,), generator=g)]


def reference_state(run_dir: Path, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """An uninterrupted run (in the calling process): the model and EMA weights at the end."""
    torch.manual_seed(123)
    t = Trainer(Net(), loss_fn, batch_fn, config(steps), run_dir, extra_config={"net": "tiny"})
    t.train()
    return {
        **{f"model.{k}": v.clone() for k, v in t.model.state_dict().items()},
        **{f"ema.{k}": v.clone() for k, v in t.ema.module.state_dict().items()},
    }


class _Channel:
    def __init__(self, ev_fd: int, go_fd: int) -> None:
        self.ev_fd, self.go_fd = ev_fd, go_fd
        self.step = 0

    def wait(self, event: str) -> None:
        os.write(self.ev_fd, f"{event} {self.step}\n".encode())
        if os.read(self.go_fd, 1) != b"g":  # the test closed the stream: stop here
            os._exit(3)

    def note(self, event: str) -> None:
        os.write(self.ev_fd, f"{event} {self.step}\n".encode())


def run(run_dir: Path, ev_fd: int, go_fd: int, steps: int = STEPS) -> None:
    """Resume (or start) the run in ``run_dir`` and train it to the end, pausing at every event."""
    ch = _Channel(ev_fd, go_fd)
    real_save, real_rename, real_fsync_dir, real_atomic = (
        ck._st_save_file,
        ck._rename,
        ck._fsync_dir,
        hist.atomic_write_text,
    )

    def save_file(tensors, filename, metadata=None):
        if filename.endswith(ck.MODEL_FILE):
            ch.wait("write-model")
            return real_save(tensors, filename, metadata=metadata)
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a half-written file, as a kill during the write leaves it
            f.truncate(os.path.getsize(filename) // 2)
        ch.wait("half-ema")
        return real_save(tensors, filename, metadata=metadata)

    def rename(src, dst):
        name = Path(src).name
        if name.startswith(ck.CHECKPOINT_DIRNAME + ".tmp-"):
            ch.wait("rename-new")
        elif name == ck.CHECKPOINT_DIRNAME + ".old":  # recover_checkpoint after a kill between the renames
            ch.wait("recover")
        else:
            ch.wait("rename-old")
        real_rename(src, dst)

    def fsync_dir(path):
        real_fsync_dir(path)
        if Path(path).name != ck.CHECKPOINT_DIRNAME and not Path(path).name.startswith(ck.CHECKPOINT_DIRNAME + "."):
            if (Path(path) / ck.CHECKPOINT_DIRNAME).is_dir() and (
                Path(path) / (ck.CHECKPOINT_DIRNAME + ".old")
            ).is_dir():
                ch.wait("after-renames")

    def atomic(path, text):
        if Path(path).name == hist.HISTORY_FILENAME:
            tmp = Path(path).with_name(Path(path).name + ".tmp-kill")
            tmp.write_text(text[: len(text) // 2])
            ch.wait("loss-csv")
            tmp.unlink()
        return real_atomic(path, text)

    ck._st_save_file, ck._rename, ck._fsync_dir, hist.atomic_write_text = save_file, rename, fsync_dir, atomic

    def reporting_batch_fn(step, g):
        ch.step = step
        ch.wait("batch")
        return batch_fn(step, g)

    class Reporting(Trainer):
        def save_checkpoint(self):
            ch.step = self.step
            out = super().save_checkpoint()
            ch.note("saved")
            return out

    # A fresh process: other global RNG states than the killed one had.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    torch.manual_seed(123)
    t = Reporting(Net(), loss_fn, reporting_batch_fn, config(steps), run_dir, extra_config={"net": "tiny"})
    t.train(resume=True)
    ch.note("done")


def child_main(run_dir: Path, ev_fd: int, go_fd: int, steps: int = STEPS) -> None:
    """Entry point of a forked child: never returns (``os._exit``)."""
    code = 0
    try:
        run(run_dir, ev_fd, go_fd, steps)
    except BaseException as e:  # noqa: BLE001 - report anything to the test, then exit
        try:
            os.write(ev_fd, f"error {type(e).__name__}: {e}\n".replace("\n", " ").encode() + b"\n")
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), sys.stdout.fileno(), sys.stdin.fileno(), int(sys.argv[2]) if len(sys.argv) > 2 else STEPS)
