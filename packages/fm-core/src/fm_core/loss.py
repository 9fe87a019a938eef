"""The conditional flow-matching loss.

``loss = mean || model(x_t, t, y) - u_t ||^2`` with t ~ time sampler, x0 ~ N(0, I), (x0, x1)
coupled, and (x_t, u_t) from the probability path; t = 0 is noise, t = 1 is data.
Lipman et al., "Flow Matching for Generative Modeling" (ICLR 2023), eq. 9 / 23. Label dropout
for classifier-free guidance: Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022).

``target="batch-marginal"`` replaces the conditional target u_t(x_t | x0, x1) by an estimate of
the marginal velocity E[u_t | x_t] in which the batch's own data points serve as the reference
set (the "stable target field" of Xu et al., "Stable Target Field for Reduced Variance Score
Estimation in Diffusion Models", ICLR 2023). For an affine path x_t = a x1 + s x0 with Gaussian
x0 and independent coupling, the posterior of x1 over the reference points is
w_j = softmax_j(-||x_t - a x1_j||^2 / (2 s^2)) and

    E[u_t | x_t] = u_t(x_t | x0, x1_i) + (da - ds a / s) (sum_j w_j x1_j - x1_i),

which is how it is computed (no division of a difference by s that cancels). The estimate is
consistent (it tends to the true marginal velocity as the batch grows), has the same minimiser
as the conditional loss up to an O(1/B) bias, and far less variance at mid t, where a noisy
x_t is compatible with many data points. It costs one [B, B] matrix product per step
(:func:`fm_core.posterior_mean`, shared with :class:`fm_core.EmpiricalMarginalVelocity`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._internal import VelocityField, _as_time_batch, call_velocity, device_check
from .coupling import Coupling, IndependentCoupling
from .paths import AffinePath, CondOTPath
from .posterior import posterior_mean
from .time_samplers import TimeSampler, UniformTime

__all__ = [
    "FlowMatchingLoss",
    "TARGETS",
    "batch_marginal_target",
    "check_batch_labels",
    "check_label_args",
    "shard_slice",
]

TARGETS = ("conditional", "batch-marginal")

#: floor on sigma_t inside the batch-marginal target (at t = 1 with sigma_min = 0, sigma_t = 0
#: and the posterior is the point itself; the floor keeps 0 * inf out of the correction term).
_SIGMA_FLOOR = 1e-6


def _draw(kind: str, shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """randn/rand of ``shape`` in like's dtype, drawn on the generator's device, put on like's."""
    fn = torch.randn if kind == "randn" else torch.rand
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if generator is None:
        return fn(shape, device=like.device, dtype=dtype)
    return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(like.device)


def shard_slice(batch_size: int, shard: tuple[int, int] | None) -> slice:
    """Rows of a global batch of ``batch_size`` that rank r of W trains on: [r B/W, (r+1) B/W)
    (all rows for ``shard=None``). ValueError when W does not divide B: unequal shards would
    weight the ranks' gradients unequally under DistributedDataParallel's average."""
    if shard is None:
        return slice(0, batch_size)
    rank, world = shard
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    if batch_size % world:
        raise ValueError(
            f"the global batch of {batch_size} does not split evenly over {world} processes: "
            f"choose a batch size divisible by {world}"
        )
    n = batch_size // world
    return slice(rank * n, (rank + 1) * n)


def _training_parts(
    path: AffinePath | None, time_sampler: TimeSampler | None, coupling: Coupling | None
) -> tuple[AffinePath, TimeSampler, Coupling]:
    """The defaults of the training losses: CondOT path, uniform time, independent coupling."""
    return (
        CondOTPath() if path is None else path,
        UniformTime() if time_sampler is None else time_sampler,
        IndependentCoupling() if coupling is None else coupling,
    )


def check_label_args(label_dropout: float, num_classes: int | None) -> None:
    """The label arguments of the training losses: dropout in [0, 1], a positive class count, and a
    class count whenever labels are dropped (the null label is num_classes)."""
    if not 0.0 <= float(label_dropout) <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    if label_dropout > 0 and num_classes is None:
        raise ValueError(f"label_dropout={label_dropout} needs num_classes (the null label is num_classes)")


def check_batch_labels(y: Tensor | None, b: int, num_classes: int | None) -> None:
    """The labels of a training batch of B rows: None, or integer [B] in [0, num_classes) (checked on the
    device without a sync, see device_check)."""
    if y is None:
        return
    if not torch.is_tensor(y) or y.shape != (b,):
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of shape [B] = [{b}], got {shape}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if num_classes is not None and b > 0:
        n = num_classes
        device_check(
            (y >= 0) & (y < n),
            f"labels must lie in [0, num_classes) = [0, {n})",
            lambda: ValueError(
                f"labels must lie in [0, num_classes) = [0, {n}), got values in "
                f"[{int(y.min())}, {int(y.max())}] (the null label {n} is added by label dropout only)"
            ),
        )


class FlowMatchingLoss:
    """``loss_fn(model, x1, y=None, *, x0=None, t=None, generator=None) -> scalar tensor``.

    Args:
        path: probability path (default ``CondOTPath()``).
        time_sampler: draws t [B] when t is not given (default ``UniformTime()``).
        coupling: pairs noise with data (default ``IndependentCoupling()``); it may reorder x0,
            never x1 or y.
        label_dropout: probability of replacing each label by the null class ``num_classes``
            (classifier-free guidance training). Needs ``num_classes``.
        num_classes: number of real classes; labels must lie in [0, num_classes).
        target: ``"conditional"`` (the usual u_t(x_t | x0, x1)) or ``"batch-marginal"`` (its
            posterior mean over the batch's data points, see the module docstring; needs the
            independent coupling; labelled rows average over points of their own class, rows
            whose label was dropped to the null class over the whole batch).

    The model is called once, as ``model(x_t, t, y)`` with x_t [B, ...], t float [B] in [0, 1]
    and y int64 [B], or as ``model(x_t, t)`` when there are no labels (so a module whose
    ``forward(x, t)`` takes none fits), and must return a tensor shaped like x1. x0 defaults to N(0, I)
    noise; pass x0 and t to make the loss deterministic (the coupling still applies).

    Randomness is drawn in a fixed order from ``generator``: x0 [B], then t [B], then the
    label-dropout mask [B] (when label_dropout > 0), then whatever the coupling draws.

    ``shard=(rank, world_size)`` (multi-process training, see fm_train.distributed): x1 and y
    are the *global* batch, identical on every rank; x0, t and the dropout mask are drawn for
    the whole batch, then rank r keeps rows ``shard_slice(B, shard)``, couples them (each rank
    couples only its own shard: OT pairs are found within B/W points) and returns the mean loss
    over its rows. With DDP's gradient average the ranks together compute the gradient of the
    one-process loss on the whole batch (exactly so for the independent coupling). The
    batch-marginal target keeps the whole batch as its reference set, so it too equals the
    one-process target.
    """

    def __init__(
        self,
        path: AffinePath | None = None,
        time_sampler: TimeSampler | None = None,
        coupling: Coupling | None = None,
        label_dropout: float = 0.0,
        num_classes: int | None = None,
        target: str = "conditional",
    ) -> None:
        self.path, self.time_sampler, self.coupling = _training_parts(path, time_sampler, coupling)
        check_label_args(label_dropout, num_classes)
        self.label_dropout = float(label_dropout)
        self.num_classes = num_classes
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if target == "batch-marginal" and not isinstance(self.coupling, IndependentCoupling):
            raise ValueError(
                "target='batch-marginal' assumes independent noise and data (the posterior "
                f"weights are Gaussian); it cannot be combined with {type(self.coupling).__name__}"
            )
        self.target = target

    def __repr__(self) -> str:
        return (
            f"FlowMatchingLoss(path={self.path!r}, time_sampler={self.time_sampler!r}, "
            f"coupling={self.coupling!r}, label_dropout={self.label_dropout}, "
            f"num_classes={self.num_classes}, target={self.target!r})"
        )

    def __call__(
        self,
        model: VelocityField,
        x1: Tensor,
        y: Tensor | None = None,
        *,
        x0: Tensor | None = None,
        t: Tensor | float | None = None,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Tensor:
        if not torch.is_tensor(x1) or x1.ndim < 1 or x1.shape[0] == 0:
            raise ValueError("x1 must be a non-empty data batch [B, ...]")
        b = x1.shape[0]
        rows = shard_slice(b, shard)
        check_batch_labels(y, b, self.num_classes)
        if x0 is None:
            x0 = _draw("randn", x1.shape, x1, generator)
        elif x0.shape != x1.shape:
            raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
        if t is None:
            t = self.time_sampler(b, device=x1.device, generator=generator)
        t = _as_time_batch(t, x1, "x1")
        drop = None
        if y is not None and self.label_dropout > 0:
            drop = _draw("rand", (b,), x1, generator) < self.label_dropout
        ref_x1, ref_y = x1, y  # the batch-marginal target's reference set: the whole batch
        if shard is not None:
            x0, x1, t = x0[rows], x1[rows], t[rows]
            y = y[rows] if y is not None else None
            drop = drop[rows] if drop is not None else None

        pair = self.coupling(x0, x1, y, generator=generator)
        y = labels = pair.y
        if drop is not None and y is not None and self.num_classes is not None:  # drop implies both
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)

        ps = self.path.sample(pair.x0, pair.x1, t)
        u_t = ps.u_t
        if self.target == "batch-marginal":
            u_t = batch_marginal_target(self.path, ps, labels, dropped=drop, ref_x1=ref_x1, ref_y=ref_y)
        v = call_velocity(model, ps.x_t, ps.t, y)
        if not torch.is_tensor(v) or v.shape != ps.u_t.shape:
            shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"model output must have the shape of x1 {tuple(x1.shape)}, got {shape}")
        return (v - u_t).pow(2).mean()


@torch.no_grad()
def batch_marginal_target(
    path: AffinePath,
    ps,
    y: Tensor | None = None,
    dropped: Tensor | None = None,
    ref_x1: Tensor | None = None,
    ref_y: Tensor | None = None,
) -> Tensor:
    """The batch estimate of E[u_t | x_t] for a PathSample ``ps`` drawn with independent coupling.

    Reference points are ``ps.x1`` (the batch itself, row i's own x1 included, which keeps the
    estimate exact as sigma_t -> 0), or ``ref_x1`` [M, ...] with labels ``ref_y`` [M] when given
    (a rank's shard against the whole batch under DDP; ``ref_x1`` must contain ps.x1's rows).
    With the true labels ``y`` [B], row i averages over the points of class y[i]; rows flagged
    in the bool mask ``dropped`` [B] (labels replaced by the null class for guidance training)
    average over all points (the unconditional target). Returns a tensor shaped like
    ``ps.u_t``; see the module docstring for the formula.
    """
    b = ps.x1.shape[0]
    own = ps.x1.reshape(b, -1)
    x1 = own if ref_x1 is None else ref_x1.reshape(ref_x1.shape[0], -1)
    if ref_x1 is not None and y is not None and ref_y is None:
        raise ValueError("batch_marginal_target: labelled rows need ref_y with ref_x1")
    ref_labels = y if ref_x1 is None else ref_y
    o = path.scheduler(ps.t)
    a, s, da, ds = o.alpha_t, o.sigma_t.clamp_min(_SIGMA_FLOOR), o.d_alpha_t, o.d_sigma_t
    # row i's own x1 is in the reference set with its own label, so no row is left without points
    mean = posterior_mean(ps.x_t.reshape(b, -1), x1, a, s, labels=y, ref_labels=ref_labels, use_all=dropped)
    coef = (da - ds * a / s)[:, None]  # [B, 1]
    correction = coef * (mean - own)
    return ps.u_t + correction.reshape(ps.u_t.shape).to(ps.u_t.dtype)
