"""fm_eval.straightness against closed forms: straight lines, the rotation field along its exact circles,
the Gaussian flow's scalar profile, and invariance of the normalised value under rescaling."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from fm_eval import Straightness, straightness


def _rotation(w: float):
    a = torch.tensor([[0.0, -w], [w, 0.0]], dtype=torch.float64)

    def v(x, t):
        return x @ a.T

    return v


def _circle(x0: torch.Tensor, w: float, times: torch.Tensor) -> torch.Tensor:
    """Exact trajectory of dx/dt = A x: x_t = R(w t) x0, [K + 1, B, 2]."""
    c, s = torch.cos(w * times)[:, None], torch.sin(w * times)[:, None]
    return torch.stack([c * x0[:, 0] - s * x0[:, 1], s * x0[:, 0] + c * x0[:, 1]], dim=-1)


@pytest.mark.parametrize("rule", ["trapezoid", "left"])
def test_constant_velocity_is_straight(rule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, 4, generator=g)
    c = torch.randn(3, 4, generator=g)
    times = torch.linspace(0, 1, 9)
    traj = x0[None] + times[:, None, None, None] * c
    res = straightness(lambda x, t: c.expand_as(x), traj, times, rule=rule)
    assert isinstance(res, Straightness)
    assert res.value == pytest.approx(0.0, abs=1e-10)
    assert res.normalised == pytest.approx(0.0, abs=1e-10)
    assert res.n == 16 and res.nfe == (9 if rule == "trapezoid" else 8) and res.rule == rule


def test_rotation_matches_closed_form():
    # v = A x, x_t = R(w t) x0, x1 - x0 = (R(w) - I) x0. With |A x_t| = w |x0|, |(R(w) - I) x0|^2 =
    # (2 - 2 cos w) |x0|^2 and A x_t . (R(w) - I) x0 = w |x0|^2 (sin(w (1 - t)) + sin(w t)):
    # int_0^1 ||A x_t - (x1 - x0)||^2 dt = |x0|^2 (w^2 + 2 - 2 cos w - 4 (1 - cos w)) = |x0|^2 (w^2 - 2 + 2 cos w).
    w = 1.3
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = torch.linspace(0, 1, 2001, dtype=torch.float64)
    res = straightness(_rotation(w), _circle(x0, w, times), times)
    r2 = float(x0.pow(2).sum(1).mean())
    assert res.value == pytest.approx(r2 * (w**2 - 2 + 2 * math.cos(w)), rel=1e-3)
    assert res.normalised == pytest.approx((w**2 - 2 + 2 * math.cos(w)) / (2 - 2 * math.cos(w)), rel=1e-3)
    assert res.nfe == 2001
    # the left-point rule converges to the same value, at first order
    left = straightness(_rotation(w), _circle(x0, w, times), times, rule="left")
    assert left.value == pytest.approx(res.value, rel=5e-3)
    # the integrand is a time average: on [0.5, 1] the circle through x_0.5 has the same closed form
    # with w -> w / 2 per unit of time and a straight-line velocity (x_1 - x_0.5) / 0.5
    half = times[1000:]
    res_half = straightness(_rotation(w), _circle(x0, w, half), half)
    wh = w / 2  # the angle swept over the window
    assert res_half.value == pytest.approx(r2 * (wh**2 - 2 + 2 * math.cos(wh)) / 0.25, rel=1e-3)


def test_gaussian_flow_matches_quadrature():
    # N(0, 1) -> N(m, s^2) on the CondOT path: x_t = t m + sig(t) x0 with sig(t) = sqrt(t^2 s^2 + (1 - t)^2),
    # v = m + sig'(t) x0 and x1 - x0 = m + (s - 1) x0, so S = E x0^2 int (sig' - (s - 1))^2 dt
    m, s = 1.5, 0.3

    def sig(t):
        return math.sqrt(t * t * s * s + (1 - t) ** 2)

    def dsig(t):
        return (t * s * s - (1 - t)) / sig(t)

    x0 = torch.randn(256, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    times = torch.linspace(0, 1, 1001, dtype=torch.float64)
    traj = torch.stack([t * m + sig(float(t)) * x0 for t in times])

    def v(x, t):
        tt = float(t[0])
        return m + dsig(tt) * (x - tt * m) / sig(tt)

    res = straightness(v, traj, times)
    expected = float(x0.pow(2).mean()) * quad(lambda t: (dsig(t) - (s - 1)) ** 2, 0, 1)[0]
    assert res.value == pytest.approx(expected, rel=1e-3)
    assert res.value > 0.05  # not straight


def test_normalised_value_is_scale_invariant():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(32, 2, generator=g, dtype=torch.float64)
    times = torch.linspace(0, 1, 51, dtype=torch.float64)
    w, c = 2.0, 7.5
    base = straightness(_rotation(w), _circle(x0, w, times), times)
    scaled = straightness(lambda x, t: c * _rotation(w)(x / c, t), c * _circle(x0, w, times), times)
    assert scaled.normalised == pytest.approx(base.normalised, rel=1e-9)
    assert scaled.value == pytest.approx(c * c * base.value, rel=1e-9)


def test_labels_reach_the_velocity():
    x0 = torch.zeros(4, 2)
    times = torch.tensor([0.0, 1.0])
    traj = torch.stack([x0, x0 + 1])
    y = torch.tensor([0, 1, 0, 1])
    # v = 1 + y: the label-1 rows deviate by 1 at both ends (integral 1 each), the others not
    res = straightness(lambda x, t, y: 1.0 + y[:, None].float().expand_as(x), traj, times, y=y)
    assert res.value == pytest.approx(1.0)  # (0 + 2 + 0 + 2) / 4
    assert res.normalised == pytest.approx(res.value / 2.0)


def test_bad_input_is_a_one_line_error():
    traj = torch.zeros(3, 4, 2)
    times = torch.tensor([0.0, 0.5, 1.0])
    v = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="unknown rule 'simpson'"):
        straightness(v, traj, times, rule="simpson")
    with pytest.raises(ValueError, match="times must have shape"):
        straightness(v, traj, times[:2])
    with pytest.raises(ValueError, match="strictly increasing"):
        straightness(v, traj, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="trajectory must be a tensor"):
        straightness(v, torch.zeros(1, 4, 2), times[:1])
    with pytest.raises(ValueError, match="velocity must return"):
        straightness(lambda x, t: x[:, :1], traj, times)
    with pytest.raises(ValueError, match="y must be None"):
        straightness(v, traj, times, y=torch.zeros(3, dtype=torch.long))
