"""Uniform quantisation of real values into tokens and back (pixels to grey levels, 2D points to a lattice).

``UniformQuantizer(levels, low, high)`` splits [low, high] into ``levels`` equal bins: ``encode`` maps a
value to the index of its bin (values outside are clamped into the end bins), ``decode`` maps an index
to its bin's centre, or to a uniform draw inside the bin with ``jitter``. Bin k covers
[low + k w, low + (k + 1) w) with w = (high - low) / levels.

Example:
    >>> import torch
    >>> q = UniformQuantizer(16, 0.0, 256.0)             # uint8 grey values -> 16 levels
    >>> q.encode(torch.tensor([0, 15, 16, 255])).tolist()
    [0, 0, 1, 15]
    >>> q.decode(torch.tensor([0, 15])).tolist()         # bin centres
    [8.0, 248.0]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["UniformQuantizer"]


class UniformQuantizer:
    """``levels`` equal bins over [low, high] (module docstring)."""

    def __init__(self, levels: int, low: float, high: float) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
        self.levels, self.low, self.high = levels, low, high
        self.width = (high - low) / levels

    def __repr__(self) -> str:
        return f"UniformQuantizer(levels={self.levels}, low={self.low:g}, high={self.high:g})"

    def encode(self, x: Tensor) -> Tensor:
        """int64 bin indices in [0, levels) of the values ``x`` (any shape)."""
        idx = torch.floor((x.double() - self.low) / self.width)
        return idx.clamp_(0, self.levels - 1).long()

    def decode(self, k: Tensor, *, jitter: Tensor | None = None) -> Tensor:
        """float32 values of the bin indices ``k``: the centres, or low + (k + jitter) w for ``jitter``
        uniforms in [0, 1) of k's shape."""
        if k.is_floating_point():
            raise ValueError(f"decode takes integer bin indices, got dtype {k.dtype}")
        offset = 0.5 if jitter is None else jitter.double()
        return (self.low + (k.double() + offset) * self.width).float()
