"""Short maximum-likelihood training runs against closed-form Gaussian densities."""

from __future__ import annotations

import math

import pytest
import torch

from fm_nflows import build_flow, fit

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
CHOL = torch.linalg.cholesky(COV)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    d = x - mean
    return 0.5 * (d @ torch.linalg.inv(cov) * d).sum(1) + 0.5 * torch.logdet(2 * math.pi * cov)


def test_fit_gaussian_nll_approaches_entropy():
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 2 * torch.det(COV).item())  # 2.548 nats
    g = torch.Generator().manual_seed(0)

    def sample_fn(n):
        return torch.randn(n, 2, generator=g) @ CHOL.T + MEAN

    test = torch.randn(4096, 2, generator=torch.Generator().manual_seed(1)) @ CHOL.T + MEAN
    true_nll = gaussian_nll(test, MEAN, COV).mean().item()
    assert abs(true_nll - entropy) < 0.05  # the test set is a fair sample

    flow = build_flow(2, 2, 16, seed=0).eval()
    with torch.no_grad():
        start_gap = -flow.log_prob(test).mean().item() - true_nll
    assert start_gap > 0.5  # an untrained flow is a rotated standard normal

    seen = []
    hist = fit(
        flow,
        sample_fn,
        steps=100,
        batch_size=256,
        lr=1e-2,
        record_every=20,
        callback=lambda step, logs: seen.append((step, logs["nll"])),
    )
    with torch.no_grad():
        model_nll = -flow.log_prob(test).mean().item()
    assert not flow.training
    assert model_nll - true_nll < 0.02, (model_nll, true_nll)
    assert hist.step == [20, 40, 60, 80, 100] and [s for s, _ in seen] == hist.step
    for nll, base, logdet in zip(hist.nll, hist.base_log_prob, hist.logdet):
        assert abs(nll + base + logdet) < 1e-9
    assert hist.lr[-1] < 1e-4  # cosine decay to 0
    assert hist.seconds > 0


def test_fit_conditional_learns_labels_and_guards():
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    g = torch.Generator().manual_seed(0)

    def sample_fn(n):
        y = torch.randint(0, 2, (n,), generator=g)
        return means[y] + 0.5 * torch.randn(n, 2, generator=g), y

    flow = build_flow(2, 2, 16, num_classes=2, seed=0)
    fit(flow, sample_fn, steps=60, batch_size=128, lr=1e-2, schedule="constant", warmup=5)
    x = means[0] + 0.5 * torch.randn(256, 2, generator=g)
    with torch.no_grad():
        assert (flow.log_prob(x, 0) - flow.log_prob(x, 1)).mean() > 2.0
    with pytest.raises(FloatingPointError, match="step 1"):
        fit(build_flow(2, 1, 8), lambda n: torch.full((n, 2), float("nan")), steps=3)
    for kwargs, msg in [
        (dict(steps=0), "steps"),
        (dict(steps=1, schedule="step"), "schedule"),
        (dict(steps=1, batch_size=1), "batch_size"),
    ]:
        with pytest.raises(ValueError, match=msg):
            fit(flow, sample_fn, **kwargs)
