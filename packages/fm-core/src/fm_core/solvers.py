"""ODE solvers for flow models: one entry point for fixed-step and adaptive methods.

Time convention: t = 0 is the source (Gaussian noise), t = 1 is data. Sampling integrates
dx/dt = v(x, t, y) from t0=0 to t1=1; encoding (data to noise) integrates from t0=1 to t1=0.

The velocity is called as ``velocity(x, t, y)`` with ``x`` of shape [B, ...], ``t`` a tensor
of shape [B] (the current time broadcast over the batch, dtype and device of ``x``) and ``y``
whatever was passed as ``y=`` (e.g. labels [B]); with ``y=None`` it is called as
``velocity(x, t)``, so a model without labels fits. Nothing else is forwarded.

Fixed-step methods (own implementation; Butcher tableaux from Hairer, Norsett & Wanner,
"Solving Ordinary Differential Equations I", 1993, Sec. II.1):

    method     order  velocity evaluations per step
    euler      1      1
    midpoint   2      2
    heun       2      2   (explicit trapezoid)
    rk4        4      4   (classic Runge-Kutta)

Adaptive methods (``dopri5`` and friends) delegate to ``torchdiffeq.odeint`` with ``atol``/``rtol``.

Gradients: by default (``grad=False``) the solver runs under ``torch.no_grad()`` so that sampling
does not build a graph over all steps. Pass ``grad=True`` to backpropagate through the solution.
(A velocity that needs autograd internally, e.g. for a divergence, can still open its own
``torch.enable_grad()`` block; :mod:`fm_core.likelihood` does exactly that.)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._internal import VelocityField, call_velocity

__all__ = [
    "ADAPTIVE_METHODS",
    "DEFAULT_STEPS",
    "EVALS_PER_STEP",
    "FIXED_METHODS",
    "METHODS",
    "ODESolution",
    "evals_per_step",
    "fit_nfe",
    "solve_ode",
    "steps_for_nfe",
]

FIXED_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4")
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
METHODS: tuple[str, ...] = FIXED_METHODS + ADAPTIVE_METHODS
EVALS_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
#: Number of steps a fixed-step method takes when neither ``steps`` nor ``time_grid`` is given.
DEFAULT_STEPS = 100

#: the velocity type the solvers take (see :class:`fm_core.VelocityField`)
Velocity = VelocityField


@dataclass
class ODESolution:
    """Result of :func:`solve_ode`.

    x: the state at the final time t1, shape [B, ...] like the input.
    nfe: number of velocity evaluations used (every call counted).
    times: the time points of the grid, shape [T] (fixed methods: the whole step grid;
        adaptive methods: ``time_grid`` if given, else [t0, t1]).
    trajectory: the state at every entry of ``times``, shape [T, B, ...], or None unless
        ``return_trajectory=True``. trajectory[0] is the start, trajectory[-1] equals ``x``.
    """

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None


class _CountingVelocity:
    """Wraps ``velocity(x, t[B], y)``: broadcasts a scalar time to [B] and counts calls."""

    def __init__(self, velocity: Velocity, y: Any, clamp: tuple[float, float] | None = None):
        self.velocity = velocity
        self.y = y
        self.clamp = clamp
        self.nfe = 0

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        batch = x.shape[0]
        if isinstance(t, Tensor):
            if self.clamp is not None:
                t = t.clamp(self.clamp[0], self.clamp[1])
            t_b = t.to(dtype=x.dtype, device=x.device).reshape(1).expand(batch).clone()
        else:
            t_b = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)
        self.nfe += 1
        v = call_velocity(self.velocity, x, t_b, self.y)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"velocity returned shape {got}; expected the shape of x, {tuple(x.shape)}")
        return v


# ----------------------------------------------------------------------------- fixed steps
def _euler(f: _CountingVelocity, x: Tensor, t: float, h: float) -> Tensor:
    return x + h * f(x, t)


def _midpoint(f: _CountingVelocity, x: Tensor, t: float, h: float) -> Tensor:
    k1 = f(x, t)
    return x + h * f(x + 0.5 * h * k1, t + 0.5 * h)


def _heun(f: _CountingVelocity, x: Tensor, t: float, h: float) -> Tensor:
    k1 = f(x, t)
    k2 = f(x + h * k1, t + h)
    return x + 0.5 * h * (k1 + k2)


def _rk4(f: _CountingVelocity, x: Tensor, t: float, h: float) -> Tensor:
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


_STEP_FUNCTIONS = {"euler": _euler, "midpoint": _midpoint, "heun": _heun, "rk4": _rk4}


# ----------------------------------------------------------------------------- validation
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(
            f"unknown ODE method {method!r}; allowed: fixed-step {', '.join(FIXED_METHODS)}; "
            f"adaptive {', '.join(ADAPTIVE_METHODS)}"
        )


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _check_time(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    return v


def _check_grid(time_grid: Any) -> list[float]:
    if isinstance(time_grid, Tensor):
        grid = time_grid.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            grid = torch.as_tensor(time_grid, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"time_grid must be a 1-D sequence of times, got {time_grid!r}") from None
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"time_grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}")
    if not torch.isfinite(grid).all():
        raise ValueError(f"time_grid must be finite, got {grid.tolist()}")
    if grid.min() < 0.0 or grid.max() > 1.0:
        raise ValueError(f"time_grid must lie within [0, 1], got {grid.tolist()}")
    diff = grid[1:] - grid[:-1]
    if not ((diff > 0).all() or (diff < 0).all()):
        raise ValueError(f"time_grid must be strictly increasing or strictly decreasing, got {grid.tolist()}")
    return grid.tolist()


def _check_x(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape [B, ...], got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension [B, ...], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values (NaN or inf); the ODE start must be finite")


def evals_per_step(method: str) -> int:
    """Velocity evaluations per step of fixed-step ``method``: euler 1, midpoint 2, heun 2, rk4 4.

    The single source of this number. ValueError for an unknown method or an adaptive one (its
    evaluations per step vary with the error estimate).
    """
    _check_method(method)
    if method not in EVALS_PER_STEP:
        raise ValueError(
            f"method {method!r} is adaptive: its evaluations per step vary; evaluations per step are "
            f"defined for the fixed-step methods {', '.join(FIXED_METHODS)}"
        )
    return EVALS_PER_STEP[method]


def _check_nfe(nfe: Any) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral) or nfe <= 0:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    return int(nfe)


def steps_for_nfe(method: str, nfe: int | None) -> int | None:
    """Number of steps of fixed-step ``method`` that uses exactly ``nfe`` velocity evaluations.

    None for ``nfe=None`` (the caller's default applies). ValueError for an unknown method, an
    adaptive method given an ``nfe`` (its NFE follows from atol/rtol), or an ``nfe`` that is not a
    positive multiple of :func:`evals_per_step`.

    Example:
        >>> steps_for_nfe("rk4", 40), steps_for_nfe("euler", None)
        (10, None)
    """
    _check_method(method)
    if nfe is None:
        return None
    if method in ADAPTIVE_METHODS:
        raise ValueError(
            f"nfe={nfe!r} cannot be used with the adaptive method {method!r} (it picks its own steps "
            f"from atol/rtol); use a fixed-step method ({', '.join(FIXED_METHODS)}) or drop nfe"
        )
    per = EVALS_PER_STEP[method]
    if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral) or nfe <= 0 or nfe % per:
        raise ValueError(f"nfe must be a positive multiple of {per} for method {method!r}, got {nfe!r}")
    return int(nfe) // per


def fit_nfe(method: str, nfe: int) -> int:
    """``nfe`` rounded down to a multiple of the evaluations per step of ``method``, at least one
    step: ``per * max(1, nfe // per)`` (e.g. a run stored with NFE 10, sampled with rk4: 8).

    Example:
        >>> fit_nfe("rk4", 10), fit_nfe("rk4", 2), fit_nfe("midpoint", 8)
        (8, 4, 8)
    """
    per = evals_per_step(method)
    return per * max(1, _check_nfe(nfe) // per)


# ----------------------------------------------------------------------------- entry point
def solve_ode(
    velocity: Velocity,
    x: Tensor,
    *,
    method: str = "midpoint",
    steps: int | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    t0: float | None = None,
    t1: float | None = None,
    y: Any = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    return_trajectory: bool = False,
    grad: bool = False,
) -> ODESolution:
    """Integrate dx/dt = velocity(x, t, y) from t0 to t1.

    Args:
        velocity: callable ``velocity(x [B, ...], t [B], y) -> v [B, ...]`` (a model works), called
            as ``velocity(x, t)`` when ``y`` is None.
        x: start state [B, ...], finite, floating point; the result has its dtype and device.
        method: fixed-step ``euler``, ``midpoint``, ``heun``, ``rk4`` or adaptive ``dopri5``,
            ``dopri8``, ``bosh3``, ``adaptive_heun`` (torchdiffeq).
        steps: number of uniform steps for a fixed-step method (default 100 when no
            ``time_grid`` is given). An error with an adaptive method or with ``time_grid``.
        time_grid: explicit 1-D time points, strictly monotone, within [0, 1], at least 2.
            Its first and last entries are t0 and t1 (giving t0/t1 too is allowed only if they
            agree). Fixed methods step between consecutive points; adaptive methods return
            the trajectory at these points.
        t0, t1: start and end time, default 0 and 1 (noise -> data). t0=1, t1=0 encodes data.
        y: conditioning passed to ``velocity`` unchanged (e.g. labels [B]); None: not passed.
        atol, rtol: tolerances of adaptive methods (ignored by fixed-step methods).
        return_trajectory: also return the states at all ``times``.
        grad: run with autograd enabled (to differentiate through the solve). Default False:
            the solve runs under ``torch.no_grad()``.

    Returns:
        :class:`ODESolution` with the final state, the NFE (every velocity call counted),
        the time points and optionally the trajectory [T, B, ...].

    Example:
        >>> sol = solve_ode(lambda x, t: -x, torch.ones(3, 2), method="rk4", steps=10)
        >>> sol.nfe
        40
    """
    _check_method(method)
    _check_x(x)
    adaptive = method in ADAPTIVE_METHODS
    if steps is not None:
        if adaptive:
            raise ValueError(
                f"steps={steps!r} cannot be used with the adaptive method {method!r} (it chooses its own "
                f"steps from atol/rtol); use a fixed-step method ({', '.join(FIXED_METHODS)}) or drop steps"
            )
        if time_grid is not None:
            raise ValueError("give either steps or time_grid, not both (time_grid already defines the steps)")
        steps = _check_steps(steps)
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if not isinstance(tol, numbers.Real) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {tol!r}")

    if time_grid is not None:
        grid = _check_grid(time_grid)
        for name, given, implied in (("t0", t0, grid[0]), ("t1", t1, grid[-1])):
            if given is not None and abs(_check_time(name, given) - implied) > 1e-12:
                raise ValueError(f"{name}={given!r} contradicts time_grid, whose endpoint is {implied!r}")
    else:
        start = 0.0 if t0 is None else _check_time("t0", t0)
        end = 1.0 if t1 is None else _check_time("t1", t1)
        if start == end:
            raise ValueError(f"t0 and t1 must differ, got t0={start!r}, t1={end!r}")
        if adaptive:
            grid = [start, end]
        else:
            n = DEFAULT_STEPS if steps is None else steps
            grid = torch.linspace(start, end, n + 1, dtype=torch.float64).tolist()

    with torch.set_grad_enabled(grad):
        if adaptive:
            xs, nfe = _solve_adaptive(velocity, x, grid, method, y, atol, rtol, return_trajectory)
        else:
            xs, nfe = _solve_fixed(velocity, x, grid, method, y, return_trajectory)

    times = torch.tensor(grid, dtype=x.dtype, device=x.device)
    trajectory = torch.stack(xs) if return_trajectory else None
    return ODESolution(x=xs[-1], nfe=nfe, times=times, trajectory=trajectory)


def _solve_fixed(
    velocity: Velocity, x: Tensor, grid: list[float], method: str, y: Any, keep: bool
) -> tuple[list[Tensor], int]:
    f = _CountingVelocity(velocity, y)
    step = _STEP_FUNCTIONS[method]
    xs = [x]
    for t_a, t_b in zip(grid[:-1], grid[1:]):
        x = step(f, x, t_a, t_b - t_a)
        if keep:
            xs.append(x)
    if not keep:
        xs = [x]
    return xs, f.nfe


def _solve_adaptive(
    velocity: Velocity,
    x: Tensor,
    grid: list[float],
    method: str,
    y: Any,
    atol: float,
    rtol: float,
    keep: bool,
) -> tuple[list[Tensor], int]:
    # Imported lazily (only adaptive methods need it), and never inside inference mode: torchdiffeq
    # builds its Butcher tableaux as tensors at import, and tensors made under torch.inference_mode()
    # cannot take part in a later solve with grad=True (found when sample() ran dopri5 first).
    with torch.inference_mode(False):
        from torchdiffeq import odeint

    # torchdiffeq's initial-step heuristic probes the velocity at t0 + h0, which may fall outside
    # [t0, t1]; clamp the time handed to the model so it is never asked outside the interval.
    # step_t=[t_end] makes the last step end exactly at t_end instead of overshooting it.
    f = _CountingVelocity(velocity, y, clamp=(min(grid[0], grid[-1]), max(grid[0], grid[-1])))
    t_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    t = torch.tensor(grid, dtype=t_dtype, device=x.device)
    options = {"step_t": t[-1:].clone()}
    try:
        sol = odeint(lambda tt, xx: f(xx, tt), x, t, method=method, atol=atol, rtol=rtol, options=options)
    except AssertionError as e:  # torchdiffeq's "underflow in dt nan": the step size collapsed
        raise ValueError(
            f"the {method} solver could not integrate this velocity field: its step size became "
            f"{'NaN' if 'nan' in str(e) else 'zero'} after {f.nfe} evaluations (the velocity is NaN/inf or "
            f"diverges; torchdiffeq: {' '.join(str(e).split())})"
        ) from None
    xs = list(sol) if keep else [sol[-1]]
    return xs, f.nfe
