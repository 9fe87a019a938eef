"""2D metrics against hand-computed cases and independent numpy/scipy computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from fm_data.toy import Checkerboard, OlympicRings
from fm_eval.metrics2d import checkerboard_quality, energy_distance, nll_gap, rings_quality, wasserstein2


# ---------------------------------------------------------------------------------------------
# energy distance
# ---------------------------------------------------------------------------------------------
def test_energy_distance_hand_cases():
    assert energy_distance(np.array([[0.0]]), np.array([[1.0]])) == pytest.approx(2.0)
    # a = {0, 2}, b = {1}: 2 * 1 - (0 + 2 + 2 + 0) / 4 - 0 = 1
    assert energy_distance(np.array([[0.0], [2.0]]), np.array([[1.0]])) == pytest.approx(1.0)
    # 2D: a = {(0,0), (3,4)}, b = {(0,0)}: 2 * 2.5 - 10 / 4 - 0 = 2.5
    assert energy_distance(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0]])) == pytest.approx(2.5)


def test_energy_distance_zero_for_same_set_and_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 2)), rng.normal(loc=0.5, size=(200, 2))
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    d = lambda p, q: np.sqrt(((p[:, None, :] - q[None]) ** 2).sum(-1)).mean()  # noqa: E731
    assert energy_distance(a, b) == pytest.approx(2 * d(a, b) - d(a, a) - d(b, b), rel=1e-10)
    assert energy_distance(torch.tensor(a, dtype=torch.float32), b) == pytest.approx(energy_distance(a, b), rel=1e-5)
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a), rel=1e-12)


def test_energy_distance_is_square_of_scipy_in_1d():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=150), rng.exponential(size=90)
    assert energy_distance(a[:, None], b[:, None]) == pytest.approx(scipy.stats.energy_distance(a, b) ** 2, rel=1e-9)


def test_energy_distance_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        energy_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        energy_distance(np.zeros(3), np.zeros((3, 1)))


# ---------------------------------------------------------------------------------------------
# W2
# ---------------------------------------------------------------------------------------------
def test_w2_of_shifted_clouds_is_the_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 2))
    c = np.array([0.3, -1.2])
    assert wasserstein2(a, a + c) == pytest.approx(np.linalg.norm(c), rel=1e-9)
    assert wasserstein2(a, a) == pytest.approx(0.0, abs=1e-12)


def test_w2_matches_sorted_matching_in_1d_and_brute_force_in_2d():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=200), rng.uniform(size=200)
    ref = math.sqrt(((np.sort(a) - np.sort(b)) ** 2).mean())
    assert wasserstein2(a[:, None], b[:, None]) == pytest.approx(ref, rel=1e-9)
    p, q = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    best = min(((p - q[list(perm)]) ** 2).sum(1).mean() for perm in itertools.permutations(range(6)))
    assert wasserstein2(p, q) == pytest.approx(math.sqrt(best), rel=1e-9)


def test_w2_subsampling_is_seeded_and_sized():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(500, 2)), rng.normal(size=(300, 2))
    w = wasserstein2(a, b, max_n=100, generator=7)
    assert w == wasserstein2(a, b, max_n=100, generator=7)
    # different sizes without max_n: a is subsampled to 300 points; the value stays reasonable
    assert 0.0 < wasserstein2(a, b, generator=0) < 1.0
    with pytest.raises(ValueError, match="max_n"):
        wasserstein2(a, b, max_n=0)


def test_energy_distance_subsampling():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 2)), rng.normal(size=(500, 2))
    e = energy_distance(a, b, max_n=200, generator=3)
    assert e == energy_distance(a, b, max_n=200, generator=3) and e != energy_distance(a, b)
    assert energy_distance(a, b, max_n=600) == energy_distance(a, b)  # nothing to subsample


# ---------------------------------------------------------------------------------------------
# checkerboard
# ---------------------------------------------------------------------------------------------
def test_checkerboard_quality_hand_case():
    # grid 2: filled cells [-4,0]^2 (label 0) and [0,4]^2 (label 1); [0,4]x[-4,0] is empty
    x = np.array([[-1.0, -1.0], [-3.0, -0.5], [-2.0, -2.0], [1.0, 1.0], [1.0, -1.0], [5.0, 5.0]])
    q = checkerboard_quality(x, grid=2, return_counts=True)
    assert q["in_support"] == pytest.approx(4 / 6)
    assert q["n_filled"] == 2 and q["n"] == 6 and q["counts"] == [3, 1]
    assert q["min_cell_ratio"] == pytest.approx(1 / 3) and q["max_cell_ratio"] == pytest.approx(1.0)


def test_checkerboard_quality_3d_hand_case():
    # grid 2 in 3D: filled cells have an even number of positive coordinates; 4 filled cells
    x = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    q = checkerboard_quality(x, grid=2, dim=3)
    assert q["in_support"] == pytest.approx(0.5) and q["n_filled"] == 4 and q["min_cell_ratio"] == 0.0
    assert q["max_cell_ratio"] == pytest.approx(1 / (4 / 4))


def test_checkerboard_quality_of_true_samples_and_of_noise():
    x = Checkerboard(grid=8).sample(32_000, generator=0)
    q = checkerboard_quality(x, grid=8)
    assert q["in_support"] == 1.0 and 0.85 < q["min_cell_ratio"] <= 1.0 <= q["max_cell_ratio"] < 1.15
    noise = torch.randn(32_000, 2, generator=torch.Generator().manual_seed(0))
    qn = checkerboard_quality(noise, grid=8)
    assert 0.4 < qn["in_support"] < 0.6 and qn["min_cell_ratio"] < 0.01  # corner cells get ~nothing
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        checkerboard_quality(x, grid=8, dim=3)
    with pytest.raises(ValueError, match="grid"):
        checkerboard_quality(x, grid=0)


# ---------------------------------------------------------------------------------------------
# rings
# ---------------------------------------------------------------------------------------------
def test_rings_quality_hand_case():
    c = np.array([(-2.2, 0.5), (0.0, 0.5), (2.2, 0.5), (-1.1, -0.5), (1.1, -0.5)])
    d = np.linalg.norm(c[3] - c[0])
    normal = np.array([-(c[3] - c[0])[1], (c[3] - c[0])[0]]) / d
    both_0_3 = (c[0] + c[3]) / 2 + math.sqrt(1 - (d / 2) ** 2) * normal
    x = np.array([c[0] + [1.0, 0.0], c[1] + [0.0, -1.05], both_0_3, c[4] + [0.0, 1.5], [0.0, 3.0]])
    y = np.array([0, 2, 3, 4, 1])
    q = rings_quality(x, y)
    assert q["in_support"] == pytest.approx(3 / 5)
    assert q["on_own_ring"] == pytest.approx(2 / 5)  # samples 0 and 2 lie on their own ring
    assert q["on_own_ring_per_label"] == [1.0, 0.0, 0.0, 1.0, 0.0] and q["on_own_ring_min"] == 0.0
    q1 = rings_quality(x[:3], y[:3])
    assert q1["on_own_ring_per_label"] == [1.0, None, 0.0, 1.0, None]
    assert "on_own_ring" not in rings_quality(x)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        rings_quality(x, np.array([0, 1, 2, 3, 5]))


def test_rings_quality_of_true_and_of_mislabelled_samples():
    x, y = OlympicRings().sample_labeled(50_000, generator=0)
    q = rings_quality(x, y)
    assert q["in_support"] == 1.0 and q["on_own_ring"] == 1.0
    assert 0.97 < q["min_ring_ratio"] <= 1.0 <= q["max_ring_ratio"] < 1.03
    # ring 0 touches ring 1 in a single point: relabelled 0 -> 1, no sample lies on "its" ring
    x0 = x[y == 0]
    assert rings_quality(x0, torch.full((len(x0),), 1))["on_own_ring"] == 0.0
    # ring 0 crosses ring 3: relabelled 0 -> 3, the fraction on ring 3 is |ring0 & ring3| / area,
    # here checked against a direct grid estimate of that intersection area
    h = 0.005
    g = np.arange(-3.4, 0.2, h) + h / 2
    gx, gy = np.meshgrid(g, np.arange(-1.7, 1.7, h) + h / 2, indexing="ij")
    d0 = np.hypot(gx + 2.2, gy - 0.5)
    d3 = np.hypot(gx + 1.1, gy + 0.5)
    lens = ((d0 >= 0.9) & (d0 <= 1.1) & (d3 >= 0.9) & (d3 <= 1.1)).sum() * h * h
    frac = rings_quality(x0, torch.full((len(x0),), 3))["on_own_ring"]
    expected = lens / (math.pi * (1.1**2 - 0.9**2))
    assert frac == pytest.approx(expected, abs=4 * math.sqrt(expected / len(x0)) + 0.002)
    # dropping ring 0 shows up in min_ring_ratio
    assert rings_quality(x[y != 0])["min_ring_ratio"] < 0.1


def test_nll_gap():
    assert nll_gap(torch.tensor([3.5, 3.6]), math.log(32)) == pytest.approx(3.55 - math.log(32))
    assert nll_gap(2.0, 1.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="finite"):
        nll_gap(np.array([1.0, np.inf]), 1.0)
