"""Schedulers: endpoints, closed forms and exact derivatives (float64, against autograd and
finite differences, and against an independent quadrature of the VP beta schedule)."""

import math

import pytest
import torch
from scipy.integrate import quad

from fm_core import (
    CondOTScheduler,
    CosineScheduler,
    PolynomialScheduler,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
    get_scheduler,
)

ALL = [
    CondOTScheduler(),
    CondOTScheduler(sigma_min=0.1),
    CosineScheduler(),
    VPScheduler(),
    VPScheduler(beta_min=0.5, beta_max=5.0),
    PolynomialScheduler(2.0),
    PolynomialScheduler(0.5),
    PolynomialScheduler(3.0),
]
IDS = [repr(s) for s in ALL]
T_INTERIOR = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)


def test_output_is_dataclass_shaped_like_t():
    t = torch.rand(3, 4, dtype=torch.float64)
    for s in ALL:
        out = s(t)
        assert isinstance(out, SchedulerOutput)
        for f in (out.alpha_t, out.sigma_t, out.d_alpha_t, out.d_sigma_t):
            assert f.shape == t.shape and f.dtype == torch.float64


@pytest.mark.parametrize(
    "sched, a0, s0, a1, s1",
    [
        (CondOTScheduler(), 0.0, 1.0, 1.0, 0.0),
        (CondOTScheduler(sigma_min=0.1), 0.0, 1.0, 1.0, 0.1),
        (CosineScheduler(), 0.0, 1.0, 1.0, 0.0),
        (PolynomialScheduler(2.0), 0.0, 1.0, 1.0, 0.0),
        # VP: alpha_0 = exp(-T(1)/2), T(1) = beta_min + (beta_max - beta_min)/2 = 10.05
        (VPScheduler(), math.exp(-10.05 / 2), math.sqrt(1 - math.exp(-10.05)), 1.0, 0.0),
    ],
)
def test_endpoints_noise_at_0_data_at_1(sched, a0, s0, a1, s1):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = sched(t)
    assert out.alpha_t[0].item() == pytest.approx(a0, abs=1e-15)
    assert out.sigma_t[0].item() == pytest.approx(s0, abs=1e-15)
    assert out.alpha_t[1].item() == pytest.approx(a1, abs=1e-15)
    assert out.sigma_t[1].item() == pytest.approx(s1, abs=1e-15)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_derivatives_match_autograd(sched):
    t = T_INTERIOR.clone().requires_grad_(True)
    out = sched(t)
    (da,) = torch.autograd.grad(out.alpha_t.sum(), t, retain_graph=True)
    (ds,) = torch.autograd.grad(out.sigma_t.sum(), t)
    torch.testing.assert_close(out.d_alpha_t.detach(), da, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.d_sigma_t.detach(), ds, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_derivatives_match_central_differences(sched):
    h = 1e-6
    t = T_INTERIOR
    fd_a = (sched(t + h).alpha_t - sched(t - h).alpha_t) / (2 * h)
    fd_s = (sched(t + h).sigma_t - sched(t - h).sigma_t) / (2 * h)
    out = sched(t)
    torch.testing.assert_close(out.d_alpha_t, fd_a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.d_sigma_t, fd_s, rtol=1e-6, atol=1e-7)


def test_closed_forms():
    t = T_INTERIOR
    o = CondOTScheduler(sigma_min=0.2)(t)
    torch.testing.assert_close(o.alpha_t, t)
    torch.testing.assert_close(o.sigma_t, 1 - 0.8 * t)
    o = CosineScheduler()(t)
    torch.testing.assert_close(o.alpha_t, torch.sin(math.pi * t / 2))
    torch.testing.assert_close(o.sigma_t, torch.cos(math.pi * t / 2))
    o = PolynomialScheduler(3.0)(t)
    torch.testing.assert_close(o.alpha_t, t**3)
    torch.testing.assert_close(o.sigma_t, 1 - t**3)


def test_vp_matches_integral_of_beta():
    """alpha_t = exp(-1/2 int_0^{1-t} beta(s) ds), beta(s) linear from beta_min to beta_max."""
    bmin, bmax = 0.1, 20.0
    sched = VPScheduler(bmin, bmax)
    for tv in [0.0, 0.1, 0.37, 0.5, 0.81, 0.99, 1.0]:
        integral, _ = quad(lambda s: bmin + (bmax - bmin) * s, 0.0, 1.0 - tv)
        o = sched(torch.tensor([tv], dtype=torch.float64))
        assert o.alpha_t.item() == pytest.approx(math.exp(-0.5 * integral), rel=1e-12)
        assert o.alpha_t.item() ** 2 + o.sigma_t.item() ** 2 == pytest.approx(1.0, rel=1e-12)


def test_variance_preserving_schedulers():
    for sched in (CosineScheduler(), VPScheduler()):
        o = sched(T_INTERIOR)
        torch.testing.assert_close(o.alpha_t**2 + o.sigma_t**2, torch.ones_like(T_INTERIOR))


def test_vp_sigma_precise_near_data_end():
    # sigma_t ~ sqrt(beta_min (1 - t)) for t -> 1: no cancellation in 1 - alpha^2 (float32)
    t = torch.tensor([1 - 1e-6], dtype=torch.float32)
    s = VPScheduler()(t).sigma_t.item()
    assert s == pytest.approx(math.sqrt(0.1 * 1e-6), rel=5e-2)


def test_snr_inverse():
    t = T_INTERIOR
    torch.testing.assert_close(CondOTScheduler().snr_inverse(t), (1 - t) / t)


def test_get_scheduler():
    assert isinstance(get_scheduler("condot", sigma_min=0.01), CondOTScheduler)
    assert get_scheduler("condot", sigma_min=0.01).sigma_min == 0.01
    assert isinstance(get_scheduler("cosine"), CosineScheduler)
    vp = get_scheduler("vp", beta_min=0.2, beta_max=10.0)
    assert isinstance(vp, VPScheduler) and (vp.beta_min, vp.beta_max) == (0.2, 10.0)
    assert get_scheduler("polynomial", n=3).n == 3.0
    assert all(isinstance(get_scheduler(n), Scheduler) for n in ("condot", "cosine", "vp", "polynomial"))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_scheduler("sigmoid"), "sigmoid"),
        (lambda: get_scheduler("cosine", sigma_min=0.1), "sigma_min"),
        (lambda: CondOTScheduler(sigma_min=1.0), "sigma_min"),
        (lambda: CondOTScheduler(sigma_min=-0.1), "sigma_min"),
        (lambda: VPScheduler(beta_min=0.0), "beta_min"),
        (lambda: VPScheduler(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: PolynomialScheduler(n=0), "n"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
