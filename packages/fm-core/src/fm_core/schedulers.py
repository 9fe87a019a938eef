"""Schedulers (alpha_t, sigma_t) of affine probability paths.

Time convention (everywhere in fm-core): t = 0 is the source (Gaussian noise x0), t = 1 is the
data (x1), and the path is ``x_t = alpha_t * x1 + sigma_t * x0`` with velocity
``u_t = d_alpha_t * x1 + d_sigma_t * x0``.

Reference: Lipman et al., "Flow Matching for Generative Modeling" (ICLR 2023), sec. 4.1;
Lipman et al., "Flow Matching Guide and Code" (2024), sec. 4.8 (affine paths and schedulers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._internal import build_from_registry

__all__ = [
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "CosineScheduler",
    "VPScheduler",
    "PolynomialScheduler",
    "SCHEDULERS",
    "get_scheduler",
]


@dataclass
class SchedulerOutput:
    """alpha_t, sigma_t and their exact time derivatives; every field has the shape of ``t``."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Scheduler:
    """Base class: ``scheduler(t) -> SchedulerOutput`` for t (any shape) in [0, 1], t = 0 noise.

    Besides the schedule itself a scheduler gives the coefficients that convert between a
    velocity and a data (x1) or noise (x0) prediction. The defaults solve the 2x2 linear system
    ``x_t = a x1 + s x0, v = da x1 + ds x0`` through its determinant ``s*da - a*ds``; subclasses
    override them with algebraically simplified forms that stay finite where the generic
    formula divides by zero (see :class:`CondOTScheduler`, :class:`VPScheduler`).
    """

    def __call__(self, t: Tensor) -> SchedulerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def snr_inverse(self, t: Tensor) -> Tensor:
        """sigma_t / alpha_t (infinite at t = 0 for schedulers with alpha_0 = 0)."""
        out = self(t)
        return out.sigma_t / out.alpha_t

    def velocity_to_x1_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_x, c_v) with ``x1 = c_x * x_t + c_v * v``."""
        o = self(t)
        det = o.sigma_t * o.d_alpha_t - o.alpha_t * o.d_sigma_t
        return -o.d_sigma_t / det, o.sigma_t / det

    def velocity_to_x0_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_x, c_v) with ``x0 = c_x * x_t + c_v * v``."""
        o = self(t)
        det = o.sigma_t * o.d_alpha_t - o.alpha_t * o.d_sigma_t
        return o.d_alpha_t / det, -o.alpha_t / det

    def x1_to_velocity_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_x, c_1) with ``v = c_x * x_t + c_1 * x1``; divides by sigma_t (infinite where sigma_t = 0)."""
        o = self(t)
        det = o.sigma_t * o.d_alpha_t - o.alpha_t * o.d_sigma_t
        return o.d_sigma_t / o.sigma_t, det / o.sigma_t

    def x0_to_velocity_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_x, c_0) with ``v = c_x * x_t + c_0 * x0``; divides by alpha_t (infinite where alpha_t = 0)."""
        o = self(t)
        det = o.sigma_t * o.d_alpha_t - o.alpha_t * o.d_sigma_t
        return o.d_alpha_t / o.alpha_t, -det / o.alpha_t

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class CondOTScheduler(Scheduler):
    """Conditional optimal transport (linear) schedule: alpha_t = t, sigma_t = 1 - (1 - sigma_min) t.

    alpha_0 = 0, sigma_0 = 1 (pure noise); alpha_1 = 1, sigma_1 = sigma_min. The velocity is
    ``u = x1 - (1 - sigma_min) x0``. Lipman et al. (2023), eq. 20-23.
    """

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not 0.0 <= float(sigma_min) < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        k = 1.0 - self.sigma_min
        return SchedulerOutput(
            alpha_t=t,
            sigma_t=1.0 - k * t,
            d_alpha_t=torch.ones_like(t),
            d_sigma_t=torch.full_like(t, -k),
        )

    # The determinant s*da - a*ds is exactly 1 for this path: no division at all, valid on [0, 1].
    def velocity_to_x1_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        k = 1.0 - self.sigma_min
        return torch.full_like(t, k), 1.0 - k * t

    def velocity_to_x0_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), -t

    def x1_to_velocity_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        k = 1.0 - self.sigma_min
        s = 1.0 - k * t
        return -k / s, 1.0 / s

    def x0_to_velocity_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1.0 / t, -1.0 / t


class CosineScheduler(Scheduler):
    """Cosine schedule: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2) (variance preserving).

    alpha_0 = 0, sigma_0 = 1; alpha_1 = 1, sigma_1 = 0. Nichol & Dhariwal (2021) in the flow form
    of Albergo & Vanden-Eijnden (2023). Velocity/x1/x0 conversions divide by pi/2 only.
    """

    def __call__(self, t: Tensor) -> SchedulerOutput:
        h = 0.5 * math.pi
        return SchedulerOutput(
            alpha_t=torch.sin(h * t),
            sigma_t=torch.cos(h * t),
            d_alpha_t=h * torch.cos(h * t),
            d_sigma_t=-h * torch.sin(h * t),
        )


class VPScheduler(Scheduler):
    """Variance-preserving (score SDE) schedule with time flipped so that t = 0 is noise.

    With s = 1 - t and T(s) = beta_min s + (beta_max - beta_min) s^2 / 2:
    alpha_t = exp(-T(1 - t) / 2), sigma_t = sqrt(1 - alpha_t^2). Lipman et al. (2023), eq. 19.
    alpha_0 = exp(-T(1)/2) (about 0.0066 for the defaults, not exactly 0), alpha_1 = 1, sigma_1 = 0.
    d_sigma_t is infinite at t = 1 (sigma_t ~ sqrt(beta_min (1 - t))); the conversions below are
    rewritten without 1/sigma_t so that velocity -> x1 / x0 stays finite on the whole of [0, 1].
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0.0 < float(beta_min) <= float(beta_max):
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def _terms(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = 1.0 - t
        big_t = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * s  # dT/ds
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(-torch.expm1(-big_t))  # sqrt(1 - alpha^2) without cancellation
        d_alpha = 0.5 * beta * alpha  # d/dt exp(-T(1-t)/2) = alpha * beta(1-t) / 2
        return alpha, sigma, d_alpha

    def __call__(self, t: Tensor) -> SchedulerOutput:
        alpha, sigma, d_alpha = self._terms(t)
        return SchedulerOutput(alpha_t=alpha, sigma_t=sigma, d_alpha_t=d_alpha, d_sigma_t=-alpha * d_alpha / sigma)

    # det = s*da - a*ds = da / s, so x1 = a x_t + s^2 v / da and x0 = s x_t - a s v / da.
    def velocity_to_x1_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma, d_alpha = self._terms(t)
        return alpha, sigma**2 / d_alpha

    def velocity_to_x0_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma, d_alpha = self._terms(t)
        return sigma, -alpha * sigma / d_alpha


class PolynomialScheduler(Scheduler):
    """Polynomial schedule: alpha_t = t^n, sigma_t = 1 - t^n (n = 1 is CondOT with sigma_min = 0).

    For n > 1 the velocity vanishes at t = 0 (d_alpha_0 = 0), so velocity -> x1 is undefined
    there; velocity -> x0 simplifies to ``x0 = x_t - (t / n) v`` and is finite on [0, 1].
    """

    def __init__(self, n: float = 2.0) -> None:
        if not float(n) > 0.0:
            raise ValueError(f"polynomial exponent n must be > 0, got {n!r}")
        self.n = float(n)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        n = self.n
        a = t**n
        da = n * t ** (n - 1.0)
        return SchedulerOutput(alpha_t=a, sigma_t=1.0 - a, d_alpha_t=da, d_sigma_t=-da)

    # det = s*da - a*ds = da.
    def velocity_to_x1_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        n = self.n
        return torch.ones_like(t), (1.0 - t**n) / (n * t ** (n - 1.0))

    def velocity_to_x0_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), -t / self.n


SCHEDULERS = ("condot", "cosine", "vp", "polynomial")
_SCHEDULER_TABLE = {
    "condot": CondOTScheduler,
    "cond-ot": CondOTScheduler,
    "ot": CondOTScheduler,
    "linear": CondOTScheduler,
    "cosine": CosineScheduler,
    "vp": VPScheduler,
    "polynomial": PolynomialScheduler,
    "poly": PolynomialScheduler,
}


def get_scheduler(name: str, **kw) -> Scheduler:
    """Build a scheduler by name: "condot" (sigma_min), "cosine", "vp" (beta_min, beta_max),
    "polynomial" (n). Keyword arguments go to the constructor."""
    return build_from_registry("scheduler", name, _SCHEDULER_TABLE, SCHEDULERS, kw)
