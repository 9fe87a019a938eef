"""Embeddings of continuous time t in [0, 1] (t = 0 noise, t = 1 data) and of class labels.

Pitfall avoided: a sinusoidal embedding built for integer diffusion steps (max period 10,000)
fed with raw t in [0, 1] leaves most channels almost constant. We scale t by ``scale``
(default 1,000) before the sinusoids, so the frequencies cover the unit interval.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

#: Device types whose autocast :class:`TimeEmbedding` switches off (others have none).
_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")


def as_time_batch(t: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Return t as a float tensor of shape [batch] on ``like``'s device and dtype.

    Accepts a Python float, a 0-d tensor, a [1] tensor or a [batch] tensor. Under autocast a
    half-precision ``like`` (an activation) gives float32 t: bf16 has 8 bits of mantissa and would
    round t = 0.999 to 1.
    """
    dtype = like.dtype
    kind = like.device.type
    if dtype in (torch.bfloat16, torch.float16) and kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        dtype = torch.float32
    t = torch.as_tensor(t, dtype=dtype, device=like.device)
    if t.ndim == 0 or t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape [{batch}], got {tuple(t.shape)}")
    return t


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of ``t * scale``: [B] -> [B, dim] (cos half, then sin half).

    Transformer position encoding (Vaswani et al. 2017) as used for diffusion time steps (Ho et al. 2020).
    """
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    work = torch.float64 if t.dtype == torch.float64 else torch.float32  # float64 stays float64 (jvp checks)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=work) / half)
    args = (t.to(work) * scale)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)


def no_autocast(device_type: str) -> AbstractContextManager[Any]:
    """A context with autocast switched off on ``device_type`` (a no-op where there is no autocast)."""
    return torch.autocast(device_type=device_type, enabled=False) if device_type in _AUTOCAST_DEVICES else nullcontext()


class TimeEmbedding(nn.Module):
    """t [B] in [0, 1] -> [B, out_dim]: sinusoidal features of 1000 t, then Linear-SiLU-Linear.

    Computed in the weights' dtype (float32) with autocast switched off, so that under bf16
    autocast t near 1 stays distinguishable (1 - 1e-3 and 1 are the same bf16 number); the layers
    that use the embedding are autocast as usual.
    """

    def __init__(self, out_dim: int, freq_dim: int = 128, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        dtype = first.weight.dtype
        with no_autocast(t.device.type):
            t = t.double() if dtype == torch.float64 else t.float()
            return self.mlp(sinusoidal_embedding(t, self.freq_dim, self.scale).to(dtype))


class LabelEmbedding(nn.Module):
    """Class labels [B] -> [B, dim], with one extra row for the null class ``num_classes``.

    ``y=None`` means "no label" and embeds the null class for the whole batch (classifier-free
    guidance, Ho & Salimans 2022). Labels outside [0, num_classes] raise ValueError.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device).long()
        if y.ndim == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"y must have shape [{batch}], got {tuple(y.shape)}")
        if not torch.compiler.is_compiling() and y.numel():
            ok = ((y >= 0) & (y <= self.num_classes)).all()
            if y.device.type == "cpu":
                if not bool(ok):
                    raise ValueError(
                        f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                        f"got range [{int(y.min())}, {int(y.max())}]"
                    )
            else:  # no host-device sync in a training step: checked on the device (a device-side assertion)
                torch._assert_async(ok, f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class)")
        return self.embedding(y)
