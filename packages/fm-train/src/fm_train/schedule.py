"""Learning-rate schedule: linear warmup, then constant or cosine decay.

    lr(s) = lr_max * w(s) * c(p)
    w(s)  = min(1, s / warmup_steps)              (s = 1, 2, ... the optimizer step; w = 1 without warmup)
    c(p)  = 1                                      ("constant")
          = r + (1 - r) * (1 + cos(pi * p)) / 2    ("cosine", r = min_lr_ratio)

``p`` in [0, 1] is the progress of the decay phase: ``(s - warmup_steps) / (steps -
warmup_steps)`` for a step budget, or the fraction of the time budget used for a minutes
budget (the number of steps is not known in advance). Cosine decay: Loshchilov & Hutter,
SGDR (2017); warmup: Goyal et al. (2017).
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_at", "decay_progress"]

SCHEDULES = ("constant", "cosine")


def decay_progress(
    step: int, *, warmup_steps: int, total_steps: int | None = None, time_fraction: float | None = None
) -> float:
    """Progress ``p`` in [0, 1] of the decay phase (see the module docstring)."""
    if total_steps is not None:
        span = total_steps - warmup_steps
        if span <= 0:
            return 1.0 if step >= total_steps else 0.0
        return min(1.0, max(0.0, (step - warmup_steps) / span))
    if time_fraction is not None:
        return min(1.0, max(0.0, float(time_fraction)))
    raise ValueError("decay_progress needs total_steps (step budget) or time_fraction (minutes budget)")


def lr_at(
    step: int,
    *,
    lr: float,
    warmup_steps: int = 0,
    schedule: str = "constant",
    progress: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate of optimizer step ``step`` (1-based) for decay progress ``progress``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        factor = 1.0
    else:
        factor = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * warm * factor
