"""Sample-quality metrics for low-dimensional (2D / D-dimensional toy) data.

Inputs are point clouds ``[n, d]`` (torch tensors or numpy arrays; computed in float64 on CPU) of
generated samples, i.e. the state at t = 1 of the flow (t = 0 noise, t = 1 data).

- ``energy_distance``: Szekely & Rizzo's energy distance (V-statistic), 0 for a set with itself.
- ``wasserstein2``: exact W2 between two equal-size subsamples (optimal assignment).
- ``checkerboard_quality`` / ``rings_quality``: fractions of samples on the support of the
  fixed geometries of ``fm_data.toy`` (Checkerboard, OlympicRings) and how evenly they cover it.
- ``nll_gap``: mean negative log-likelihood minus the data's true entropy (>= 0 in expectation for
  a model evaluated on held-out data, by Gibbs' inequality).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fm_data.toy import Checkerboard, OlympicRings, as_generator

__all__ = ["energy_distance", "wasserstein2", "checkerboard_quality", "rings_quality", "nll_gap"]

ArrayLike = Tensor | np.ndarray


def _points(x: ArrayLike, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty point cloud [n, d], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _mean_pairwise_distance(a: Tensor, b: Tensor, chunk: int = 4096) -> float:
    """E|A - B| over all n*m pairs (including i == j when a is b), chunked to bound memory."""
    total = 0.0
    for part in torch.split(a, chunk):
        total += float(torch.cdist(part, b, compute_mode="donot_use_mm_for_euclid_dist").sum())
    return total / (len(a) * len(b))


def _subsample(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    if len(x) <= k:
        return x
    return x[torch.randperm(len(x), generator=g, device=g.device)[:k].cpu()]


def _check_max_n(max_n: int | None) -> None:
    if max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1):
        raise ValueError(f"max_n must be None or an int >= 1, got {max_n!r}")


def energy_distance(
    a: ArrayLike, b: ArrayLike, max_n: int | None = None, generator: torch.Generator | int | None = None
) -> float:
    """Energy distance between point clouds a [n, d] and b [m, d] (V-statistic).

    E(a, b) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, every expectation an average over *all* pairs (the
    V-statistic: the i == k terms, which are 0, are included). So E(a, a) = 0 exactly and
    E >= 0 always; it equals the squared energy distance of the two empirical distributions,
    i.e. the square of ``scipy.stats.energy_distance`` in 1D (Szekely & Rizzo 2013). Cost O(n m):
    pass ``max_n`` to subsample each cloud (without replacement, seeded by ``generator``) to at
    most max_n points first.
    """
    a, b = _points(a, "a"), _points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    _check_max_n(max_n)
    if max_n is not None:
        g = as_generator(generator)
        a, b = _subsample(a, max_n, g), _subsample(b, max_n, g)
    value = 2 * _mean_pairwise_distance(a, b) - _mean_pairwise_distance(a, a) - _mean_pairwise_distance(b, b)
    return max(value, 0.0)  # clip float round-off below zero


def wasserstein2(
    a: ArrayLike, b: ArrayLike, max_n: int = 2000, generator: torch.Generator | int | None = None
) -> float:
    """Exact 2-Wasserstein distance between equal-size subsamples of a [n, d] and b [m, d].

    Both clouds are subsampled without replacement to k = min(n, m, max_n) points (no subsampling
    of a cloud already of size k), then the optimal assignment on squared Euclidean costs
    (scipy.optimize.linear_sum_assignment) gives W2 = sqrt(mean ||a_i - b_sigma(i)||^2).
    Cost O(k^3); k = 2000 takes a few seconds on a CPU. With subsampling, W2 is a noisy, upward-biased
    estimate of the population value; compare runs at equal k.
    """
    a, b = _points(a, "a"), _points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    _check_max_n(max_n)
    k = min(len(a), len(b), max_n if max_n is not None else len(a))
    g = as_generator(generator)
    a, b = _subsample(a, k, g), _subsample(b, k, g)
    # squared distances by differences (exact zeros; cdist's matmul shortcut is not), in row chunks
    rows_per_chunk = max(1, 20_000_000 // (k * a.shape[1]))
    cost = torch.cat([((part[:, None, :] - b[None]) ** 2).sum(-1) for part in torch.split(a, rows_per_chunk)]).numpy()
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(float(cost[rows, cols].mean()))


def checkerboard_quality(x: ArrayLike, grid: int, dim: int = 2, return_counts: bool = False) -> dict:
    """How well samples x [n, dim] match ``fm_data.toy.Checkerboard(grid, dim)``.

    Returns a dict with
      in_support: fraction of all samples inside a filled cell (1.0 for perfect samples);
      min_cell_ratio / max_cell_ratio: smallest / largest filled-cell share (count / n, over ALL n
        samples) divided by the expected share 1 / n_filled (1.0 for a perfect, infinite sample;
        divide by in_support for shares among in-support samples only);
      n_filled: number of filled cells; n: number of samples;
      counts (only with return_counts): per-filled-cell counts, indexed by the cell label of
        Checkerboard (row-major rank of the filled cell).
    With more than 10^7 filled cells the cell ratios are None (counts would not fit).
    """
    board = Checkerboard(grid=grid, dim=dim)  # validates grid and dim
    x = _points(x, "x")
    if x.shape[1] != dim:
        raise ValueError(f"x must have shape [n, {dim}] for dim={dim}, got {tuple(x.shape)}")
    label = board.filled_cell(x)
    inside = label >= 0
    out: dict = {"in_support": float(inside.double().mean()), "n_filled": board.n_filled, "n": len(x)}
    if board.n_filled > 10**7:
        out.update(min_cell_ratio=None, max_cell_ratio=None)
        return out
    counts = torch.bincount(label[inside], minlength=board.n_filled)
    expected = len(x) / board.n_filled
    out["min_cell_ratio"] = float(counts.min()) / expected
    out["max_cell_ratio"] = float(counts.max()) / expected
    if return_counts:
        out["counts"] = counts.tolist()
    return out


def rings_quality(x: ArrayLike, y: ArrayLike | None = None) -> dict:
    """How well samples x [n, 2] (labels y [n] or None) match ``fm_data.toy.OlympicRings``.

    Returns a dict with
      in_support: fraction of samples on at least one ring (0.9 <= |x - c_k| <= 1.1);
      min_ring_ratio / max_ring_ratio: smallest / largest over rings k of (fraction of all n samples
        lying on ring k) / (the true probability of lying on ring k, which includes the other rings'
        mass in the overlaps: ``OlympicRings.ring_probabilities()``); 1.0 for a perfect, infinite
        sample, lower when a ring is under-populated;
      on_own_ring (only with y): fraction of labelled samples (labels 0..4) lying on their own ring k;
      on_own_ring_per_label: that fraction for each label 0..4 (None where a label has no samples);
      on_own_ring_min: the worst label's fraction (over labels that occur).
    """
    rings = OlympicRings()
    x = _points(x, "x")
    if x.shape[1] != 2:
        raise ValueError(f"x must have shape [n, 2], got {tuple(x.shape)}")
    member = rings.ring_membership(x)  # [n, 5]
    ratio = member.double().mean(0) / torch.tensor(rings.ring_probabilities(), dtype=torch.float64)
    out: dict = {
        "in_support": float(member.any(-1).double().mean()),
        "min_ring_ratio": float(ratio.min()),
        "max_ring_ratio": float(ratio.max()),
        "n": len(x),
    }
    if y is not None:
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).detach().cpu().long().reshape(-1)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape [{len(x)}], got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= rings.num_classes):
            raise ValueError(
                f"labels must lie in [0, {rings.num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]"
            )
        own = member[torch.arange(len(x)), y]
        per_label = [float(own[y == k].double().mean()) if bool((y == k).any()) else None for k in range(5)]
        present = [p for p in per_label if p is not None]
        out.update(
            on_own_ring=float(own.double().mean()),
            on_own_ring_per_label=per_label,
            on_own_ring_min=min(present) if present else None,
        )
    return out


def nll_gap(nll: ArrayLike | float, entropy: float) -> float:
    """mean(nll) - entropy, in nats: how far a model's NLL (per sample, on held-out data) is above the
    data's true differential entropy (its lower bound). ``nll`` is a float or per-sample values [n]."""
    values = torch.as_tensor(np.asarray(nll) if not isinstance(nll, Tensor) else nll).detach().double().reshape(-1)
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise ValueError("nll must be a non-empty set of finite values")
    if not math.isfinite(entropy):
        raise ValueError(f"entropy must be finite, got {entropy!r}")
    return float(values.mean()) - float(entropy)
