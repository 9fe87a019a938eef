"""A small maximum-likelihood training loop for flows (AdamW, gradient clipping, cosine
learning-rate decay). For long runs with checkpoints and EMA use fm-train; this is for
toy data, tests and benchmarks. No progress bar: pass ``callback`` to print or log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .flow import Flow

__all__ = ["fit", "FitHistory"]

SampleFn = Callable[[int], "Tensor | tuple[Tensor, Tensor]"]


@dataclass
class FitHistory:
    """Training curves, one entry per ``record_every`` steps (means over that window).

    step: the last step of each window (1-based). nll = -(base_log_prob + logdet), nats.
    seconds: wall-clock time of the whole run.
    """

    step: list[int] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    base_log_prob: list[float] = field(default_factory=list)
    logdet: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    flow: Flow,
    sample_fn: SampleFn,
    steps: int,
    batch_size: int = 512,
    lr: float = 1e-3,
    *,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    schedule: str = "cosine",
    warmup: int = 0,
    record_every: int = 10,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> FitHistory:
    """Train ``flow`` by maximum likelihood for ``steps`` steps; returns a :class:`FitHistory`.

    Args:
        sample_fn: ``sample_fn(batch_size)`` -> data ``x [B, D]``, or ``(x, y)`` with labels
            ``y [B]`` for a class-conditional flow. Moved to the flow's device and dtype.
        schedule: ``"cosine"`` (decay to 0 over ``steps``) or ``"constant"``; ``warmup``
            steps of linear warm-up either way.
        grad_clip: max global gradient norm (None: no clipping).
        callback: called as ``callback(step, {"nll", "base_log_prob", "logdet", "lr"})`` at
            every record.

    The flow is in training mode during the loop (so ActNorm initialises on the first
    batch) and is left in eval mode. A non-finite loss raises FloatingPointError naming
    the step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    ref = next(flow.parameters())
    opt = torch.optim.AdamW(flow.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:  # step is 0-based
        if warmup > 0 and step < warmup:
            return lr * (step + 1) / warmup
        if schedule == "constant":
            return lr
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    history = FitHistory()
    acc = torch.zeros(2, dtype=torch.float64)
    n_acc = 0
    flow.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = sample_fn(batch_size)
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        x = x.to(device=ref.device, dtype=ref.dtype)
        y = y.to(ref.device) if isinstance(y, Tensor) else y
        current_lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = current_lr
        terms = flow.nll_terms(x, y)
        loss = terms.nll
        if not torch.isfinite(loss):
            flow.eval()
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(flow.parameters(), grad_clip)
        opt.step()
        acc += torch.stack([terms.base_log_prob.detach(), terms.logdet.detach()]).double().cpu()
        n_acc += 1
        if (step + 1) % record_every == 0 or step + 1 == steps:
            base, logdet = (acc / n_acc).tolist()
            history.step.append(step + 1)
            history.base_log_prob.append(base)
            history.logdet.append(logdet)
            history.nll.append(-(base + logdet))
            history.lr.append(current_lr)
            if callback is not None:
                callback(step + 1, {"nll": -(base + logdet), "base_log_prob": base, "logdet": logdet, "lr": current_lr})
            acc.zero_()
            n_acc = 0
    history.seconds = time.perf_counter() - start
    flow.eval()
    return history
