"""The mixture probability path over tokens (Gat et al., "Discrete Flow Matching", 2024, eq. 6).

Every position i of a sequence (or of a token grid) is independent given the data x1:

    p_t(x^i | x1) = (1 - kappa_t) p_0(x^i) + kappa_t delta(x^i = x1^i)

with t = 0 the source and t = 1 the data (the toolkit's convention). Two sources:

* ``"mask"`` (absorbing): p_0 = delta(mask), the extra token id ``vocab_size``. A position is either
  still masked or already its data value, so x_t says exactly which positions are known.
* ``"uniform"``: p_0 = uniform over the ``vocab_size`` data tokens (noise tokens look like data).

Tokens are int64 ids in [0, vocab_size) (plus ``mask_id`` in x_t for the mask source); any shape
[B, ...] works, each entry is one position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .schedulers import KappaScheduler, get_kappa

__all__ = ["DiscretePathSample", "MixturePath", "SOURCES", "uniform_draw"]

SOURCES = ("mask", "uniform")


def uniform_draw(shape: Sequence[int], device: Any = None, generator: torch.Generator | None = None) -> Tensor:
    """U[0, 1) float32 of ``shape`` drawn on the generator's device (so a CPU generator gives the same
    numbers on every device), then moved to ``device``."""
    if generator is None:
        return torch.rand(tuple(shape), device=device)
    out = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return out if device is None else out.to(device)


@dataclass
class DiscretePathSample:
    """x_t int64 [B, ...] drawn from the path at times t [B]; x1 the data it was drawn from; ``from_data``
    bool [B, ...]: which positions took their data value (the rest kept their source token)."""

    x_t: Tensor
    t: Tensor
    x1: Tensor
    from_data: Tensor


class MixturePath:
    """``MixturePath(vocab_size, source="mask", scheduler="linear")``: see the module docstring.

    Attributes: ``vocab_size`` (data tokens), ``mask_id`` (``vocab_size`` for the mask source, else
    None), ``input_vocab_size`` (ids a model must accept: vocab_size + 1 with the mask),
    ``scheduler`` (:class:`fm_discrete.KappaScheduler`).

    Example:
        >>> import torch
        >>> path = MixturePath(4, source="mask")
        >>> s = path.sample(torch.tensor([[1, 2, 3]]), torch.tensor([0.0]))
        >>> s.x_t.tolist()   # t = 0: all masked (mask_id = 4)
        [[4, 4, 4]]
    """

    def __init__(self, vocab_size: int, source: str = "mask", scheduler: str | KappaScheduler = "linear") -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        self.vocab_size = vocab_size
        self.source = source
        self.scheduler = get_kappa(scheduler)

    def __repr__(self) -> str:
        return f"MixturePath(vocab_size={self.vocab_size}, source={self.source!r}, scheduler={self.scheduler!r})"

    @property
    def mask_id(self) -> int | None:
        return self.vocab_size if self.source == "mask" else None

    @property
    def input_vocab_size(self) -> int:
        return self.vocab_size + (self.source == "mask")

    # ------------------------------------------------------------------ checks
    def check_tokens(self, x: Tensor, name: str = "x1", *, allow_mask: bool = False) -> None:
        """ValueError unless ``x`` is an integer tensor [B, ...] of ids in [0, vocab_size) (or the mask id)."""
        if not torch.is_tensor(x) or x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty integer tensor [B, ...] of token ids")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        top = self.input_vocab_size if allow_mask else self.vocab_size
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= top:
            what = f"[0, {self.vocab_size})" + (
                f" or the mask id {self.mask_id}" if allow_mask and self.mask_id else ""
            )
            raise ValueError(f"{name} token ids must lie in {what}, got values in [{lo}, {hi}]")

    # ------------------------------------------------------------------ sampling
    def sample_source(
        self, shape: Sequence[int], *, device: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Tokens of the source p_0, int64 of ``shape`` (all ``mask_id``, or uniform ids)."""
        if self.source == "mask":
            return torch.full(tuple(shape), self.vocab_size, dtype=torch.long, device=device)
        u = uniform_draw(shape, device, generator)
        return (u * self.vocab_size).long().clamp_(max=self.vocab_size - 1)

    def sample(
        self, x1: Tensor, t: Tensor | float, *, x0: Tensor | None = None, generator: torch.Generator | None = None
    ) -> DiscretePathSample:
        """x_t ~ p_t(. | x1) at times t [B] (or a scalar): each position keeps its data value with
        probability kappa_t, else takes its source token x0 (drawn from p_0 unless given)."""
        self.check_tokens(x1)
        b = x1.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x1.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must have shape [B] = [{b}] or be a scalar, got {tuple(t.shape)}")
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(
                f"t must lie in [0, 1] (t = 0 source, t = 1 data), got [{float(t.min())}, {float(t.max())}]"
            )
        if x0 is None:
            x0 = self.sample_source(x1.shape, device=x1.device, generator=generator)
        elif x0.shape != x1.shape:
            raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
        kappa = self.scheduler.kappa(t).reshape((b,) + (1,) * (x1.ndim - 1))
        from_data = uniform_draw(x1.shape, x1.device, generator) < kappa
        return DiscretePathSample(torch.where(from_data, x1, x0.to(x1.device)), t, x1, from_data)

    # ------------------------------------------------------------------ rates
    def jump_coefficient(self, t: Tensor, eps: float = 1e-4) -> Tensor:
        """kappa'_t / (1 - kappa_t): the rate at which a position still at its source jumps to its data
        value (the generating velocity is this times p_{1|t}(x | x_t) - delta(x = x_t)); 1 - kappa_t is
        floored at ``eps`` (the rate is infinite at t = 1)."""
        k = self.scheduler.kappa(t)
        return self.scheduler.d_kappa(t) / (1.0 - k).clamp_min(eps)

    def jump_probability(self, t: Tensor, h: Tensor | float) -> Tensor:
        """(kappa_{t+h} - kappa_t) / (1 - kappa_t): the probability that a position still at its source at
        t has taken its data value by t + h (the path's own transition given x1; 1 when t + h = 1)."""
        k0 = self.scheduler.kappa(t)
        k1 = self.scheduler.kappa((t + h).clamp(max=1.0))
        return ((k1 - k0) / (1.0 - k0).clamp_min(1e-12)).clamp(0.0, 1.0)
