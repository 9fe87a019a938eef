"""A tiny training run for the multi-process tests (test_train_distributed.py).

Imported by the test for the one-process reference, and run by torchrun for the multi-process
runs::

    python -m torch.distributed.run --standalone --nproc-per-node 2 _ddp_driver.py RUN_DIR CFG_JSON RESUME OUT_DIR

The loss follows fm_train.distributed's contract: the noise is drawn for the whole global batch
on every rank, and each rank trains on its slice of the batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from fm_train import TrainConfig, Trainer, distributed

B, D = 16, 4


def model() -> nn.Module:
    torch.manual_seed(123)  # rank 0's init is broadcast by DDP; the one-process run builds the same
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))


def batch_fn(step: int, g: torch.Generator):
    x = torch.randn(B, D, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def loss_fn_for(shard):
    def loss_fn(m, batch, g):
        x, y = batch
        noise = torch.randn(x.shape, generator=g)  # drawn for the whole batch on every rank
        n = B // (shard[1] if shard else 1)
        rows = slice(shard[0] * n, (shard[0] + 1) * n) if shard else slice(0, B)
        return (m(x[rows] + 0.1 * noise[rows]) - y[rows]).pow(2).mean()

    return loss_fn


def config(steps=None, minutes=None, **kw) -> TrainConfig:
    base = dict(steps=steps, minutes=minutes, lr=1e-2, warmup_steps=2, schedule="cosine", ema_decay=0.9, log_every=2,
                ckpt_every=None, ckpt_minutes=None, progress=False, device="cpu", seed=7)
    base.update(kw)
    return TrainConfig(**base)


def train(run_dir, cfg_kw: dict, resume: bool = False) -> dict:
    info = distributed.dist_info()
    trainer = Trainer(model(), loss_fn_for(info.shard), batch_fn, config(**cfg_kw), run_dir)
    r = trainer.train(resume=resume)
    return {"rank": info.rank, "world": info.world_size, "steps": r.steps, "this_call": r.steps_this_call,
            "ckpt_step": trainer._ckpt_step}


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
