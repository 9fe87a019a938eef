"""A plain nn.Module whose forward(x, t) takes no labels works with the loss, the solvers, sample
and log_likelihood (they call model(x, t) when there are no labels), against closed forms."""

import math

import pytest
import torch
from torch import nn

from fm_core import FlowMatchingLoss, log_likelihood, sample, solve_ode


class Decay(nn.Module):
    """v(x, t) = -k x: the flow is x(t) = x(0) exp(-k t). Takes no labels at all."""

    def __init__(self, k: float = 0.8):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def forward(self, x, t):
        assert t.shape == x.shape[:1]
        return -self.k * x


def test_loss_calls_model_with_x_and_t_only():
    model = Decay()
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    loss = FlowMatchingLoss()(model, x1, x0=x0, t=t)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    expected = ((-0.8 * x_t - (x1 - x0)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert model.k.grad is not None


def test_solver_and_sample_reach_the_closed_form_endpoint():
    model = Decay()
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = solve_ode(model, x0, method="rk4", steps=20)
    torch.testing.assert_close(sol.x, x0 * math.exp(-0.8), rtol=1e-7, atol=1e-12)  # rk4 error ~ h^4
    res = sample(model.float(), 5, (2,), method="rk4", nfe=80, seed=1)
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.x, noise * math.exp(-0.8), rtol=1e-5, atol=1e-6)


def test_likelihood_of_the_contracting_flow():
    # x(1) = e^{-k} x(0), so p_1 = N(0, e^{-2k} I)
    model = Decay()
    x1 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = log_likelihood(model, x1, atol=1e-9, rtol=1e-9)
    std = math.exp(-0.8)
    expected = (-0.5 * (x1 / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(res.log_prob, expected, rtol=1e-6, atol=1e-6)
