"""MeanFlow and the flow-map sampler against closed forms.

Gaussian noise N(0, I) to Gaussian data N(mu, diag(sd^2)) on the CondOT path: x_t is Gaussian with
mean t mu and standard deviation s_t = sqrt(t^2 sd^2 + (1 - t)^2) per coordinate, and the flow of
the marginal velocity is the affine map Phi(x, r -> t) = t mu + s_t / s_r (x - r mu). Its average
velocity u(x, r, t) = (Phi(x, r -> t) - x) / (t - r) is written here by hand; the first test checks
it against a dopri5 integration of fm-core's closed-form marginal velocity, the others use it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fm_core import (
    EmpiricalMarginalVelocity,
    FlowMatchingLoss,
    InstantaneousVelocity,
    MeanFlowLoss,
    flow_map_solve,
    gaussian_marginal_velocity,
    meanflow_target,
    sample,
    solve_ode,
)

MU = torch.tensor([2.0, -1.0], dtype=torch.float64)
SD = torch.tensor([0.5, 1.5], dtype=torch.float64)


def _s(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(t[:, None] ** 2 * SD**2 + (1 - t[:, None]) ** 2)


def flow(x, r, t):
    return t[:, None] * MU + _s(t) / _s(r) * (x - r[:, None] * MU)


def u_true(x, r, t):
    """Exact average velocity from r to t > r (written with torch ops, so torch.func.jvp goes through)."""
    return (flow(x, r, t) - x) / (t - r)[:, None]


def v_true(x, t):
    return gaussian_marginal_velocity(x, t, MU, SD)


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 2
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    r, t = torch.minimum(a, b) * 0.98, torch.maximum(a, b) * 0.98 + 0.02
    return x, r, t


def test_closed_form_flow_map_matches_dopri5():
    x, r, t = _points(16)
    for i in range(4):  # one flow-map step from r to t with u_true lands where dopri5 does
        sol = solve_ode(v_true, x[i : i + 1], method="dopri5", t0=float(r[i]), t1=float(t[i]), atol=1e-10, rtol=1e-10)
        step = x[i : i + 1] + (t[i] - r[i]) * u_true(x[i : i + 1], r[i : i + 1], t[i : i + 1])
        assert torch.allclose(step, sol.x, atol=1e-6), (step, sol.x)


def test_exact_average_velocity_is_a_fixed_point_of_the_target():
    x, r, t = _points()
    z = flow(torch.randn_like(x), torch.zeros_like(r), r)  # points distributed as x_r (any points work)
    u, target = meanflow_target(u_true, z, r, t, v_true(z, r))
    assert torch.allclose(u, u_true(z, r, t))
    assert torch.allclose(target, u, atol=1e-8), (target - u).abs().max()
    # the paper's sign (noise at t = 1) is not a fixed point in this convention
    wrong = v_true(z, r) - (t - r)[:, None] * ((target - v_true(z, r)) / (t - r)[:, None])
    assert (wrong - u).abs().max() > 0.1


def test_fixed_point_on_a_two_point_data_set():
    """Non-Gaussian: two data points; the exact flow map comes from an RK4 solve (50 steps, converged
    to about 1e-8) of the closed-form marginal velocity, differentiable, so the JVP goes through it.
    Start times stay above 0: EmpiricalMarginalVelocity clamps t into [0, t_max], and at exactly
    t = 0 the forward-mode derivative of that clamp is one-sided."""
    data = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
    v = EmpiricalMarginalVelocity(data)

    def u_rk4(x, r, t, n=50):
        s = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        xi = x
        for k in range(n):
            a, h = r + (t - r) * s[k], (t - r) * (s[k + 1] - s[k])
            k1 = v(xi, a)
            k2 = v(xi + h[:, None] / 2 * k1, a + h / 2)
            k3 = v(xi + h[:, None] / 2 * k2, a + h / 2)
            k4 = v(xi + h[:, None] * k3, a + h)
            xi = xi + h[:, None] / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return (xi - x) / (t - r)[:, None]

    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 2, generator=g, dtype=torch.float64)
    r = torch.tensor([0.05, 0.1, 0.3, 0.5], dtype=torch.float64)
    t = torch.tensor([0.6, 0.8, 0.7, 0.9], dtype=torch.float64)
    u, target = meanflow_target(u_rk4, z, r, t, v(z, r))
    assert torch.allclose(target, u, atol=1e-4), (target - u).abs().max()
    assert (u - v(z, r)).abs().max() > 0.05  # u is not the instantaneous velocity: the check has teeth


class TwoTimeMLP(nn.Module):
    def __init__(self, dim=2, hidden=32, num_classes=None):
        super().__init__()
        self.emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim + 2, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, r, t, y=None):
        h = self.inp(torch.cat([x, r[:, None], (t - r)[:, None]], dim=1))
        if self.emb is not None and y is not None:
            h = h + self.emb(y)
        return self.out(h)


def test_jvp_matches_central_differences():
    torch.manual_seed(0)
    net = TwoTimeMLP().double()
    x, r, t = _points(8)
    v = torch.randn_like(x)
    u, target = meanflow_target(net, x, r, t, v)
    eps = 1e-6
    with torch.no_grad():
        fd = (net(x + eps * v, r + eps, t) - net(x - eps * v, r - eps, t)) / (2 * eps)
    assert torch.allclose(target, v + (t - r)[:, None] * fd, atol=1e-7)


@pytest.mark.parametrize("moving", [0, 5, 12], ids=["all r=t", "mixed", "all r<t"])
def test_loss_on_mixed_rows_matches_finite_differences(moving):
    """Rows with r = t and r < t in one batch (the loss takes the JVP on the r < t rows only): the
    loss equals sum ||u - target||^2 / rows with target = v where r = t and v + (t - r) du by central
    differences where r < t (float64, no adaptive weight)."""
    torch.manual_seed(1)
    net = TwoTimeMLP(num_classes=3).double()
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(12, 2, generator=g, dtype=torch.float64) + 1
    x0 = torch.randn(12, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    t = torch.rand(12, generator=g, dtype=torch.float64) * 0.9 + 0.1
    r = t.clone()
    r[:moving] = t[:moving] * torch.rand(moving, generator=g, dtype=torch.float64)
    loss = MeanFlowLoss(adaptive_p=0.0, num_classes=3)(net, x1, y, x0=x0, r=r, t=t)
    z, v = (1 - r)[:, None] * x0 + r[:, None] * x1, x1 - x0  # the CondOT path at the smaller time r
    eps = 1e-6
    with torch.no_grad():
        du = (net(z + eps * v, r + eps, t, y) - net(z - eps * v, r - eps, t, y)) / (2 * eps)
        target = v + (t - r)[:, None] * du
        expected = (net(z, r, t, y) - target).pow(2).sum(1).mean()
    assert torch.allclose(loss.detach(), expected, rtol=1e-8, atol=1e-12)


def test_loss_with_r_equal_t_is_the_flow_matching_loss():
    """equal_fraction=1 and no adaptive weight: every row has r = t, the target is the conditional
    velocity, so the loss is FlowMatchingLoss's (a mean over entries) times the entries per sample."""
    torch.manual_seed(0)
    net = TwoTimeMLP()
    x1 = torch.randn(32, 2) + 3
    x0, t = torch.randn(32, 2), torch.rand(32)
    mf = MeanFlowLoss(equal_fraction=1.0, adaptive_p=0.0)(net, x1, x0=x0, r=t, t=t)
    fm = FlowMatchingLoss()(InstantaneousVelocity(net), x1, x0=x0, t=t)
    assert torch.allclose(mf, 2 * fm, rtol=1e-6)


def test_adaptive_weight_and_gradients():
    torch.manual_seed(0)
    net = TwoTimeMLP()
    x1 = torch.randn(16, 2)
    g = torch.Generator().manual_seed(3)
    loss = MeanFlowLoss(adaptive_p=1.0, adaptive_c=1e-3)(net, x1, generator=g)
    loss.backward()
    assert 0 < float(loss.detach()) < 1  # w * ||d||^2 = ||d||^2 / (||d||^2 + c) < 1 per row
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # same generator, same draws: deterministic
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(loss.detach(), MeanFlowLoss()(net, x1, generator=g2).detach())


@pytest.mark.slow
def test_meanflow_training_learns_the_gaussian_flow_map():
    """Train a small two-time MLP on Gaussian -> Gaussian; one flow-map step must move N(0, I) to about
    N(mu, sd^2) (mean within 0.15, std within 0.15)."""
    torch.manual_seed(0)
    net = TwoTimeMLP(hidden=64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = MeanFlowLoss(equal_fraction=0.5)
    mu, sd = MU.float(), SD.float()
    for _ in range(2000):
        x1 = mu + sd * torch.randn(256, 2)
        loss = loss_fn(net, x1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = sample(net, 4000, (2,), method="flow-map", nfe=1, seed=0)
    assert res.nfe == 1
    assert torch.allclose(res.x.mean(0), mu, atol=0.15), res.x.mean(0)
    assert torch.allclose(res.x.std(0), sd, atol=0.15), res.x.std(0)


def test_flow_map_sampler_with_the_exact_average_velocity():
    for nfe in (1, 2, 5):
        res = sample(
            lambda x, r, t: u_true(x.double(), r.double(), t.double()).float(),
            256,
            (2,),
            method="flow-map",
            nfe=nfe,
            seed=1,
        )
        noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)).double()
        exact = flow(noise, torch.zeros(256, dtype=torch.float64), torch.ones(256, dtype=torch.float64))
        assert res.nfe == nfe and res.times.numel() == nfe + 1
        assert torch.allclose(res.x.double(), exact, atol=1e-5)

    # every ODE solver through u(x, t, t): the two-time model as an instantaneous velocity field
    def u_or_v(x, r, t):
        same = (t - r).abs() < 1e-12
        safe_t = torch.where(same, torch.clamp(r + 1e-3, max=1.0), t)
        return torch.where(same[:, None], v_true(x, r), u_true(x, r, safe_t))

    res = sample(InstantaneousVelocity(u_or_v), 64, (2,), method="dopri5", seed=2)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(2)).double()
    exact = flow(noise, torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64))
    assert torch.allclose(res.x.double(), exact, atol=1e-3)


def test_flow_map_guidance_and_grid():
    class Shift(nn.Module):  # u = y (as a float, per coordinate), null label 3 gives 0
        def forward(self, x, r, t, y):
            return torch.where(y[:, None] == 3, 0.0, y[:, None].float()).expand_as(x)

    x = torch.zeros(4, 2)
    y = torch.tensor([0, 1, 2, 1])
    sol = flow_map_solve(Shift(), x, time_grid=[0.0, 0.25, 1.0], y=y, guidance=2.5, num_classes=3)
    # guided u = u_null + 2.5 (u_cond - u_null) = 2.5 y; two steps cover t = 0 -> 1
    assert torch.allclose(sol.x, 2.5 * y[:, None].float().expand(4, 2))
    assert sol.nfe == 2
    with pytest.raises(ValueError, match="increase strictly"):
        flow_map_solve(Shift(), x, time_grid=[0.0, 0.5, 0.4], y=y)
    with pytest.raises(ValueError, match="num_classes"):
        flow_map_solve(Shift(), x, steps=1, y=y, guidance=2.0)


def test_guidance_in_training_regresses_on_the_guided_velocity():
    """With r = t the target is w v + (1 - w) u(z, r, r, null) on labelled rows: a model that returns
    the conditional velocity of this batch for every label has, at w, the loss of the guided target."""
    torch.manual_seed(0)
    net = TwoTimeMLP(num_classes=2)
    x1, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    x0, t = torch.randn(8, 2), torch.rand(8)
    loss = MeanFlowLoss(num_classes=2, label_dropout=0.1, guidance=2.0, equal_fraction=1.0, adaptive_p=0.0)
    g = torch.Generator().manual_seed(0)
    got = loss(net, x1, y, x0=x0, r=t, t=t, generator=g)
    # independent computation of the same quantity (no dropout draw hits: check the mask first)
    drop = torch.rand(8, generator=torch.Generator().manual_seed(0)) < 0.1
    z = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = x1 - x0
    with torch.no_grad():
        u_null = net(z, t, t, torch.full_like(y, 2))
    target = torch.where(drop[:, None], v, 2.0 * v + (1 - 2.0) * u_null)
    y_in = torch.where(drop, torch.full_like(y, 2), y)
    want = (net(z, t, t, y_in) - target).pow(2).sum(1).mean()
    assert torch.allclose(got, want, rtol=1e-6)


def test_distillation_loss_is_zero_at_the_exact_average_velocity():
    """With the marginal velocity as the teacher, the exact u makes every row's error zero (the
    target is a fixed point row by row), while the conditional velocity leaves its noise in the loss."""
    g = torch.Generator().manual_seed(5)
    x1 = MU + SD * torch.randn(64, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    _, r, t = _points(64, seed=6)
    distil = MeanFlowLoss(adaptive_p=0.0, velocity=v_true)(u_true, x1, x0=x0, r=r, t=t)
    plain = MeanFlowLoss(adaptive_p=0.0)(u_true, x1, x0=x0, r=r, t=t)
    assert float(distil) < 1e-16, float(distil)
    assert float(plain) > 0.1, float(plain)


def test_distillation_with_guidance_uses_the_teachers_null_velocity():
    """r = t rows: the target is w v(z, r, y) + (1 - w) v(z, r, null) on labelled rows and the teacher's
    null velocity on dropped ones, computed here by hand with a teacher whose velocity is its label."""

    def teacher(x, t, y):
        return (y[:, None].to(x.dtype) + 0.5 * t[:, None]).expand_as(x)

    torch.manual_seed(0)
    net = TwoTimeMLP(num_classes=2)
    x1, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    x0, t = torch.randn(8, 2), torch.rand(8)
    loss = MeanFlowLoss(num_classes=2, label_dropout=0.3, guidance=3.0, equal_fraction=1.0, adaptive_p=0.0,
                        velocity=teacher)  # fmt: skip
    got = loss(net, x1, y, x0=x0, r=t, t=t, generator=torch.Generator().manual_seed(0))
    drop = torch.rand(8, generator=torch.Generator().manual_seed(0)) < 0.3
    assert 0 < int(drop.sum()) < 8  # both kinds of rows are in the batch
    z = (1 - t[:, None]) * x0 + t[:, None] * x1
    y_in = torch.where(drop, torch.full_like(y, 2), y)
    v_null = (2.0 + 0.5 * t[:, None]).expand(8, 2)
    v_y = (y_in[:, None].float() + 0.5 * t[:, None]).expand(8, 2)
    target = torch.where(drop[:, None], v_null, 3.0 * v_y - 2.0 * v_null)
    want = (net(z, t, t, y_in) - target).pow(2).sum(1).mean()
    assert torch.allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="callable"):
        MeanFlowLoss(velocity=3.0)  # type: ignore[arg-type]


def test_bad_arguments():
    net = TwoTimeMLP()
    with pytest.raises(ValueError, match="r <= t"):
        MeanFlowLoss()(net, torch.randn(4, 2), r=torch.full((4,), 0.9), t=torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="equal_fraction"):
        MeanFlowLoss(equal_fraction=1.5)
    with pytest.raises(ValueError, match="guidance"):
        MeanFlowLoss(guidance=2.0)
    with pytest.raises(ValueError, match="nfe"):
        sample(net, 4, (2,), method="flow-map", nfe=0)
