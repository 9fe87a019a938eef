"""What the Trainer hands to the app's callables: the step context of the loss and the step
information of the stop callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["StepContext", "StepInfo", "StopFn"]


@dataclass(frozen=True)
class StepContext:
    """The third argument of ``loss_fn(model, batch, ctx)``, one per optimizer step.

    generator   the Trainer's ``torch.Generator`` on the training device (checkpointed): draw all
                noise and times of the step from it, so that resume is exact
    shard       ``(rank, world_size)`` under DDP, else None: train on the rank's contiguous slice
                of the global batch (``fm_core.FlowMatchingLoss(..., shard=ctx.shard)``), after
                drawing the noise for the whole batch (fm_train.distributed)
    step        the optimizer step being taken (1-based)
    rank, world_size   this process's place (0 and 1 without DDP)
    """

    generator: torch.Generator
    shard: tuple[int, int] | None = None
    step: int = 1
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class StepInfo:
    """What ``stop_fn(info) -> bool`` sees.

    step      optimizer steps of the run so far (across resumes)
    loss      mean loss of the last log interval (None before the first one)
    lr        learning rate of ``step``
    elapsed   training seconds of the run (across resumes)
    """

    step: int
    loss: float | None
    lr: float
    elapsed: float


StopFn = Callable[[StepInfo], bool]
