"""Schedulers kappa_t of the mixture path: the probability that a token already is its data value.

``kappa(t)`` rises from 0 at t = 0 (every token is from the source) to 1 at t = 1 (every token is
data); ``d_kappa(t)`` is its derivative. Gat et al., "Discrete Flow Matching" (2024), sec. 2.2,
eq. 6 (there kappa_t is the data weight, as here; time runs source t = 0 -> data t = 1).

fm-core's schedulers give an affine Gaussian path (alpha_t, sigma_t) and do not fit here: a mixture
path has one weight, and alpha_t + sigma_t = 1 holds only for some of them.

    linear       kappa = t                    d_kappa = 1
    polynomial   kappa = t^n                  d_kappa = n t^(n - 1)
    cosine       kappa = sin^2(pi t / 2)      d_kappa = (pi / 2) sin(pi t)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["KAPPA_SCHEDULERS", "CosineKappa", "KappaScheduler", "LinearKappa", "PolynomialKappa", "get_kappa"]


class KappaScheduler:
    """Base class: ``kappa(t)`` and ``d_kappa(t)`` for t a float tensor in [0, 1] (any shape)."""

    name = ""

    def kappa(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def d_kappa(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-safe arguments of :func:`get_kappa` that rebuild this scheduler."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class LinearKappa(KappaScheduler):
    """kappa_t = t (Gat et al.'s linear scheduler)."""

    name = "linear"

    def kappa(self, t: Tensor) -> Tensor:
        return t.clone()

    def d_kappa(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class PolynomialKappa(KappaScheduler):
    """kappa_t = t^n, n > 0 (n > 1 keeps tokens at the source longer; n = 1 is linear)."""

    name = "polynomial"

    def __init__(self, exponent: float = 2.0) -> None:
        e = float(exponent)
        if not (math.isfinite(e) and e > 0):
            raise ValueError(f"polynomial exponent must be a positive number, got {exponent!r}")
        self.exponent = e

    def kappa(self, t: Tensor) -> Tensor:
        return t.pow(self.exponent)

    def d_kappa(self, t: Tensor) -> Tensor:
        return self.exponent * t.pow(self.exponent - 1.0)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "exponent": self.exponent}


class CosineKappa(KappaScheduler):
    """kappa_t = sin^2(pi t / 2) = (1 - cos(pi t)) / 2: slow at both ends."""

    name = "cosine"

    def kappa(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t).pow(2)

    def d_kappa(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(math.pi * t)


KAPPA_SCHEDULERS: dict[str, type[KappaScheduler]] = {
    "linear": LinearKappa,
    "polynomial": PolynomialKappa,
    "cosine": CosineKappa,
}


def get_kappa(name: str | KappaScheduler = "linear", **kw: Any) -> KappaScheduler:
    """The scheduler ``name`` ("linear", "polynomial" with ``exponent``, "cosine"); a scheduler passes through."""
    if isinstance(name, KappaScheduler):
        if kw:
            raise ValueError(f"arguments {kw!r} given with a scheduler instance {name!r}")
        return name
    if not isinstance(name, str) or name not in KAPPA_SCHEDULERS:
        raise ValueError(f"unknown kappa scheduler {name!r}; choose one of {', '.join(KAPPA_SCHEDULERS)}")
    try:
        return KAPPA_SCHEDULERS[name](**kw)
    except TypeError as e:
        raise ValueError(f"bad arguments {kw!r} for kappa scheduler {name!r}: {e}") from None
