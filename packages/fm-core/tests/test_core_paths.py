"""Affine paths: the CondOT target against a hand computation (DESIGN.md formula), the time
convention, u_t = d/dt x_t by autograd, conversion round trips (float64), shape checks."""

import pytest
import torch

from fm_core import (
    AffinePath,
    CondOTPath,
    CondOTScheduler,
    CosineScheduler,
    PathSample,
    PolynomialScheduler,
    VPScheduler,
)

PATHS = [
    CondOTPath(),
    CondOTPath(sigma_min=0.05),
    AffinePath(CosineScheduler()),
    AffinePath(VPScheduler()),
    AffinePath(PolynomialScheduler(2.0)),
    AffinePath(PolynomialScheduler(0.7)),
]
IDS = [repr(p) for p in PATHS]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_condot_target_by_hand(sigma_min):
    g = _gen(1)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    ps = CondOTPath(sigma_min).sample(x0, x1, t)
    assert isinstance(ps, PathSample)
    for b in range(5):
        tb = t[b].item()
        for d in range(3):
            xt = (1 - (1 - sigma_min) * tb) * x0[b, d].item() + tb * x1[b, d].item()
            u = x1[b, d].item() - (1 - sigma_min) * x0[b, d].item()
            assert ps.x_t[b, d].item() == pytest.approx(xt, abs=1e-14)
            assert ps.u_t[b, d].item() == pytest.approx(u, abs=1e-14)
    assert torch.equal(ps.t, t) and ps.x0 is x0 and ps.x1 is x1


def test_time_convention_noise_at_0_data_at_1():
    """Pins the convention: t = 0 gives the noise x0, t = 1 the data x1."""
    g = _gen(2)
    noise = torch.randn(4, 2, generator=g)
    data = torch.randn(4, 2, generator=g) + 10.0
    path = CondOTPath()
    at0 = path.sample(noise, data, torch.zeros(4))
    at1 = path.sample(noise, data, torch.ones(4))
    torch.testing.assert_close(at0.x_t, noise, rtol=0, atol=0)
    torch.testing.assert_close(at1.x_t, data, rtol=0, atol=0)
    # with sigma_min the data end keeps sigma_min of the noise
    at1 = CondOTPath(sigma_min=0.1).sample(noise, data, torch.ones(4))
    torch.testing.assert_close(at1.x_t, data + 0.1 * noise)
    # cosine path: same convention
    at1 = AffinePath(CosineScheduler()).sample(noise, data, torch.ones(4))
    torch.testing.assert_close(at1.x_t, data, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_target_velocity_is_time_derivative(path):
    """u_t = d/dt x_t (autograd, one t per row, image-shaped batch)."""
    g = _gen(3)
    x0 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64).requires_grad_(True)
    ps = path.sample(x0, x1, t)
    # x_t[b] depends on t[b] only, so the gradient of sum(x_t * e) w.r.t. t[b] is the
    # derivative of x_t[b]; take one element direction at a time via a jacobian.
    jac = torch.autograd.functional.jacobian(lambda tt: path.sample(x0, x1, tt).x_t, t)
    dxdt = torch.stack([jac[b, ..., b] for b in range(6)])
    torch.testing.assert_close(ps.u_t.detach(), dxdt, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_conversion_round_trips_float64(path):
    g = _gen(4)
    x0 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    x1 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    ps = path.sample(x0, x1, t)
    v, xt = ps.u_t, ps.x_t
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(path.velocity_to_x1(v, xt, t), x1, **tol)
    torch.testing.assert_close(path.velocity_to_x0(v, xt, t), x0, **tol)
    torch.testing.assert_close(path.x1_to_velocity(x1, xt, t), v, **tol)
    torch.testing.assert_close(path.x0_to_velocity(x0, xt, t), v, **tol)
    # x1 -> v -> x0 and x0 -> v -> x1
    torch.testing.assert_close(path.velocity_to_x0(path.x1_to_velocity(x1, xt, t), xt, t), x0, **tol)
    torch.testing.assert_close(path.velocity_to_x1(path.x0_to_velocity(x0, xt, t), xt, t), x1, **tol)


def test_condot_velocity_conversions_finite_at_both_ends():
    """velocity -> x1 / x0 on the CondOT path must not divide by (1 - t): exact at t = 0 and 1."""
    g = _gen(5)
    x0 = torch.randn(4, 3, generator=g)
    x1 = torch.randn(4, 3, generator=g)
    path = CondOTPath()
    for tv in (0.0, 1.0 - 1e-7, 1.0):
        t = torch.full((4,), tv)
        ps = path.sample(x0, x1, t)
        rec1 = path.velocity_to_x1(ps.u_t, ps.x_t, t)
        rec0 = path.velocity_to_x0(ps.u_t, ps.x_t, t)
        assert torch.isfinite(rec1).all() and torch.isfinite(rec0).all()
        torch.testing.assert_close(rec1, x1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rec0, x0, atol=1e-5, rtol=1e-5)
    # noise prediction -> velocity is fine at t = 1 (divides by t only)
    t = torch.ones(4)
    ps = path.sample(x0, x1, t)
    torch.testing.assert_close(path.x0_to_velocity(x0, ps.x_t, t), x1 - x0, atol=1e-6, rtol=1e-6)
    # with sigma_min > 0, data prediction -> velocity is finite at t = 1 too
    path = CondOTPath(sigma_min=0.01)
    ps = path.sample(x0, x1, t)
    torch.testing.assert_close(path.x1_to_velocity(x1, ps.x_t, t), ps.u_t, atol=1e-4, rtol=1e-4)


def test_vp_velocity_to_x1_finite_near_data_end():
    """The VP conversion is rewritten without 1/sigma_t; check it close to t = 1 in float64."""
    g = _gen(6)
    x0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x1 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    path = AffinePath(VPScheduler())
    t = torch.full((3,), 1 - 1e-9, dtype=torch.float64)
    ps = path.sample(x0, x1, t)
    torch.testing.assert_close(path.velocity_to_x1(ps.u_t, ps.x_t, t), x1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(path.velocity_to_x0(ps.u_t, ps.x_t, t), x0, rtol=1e-6, atol=1e-6)


def test_polynomial_velocity_to_x0_at_t0():
    g = _gen(7)
    x0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x1 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    path = AffinePath(PolynomialScheduler(2.0))
    t = torch.zeros(3, dtype=torch.float64)
    ps = path.sample(x0, x1, t)
    torch.testing.assert_close(path.velocity_to_x0(ps.u_t, ps.x_t, t), x0)


def test_generic_conversion_matches_condot_special_case():
    """The base-class formula (through the 2x2 determinant) agrees with CondOT's simplified one."""
    from fm_core.schedulers import Scheduler

    class Generic(CondOTScheduler):
        velocity_to_x1_coeffs = Scheduler.velocity_to_x1_coeffs
        velocity_to_x0_coeffs = Scheduler.velocity_to_x0_coeffs

    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for a, b in ((Generic(0.1), CondOTScheduler(0.1)),):
        for name in ("velocity_to_x1_coeffs", "velocity_to_x0_coeffs"):
            for ca, cb in zip(getattr(a, name)(t), getattr(b, name)(t)):
                torch.testing.assert_close(ca, cb)


def test_scalar_time_broadcasts_and_dtype_follows_x():
    x0 = torch.randn(3, 2, dtype=torch.float64)
    x1 = torch.randn(3, 2, dtype=torch.float64)
    ps = CondOTPath().sample(x0, x1, 0.25)
    assert ps.t.shape == (3,) and ps.t.dtype == torch.float64
    torch.testing.assert_close(ps.x_t, 0.75 * x0 + 0.25 * x1)
    ps = CondOTPath().sample(x0, x1, torch.tensor(0.5, dtype=torch.float32))
    assert ps.t.dtype == torch.float64 and ps.t.shape == (3,)
    # a Python float time is taken in x's dtype directly, not rounded through float32 first
    assert CondOTPath().sample(x0, x1, 0.1).t.tolist() == [0.1, 0.1, 0.1]


@pytest.mark.parametrize(
    "x0_shape, x1_shape, t_shape, match",
    [
        ((4, 2), (4, 3), (4,), "same shape"),
        ((4, 2), (4, 2), (4, 1), r"\[B\] = \[4\]"),
        ((4, 2), (4, 2), (3,), r"shape \(3,\)"),
    ],
)
def test_shape_errors(x0_shape, x1_shape, t_shape, match):
    with pytest.raises(ValueError, match=match):
        CondOTPath().sample(torch.zeros(x0_shape), torch.zeros(x1_shape), torch.rand(t_shape))


def test_time_out_of_range_raises():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CondOTPath().sample(x, x, torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        CondOTPath().sample(x, x, torch.tensor([0.5, float("nan")]))


def test_conversion_shape_error():
    with pytest.raises(ValueError, match="same shape"):
        CondOTPath().velocity_to_x1(torch.zeros(2, 3), torch.zeros(2, 2), torch.rand(2))


def test_bad_scheduler():
    with pytest.raises(ValueError, match="Scheduler"):
        AffinePath("condot")
