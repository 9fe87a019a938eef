"""The conditional flow-matching loss.

``loss = mean || model(x_t, t, y) - u_t ||^2`` with t ~ time sampler, x0 ~ N(0, I), (x0, x1)
coupled, and (x_t, u_t) from the probability path; t = 0 is noise, t = 1 is data.
Lipman et al., "Flow Matching for Generative Modeling" (ICLR 2023), eq. 9 / 23. Label dropout
for classifier-free guidance: Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .coupling import Coupling, IndependentCoupling
from .paths import AffinePath, CondOTPath, _as_time_batch
from .time_samplers import TimeSampler, UniformTime

__all__ = ["FlowMatchingLoss"]

VelocityModel = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def _draw(kind: str, shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """randn/rand of ``shape`` in like's dtype, drawn on the generator's device, put on like's."""
    fn = torch.randn if kind == "randn" else torch.rand
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if generator is None:
        return fn(shape, device=like.device, dtype=dtype)
    return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(like.device)


class FlowMatchingLoss:
    """``loss_fn(model, x1, y=None, *, x0=None, t=None, generator=None) -> scalar tensor``.

    Args:
        path: probability path (default ``CondOTPath()``).
        time_sampler: draws t [B] when t is not given (default ``UniformTime()``).
        coupling: pairs noise with data (default ``IndependentCoupling()``); it may reorder x0,
            never x1 or y.
        label_dropout: probability of replacing each label by the null class ``num_classes``
            (classifier-free guidance training). Needs ``num_classes``.
        num_classes: number of real classes; labels must lie in [0, num_classes).

    The model is called once as ``model(x_t, t, y)`` with x_t [B, ...], t float [B] in [0, 1]
    and y int64 [B] or None, and must return a tensor shaped like x1. x0 defaults to N(0, I)
    noise; pass x0 and t to make the loss deterministic (the coupling still applies).
    """

    def __init__(
        self,
        path: AffinePath | None = None,
        time_sampler: TimeSampler | None = None,
        coupling: Coupling | None = None,
        label_dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        self.path = CondOTPath() if path is None else path
        self.time_sampler = UniformTime() if time_sampler is None else time_sampler
        self.coupling = IndependentCoupling() if coupling is None else coupling
        if not 0.0 <= float(label_dropout) <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if label_dropout > 0 and num_classes is None:
            raise ValueError(
                f"label_dropout={label_dropout} needs num_classes (the null label is num_classes)"
            )
        self.label_dropout = float(label_dropout)
        self.num_classes = num_classes

    def __repr__(self) -> str:
        return (f"FlowMatchingLoss(path={self.path!r}, time_sampler={self.time_sampler!r}, "
                f"coupling={self.coupling!r}, label_dropout={self.label_dropout}, "
                f"num_classes={self.num_classes})")

    def _check_labels(self, y: Tensor | None, b: int) -> None:
        if y is None:
            return
        if not torch.is_tensor(y) or y.shape != (b,):
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"y must be an integer tensor of shape [B] = [{b}], got {shape}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        if self.num_classes is not None and b > 0:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"labels must lie in [0, num_classes) = [0, {self.num_classes}), got values in "
                    f"[{lo}, {hi}] (the null label {self.num_classes} is added by label dropout only)"
                )

    def __call__(
        self,
        model: VelocityModel,
        x1: Tensor,
        y: Tensor | None = None,
        *,
        x0: Tensor | None = None,
        t: Tensor | float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if not torch.is_tensor(x1) or x1.ndim < 1 or x1.shape[0] == 0:
            raise ValueError("x1 must be a non-empty data batch [B, ...]")
        b = x1.shape[0]
        self._check_labels(y, b)
        if x0 is None:
            x0 = _draw("randn", x1.shape, x1, generator)
        elif x0.shape != x1.shape:
            raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
        if t is None:
            t = self.time_sampler(b, device=x1.device, generator=generator)
        t = _as_time_batch(t, x1, "x1")

        pair = self.coupling(x0, x1, y, generator=generator)
        y = pair.y
        if y is not None and self.label_dropout > 0:
            drop = _draw("rand", (b,), x1, generator) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)

        ps = self.path.sample(pair.x0, pair.x1, t)
        v = model(ps.x_t, ps.t, y)
        if not torch.is_tensor(v) or v.shape != ps.u_t.shape:
            shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"model output must have the shape of x1 {tuple(x1.shape)}, got {shape}")
        return (v - ps.u_t).pow(2).mean()
