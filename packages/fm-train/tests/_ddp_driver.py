"""A tiny training run for the multi-process tests (test_train_distributed.py).

Imported by the test for the one-process reference, and run by torchrun for the multi-process
runs::

    python -m torch.distributed.run --standalone --nproc-per-node 2 _ddp_driver.py RUN_DIR CFG_JSON RESUME OUT_DIR

The loss follows fm_train.distributed's contract: the noise is drawn for the whole global batch
on every rank, and each rank trains on its slice of the batch (``ctx.shard`` of the StepContext
the Trainer hands it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from fm_train import CSVLogger, TrainConfig, Trainer, distributed

B, D = 16, 4


def model() -> nn.Module:
    torch.manual_seed(123)  # rank 0's init is broadcast by DDP; the one-process run builds the same
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))


def batch_fn(step: int, g: torch.Generator):
    x = torch.randn(B, D, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def loss_fn_recording(seen: list):
    def loss_fn(m, batch, ctx):
        seen.append([ctx.step, ctx.rank, ctx.world_size, list(ctx.shard) if ctx.shard else None])
        x, y = batch
        shard = ctx.shard
        noise = torch.randn(x.shape, generator=ctx.generator)  # drawn for the whole batch on every rank
        n = B // (shard[1] if shard else 1)
        rows = slice(shard[0] * n, (shard[0] + 1) * n) if shard else slice(0, B)
        return (m(x[rows] + 0.1 * noise[rows]) - y[rows]).pow(2).mean()

    return loss_fn


def config(steps=None, minutes=None, **kw) -> TrainConfig:
    base = dict(
        steps=steps,
        minutes=minutes,
        lr=1e-2,
        warmup_steps=2,
        schedule="cosine",
        ema_decay=0.9,
        log_every=2,
        ckpt_every=None,
        ckpt_minutes=None,
        progress=False,
        device="cpu",
        seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def train(run_dir, cfg_kw: dict, resume: bool = False) -> dict:
    info = distributed.dist_info()
    cfg_kw = dict(cfg_kw)
    stop_at = cfg_kw.pop("stop_at", None)  # stop_fn: rank 0 stops at this step; rank 1's would stop at once
    seen: list = []
    stop_calls: list[int] = []
    logged: list[int] = []

    def stop_fn(info_):
        stop_calls.append(info_.step)
        return info.rank != 0 or info_.step >= stop_at

    class Recording:
        def log(self, step, metrics):
            logged.append(step)

        def close(self):
            pass

    trainer = Trainer(
        model(),
        loss_fn_recording(seen),
        batch_fn,
        config(**cfg_kw),
        run_dir,
        stop_fn=stop_fn if stop_at is not None else None,
        loggers=[CSVLogger(run_dir), Recording()],
    )
    r = trainer.train(resume=resume)
    return {
        "rank": info.rank,
        "world": info.world_size,
        "steps": r.steps,
        "this_call": r.steps_this_call,
        "ckpt_step": trainer._ckpt_step,
        "contexts": seen,
        "stopped_by": r.stopped_by,
        "stop_calls": stop_calls,
        "logged": logged,
    }


def main(argv: list[str]) -> None:
    run_dir, cfg_kw, resume, out = argv[0], json.loads(argv[1]), argv[2] == "1", Path(argv[3])
    torch.set_num_threads(1)
    info, dev = distributed.setup("cpu")
    try:
        res = train(run_dir, cfg_kw, resume)
    finally:
        distributed.cleanup()
    res["device"] = dev.type
    (out / f"rank{info.rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
