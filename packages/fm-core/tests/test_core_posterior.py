"""posterior_mean, the one kernel behind the batch-marginal target and EmpiricalMarginalVelocity:
against the direct softmax formula on a non-linear scheduler, chunked, with class masks; stable
as sigma -> 0."""

import pytest
import torch

from fm_core import posterior_mean
from fm_core.schedulers import CosineScheduler


def _direct(x, ref, a, s, labels=None, ref_labels=None, use_all=None):
    """sum_j softmax_j(-||x - a r_j||^2 / (2 s^2)) r_j with the full square, in float64."""
    xf, rf = x.reshape(len(x), -1), ref.reshape(len(ref), -1)
    logits = -((xf[:, None, :] - a[:, None, None] * rf[None]) ** 2).sum(-1) / (2 * s[:, None] ** 2)
    if labels is not None:
        keep = labels[:, None] == ref_labels[None, :]
        if use_all is not None:
            keep = keep | use_all[:, None]
        logits = logits.masked_fill(~keep, float("-inf"))
    return (torch.softmax(logits, dim=1) @ rf).reshape(x.shape)


@pytest.mark.parametrize("chunk_size", [1, 3, 4096])
def test_matches_the_direct_formula_on_the_cosine_path(chunk_size):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(10, 2, 3, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    o = CosineScheduler()(t)
    x = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    got = posterior_mean(x, ref, o.alpha_t, o.sigma_t, chunk_size=chunk_size)
    torch.testing.assert_close(got, _direct(x, ref, o.alpha_t, o.sigma_t), rtol=1e-10, atol=1e-12)


def test_class_masks_and_rows_that_use_all_points():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(9, 4, generator=g, dtype=torch.float64)
    ref_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    a, s = torch.full((5,), 0.6, dtype=torch.float64), torch.full((5,), 0.7, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 1, 0])
    use_all = torch.tensor([False, False, True, False, True])
    got = posterior_mean(x, ref, a, s, labels=labels, ref_labels=ref_labels, use_all=use_all, chunk_size=2)
    torch.testing.assert_close(got, _direct(x, ref, a, s, labels, ref_labels, use_all), rtol=1e-10, atol=1e-12)
    # a labelled row is a mean of its own class's points only
    row0 = _direct(x[:1], ref[ref_labels == 2], a[:1], s[:1])
    torch.testing.assert_close(got[:1], row0, rtol=1e-10, atol=1e-12)


def test_tiny_sigma_picks_the_nearest_point_without_overflow():
    ref = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.1, 0.0]])
    one, tiny = torch.ones(3), torch.full((3,), 1e-6)
    got = posterior_mean(x, ref, one, tiny)
    assert torch.isfinite(got).all()
    assert torch.equal(got, ref[[1, 2, 0]])


def test_bad_arguments():
    x, ref, a = torch.zeros(2, 3), torch.zeros(4, 3), torch.ones(2)
    with pytest.raises(ValueError, match="ref_labels"):
        posterior_mean(x, ref, a, a, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="elements"):
        posterior_mean(x, torch.zeros(4, 2), a, a)
    with pytest.raises(ValueError, match="chunk_size"):
        posterior_mean(x, ref, a, a, chunk_size=0)
