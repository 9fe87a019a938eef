"""Interop with diffusers' ``FlowMatchEulerDiscreteScheduler`` (SD3, FLUX): time grids and velocity signs.

This module converts numbers and wraps callables; it does not import diffusers.

Conventions. diffusers puts noise at sigma = 1 and data at sigma = 0:
``x_sigma = (1 - sigma) x_data + sigma noise``; sampling runs sigma from 1 down to 0; the model is
called as ``model(x, timestep)`` with ``timestep = sigma * num_train_timesteps`` (the scheduler's
``timesteps``) and predicts ``v_d = noise - x_data = dx/dsigma``; an Euler step is
``x <- x + (sigma_next - sigma) v_d``. fm-core puts noise at t = 0 and data at t = 1
(``x_t = (1 - t) noise + t x_data``), so

    t = 1 - sigma,    v = dx/dt = x_data - noise = -v_d,

and an fm-core Euler step on the grid ``t = 1 - sigmas`` is exactly the scheduler's step. The grid
must be the scheduler's sigmas *after* its shift (``shift * s / (1 + (shift - 1) s)``, applied by
``set_timesteps``): a uniform grid of the same length samples a different, coarser-at-the-noise-end
discretisation. Either read the sigmas off a scheduler (:func:`time_grid_from_sigmas`) or compute
them without diffusers (:func:`flow_match_euler_sigmas`, static shift only).

Example (``scheduler`` a diffusers FlowMatchEulerDiscreteScheduler, ``transformer_fn(x, timestep)``
returning its velocity)::

    scheduler.set_timesteps(28)
    grid = time_grid_from_sigmas(scheduler.sigmas)        # [29] from 0 to 1
    out = fm_core.sample(FromDiffusers(transformer_fn), n, shape, method="euler", time_grid=grid)
    # and the other way: our model inside a diffusers loop
    v_d = ToDiffusers(model)(latents, t)                  # t from scheduler.timesteps
    latents = scheduler.step(v_d, t, latents).prev_sample
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._internal import call_velocity

__all__ = [
    "FromDiffusers",
    "ToDiffusers",
    "flow_match_euler_sigmas",
    "shift_sigmas",
    "sigmas_from_time_grid",
    "time_grid_from_sigmas",
]


def _as_1d(values: Sequence[float] | Tensor, name: str) -> Tensor:
    """``values`` as a float64 CPU tensor [T], T >= 2, finite, within [0, 1], strictly monotone."""
    try:
        v = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got {values!r}") from None
    if v.ndim != 1 or v.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 entries, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all() or v.min() < 0 or v.max() > 1:
        raise ValueError(f"{name} must lie within [0, 1], got {v.tolist()}")
    d = v[1:] - v[:-1]
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError(f"{name} must be strictly monotone, got {v.tolist()}")
    return v


def time_grid_from_sigmas(sigmas: Sequence[float] | Tensor) -> Tensor:
    """fm-core time grid ``t = 1 - sigmas`` (float64 [T]) of a diffusers sigma schedule.

    ``sigmas``: the scheduler's ``sigmas`` after ``set_timesteps`` (decreasing, ending with 0), so
    the grid increases to t = 1. Pass it as ``time_grid=`` to :func:`fm_core.sample` or
    :func:`fm_core.solve_ode` with ``method="euler"`` to take the scheduler's steps.
    """
    return 1.0 - _as_1d(sigmas, "sigmas")


def sigmas_from_time_grid(time_grid: Sequence[float] | Tensor) -> Tensor:
    """diffusers sigmas ``1 - t`` (float32 [T], the scheduler's dtype) of an fm-core time grid.

    Pass ``sigmas[:-1].tolist()`` to ``scheduler.set_timesteps(sigmas=...)`` (the scheduler appends
    the final 0 itself) with ``shift=1`` in its config, or its shift is applied on top.
    """
    return (1.0 - _as_1d(time_grid, "time_grid")).to(torch.float32)


def shift_sigmas(sigmas: Sequence[float] | Tensor, shift: float) -> Tensor:
    """diffusers' static timestep shift ``shift * s / (1 + (shift - 1) s)`` (float64 [T]).

    ``shift > 1`` spends more of the steps near the noise end (SD3 uses 3.0).
    """
    if not (isinstance(shift, int | float) and not isinstance(shift, bool) and shift > 0):
        raise ValueError(f"shift must be a positive number, got {shift!r}")
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def flow_match_euler_sigmas(num_inference_steps: int, *, shift: float = 1.0, num_train_timesteps: int = 1000) -> Tensor:
    """The sigmas [num_inference_steps + 1] that ``FlowMatchEulerDiscreteScheduler(shift=shift,
    num_train_timesteps=...).set_timesteps(num_inference_steps)`` sets (float32), computed without diffusers.

    As diffusers (0.3x-0.4x) does it: the training sigmas ``k / N``, k = N..1, shifted, give
    ``sigma_max`` and ``sigma_min``; ``num_inference_steps`` points evenly from sigma_max to
    sigma_min are shifted once more, and a final 0 is appended. (So the shift acts twice on
    sigma_min; diffusers #13243 discusses it; this function reproduces it, and the tests check
    against diffusers' own scheduler.) Dynamic shifting (``mu``), Karras/exponential/beta sigmas and
    ``shift_terminal`` are not reproduced: read those schedules off the scheduler with
    :func:`time_grid_from_sigmas`.
    """
    for name, value in (("num_inference_steps", num_inference_steps), ("num_train_timesteps", num_train_timesteps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_train = num_train_timesteps
    ends = shift_sigmas([1.0, 1.0 / n_train], shift).to(torch.float32)  # sigma_max, sigma_min of the scheduler
    steps = torch.linspace(float(ends[0]) * n_train, float(ends[1]) * n_train, num_inference_steps)
    sigmas = shift_sigmas((steps / n_train).to(torch.float32), shift).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _output_tensor(out: Any) -> Tensor:
    """A diffusers model's output as a tensor: ``.sample`` of an output object, the first of a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, Tensor):
        return out.sample
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise ValueError(f"the diffusers model returned {type(out).__name__}; expected a tensor, .sample or a tuple")


class FromDiffusers(nn.Module):
    """A diffusers-convention velocity model as an fm-core velocity field ``v(x, t [B], y=None)``.

    ``model(x, timestep [B])`` (or ``model(x, timestep, y)`` when labels are passed) predicts
    ``v_d = noise - data`` at ``timestep = (1 - t) * num_train_timesteps``; this returns
    ``v = -v_d``. Outputs with ``.sample`` (diffusers' output classes) or tuples are unwrapped.
    Wrap a model with other arguments (text embeddings ...) in a function of ``(x, timestep)`` first.
    """

    def __init__(self, model: Callable[..., Any], *, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        self.model = model
        self.num_train_timesteps = num_train_timesteps

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x [B, ...], t [B] in [0, 1] (0 = noise, 1 = data) -> v [B, ...] = d x / d t."""
        timestep = (1.0 - t) * self.num_train_timesteps
        return -_output_tensor(call_velocity(self.model, x, timestep, y))


class ToDiffusers(nn.Module):
    """An fm-core velocity model ``model(x, t, y=None)`` in diffusers' convention, for a diffusers loop.

    Called as ``(x, timestep, y=None)`` with ``timestep = sigma * num_train_timesteps`` (a number, a
    0-d tensor or [B], as ``scheduler.timesteps`` gives it); returns ``v_d = -model(x, 1 - sigma, y)``,
    the ``model_output`` that ``scheduler.step`` expects.
    """

    def __init__(self, model: Callable[..., Tensor], *, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        self.model = model
        self.num_train_timesteps = num_train_timesteps

    def forward(self, x: Tensor, timestep: Tensor | float, y: Tensor | None = None) -> Tensor:
        """x [B, ...], timestep (scalar or [B], noise at num_train_timesteps) -> v_d [B, ...]."""
        ts = torch.as_tensor(timestep, dtype=x.dtype, device=x.device)
        ts = ts.reshape(1).expand(x.shape[0]) if ts.numel() == 1 else ts.reshape(x.shape[0])
        t = 1.0 - ts / self.num_train_timesteps
        return -call_velocity(self.model, x, t, y)
