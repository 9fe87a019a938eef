r"""Average-velocity models (flow maps) and the MeanFlow loss.

A **two-time model** ``model(x, r, t, y=None) -> u`` returns the average velocity of the flow
from time r to time t >= r, evaluated at the current point x = x_r:

    u(x_r, r, t) = (x_t - x_r) / (t - r) = 1 / (t - r) \int_r^t v(x_s, s) ds,

where x_s is the solution of dx/ds = v(x, s) through x_r, and u(x, t, t) = v(x, t) is the
instantaneous velocity. Time convention of the toolkit: t = 0 is noise, t = 1 is data, and
sampling moves forward, so the current point sits at the *smaller* time r. One flow-map step is

    x_t = x_r + (t - r) u(x_r, r, t)

(exact for the true u, whatever t - r is), so a one-step sampler is x_1 = x_0 + u(x_0, 0, 1).

**The MeanFlow identity in this convention.** Multiply the definition by (t - r),
(t - r) u(x_r, r, t) = x_t - x_r, and differentiate in r along the trajectory, t fixed (x_t does
not move; x_r moves with velocity v(x_r, r)):

    d/dr [(t - r) u(x_r, r, t)] = -v(x_r, r)
    -u + (t - r) d/dr u(x_r, r, t) = -v(x_r, r)
    u = v + (t - r) (v . grad_x u + d_r u),

where d/dr u = v . grad_x u + d_r u is the total derivative: a Jacobian-vector product of u in
the direction (dx, dr, dt) = (v, 1, 0). Geng et al., "Mean Flows for One-step Generative
Modeling" (arXiv 2505.13447), eq. 6, write u = v - (t - r) d/dt u with noise at t = 1 and the
current point at the larger time; reversing time flips the sign of the correction. The tests
decide the sign: for Gaussian noise to Gaussian data the exact flow map is affine, and its average
velocity is a fixed point of :func:`meanflow_target` (and not of the other sign).

**Training** (:class:`MeanFlowLoss`): with z_r = path point at r (for the CondOT path
z_r = (1 - r) x0 + r x1) and v = the path's conditional velocity u_r(z_r | x0, x1), the target is
sg(v + (t - r) JVP), the JVP taken with ``torch.func.jvp`` through the network at (z_r, r, t) in
the direction (v, 1, 0); the conditional v replaces the marginal one as in flow matching (the
regression's minimiser is unchanged). The loss is the paper's adaptively weighted squared error.

**Distillation** (``MeanFlowLoss(velocity=teacher)``): a trained flow-matching network gives the
marginal velocity v(z_r, r) itself, so the target uses it in place of the conditional one. The fixed
point is the same (the exact u is a fixed point of the target with the marginal v, the property the
tests check), but the target no longer carries the conditional velocity's noise, whose variance
dominates the long intervals a one-step sampler needs; Boffi et al. call this form Eulerian flow-map
distillation ("How to build a consistency model", arXiv 2505.18825).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ._internal import _as_time_batch, _expand, call_velocity
from .coupling import Coupling
from .guidance import CFGVelocity
from .loss import _draw, _training_parts, check_batch_labels, check_label_args, shard_slice
from .paths import AffinePath
from .solvers import ODESolution
from .time_samplers import TimeSampler

__all__ = [
    "AverageVelocityField",
    "InstantaneousVelocity",
    "MeanFlowLoss",
    "call_average_velocity",
    "flow_map_solve",
    "meanflow_target",
]


@runtime_checkable
class AverageVelocityField(Protocol):
    """A two-time model ``u = model(x, r, t, y=None)``: x [B, ...], r and t float [B] with
    0 <= r <= t <= 1, y int64 [B] or None; returns u shaped like x (see the module docstring).
    Called as ``model(x, r, t)`` when there are no labels."""

    def __call__(self, x: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None, /) -> Tensor: ...


def call_average_velocity(model: Callable[..., Tensor], x: Tensor, r: Tensor, t: Tensor, y: Any = None) -> Tensor:
    """``model(x, r, t)`` when ``y`` is None, else ``model(x, r, t, y)``."""
    return model(x, r, t) if y is None else model(x, r, t, y)


class InstantaneousVelocity(nn.Module):
    """``v(x, t, y) = u(x, t, t, y)``: a two-time model as an ordinary velocity field, so it can be
    integrated by every solver of :func:`fm_core.solve_ode` and sampled by :func:`fm_core.sample`."""

    def __init__(self, model: AverageVelocityField) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        t = _as_time_batch(t, x, "x")
        return call_average_velocity(self.model, x, t, t, y)


def _unwrap(model: Any) -> Any:
    """The plain module under ``torch.compile`` and DistributedDataParallel wrappers.

    ``torch.func.jvp`` must not run through DDP (its gradient hooks would see a forward that no
    backward follows, and a jvp through ``.module`` alone skips the gradient sync silently), so the
    JVP of the target, which needs no gradient, runs on the plain module, and the forward whose
    gradient trains the model runs through the wrapper.
    """
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner
    return model


def meanflow_target(
    model: Callable[..., Tensor], z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(u, target)`` at (z, r, t): u = model(z, r, t, y) and the MeanFlow target
    ``v + (t - r) (v . grad_z u + d_r u)`` (see the module docstring), both without gradient.

    z [B, ...] points at time r, r and t [B] with r <= t, v [B, ...] the velocity at (z, r) (the
    path's conditional velocity in training; the marginal one for a fixed-point check).
    The JVP is ``torch.func.jvp`` in the direction (v, 1, 0) through ``model`` (a plain function
    or module; pass the unwrapped module, see :func:`_unwrap`).
    """
    y_ = y

    def u_of(z_: Tensor, r_: Tensor, t_: Tensor) -> Tensor:
        return call_average_velocity(model, z_, r_, t_, y_)

    with torch.no_grad(), warnings.catch_warnings():
        # torch's first forward-mode call loads its JVP decompositions through the deprecated
        # torch.jit.script and warns about it (torch's own code, once per process): not the user's concern
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        u, du = torch.func.jvp(u_of, (z, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))  # type: ignore[misc]
        target = v + _expand(t - r, v) * du
    return u.detach(), target.detach()


def _target_where_moving(
    model: Callable[..., Tensor], z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None
) -> Tensor:
    """The MeanFlow target of every row, the JVP taken only on the rows with r < t: where r = t the
    target is v itself ((t - r) times the derivative is 0), so with the default 75% of rows at r = t
    this saves most of the JVP's cost (about a third of a training step)."""
    moving = t > r
    if bool(moving.all()):
        return meanflow_target(model, z, r, t, v, y)[1]
    idx = moving.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return v
    _, sub = meanflow_target(model, z[idx], r[idx], t[idx], v[idx], None if y is None else y[idx])
    return v.index_copy(0, idx, sub)


def _times(
    sampler: TimeSampler, b: int, like: Tensor, equal_fraction: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(r, t) [B] with r <= t: two draws of the time sampler sorted, then r = t = the first draw on
    a share ``equal_fraction`` of the rows (those train the instantaneous velocity, as flow matching
    does, with the sampler's own time distribution)."""
    a = sampler(b, device=like.device, generator=generator).to(like.dtype)
    c = sampler(b, device=like.device, generator=generator).to(like.dtype)
    same = _draw("rand", (b,), like, generator) < equal_fraction
    r = torch.where(same, a, torch.minimum(a, c))
    t = torch.where(same, a, torch.maximum(a, c))
    return r, t


class MeanFlowLoss:
    """``loss_fn(model, x1, y=None, *, x0=None, r=None, t=None, generator=None, shard=None)``: the
    MeanFlow loss for a two-time model ``model(x, r, t, y)`` (module docstring; Geng et al. 2025).

    Args:
        path: probability path (default ``CondOTPath()``); z_r and the velocity v come from it.
        time_sampler: draws the times (default ``UniformTime()``); two draws per row, sorted.
        coupling: pairs noise with data (default independent), as in :class:`fm_core.FlowMatchingLoss`.
        label_dropout, num_classes: classifier-free guidance training (null label ``num_classes``).
        equal_fraction: share of rows with r = t (plain flow matching on u(x, t, t)); the paper's
            best ImageNet setting keeps 75% (r != t on 25%).
        adaptive_p, adaptive_c: the adaptive weight w = 1 / (||delta||^2 + c)^p on each row's squared
            error ||delta||^2 (summed over the sample's entries), applied with a stop-gradient; p = 0
            is the plain squared error, p = 1 (default) the paper's choice, p = 0.5 a Pseudo-Huber loss.
        guidance: the paper's guidance in training, scale w >= 1 (default None: off). Rows with a real
            label regress on the guided velocity w v + (1 - w) u(z, r, r, null) instead of v (one extra
            forward without gradient); the trained model is then sampled with guidance 1. With a
            ``velocity`` teacher the null velocity is the teacher's: w v(z, r, y) + (1 - w) v(z, r, null).
        velocity: a frozen teacher ``velocity(x, t, y=None) -> v`` (a trained one-time network, in eval
            mode, on the batch's device) whose velocity at (z_r, r) replaces the path's conditional one
            in the target (distillation, module docstring; one extra forward without gradient a step,
            of 2B rows with ``guidance``, fm_core.CFGVelocity). Default None: the conditional velocity, as the paper trains.

    Randomness is drawn in this order from ``generator``: x0, the two times, the r = t mask, the
    label-dropout mask, then the coupling's draws. ``shard=(rank, world_size)`` keeps rank r's rows of
    the global batch, as :class:`fm_core.FlowMatchingLoss` documents. Under DDP pass the DDP-wrapped
    model: the JVP runs on the plain module (no gradient needed), the trained forward through the
    wrapper, so the gradients are synchronised.
    """

    def __init__(
        self,
        path: AffinePath | None = None,
        time_sampler: TimeSampler | None = None,
        coupling: Coupling | None = None,
        label_dropout: float = 0.0,
        num_classes: int | None = None,
        equal_fraction: float = 0.75,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
        guidance: float | None = None,
        velocity: Callable[..., Tensor] | None = None,
    ) -> None:
        self.path, self.time_sampler, self.coupling = _training_parts(path, time_sampler, coupling)
        check_label_args(label_dropout, num_classes)
        if not 0.0 <= float(equal_fraction) <= 1.0:
            raise ValueError(f"equal_fraction must be in [0, 1], got {equal_fraction!r}")
        if not (0.0 <= float(adaptive_p) <= 2.0):
            raise ValueError(f"adaptive_p must be in [0, 2], got {adaptive_p!r}")
        if not float(adaptive_c) > 0.0:
            raise ValueError(f"adaptive_c must be > 0, got {adaptive_c!r}")
        if guidance is not None:
            guidance = float(guidance)
            if not (1.0 <= guidance < float("inf")):
                raise ValueError(f"guidance (in training) must be a finite scale >= 1, got {guidance!r}")
            if num_classes is None or label_dropout <= 0:
                raise ValueError("guidance in training needs num_classes and label_dropout > 0 (a null label to train)")
        self.label_dropout = float(label_dropout)
        self.num_classes = num_classes
        self.equal_fraction = float(equal_fraction)
        self.adaptive_p = float(adaptive_p)
        self.adaptive_c = float(adaptive_c)
        self.guidance = guidance
        if velocity is not None and not callable(velocity):
            raise ValueError(f"velocity must be a callable teacher velocity(x, t, y), got {type(velocity).__name__}")
        self.velocity = velocity

    def __repr__(self) -> str:
        return (
            f"MeanFlowLoss(path={self.path!r}, time_sampler={self.time_sampler!r}, coupling={self.coupling!r}, "
            f"label_dropout={self.label_dropout}, num_classes={self.num_classes}, "
            f"equal_fraction={self.equal_fraction}, adaptive_p={self.adaptive_p}, adaptive_c={self.adaptive_c}, "
            f"guidance={self.guidance}, velocity={'teacher' if self.velocity is not None else None})"
        )

    def __call__(
        self,
        model: AverageVelocityField,
        x1: Tensor,
        y: Tensor | None = None,
        *,
        x0: Tensor | None = None,
        r: Tensor | float | None = None,
        t: Tensor | float | None = None,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Tensor:
        if not torch.is_tensor(x1) or x1.ndim < 1 or x1.shape[0] == 0 or not x1.is_floating_point():
            raise ValueError("x1 must be a non-empty floating-point data batch [B, ...]")
        b = x1.shape[0]
        rows = shard_slice(b, shard)
        check_batch_labels(y, b, self.num_classes)
        if x0 is None:
            x0 = _draw("randn", x1.shape, x1, generator)
        elif x0.shape != x1.shape:
            raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
        if (r is None) != (t is None):
            raise ValueError("give both r and t, or neither")
        if r is None or t is None:
            r, t = _times(self.time_sampler, b, x1, self.equal_fraction, generator)
        else:
            r, t = _as_time_batch(r, x1, "x1"), _as_time_batch(t, x1, "x1")
            if bool((r > t).any()) or bool((r < 0).any()) or bool((t > 1).any()):
                raise ValueError("times must satisfy 0 <= r <= t <= 1 (t = 0 noise, t = 1 data)")
        drop = None
        if y is not None and self.label_dropout > 0:
            drop = _draw("rand", (b,), x1, generator) < self.label_dropout
        if shard is not None:
            x0, x1, r, t = x0[rows], x1[rows], r[rows], t[rows]
            y = y[rows] if y is not None else None
            drop = drop[rows] if drop is not None else None

        pair = self.coupling(x0, x1, y, generator=generator)
        y = pair.y
        if drop is not None and y is not None and self.num_classes is not None:
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        ps = self.path.sample(pair.x0, pair.x1, r)  # the point and the velocity at the smaller time r
        z, v = ps.x_t.detach(), ps.u_t.detach()
        plain = _unwrap(model)
        guide = self.guidance is not None and y is not None and self.num_classes is not None
        if self.velocity is not None:
            teacher = self.velocity
            if guide:  # one batched call: w v(z, r, y) + (1 - w) v(z, r, null), and v(z, r, null) on dropped rows
                assert self.guidance is not None and self.num_classes is not None
                teacher = CFGVelocity(teacher, self.guidance, self.num_classes)
            with torch.no_grad():
                v = call_velocity(teacher, z, r, y).detach()
            if not torch.is_tensor(v) or v.shape != z.shape:
                raise ValueError(f"the teacher velocity must have the shape of the batch {tuple(z.shape)}")
        elif guide:
            assert self.guidance is not None and y is not None and self.num_classes is not None
            null = torch.full_like(y, self.num_classes)
            with torch.no_grad():
                u_null = call_average_velocity(plain, z, r, r, null)
            guided = self.guidance * v + (1.0 - self.guidance) * u_null
            v = torch.where(_expand(y != self.num_classes, v), guided, v).detach()
        target = _target_where_moving(plain, z, r, t, v, y)
        u = call_average_velocity(model, z, r, t, y)  # through the wrapper: DDP synchronises this gradient
        if not torch.is_tensor(u) or u.shape != z.shape:
            shape = tuple(u.shape) if torch.is_tensor(u) else type(u).__name__
            raise ValueError(f"model output must have the shape of the batch {tuple(z.shape)}, got {shape}")
        sq = (u - target).pow(2).flatten(1).sum(1)  # ||delta||^2 per row
        if self.adaptive_p == 0.0:
            return sq.mean()
        w = (sq.detach() + self.adaptive_c).pow(-self.adaptive_p)
        return (w * sq).mean()


def _grid(steps: int | None, time_grid: Sequence[float] | Tensor | None, like: Tensor) -> Tensor:
    if steps is not None and time_grid is not None:
        raise ValueError("give either steps or time_grid, not both")
    if time_grid is None:
        n = 1 if steps is None else steps
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return torch.linspace(0.0, 1.0, int(n) + 1, dtype=torch.float64)
    grid = torch.as_tensor(time_grid, dtype=torch.float64).flatten()
    if grid.numel() < 2 or not bool(torch.isfinite(grid).all()):
        raise ValueError("time_grid must hold at least 2 finite time points")
    if bool((grid.diff() <= 0).any()) or float(grid[0]) < 0.0 or float(grid[-1]) > 1.0:
        raise ValueError("time_grid must increase strictly within [0, 1] (t = 0 noise -> t = 1 data)")
    return grid


def flow_map_solve(
    model: AverageVelocityField,
    x: Tensor,
    *,
    steps: int | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    y: Tensor | None = None,
    guidance: float = 1.0,
    num_classes: int | None = None,
    return_trajectory: bool = False,
) -> ODESolution:
    """Sample with a two-time model: x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i, t_{i+1}) on a grid
    from t = 0 (noise) to t = 1 (data).

    ``steps`` uniform steps (default 1: one-step generation) or an explicit increasing
    ``time_grid``. ``guidance`` != 1 applies classifier-free guidance to u (null label
    ``num_classes``; one batched call of 2B per step, counted as one evaluation). Returns an
    :class:`fm_core.ODESolution`; its ``nfe`` is the number of steps.
    """
    grid = _grid(steps, time_grid, x)
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError("x must be a floating-point batch [B, ...]")
    guidance = float(guidance)
    if guidance != 1.0 and num_classes is None:
        raise ValueError(f"guidance={guidance:g} needs num_classes (the null label of classifier-free guidance)")
    b = x.shape[0]
    frames = [x] if return_trajectory else []
    for i in range(grid.numel() - 1):
        r0, t1 = float(grid[i]), float(grid[i + 1])
        r = torch.full((b,), r0, dtype=x.dtype, device=x.device)
        t_end = t1

        def u_at(x_: Tensor, r_: Tensor, y_: Tensor | None = None, _t: float = t_end) -> Tensor:
            return call_average_velocity(model, x_, r_, torch.full_like(r_, _t), y_)

        if guidance != 1.0:
            assert num_classes is not None
            u = CFGVelocity(u_at, guidance, num_classes)(x, r, y)
        else:
            u = u_at(x, r, y)
        x = x + (t1 - r0) * u
        if return_trajectory:
            frames.append(x)
    return ODESolution(
        x=x,
        nfe=grid.numel() - 1,
        times=grid.to(dtype=x.dtype, device=x.device),
        trajectory=torch.stack(frames) if return_trajectory else None,
    )
