"""Affine probability paths ``x_t = alpha_t x1 + sigma_t x0`` and their target velocities.

Time convention: t = 0 is the source (Gaussian noise x0), t = 1 is the data (x1). Shapes: x0, x1
are [B, ...] and t is [B] (a Python float or 0-d tensor is broadcast to [B]); t is applied to each
row and broadcast over the trailing dimensions.

Reference: Lipman et al., "Flow Matching for Generative Modeling" (ICLR 2023), eq. 10-23;
"Flow Matching Guide and Code" (2024), sec. 4.8.1 (velocity / x1 / x0 parametrisations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._internal import _as_time_batch, _expand, device_check
from .schedulers import CondOTScheduler, Scheduler

__all__ = ["PathSample", "AffinePath", "CondOTPath"]


@dataclass
class PathSample:
    """One draw from the path: x_t and the conditional target velocity u_t (shape of x1),
    the times t [B] and the endpoints x0 (noise) and x1 (data) it was built from."""

    x_t: Tensor
    u_t: Tensor
    t: Tensor
    x0: Tensor
    x1: Tensor


class AffinePath:
    """Affine conditional path ``x_t = alpha_t x1 + sigma_t x0``, ``u_t = d_alpha_t x1 + d_sigma_t x0``.

    ``path.sample(x0, x1, t)`` builds the training pair; the four conversion methods translate
    between a velocity and a data prediction (x1_hat) or a noise prediction (x0_hat, "epsilon")
    at the same (x_t, t). Where each conversion is finite depends on the scheduler; for the
    CondOT path (sigma_min = 0):

    ======================  ==============================  ============================
    method                  CondOT formula                  safe range
    ======================  ==============================  ============================
    velocity_to_x1          x_t + (1 - t) v                 [0, 1] (no division)
    velocity_to_x0          x_t - t v                       [0, 1] (no division)
    x1_to_velocity          (x1_hat - x_t) / (1 - t)        [0, 1)  (sigma_t = 0 at t = 1)
    x0_to_velocity          (x_t - x0_hat) / t              (0, 1]  (alpha_t = 0 at t = 0)
    ======================  ==============================  ============================

    The last two divide by sigma_t and alpha_t inherently (at t = 1, x_t = x1 carries no
    information about the noise; at t = 0 it carries none about the data). With sigma_min > 0
    x1_to_velocity is finite on [0, 1]. Use the velocity parametrisation near t = 1.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        if not isinstance(scheduler, Scheduler):
            raise ValueError(f"scheduler must be an fm_core Scheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheduler!r})"

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> PathSample:
        """x0 noise [B, ...], x1 data [B, ...] (same shape), t [B] in [0, 1] -> PathSample."""
        if not (torch.is_tensor(x0) and torch.is_tensor(x1)):
            raise ValueError("x0 and x1 must be tensors")
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)}")
        t = _as_time_batch(t, x1, "x1")
        td = t.detach()
        device_check(
            (td >= 0) & (td <= 1),  # False for NaN too
            "t must lie in [0, 1] (0 = noise, 1 = data)",
            lambda: ValueError(
                f"t must lie in [0, 1] (0 = noise, 1 = data), got values in "
                f"[{float(td.min()):.4g}, {float(td.max()):.4g}]" + (" with NaN" if bool(torch.isnan(td).any()) else "")
            ),
        )
        o = self.scheduler(t)
        a, s, da, ds = (_expand(c, x1) for c in (o.alpha_t, o.sigma_t, o.d_alpha_t, o.d_sigma_t))
        return PathSample(x_t=a * x1 + s * x0, u_t=da * x1 + ds * x0, t=t, x0=x0, x1=x1)

    def _combine(self, coeffs, x_t: Tensor, other: Tensor, t) -> Tensor:
        if other.shape != x_t.shape:
            raise ValueError(
                f"prediction and x_t must have the same shape, got {tuple(other.shape)} and {tuple(x_t.shape)}"
            )
        t = _as_time_batch(t, x_t, "x_t")
        c_x, c_o = coeffs(t)
        return _expand(c_x, x_t) * x_t + _expand(c_o, x_t) * other

    def velocity_to_x1(self, v: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Data prediction x1_hat from a velocity v at (x_t, t); shapes [B, ...], t [B]."""
        return self._combine(self.scheduler.velocity_to_x1_coeffs, x_t, v, t)

    def velocity_to_x0(self, v: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Noise prediction x0_hat ("epsilon") from a velocity v at (x_t, t)."""
        return self._combine(self.scheduler.velocity_to_x0_coeffs, x_t, v, t)

    def x1_to_velocity(self, x1_hat: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Velocity from a data prediction; divides by sigma_t (not finite where sigma_t = 0)."""
        return self._combine(self.scheduler.x1_to_velocity_coeffs, x_t, x1_hat, t)

    def x0_to_velocity(self, x0_hat: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Velocity from a noise prediction; divides by alpha_t (not finite where alpha_t = 0)."""
        return self._combine(self.scheduler.x0_to_velocity_coeffs, x_t, x0_hat, t)


class CondOTPath(AffinePath):
    """The linear (conditional OT) path: ``x_t = (1 - (1 - sigma_min) t) x0 + t x1``,
    ``u_t = x1 - (1 - sigma_min) x0``; t = 0 noise, t = 1 data. Lipman et al. (2023), eq. 20-23."""

    scheduler: CondOTScheduler

    def __init__(self, sigma_min: float = 0.0) -> None:
        super().__init__(CondOTScheduler(sigma_min))

    @property
    def sigma_min(self) -> float:
        return self.scheduler.sigma_min

    def __repr__(self) -> str:
        return f"CondOTPath(sigma_min={self.sigma_min!r})"
