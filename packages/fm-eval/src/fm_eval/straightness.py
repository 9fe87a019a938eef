"""The straightness of a flow along sampled trajectories (Liu et al. 2022, arXiv 2209.03003, eq. 5).

Time convention: t = 0 is the source (noise x_0), t = 1 is data (x_1). For trajectories x_t of
the ODE dx/dt = v(x, t),

    S = E_{x_0} \\int_0^1 || v(x_t, t) - (x_1 - x_0) ||^2 dt,

zero exactly when every trajectory is a straight line traversed at constant speed (then one Euler
step is exact). On a trajectory over [t_0, t_K] the straight-line velocity is
(x_K - x_0) / (t_K - t_0) and the integral is divided by t_K - t_0 (a time average), which is the
formula above on [0, 1]. The reported ``normalised`` value divides S by E||x_1 - x_0||^2 (the
mean squared straight-line speed), so it does not change when the data are rescaled: 0 is
straight; a flow moving at constant speed around a circle of angle w gives
(w^2 - 2 + 2 cos w) / (2 - 2 cos w).

The integral uses the trapezoid rule on the trajectory's own time points (K + 1 velocity
evaluations per sample), or the left-point rule (K evaluations, the points x_{t_0} .. x_{t_{K-1}}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RULES", "Straightness", "straightness"]

#: the quadrature rules of :func:`straightness`.
RULES = ("trapezoid", "left")


@dataclass(frozen=True)
class Straightness:
    """Result of :func:`straightness`.

    value: S, the batch mean of the time-averaged || v - (x_1 - x_0) ||^2 (summed over features).
    normalised: S / E||x_1 - x_0||^2 over the same batch (0 = straight; NaN if every x_1 = x_0).
    n: trajectories averaged over (the batch size B).
    nfe: velocity evaluations per trajectory (K + 1 trapezoid, K left-point).
    rule: the quadrature rule used.
    """

    value: float
    normalised: float
    n: int
    nfe: int
    rule: str


def straightness(
    velocity: Callable[..., Tensor],
    trajectory: Tensor,
    times: Tensor,
    *,
    y: Tensor | None = None,
    rule: str = "trapezoid",
) -> Straightness:
    """Straightness of ``velocity`` along ``trajectory`` (see the module docstring).

    Args:
        velocity: ``velocity(x [B, ...], t [B]) -> v [B, ...]`` (called as ``velocity(x, t, y)``
            when ``y`` is given); t is float in [0, 1], t = 0 noise, t = 1 data.
        trajectory: [K + 1, B, ...] states at ``times`` (e.g. ``fm_core.sample(..., trajectory=B)``'s
            ``trajectory``), K >= 1.
        times: [K + 1] increasing time points (``SampleResult.times``).
        y: int [B] labels for a conditional velocity, or None.
        rule: ``"trapezoid"`` or ``"left"``.

    Returns:
        :class:`Straightness`. Runs without gradients; the velocity is evaluated on the trajectory's
        device and dtype, one time point at a time.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if not torch.is_tensor(trajectory) or trajectory.ndim < 3 or trajectory.shape[0] < 2 or trajectory.shape[1] < 1:
        shape = list(trajectory.shape) if torch.is_tensor(trajectory) else type(trajectory).__name__
        raise ValueError(f"trajectory must be a tensor [K + 1, B, ...] with K >= 1, B >= 1, got {shape}")
    if not trajectory.is_floating_point():
        raise ValueError(f"trajectory must be a floating tensor, got dtype {trajectory.dtype}")
    k1, b = trajectory.shape[0], trajectory.shape[1]
    times = torch.as_tensor(times).detach().to("cpu", torch.float64)
    if times.shape != (k1,):
        raise ValueError(f"times must have shape [K + 1] = [{k1}] like the trajectory, got {list(times.shape)}")
    dt = times[1:] - times[:-1]
    if not bool(torch.isfinite(times).all()) or not bool((dt > 0).all()):
        raise ValueError(f"times must be finite and strictly increasing, got {times.tolist()[:8]}")
    if y is not None and (not torch.is_tensor(y) or tuple(y.shape) != (b,)):
        got = list(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be None or a label tensor of shape [B] = [{b}], got {got}")
    span = float(times[-1] - times[0])
    x = trajectory.detach()
    straight = (x[-1] - x[0]) / span  # [B, ...]
    points = k1 if rule == "trapezoid" else k1 - 1
    dev = torch.zeros(points, b, dtype=torch.float64)
    with torch.no_grad():
        for i in range(points):
            t = torch.full((b,), float(times[i]), dtype=x.dtype, device=x.device)
            v = velocity(x[i], t) if y is None else velocity(x[i], t, y)
            if not torch.is_tensor(v) or v.shape != x[i].shape:
                got = list(v.shape) if torch.is_tensor(v) else type(v).__name__
                raise ValueError(f"velocity must return a tensor shaped like x {list(x[i].shape)}, got {got}")
            dev[i] = (v - straight).double().flatten(1).pow(2).sum(1).cpu()
    if rule == "trapezoid":
        per_sample = (0.5 * (dev[1:] + dev[:-1]) * dt[:, None]).sum(0)
    else:
        per_sample = (dev * dt[:, None]).sum(0)
    value = float(per_sample.mean()) / span
    scale = float(straight.double().flatten(1).pow(2).sum(1).mean())
    normalised = value / scale if scale > 0 else float("nan")
    return Straightness(value=value, normalised=normalised, n=b, nfe=points, rule=rule)
