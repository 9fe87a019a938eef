"""The batch-marginal ("stable target field") target of FlowMatchingLoss against independent
computations: the memoriser's closed-form marginal velocity over the same points, the Gaussian
closed form as the batch grows, and its limits at t = 0 and t = 1."""

import math

import pytest
import torch

from fm_core import (
    AffinePath,
    CondOTPath,
    CosineScheduler,
    EmpiricalMarginalVelocity,
    ExactOTCoupling,
    FlowMatchingLoss,
    batch_marginal_target,
    gaussian_marginal_velocity,
)


def _pair(b, d, t, gen, dtype=torch.float64, path=None):
    path = CondOTPath() if path is None else path
    x0 = torch.randn(b, d, generator=gen, dtype=dtype)
    x1 = 2.0 + 0.5 * torch.randn(b, d, generator=gen, dtype=dtype)
    return path, path.sample(x0, x1, t)


def test_equals_the_memoriser_velocity_over_the_same_points():
    gen = torch.Generator().manual_seed(0)
    b = 64
    t = torch.rand(b, generator=gen, dtype=torch.float64) * 0.98
    path, ps = _pair(b, 3, t, gen)
    target = batch_marginal_target(path, ps)
    # EmpiricalMarginalVelocity computes (E[x1 | x_t] - x_t) / (1 - t) directly: an independent formula
    expected = EmpiricalMarginalVelocity(ps.x1)(ps.x_t, ps.t)
    torch.testing.assert_close(target, expected, rtol=1e-9, atol=1e-9)


def test_labels_restrict_the_posterior_and_the_null_class_uses_every_point():
    gen = torch.Generator().manual_seed(1)
    b = 48
    t = torch.rand(b, generator=gen, dtype=torch.float64) * 0.9
    path, ps = _pair(b, 2, t, gen)
    y = torch.randint(0, 3, (b,), generator=gen)
    dropped = torch.zeros(b, dtype=torch.bool)
    dropped[:8] = True  # labels replaced by the null class 3 for guidance training
    target = batch_marginal_target(path, ps, y, dropped=dropped)
    # the memoriser treats an unknown label (3) as "all points"; dropped points stay in their class
    mem = EmpiricalMarginalVelocity(ps.x1, labels=y)
    expected = mem(ps.x_t, ps.t, torch.where(dropped, torch.full_like(y, 3), y))
    torch.testing.assert_close(target, expected, rtol=1e-9, atol=1e-9)


def test_converges_to_the_gaussian_closed_form():
    gen = torch.Generator().manual_seed(2)
    b, d = 3000, 2
    mean, std = 1.5, 0.5
    x0 = torch.randn(b, d, generator=gen, dtype=torch.float64)
    x1 = mean + std * torch.randn(b, d, generator=gen, dtype=torch.float64)
    t = torch.full((b,), 0.6, dtype=torch.float64)
    path = CondOTPath()
    ps = path.sample(x0, x1, t)
    target = batch_marginal_target(path, ps)
    exact = gaussian_marginal_velocity(ps.x_t, t, mean=mean, std=std)
    cond_err = (ps.u_t - exact).pow(2).mean()
    err = (target - exact).pow(2).mean()
    assert err < 0.02 * cond_err  # the conditional target's variance is almost all gone
    assert err < 5e-3


def test_limits_at_t0_and_t1():
    gen = torch.Generator().manual_seed(3)
    b = 32
    path, ps0 = _pair(b, 2, torch.zeros(b, dtype=torch.float64), gen)
    # t = 0: x_t = x0 says nothing about x1, so E[u] = mean(x1) - x0
    torch.testing.assert_close(batch_marginal_target(path, ps0), ps0.x1.mean(0) - ps0.x0)
    _, ps1 = _pair(b, 2, torch.ones(b, dtype=torch.float64), gen)
    # t = 1 (sigma = 0): the posterior is the point itself; the target is x1 - x0, finite
    out = batch_marginal_target(path, ps1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ps1.x1 - ps1.x0)


def test_other_affine_path_matches_a_direct_posterior_mean():
    gen = torch.Generator().manual_seed(4)
    b = 40
    path = AffinePath(CosineScheduler())
    t = 0.05 + 0.9 * torch.rand(b, generator=gen, dtype=torch.float64)
    _, ps = _pair(b, 2, t, gen, path=path)
    o = path.scheduler(t)
    a, s, da, ds = (c[:, None] for c in (o.alpha_t, o.sigma_t, o.d_alpha_t, o.d_sigma_t))
    d2 = ((ps.x_t[:, None, :] - a[:, :, None] * ps.x1[None]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * s**2), dim=1)
    e_x1 = w @ ps.x1
    # u = da E[x1] + ds E[x0], with E[x0] = (x_t - a E[x1]) / s
    expected = da * e_x1 + ds * (ps.x_t - a * e_x1) / s
    torch.testing.assert_close(batch_marginal_target(path, ps), expected, rtol=1e-8, atol=1e-8)


def test_loss_uses_it_and_refuses_ot_coupling():
    gen = torch.Generator().manual_seed(5)
    x1 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    x0 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64)
    zero = lambda x, t, y=None: torch.zeros_like(x)  # noqa: E731
    loss = FlowMatchingLoss(target="batch-marginal")(zero, x1, x0=x0, t=t)
    ps = CondOTPath().sample(x0, x1, t)
    expected = EmpiricalMarginalVelocity(x1, t_max=1.0 - 1e-12)(ps.x_t, t).pow(2).mean()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-8)
    with pytest.raises(ValueError, match="independent"):
        FlowMatchingLoss(coupling=ExactOTCoupling(), target="batch-marginal")
    with pytest.raises(ValueError, match="unknown target"):
        FlowMatchingLoss(target="marginal")
