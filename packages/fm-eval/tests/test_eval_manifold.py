"""Tests of fm_eval.manifold (improved precision / recall, density / coverage) against closed forms:
a set against itself, two far-apart clouds, a sample of half the modes of a mixture, a 1D case
worked by hand, and an independent brute-force numpy implementation (all four numbers, several k
and block sizes). The image wrapper (fm_eval.scores.manifold_image_scores) on real test images."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fm_eval import ManifoldResult, knn_radii, manifold_image_scores, manifold_scores


def brute_force(fake: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """The four metrics from the papers' definitions, with full distance matrices and loops."""

    def radii(x: np.ndarray) -> np.ndarray:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return np.array([np.sort(np.delete(row, i))[k - 1] for i, row in enumerate(d)])

    rr, fr = radii(real), radii(fake)
    d = np.sqrt(((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1))  # [M, N]
    m, n = d.shape
    precision = np.mean([any(d[i, j] <= rr[j] for j in range(n)) for i in range(m)])
    recall = np.mean([any(d[i, j] <= fr[i] for i in range(m)) for j in range(n)])
    density = sum(d[i, j] <= rr[j] for i in range(m) for j in range(n)) / (k * m)
    coverage = np.mean([d[:, j].min() <= rr[j] for j in range(n)])
    return float(precision), float(recall), float(density), float(coverage)


def test_a_set_against_itself():
    # every point lies in its own ball and its own ball holds it and its k neighbours: P = R = C = 1,
    # density (k + 1) / k for points in general position
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    for k in (1, 3, 5):
        r = manifold_scores(x, x, k)
        assert (r.precision, r.recall, r.coverage) == (1.0, 1.0, 1.0)
        assert r.density == pytest.approx((k + 1) / k, abs=1e-12)
        assert (r.k, r.n_samples, r.n_reference, r.feature_dim) == (k, 300, 300, 5)


def test_two_far_apart_clouds_score_zero():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 2, generator=g), torch.randn(500, 2, generator=g) + 100.0
    r = manifold_scores(a, b)
    assert (r.precision, r.recall, r.density, r.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_half_the_modes_of_a_mixture():
    # 10 unit Gaussians 50 apart; the reference has all 10, the sample 5: every sample lies in real
    # balls (precision -> 1, density -> 1: density does not see dropped modes), only the reference
    # points of the 5 sampled modes are reached (recall, coverage <= 1/2, near 1/2)
    g = torch.Generator().manual_seed(2)
    centres = torch.stack([torch.arange(10.0) * 50.0, torch.zeros(10)], 1)
    real = (centres[:, None] + torch.randn(10, 200, 2, generator=g)).reshape(-1, 2)
    fake = (centres[:5, None] + torch.randn(5, 400, 2, generator=g)).reshape(-1, 2)
    r = manifold_scores(fake, real)
    assert r.precision > 0.97
    assert 0.45 < r.recall <= 0.5 and 0.45 < r.coverage <= 0.5
    assert r.density == pytest.approx(1.0, abs=0.1)


def test_an_independent_draw_has_density_one_in_expectation():
    # Naeem et al. 2020: E[density] = 1 when samples and reference come from the same distribution
    g = torch.Generator().manual_seed(3)
    vals = [manifold_scores(torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)).density
            for _ in range(5)]  # fmt: skip
    assert np.mean(vals) == pytest.approx(1.0, abs=0.05)


def test_a_1d_case_worked_by_hand():
    # k = 1. reference {0, 1, 3}: radii 1, 1, 2. samples {0.5, 2.5, 10}: radii 2, 2, 7.5.
    # precision: 0.5 in B(0, 1); 2.5 in B(3, 2); 10 in none -> 2/3.
    # recall: the outlier 10 has a ball of radius 7.5 that holds every real point -> 1.
    # density: 0.5 in B(0) and B(1), 2.5 in B(3) -> 3 / (1 * 3) = 1. coverage: every real ball holds a sample.
    real = torch.tensor([[0.0], [1.0], [3.0]])
    fake = torch.tensor([[0.5], [2.5], [10.0]])
    r = manifold_scores(fake, real, k=1)
    assert r.precision == pytest.approx(2 / 3) and r.recall == 1.0
    assert r.density == pytest.approx(1.0) and r.coverage == 1.0
    assert knn_radii(real, 1).tolist() == [1.0, 1.0, 2.0]
    assert knn_radii(fake, 1).tolist() == [2.0, 2.0, 7.5]


@pytest.mark.parametrize("k,block", [(1, 7), (3, 1024), (4, 1), (3, 50)])
def test_against_a_brute_force_numpy_implementation(k, block):
    rng = np.random.default_rng(k * 100 + block)
    real = rng.normal(size=(120, 3))
    fake = rng.normal(size=(90, 3)) * 1.3 + 0.4  # overlapping, not equal
    r = manifold_scores(torch.from_numpy(fake), real, k, block=block)  # numpy and torch inputs
    assert (r.precision, r.recall, r.density, r.coverage) == pytest.approx(brute_force(fake, real, k), abs=1e-12)
    assert isinstance(r, ManifoldResult) and set(r.to_dict()) >= {"precision", "recall", "density", "coverage"}


def test_bad_inputs_are_one_line_errors():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\] for 10 points, got 10"):
        manifold_scores(x, x, k=10)
    with pytest.raises(ValueError, match="samples have 3 dims but the reference has 2"):
        manifold_scores(torch.randn(10, 3), x)
    with pytest.raises(ValueError, match=r"samples must be points \[N, D\]"):
        manifold_scores(torch.randn(10), x)
    with pytest.raises(ValueError, match="reference contain NaN"):
        manifold_scores(x, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="block must be a positive"):
        manifold_scores(x, x, block=0)


@pytest.mark.slow
def test_10000_by_10000_in_blocks():
    # the full distance matrix would be 800 MB in float64; blocks of 1024 rows keep it to ~80 MB
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10_000, 128, generator=g)
    t0 = time.perf_counter()
    r = manifold_scores(x, x)
    assert (r.precision, r.recall, r.coverage) == (1.0, 1.0, 1.0) and r.density == pytest.approx(4 / 3)
    assert time.perf_counter() - t0 < 120


def test_test_images_against_a_random_subset_of_themselves(data_dir):
    # samples = the test images of classes 3 and 5; the reference is a random subset of the same
    # pool of the same size, i.e. the same images in another order: P = R = C = 1
    from fm_data.images import load_images

    data = load_images("mnist", "test", data_dir, classes=[3, 5])
    s = manifold_image_scores(data.images, "mnist", classes=[5, 3], data_dir=data_dir, seed=7)
    n = len(data.images)
    assert (s["precision"], s["recall"], s["coverage"]) == (1.0, 1.0, 1.0)
    assert s["density"] == pytest.approx(4 / 3, abs=0.02)  # (k + 1) / k up to duplicate features
    assert (s["k"], s["n_samples"], s["n_reference"]) == (3, n, n)
    assert s["reference"] == f"random {n} of the test split (seed 7), classes [3, 5]"
    # a smaller sample gets an equal-count reference: n images of the pool, not the first n
    half = manifold_image_scores(data.images[:200], "mnist", classes=[3, 5], data_dir=data_dir)
    assert (half["n_samples"], half["n_reference"]) == (200, 200) and half["precision"] < 1.0
