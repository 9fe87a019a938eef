"""Exact log-likelihood of a flow model through the instantaneous change of variables.

Time convention: t = 0 is the source N(0, I), t = 1 is data. For the flow dx/dt = v(x, t, y)
(Chen et al. 2018, "Neural Ordinary Differential Equations", Thm. 1; Grathwohl et al. 2019,
"FFJORD"), d/dt log p_t(x_t) = -div v(x_t, t), hence

    log p_1(x_1) = log N(x_0; 0, I) - int_0^1 div v(x_t, t) dt .

We integrate the augmented state (x_t, l_t) with dx/dt = v and dl/dt = div v backwards from
t = 1 (x_1 = the data, l_1 = 0) to t = 0, so that z = x_0 and
l_0 = -int_0^1 div v dt = log |det dz/dx_1| (the log-determinant of the data -> noise map).

The divergence is the trace of the Jacobian of the velocity with respect to the flattened
state [B, D] (D = prod of the non-batch dims), so any shape [B, ...] (e.g. images) is handled
correctly. ``exact`` needs D vector-Jacobian products per evaluation (one vmapped backward
pass per chunk when D >= 16, else a loop; small D only); ``hutchinson``
estimates it with n_probes random vectors e as E[e^T (dv/dx) e] (Hutchinson 1989), with the
probes drawn once per call and kept fixed along the trajectory (as in FFJORD), so the
integrand stays a deterministic ODE and adaptive solvers work.

The result is detached: this is an evaluation tool, it does not backpropagate to the model.
The divergence uses per-sample Jacobians obtained from the batch sum, so the velocity must
treat the samples of a batch independently (no batch-norm in training mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._internal import VelocityField, call_velocity
from .solvers import solve_ode

__all__ = ["DIVERGENCES", "LikelihoodResult", "PROBES", "bits_per_dim", "log_likelihood", "standard_normal_log_prob"]

DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")


@dataclass
class LikelihoodResult:
    """Result of :func:`log_likelihood` (all tensors detached, on the device of x1).

    log_prob: log p_1(x1) in nats, shape [B] (= log_prob_source + delta_log_det).
    z: the encoding x_0 of x1 at t = 0, shape [B, ...] like x1.
    log_prob_source: log N(z; 0, I), shape [B].
    delta_log_det: -int_0^1 div v(x_t, t) dt = log |det dz/dx1|, shape [B].
    nfe: number of velocity evaluations.
    """

    log_prob: Tensor
    z: Tensor
    log_prob_source: Tensor
    delta_log_det: Tensor
    nfe: int


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all non-batch dims: [B, ...] -> [B]."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat.pow(2).sum(dim=1) + flat.shape[1] * math.log(2.0 * math.pi))


# cotangent elements per batched backward pass of the exact divergence (bounds its memory)
_EXACT_CHUNK_ELEMENTS = 1 << 22


# at least this many vector-Jacobian products per evaluation go through one vmapped backward
# pass; fewer use a plain loop (vmap's first use imports sympy, a one-time cost of seconds)
_BATCHED_MIN = 16


def _is_batching_failure(err: RuntimeError) -> bool:
    """Whether ``err`` says that vmap cannot batch an operation of the backward pass (e.g. "Batching
    rule not implemented for aten::item", "vmap: ... not supported"); never for out-of-memory."""
    if isinstance(err, torch.OutOfMemoryError):
        return False
    msg = str(err).lower()
    return "batching rule" in msg or "vmap" in msg


def _vjps(v: Tensor, x: Tensor, cotangents: Tensor) -> Tensor:
    """Vector-Jacobian products e^T dv/dx for a stack of cotangents e [P, *v.shape] -> [P, *x.shape].

    For P >= _BATCHED_MIN one vmapped backward pass (``is_grads_batched``), falling back to a
    loop of P backward passes for a velocity whose operations vmap cannot batch. Only that
    failure is caught: any other error (out of memory above all) propagates.
    """
    if cotangents.shape[0] >= _BATCHED_MIN:
        try:
            (g,) = torch.autograd.grad(
                v, x, cotangents, retain_graph=True, is_grads_batched=True, materialize_grads=True
            )
            return g
        except RuntimeError as err:
            if not _is_batching_failure(err):
                raise
    # grad of the scalar (v * e).sum() rather than grad_outputs=e: same product, and it avoids the
    # lazy sympy import that torch.autograd.grad performs for explicit grad_outputs
    return torch.stack(
        [torch.autograd.grad((v * c).sum(), x, retain_graph=True, materialize_grads=True)[0] for c in cotangents]
    )


def _exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """Trace of dv/dx per sample, with v and x viewed as [B, D] (flattened, so any shape [B, ...]
    works). D vector-Jacobian products, batched in chunks. Needs a graph from x to v."""
    batch = x.shape[0]
    dim = v[0].numel()
    chunk = max(1, min(dim, _EXACT_CHUNK_ELEMENTS // (batch * dim)))
    div = torch.zeros(batch, dtype=v.dtype, device=v.device)
    for start in range(0, dim, chunk):
        idx = torch.arange(start, min(start + chunk, dim), device=v.device)
        n = idx.numel()
        cot = torch.zeros(n, batch, dim, dtype=v.dtype, device=v.device)
        cot[torch.arange(n, device=v.device), :, idx] = 1.0
        g = _vjps(v, x, cot.reshape(n, *v.shape)).reshape(n, batch, dim)
        div = div + g[torch.arange(n, device=v.device), :, idx].sum(dim=0)
    return div


def _hutchinson_divergence(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Mean over probes e [P, B, ...] of e^T (dv/dx) e per sample (Hutchinson's estimator)."""
    batch = x.shape[0]
    e_jac = _vjps(v, x, probes)
    return (e_jac * probes).reshape(probes.shape[0], batch, -1).sum(dim=2).mean(dim=0)


def log_likelihood(
    velocity: VelocityField,
    x1: Tensor,
    *,
    y: Any = None,
    method: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    divergence: str = "exact",
    n_probes: int = 1,
    seed: int | None = None,
    probe: str = "rademacher",
) -> LikelihoodResult:
    """Log-density of data x1 [B, ...] under the flow of ``velocity`` from a standard normal.

    Integrates from t = 1 (data) to t = 0 (noise) with :func:`fm_core.solvers.solve_ode`
    (``method``, ``steps``, ``atol``, ``rtol`` as there; adaptive dopri5 by default).

    Args:
        velocity: ``velocity(x [B, ...], t [B], y) -> v [B, ...]``, called as ``velocity(x, t)``
            when ``y`` is None.
        x1: data points [B, ...], finite.
        y: conditioning passed to ``velocity`` (None: not passed).
        divergence: ``"exact"`` (D vector-Jacobian products per evaluation, D = numel per
            sample) or ``"hutchinson"`` (``n_probes`` products; unbiased, noisy).
        n_probes: number of Hutchinson probes averaged (fixed along the trajectory).
        seed: seeds the probes (drawn on the CPU with a ``torch.Generator``, then moved to the
            device of x1, so a seed gives the same probes everywhere); None uses torch's global RNG.
        probe: ``"rademacher"`` (+-1 entries, lower variance) or ``"gaussian"``.

    Returns:
        :class:`LikelihoodResult`; ``log_prob`` in nats per sample (see :func:`bits_per_dim`).

    Example:
        >>> res = log_likelihood(lambda x, t: torch.ones_like(x), torch.zeros(4, 2))
        >>> torch.allclose(res.z, -torch.ones(4, 2), atol=1e-4)
        True
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; allowed: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; allowed: {', '.join(PROBES)}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    if not isinstance(x1, Tensor) or not x1.is_floating_point() or x1.ndim < 1 or x1.shape[0] == 0:
        got = f"{x1.dtype} tensor of shape {tuple(x1.shape)}" if isinstance(x1, Tensor) else type(x1).__name__
        raise ValueError(f"x1 must be a floating-point tensor [B, ...] with B >= 1, got {got}")

    batch = x1.shape[0]
    shape = x1.shape
    dim = x1[0].numel()

    probes = None
    if divergence == "hutchinson":
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
        size = (n_probes, *shape)
        if probe == "rademacher":
            probes = torch.randint(0, 2, size, generator=gen, dtype=torch.int64).to(x1.dtype) * 2 - 1
        else:
            probes = torch.randn(size, generator=gen, dtype=torch.float64).to(x1.dtype)
        probes = probes.to(x1.device)

    def augmented(state: Tensor, t: Tensor, y_: Any = None) -> Tensor:
        # state [B, D + 1] = (flattened x_t, running integral of the divergence)
        with torch.enable_grad():
            x = state[:, :dim].detach().reshape(shape).requires_grad_(True)
            v = call_velocity(velocity, x, t, y_)
            if not isinstance(v, Tensor) or v.shape != shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"velocity returned shape {got}; expected {tuple(shape)}")
            if not v.requires_grad:  # v does not depend on x (e.g. a constant field)
                div = torch.zeros(batch, dtype=v.dtype, device=v.device)
            elif divergence == "exact":
                div = _exact_divergence(v, x)
            else:
                assert probes is not None  # drawn above for divergence == "hutchinson"
                div = _hutchinson_divergence(v, x, probes)
        return torch.cat([v.detach().reshape(batch, dim), div.detach().reshape(batch, 1)], dim=1)

    state = torch.cat([x1.detach().reshape(batch, dim), x1.new_zeros(batch, 1)], dim=1)
    sol = solve_ode(augmented, state, method=method, steps=steps, t0=1.0, t1=0.0, y=y, atol=atol, rtol=rtol)
    z = sol.x[:, :dim].reshape(shape)
    delta_log_det = sol.x[:, dim]
    log_prob_source = standard_normal_log_prob(z)
    return LikelihoodResult(
        log_prob=log_prob_source + delta_log_det,
        z=z,
        log_prob_source=log_prob_source,
        delta_log_det=delta_log_det,
        nfe=sol.nfe,
    )


def bits_per_dim(
    log_prob: Tensor | float,
    num_dims: int,
    *,
    data_range: tuple[float, float] | None = (-1.0, 1.0),
    num_levels: int = 256,
) -> Tensor | float:
    """Convert a log-density in nats (of the model's continuous data) to bits per dimension.

    Discrete data with ``num_levels`` levels per dimension (256 for 8-bit images) is
    dequantised, u = k + noise with k in {0..num_levels-1} and noise ~ U[0, 1)^D, and mapped
    affinely onto the model's range, x = lo + (hi - lo) * u / num_levels, so one level occupies
    a bin of width w = (hi - lo) / num_levels in model space. By the change of variables
    log p_u(u) = log p_x(x) + D log w, so

        bpd = -log p_u(u) / (D ln 2) = -log p_x(x) / (D ln 2) - log2(w).

    Images in [-1, 1) (x = u/128 - 1): bpd = -log p_x/(D ln 2) + 7 (log2 128);
    images in [0, 1) (x = u/256): + 8 bits. The common uint8 map x = k/127.5 - 1 plus
    U[0, 1/127.5) noise has w = 2/255: pass data_range=(-1.0, 1.0 + 2/255).
    By Jensen, E_noise[bpd of the dequantised u] upper-bounds the discrete -log2 P(k) / D
    (Theis et al. 2016; Ho et al. 2019), so report it averaged over dequantised data.
    data_range=None gives the plain -log p_x / (D ln 2) with no correction.

    Args:
        log_prob: log p_x(x) in nats per sample (a tensor [B] or a float).
        num_dims: D, the number of dimensions per sample (e.g. 1*28*28).
        data_range: (lo, hi) of the dequantised data in model space, or None.
        num_levels: number of discrete levels per dimension.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims <= 0:
        raise ValueError(f"num_dims must be a positive integer, got {num_dims!r}")
    bpd = -log_prob / (num_dims * math.log(2.0))
    if data_range is None:
        return bpd
    lo, hi = (float(v) for v in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be a finite (lo, hi) with hi > lo, got {data_range!r}")
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
    width = (hi - lo) / num_levels
    return bpd - math.log2(width)
