"""Fixtures shared by fm-discrete's tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread avoids contention on a shared CPU (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _chi2_pvalue(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness-of-fit p-value of counts against probabilities; a count where the probability
    is 0 fails at once."""
    from scipy import stats

    observed, probs = observed.flatten().double(), probs.flatten().double()
    keep = probs > 0
    assert int(observed[~keep].sum()) == 0, "an outcome of probability 0 was drawn"
    if int(keep.sum()) == 1:
        return 1.0  # one possible outcome, and every draw is it
    exp = probs[keep] / probs[keep].sum() * observed.sum()
    return float(stats.chisquare(observed[keep].numpy(), exp.numpy()).pvalue)


@pytest.fixture
def chi2_pvalue():
    return _chi2_pvalue
