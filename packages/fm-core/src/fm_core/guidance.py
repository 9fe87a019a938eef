"""Classifier-free guidance as a velocity wrapper.

``v = v_null + scale * (v_cond - v_null)`` on every output channel, where v_null is the model's
velocity for the null label ``num_classes``. scale = 1 is the plain conditional model, scale = 0
the unconditional one, scale > 1 sharpens towards the class. Time convention: t = 0 noise,
t = 1 data. Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022), eq. 6 (velocity form).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._internal import _as_time_batch

__all__ = ["CFGVelocity"]


class CFGVelocity(nn.Module):
    """Guided velocity ``cfg(x, t, y) -> v`` for a model ``model(x, t, y)`` trained with label
    dropout to the null class ``num_classes``.

    x [B, ...], t [B] (or a scalar, broadcast), y int64 [B] with values in [0, num_classes]
    (entries equal to num_classes are null) or None (unconditional: one call with the null
    label). Otherwise one batched model call of size 2B (conditional rows first, then null
    rows); scale = 1 or scale = 0 needs only a call of size B.
    """

    def __init__(self, model, scale: float, num_classes: int) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        scale = float(scale)
        if scale != scale or scale in (float("inf"), float("-inf")):
            raise ValueError(f"guidance scale must be finite, got {scale!r}")
        self.model = model
        self.scale = scale
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"scale={self.scale}, num_classes={self.num_classes}"

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        t = _as_time_batch(t, x, "x")
        b = x.shape[0]
        null = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
        if y is None or self.scale == 0.0:
            return self.model(x, t, null)
        if not torch.is_tensor(y) or y.shape != (b,):
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"y must be an integer tensor of shape [B] = [{b}] or None, got {shape}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null), got [{lo}, {hi}]"
            )
        y = y.to(device=x.device, dtype=torch.long)
        if self.scale == 1.0:
            return self.model(x, t, y)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        v_cond, v_null = out[:b], out[b:]
        return v_null + self.scale * (v_cond - v_null)
