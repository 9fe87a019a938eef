"""Fidelity and diversity of a sample set, separately: improved precision and recall
(Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020), from k-nearest-neighbour
balls in a feature space.

Both sets are points [N, D]: raw coordinates (2D toy data) or classifier features of images
(:func:`fm_eval.image_features`, the features FID uses). With real (reference) points r_j, fake
(sample) points f_i, and NND_k(p) the distance from p to its k-th nearest neighbour in its own set
(itself excluded):

    precision = 1/M sum_i [exists j: |f_i - r_j| <= NND_k(r_j)]      fidelity: samples on the real manifold
    recall    = 1/N sum_j [exists i: |r_j - f_i| <= NND_k(f_i)]      diversity: real points on the fake manifold
    density   = 1/(k M) sum_i sum_j [|f_i - r_j| <= NND_k(r_j)]      like precision, but counts the balls (can be > 1)
    coverage  = 1/N sum_j [min_i |r_j - f_i| <= NND_k(r_j)]          real balls that hold at least one sample

A set scored against itself has precision = recall = coverage = 1 and density (k + 1) / k (each
ball holds its centre and k neighbours); a sample drawn independently from the reference's
distribution has density 1 in expectation (Naeem et al. 2020, eq. 4) and precision, recall and
coverage below 1 that approach 1 as N grows. Pairwise distances are
computed as |a|^2 + |b|^2 - 2 a.b (one matrix product, float64) in blocks of ``block`` rows, so
10,000 x 10,000 needs a few ``block`` x 10,000 x 8 bytes at a time, not the full matrix; a point
counts as inside a ball up to a relative ``TOL`` = 1e-9 in squared distance (see :data:`TOL`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["ManifoldResult", "knn_radii", "manifold_scores"]

#: Rows of a distance block (block x N float64 at a time).
BLOCK = 1024


@dataclass
class ManifoldResult:
    """Precision, recall, density and coverage of ``n_samples`` samples against ``n_reference``
    reference points, with ``k`` neighbours, in ``feature_dim`` dimensions (see the module)."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    n_samples: int
    n_reference: int
    feature_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def _points(x: Tensor | np.ndarray, what: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} must be points [N, D] with N, D >= 1, got shape {tuple(t.shape)}")
    t = t.to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contain NaN or inf")
    return t


#: Relative tolerance of the ball test, in squared distance: |a - b|^2 <= R^2 + TOL (|a|^2 + |b|^2).
#: The matrix form |a|^2 + |b|^2 - 2 a.b is fast but off by ~D eps (|a|^2 + |b|^2) and not exactly
#: symmetric, so a ball's own k-th neighbour could fall just outside it; TOL is 10^5 times that error.
TOL = 1e-9


def _sq_blocks(a: Tensor, b: Tensor, block: int):
    """(start, squared distances [rows, len(b)], tolerance [rows, len(b)]) for row blocks of a."""
    na, nb = (a * a).sum(1), (b * b).sum(1)
    for s in range(0, a.shape[0], block):
        rows = slice(s, s + block)
        d2 = (na[rows, None] + nb[None, :] - 2.0 * a[rows] @ b.T).clamp_(min=0.0)
        yield s, d2, TOL * (na[rows, None] + nb[None, :])


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] for {n} points, got {k!r}")


def _knn_sq(x: Tensor, k: int, block: int) -> Tensor:
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for s, d2, _ in _sq_blocks(x, x, block):
        # the k + 1 smallest include the point itself (distance 0); a duplicate point gives the same radius
        out[s : s + d2.shape[0]] = d2.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def knn_radii(x: Tensor | np.ndarray, k: int = 3, *, block: int = BLOCK) -> Tensor:
    """Distance from each point of x [N, D] to its k-th nearest neighbour in x, itself excluded
    (float64 [N]). Needs N > k."""
    x = _points(x, "points")
    _check_k(k, x.shape[0])
    return _knn_sq(x, k, block).sqrt()


def manifold_scores(
    samples: Tensor | np.ndarray, reference: Tensor | np.ndarray, k: int = 3, *, block: int = BLOCK
) -> ManifoldResult:
    """Precision, recall, density and coverage of ``samples`` [M, D] against ``reference`` [N, D]
    (both with more than k points) with k-NN balls of ``k`` neighbours (default 3, as in both papers).

    Distances are Euclidean in float64, computed in blocks of ``block`` rows; a point on a ball's
    boundary (up to :data:`TOL`) counts as inside. Compare only at equal counts and k: the balls shrink with N.
    """
    f = _points(samples, "samples")
    r = _points(reference, "reference")
    if f.shape[1] != r.shape[1]:
        raise ValueError(f"samples have {f.shape[1]} dims but the reference has {r.shape[1]}")
    if block < 1:
        raise ValueError(f"block must be a positive number of rows, got {block}")
    _check_k(k, r.shape[0])
    _check_k(k, f.shape[0])
    r_rad2, f_rad2 = _knn_sq(r, k, block), _knn_sq(f, k, block)
    m, n = f.shape[0], r.shape[0]
    in_real = torch.zeros(m, dtype=torch.bool)  # sample i in some real ball
    balls = torch.zeros(m, dtype=torch.float64)  # number of real balls holding sample i
    real_in_fake = torch.zeros(n, dtype=torch.bool)  # real j in some fake ball
    covered = torch.zeros(n, dtype=torch.bool)  # real ball j holds some sample
    for s, d2, tol in _sq_blocks(f, r, block):  # [rows of f, N]
        rows = slice(s, s + d2.shape[0])
        inside = d2 <= r_rad2[None, :] + tol
        in_real[rows] = inside.any(1)
        balls[rows] = inside.sum(1, dtype=torch.float64)
        real_in_fake |= (d2 <= f_rad2[rows, None] + tol).any(0)
        covered |= inside.any(0)
    return ManifoldResult(
        precision=float(in_real.double().mean()),
        recall=float(real_in_fake.double().mean()),
        density=float(balls.sum() / (k * m)),
        coverage=float(covered.double().mean()),
        k=int(k),
        n_samples=m,
        n_reference=n,
        feature_dim=int(f.shape[1]),
    )
