"""Toy distributions against their stated geometry, independent numpy computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fm_data.toy import (
    TOY_DATASETS,
    Checkerboard,
    EightGaussians,
    Moons,
    OlympicRings,
    Spirals,
    as_generator,
    get_toy,
)

RING_CENTERS = np.array([(-2.2, 0.5), (0.0, 0.5), (2.2, 0.5), (-1.1, -0.5), (1.1, -0.5)])


def chi2_ok(counts: np.ndarray, expected: np.ndarray) -> bool:
    """Pearson chi-square below dof + 6 sqrt(2 dof) (about a 1e-5 false-alarm rate for these sizes)."""
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = len(counts) - 1
    return stat < dof + 6 * math.sqrt(2 * dof)


def grid_integral(dist, lo, hi, n):
    """Midpoint-rule integral of exp(log_prob) over the square [lo, hi]^2 with n x n cells."""
    h = (hi - lo) / n
    c = lo + h * (np.arange(n) + 0.5)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], -1))
    return float(dist.log_prob(pts).exp().sum()) * h * h


# ---------------------------------------------------------------------------------------------
# checkerboard
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,dim", [(4, 2), (8, 2), (5, 2), (3, 3), (4, 4)])
def test_checkerboard_support_and_cell_proportions(grid, dim):
    board = Checkerboard(grid=grid, dim=dim)
    x, y = board.sample_labeled(40_000, generator=0)
    assert x.shape == (40_000, dim) and x.dtype == torch.float32 and y.dtype == torch.int64
    xn = x.numpy().astype(np.float64)
    assert (xn >= -4).all() and (xn <= 4).all()
    side = 8.0 / grid
    idx = np.clip(np.floor((xn + 4) / side).astype(int), 0, grid - 1)
    assert (idx.sum(1) % 2 == 0).all(), "every sample must lie in a filled cell"
    # filled cells listed independently, in row-major order
    cells = np.array(np.meshgrid(*[np.arange(grid)] * dim, indexing="ij")).reshape(dim, -1).T
    filled = cells[cells.sum(1) % 2 == 0]
    assert board.n_filled == len(filled) == board.num_classes
    lookup = {tuple(c): k for k, c in enumerate(filled)}
    labels = np.array([lookup[tuple(c)] for c in idx])
    np.testing.assert_array_equal(labels, y.numpy())  # label = rank of the filled cell
    counts = np.bincount(labels, minlength=len(filled))
    assert chi2_ok(counts, np.full(len(filled), len(x) / len(filled)))
    # uniform inside cells: position within the cell is U(0, 1) per axis
    frac = (xn + 4) / side - idx
    assert abs(frac.mean() - 0.5) < 0.01 and abs(frac.var() - 1 / 12) < 0.005


def test_checkerboard_entropy_and_log_prob_closed_form():
    board = Checkerboard(grid=4)
    assert board.entropy() == pytest.approx(math.log(32), abs=1e-12)
    assert board.entropy() == pytest.approx(3.466, abs=5e-4)
    pts = torch.tensor([[-3.5, -3.5], [-1.5, -3.5], [4.0, 4.0], [4.01, 0.0], [0.5, 0.5], [-0.5, 0.5]])
    # cells (0,0) filled, (1,0) empty, (3,3) filled (edge), outside, (2,2) filled, (1,2) empty
    expected = [-math.log(32), -math.inf, -math.log(32), -math.inf, -math.log(32), -math.inf]
    np.testing.assert_allclose(board.log_prob(pts).numpy(), expected, rtol=1e-6)
    assert board.filled_cell(pts).tolist()[:3] == [0, -1, 7]
    assert Checkerboard(grid=8, dim=3).entropy() == pytest.approx(math.log(256), abs=1e-12)
    assert Checkerboard(grid=5).entropy() == pytest.approx(math.log(13 * 1.6**2), abs=1e-12)


@pytest.mark.parametrize("grid", [4, 8, 5])
def test_checkerboard_log_prob_integrates_to_one(grid):
    assert grid_integral(Checkerboard(grid=grid), -4.5, 4.5, 450) == pytest.approx(1.0, rel=0.01)


def test_checkerboard_3d_log_prob_integrates_to_one():
    board = Checkerboard(grid=4, dim=3)
    n, lo, hi = 40, -4.0, 4.0
    h = (hi - lo) / n
    c = lo + h * (np.arange(n) + 0.5)
    pts = torch.as_tensor(np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3))
    assert float(board.log_prob(pts).exp().sum()) * h**3 == pytest.approx(1.0, rel=1e-6)


def test_checkerboard_float32_samples_never_fall_on_empty_cell_edges():
    board = Checkerboard(grid=64)  # fine grid: cell edges are where float32 rounding bites
    x = board.sample(200_000, generator=3)
    assert bool((board.filled_cell(x) >= 0).all())


# ---------------------------------------------------------------------------------------------
# Olympic rings
# ---------------------------------------------------------------------------------------------
def test_rings_geometry_labels_and_proportions():
    rings = OlympicRings()
    x, y = rings.sample_labeled(50_000, generator=1)
    xn, yn = x.numpy().astype(np.float64), y.numpy()
    d_own = np.linalg.norm(xn - RING_CENTERS[yn], axis=1)
    assert ((d_own >= 0.9 - 1e-6) & (d_own <= 1.1 + 1e-6)).all(), "label k lies on ring k"
    assert chi2_ok(np.bincount(yn, minlength=5), np.full(5, len(yn) / 5))
    # uniform over the annulus area: r^2 ~ U(0.81, 1.21), angle ~ U(0, 2 pi)
    r2 = d_own**2
    assert chi2_ok(np.histogram(r2, bins=20, range=(0.81, 1.21))[0], np.full(20, len(r2) / 20))
    v = xn - RING_CENTERS[yn]
    ang = np.arctan2(v[:, 1], v[:, 0])
    assert chi2_ok(np.histogram(ang, bins=36, range=(-np.pi, np.pi))[0], np.full(36, len(ang) / 36))
    np.testing.assert_array_equal(rings.ring_membership(x).numpy()[np.arange(len(yn)), yn], True)


def test_rings_log_prob_counts_overlaps():
    rings = OlympicRings()
    area = math.pi * (1.1**2 - 0.9**2)
    c0, c3 = RING_CENTERS[0], RING_CENTERS[3]
    d = np.linalg.norm(c3 - c0)
    normal = np.array([-(c3 - c0)[1], (c3 - c0)[0]]) / d
    both = (c0 + c3) / 2 + math.sqrt(1 - (d / 2) ** 2) * normal  # distance 1.0 from both centres
    pts = torch.tensor(np.array([c0 + [0.0, 1.0], both, c0, [0.0, 3.0]]))
    lp = rings.log_prob(pts).numpy()
    np.testing.assert_allclose(lp[:2], [math.log(1 / (5 * area)), math.log(2 / (5 * area))], rtol=1e-12)
    assert lp[2] == -math.inf and lp[3] == -math.inf


def test_rings_log_prob_integrates_to_one_and_entropy_matches_grid():
    rings = OlympicRings()
    n, lo, hi = 1400, -3.5, 3.5
    h = (hi - lo) / n
    c = lo + h * (np.arange(n) + 0.5)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    lp = rings.log_prob(torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], -1)))
    p = lp.exp().numpy()
    assert p.sum() * h * h == pytest.approx(1.0, rel=0.01)
    inside = p > 0
    grid_entropy = -(p[inside] * lp.numpy()[inside]).sum() * h * h
    assert rings.entropy() == pytest.approx(grid_entropy, abs=0.01)
    assert rings.entropy() < math.log(2 * math.pi)  # overlaps lower it below log(5 * area)


# ---------------------------------------------------------------------------------------------
# 8 Gaussians, moons, spirals
# ---------------------------------------------------------------------------------------------
def test_eight_gaussians_moments_and_log_prob():
    dist = EightGaussians(radius=4.0, std=0.2)
    x, y = dist.sample_labeled(40_000, generator=2)
    ang = 2 * np.pi * np.arange(8) / 8
    means = 4.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
    resid = x.numpy() - means[y.numpy()]
    assert np.abs(resid.mean(0)).max() < 0.01 and np.abs(resid.std(0) - 0.2).max() < 0.01
    assert chi2_ok(np.bincount(y.numpy(), minlength=8), np.full(8, len(y) / 8))
    pts = np.array([[0.3, -1.0], [4.0, 0.1], [2.9, 2.7], [6.0, 6.0]])
    sq = ((pts[:, None, :] - means[None]) ** 2).sum(-1)
    ref = np.log(np.exp(-sq / (2 * 0.04)).sum(1) / (8 * 2 * np.pi * 0.04))
    np.testing.assert_allclose(dist.log_prob(torch.tensor(pts)).numpy(), ref, rtol=1e-10)
    assert grid_integral(dist, -5.5, 5.5, 200) == pytest.approx(1.0, rel=0.01)
    # well separated components (15 std apart): entropy = log 8 + entropy of one Gaussian
    assert dist.entropy() == pytest.approx(math.log(8) + 1 + math.log(2 * math.pi * 0.04), abs=1e-6)


def test_eight_gaussians_default_entropy_against_monte_carlo():
    dist = EightGaussians()
    x = dist.sample(100_000, generator=5)
    lp = dist.log_prob(x).double()
    assert dist.entropy() == pytest.approx(float(-lp.mean()), abs=5 * float(lp.std()) / math.sqrt(len(lp)))


def _moons_density_reference(pts: np.ndarray, noise: float, scale: float) -> np.ndarray:
    """Trapezoid rule on 20,001 points per moon (independent of the class's quadrature)."""
    th = np.linspace(0.0, np.pi, 20001)
    upper = np.stack([np.cos(th), np.sin(th)], 1)
    lower = np.stack([1 - np.cos(th), 0.5 - np.sin(th)], 1)
    s2 = (noise * scale) ** 2
    w = np.full(len(th), 1.0 / (len(th) - 1))
    w[[0, -1]] /= 2
    out = []
    for moon in (upper, lower):
        c = scale * (moon - [0.5, 0.25])
        sq = ((pts[:, None, :] - c[None]) ** 2).sum(-1)
        out.append((np.exp(-sq / (2 * s2)) * w).sum(1) / (2 * np.pi * s2))
    return 0.5 * (out[0] + out[1])


def test_moons_log_prob_against_reference_and_integral():
    dist = Moons(noise=0.05, scale=2.0)
    pts = np.array([[-2.0, 0.0], [0.0, 1.5], [1.0, -1.5], [0.5, 0.0], [3.0, -0.5], [2.0, -1.3]])
    ref = np.log(_moons_density_reference(pts, 0.05, 2.0))
    np.testing.assert_allclose(dist.log_prob(torch.tensor(pts)).numpy(), ref, rtol=1e-4, atol=1e-4)
    assert grid_integral(dist, -4, 4, 160) == pytest.approx(1.0, rel=0.01)  # cells half a noise std
    x, y = dist.sample_labeled(20_000, generator=4)
    assert chi2_ok(np.bincount(y.numpy(), minlength=2), np.full(2, len(y) / 2))
    # distance to the noiseless moon curve has the spread of 2D noise of std 0.1 (Rayleigh mean)
    th = np.linspace(0, np.pi, 4001)
    arm = [
        2.0 * (np.stack([np.cos(th), np.sin(th)], 1) - [0.5, 0.25]),
        2.0 * (np.stack([1 - np.cos(th), 0.5 - np.sin(th)], 1) - [0.5, 0.25]),
    ]
    xn, yn = x.numpy()[:1000], y.numpy()[:1000]
    dmin = np.array([np.linalg.norm(arm[k] - p, axis=1).min() for p, k in zip(xn, yn)])
    assert np.median(dmin) < 0.1  # a 1D projection of N(0, 0.1^2): median |z| = 0.067


def test_moons_entropy_against_monte_carlo():
    dist = Moons()
    lp = dist.log_prob(dist.sample(10_000, generator=6)).double()
    assert dist.entropy() == pytest.approx(float(-lp.mean()), abs=5 * float(lp.std()) / math.sqrt(len(lp)))


def test_spirals_geometry_and_log_prob_integral():
    dist = Spirals(noise=0.1, radius=3.0, turns=1.5)
    x, y = dist.sample_labeled(10_000, generator=7)
    r = np.linalg.norm(x.numpy(), axis=1)
    assert r.max() < 3.0 + 6 * 0.1 and chi2_ok(np.bincount(y.numpy(), minlength=2), np.full(2, 5000.0))
    assert grid_integral(dist, -4, 4, 160) == pytest.approx(1.0, rel=0.01)  # cells half a noise std
    lp = dist.log_prob(x[:4000]).double()
    assert dist.entropy() == pytest.approx(float(-lp.mean()), abs=5 * float(lp.std()) / math.sqrt(len(lp)))


# ---------------------------------------------------------------------------------------------
# seeding, registry and errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY_DATASETS)
def test_seeded_reproducibility(name):
    dist = get_toy(name)
    a, b = dist.sample(257, generator=11), dist.sample(257, generator=11)
    assert torch.equal(a, b) and not torch.equal(a, dist.sample(257, generator=12))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(dist.sample_labeled(100, g1)[1], dist.sample_labeled(100, g2)[1])
    torch.manual_seed(0)
    c = dist.sample(50)
    torch.manual_seed(0)
    assert torch.equal(c, dist.sample(50))
    assert dist.sample(0, generator=0).shape == (0, dist.dim)
    assert get_toy(name, **dist.config).config == dist.config


def test_bad_names_and_arguments_raise_value_error():
    with pytest.raises(ValueError, match="checkerboard, olympic-rings, moons, 8gaussians, spirals"):
        get_toy("swissroll")
    with pytest.raises(ValueError, match="allowed: grid, dim"):
        get_toy("checkerboard", gird=4)
    with pytest.raises(ValueError, match="allowed: none"):
        get_toy("olympic-rings", grid=4)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="grid must be an int >= 1"):
            Checkerboard(grid=bad)
    with pytest.raises(ValueError, match="noise"):
        Moons(noise=-0.1)
    with pytest.raises(ValueError, match="std"):
        EightGaussians(std=0.0)
    with pytest.raises(ValueError, match="turns"):
        Spirals(turns=float("nan"))
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        Moons().sample(-1)
    with pytest.raises(ValueError, match="generator"):
        as_generator("seed")
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        OlympicRings().log_prob(torch.zeros(3, 3))
