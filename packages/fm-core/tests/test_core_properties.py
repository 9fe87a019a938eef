"""Property-based tests (hypothesis) over fm-core: any batch shape, float32/float64, any t in [0, 1].

* paths hit their endpoints (x_0 = noise, x_1 = data) for every scheduler, and x_t / u_t agree
  with the schedulers' closed forms written out here;
* the loss with given x0 and t equals the closed-form mean squared error;
* every solver agrees with the closed-form solution of linear fields dx/dt = A x + b (the matrix
  exponential of the augmented matrix [[A, b], [0, 0]]) and of dx/dt = c t x, and so with each other;
* non-finite solver inputs (x0, time grid, t0/t1) are refused with a ValueError naming them.

Settings are small (<= 40 examples, no deadline) so the file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fm_core import FlowMatchingLoss  # noqa: E402
from fm_core.paths import AffinePath, CondOTPath  # noqa: E402
from fm_core.schedulers import CosineScheduler, PolynomialScheduler, VPScheduler  # noqa: E402
from fm_core.solvers import solve_ode  # noqa: E402

FAST = settings(max_examples=40, deadline=None)
SLOWER = settings(max_examples=25, deadline=None)

dtypes = st.sampled_from([torch.float32, torch.float64])
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)  # [B, ...] with B >= 1
times = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)


def _randn(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


# closed forms of (alpha_t, sigma_t, d_alpha_t, d_sigma_t), written independently of the library
def _condot(sigma_min):
    return lambda t: (t, 1 - (1 - sigma_min) * t, 1.0, -(1 - sigma_min))


def _cosine(t):
    h = math.pi / 2
    return math.sin(h * t), math.cos(h * t), h * math.cos(h * t), -h * math.sin(h * t)


def _poly(n):
    def d(t):
        return n * t ** (n - 1) if t > 0 or n >= 1 else math.inf

    return lambda t: (t**n, 1 - t**n, d(t), -d(t))


def _vp(bmin, bmax):
    def f(t):
        s = 1 - t
        big = bmin * s + 0.5 * (bmax - bmin) * s * s
        a = math.exp(-0.5 * big)
        sig = math.sqrt(1 - a * a)
        da = 0.5 * (bmin + (bmax - bmin) * s) * a
        return a, sig, da, (-a * da / sig if sig > 0 else -math.inf)

    return f


paths = st.one_of(
    st.floats(0.0, 0.2).map(lambda m: (f"condot(sigma_min={m})", CondOTPath(m), _condot(m), m)),
    st.just(("cosine", AffinePath(CosineScheduler()), _cosine, 0.0)),
    st.floats(1.0, 3.0).map(lambda n: (f"polynomial({n})", AffinePath(PolynomialScheduler(n)), _poly(n), 0.0)),
    st.just(("vp", AffinePath(VPScheduler()), _vp(0.1, 20.0), None)),
)


@FAST
@given(paths, shapes, dtypes, seeds)
def test_paths_hit_their_endpoints(path_case, shape, dtype, seed):
    name, path, closed, sigma_min = path_case
    x0, x1 = _randn(shape, dtype, seed), _randn(shape, dtype, seed + 1)
    at0 = path.sample(x0, x1, 0.0)
    at1 = path.sample(x0, x1, 1.0)
    assert at0.x_t.dtype == dtype and at0.x_t.shape == shape and at0.t.shape == (shape[0],)
    a0, s0, _, _ = closed(0.0)
    if sigma_min is None:  # VP: alpha_0 = exp(-T(1)/2) is small but not 0
        torch.testing.assert_close(at0.x_t, (a0 * x1.double() + s0 * x0.double()).to(dtype), **_tol(dtype))
        torch.testing.assert_close(at1.x_t, x1, **_tol(dtype))
    else:
        torch.testing.assert_close(at0.x_t, x0, **_tol(dtype))  # t = 0 is the noise
        # t = 1: data
        torch.testing.assert_close(at1.x_t, (x1.double() + sigma_min * x0.double()).to(dtype), **_tol(dtype))


@FAST
@given(paths, shapes, dtypes, seeds, st.data())
def test_path_matches_the_closed_form_at_any_time(path_case, shape, dtype, seed, data):
    name, path, closed, _ = path_case
    t = torch.tensor(data.draw(st.lists(times, min_size=shape[0], max_size=shape[0])), dtype=torch.float64)
    if name == "vp" or name.startswith("polynomial"):
        t = t.clamp(1e-3, 1 - 1e-3)  # d_sigma is infinite at t = 1 (VP), d_alpha at t = 0 (n < 1)
    x0, x1 = _randn(shape, dtype, seed), _randn(shape, dtype, seed + 1)
    ps = path.sample(x0, x1, t.to(dtype))
    assert ps.x_t.shape == ps.u_t.shape == shape and ps.x_t.dtype == ps.u_t.dtype == dtype
    assert torch.isfinite(ps.x_t).all() and torch.isfinite(ps.u_t).all()
    for i, ti in enumerate(t.to(dtype).double().tolist()):
        a, s, da, ds = closed(ti)
        want_x = a * x1[i].double() + s * x0[i].double()
        want_u = da * x1[i].double() + ds * x0[i].double()
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ps.x_t[i].double(), want_x, **tol)
        torch.testing.assert_close(ps.u_t[i].double(), want_u, **tol)


@FAST
@given(shapes, dtypes, seeds, st.data())
def test_condot_velocity_recovers_the_endpoints(shape, dtype, seed, data):
    """For the linear path, x_t + (1 - t) u_t = x1 and x_t - t u_t = x0 at every t in [0, 1]."""
    t = torch.tensor(data.draw(st.lists(times, min_size=shape[0], max_size=shape[0])), dtype=dtype)
    x0, x1 = _randn(shape, dtype, seed), _randn(shape, dtype, seed + 1)
    path = CondOTPath()
    ps = path.sample(x0, x1, t)
    torch.testing.assert_close(path.velocity_to_x1(ps.u_t, ps.x_t, t), x1, **_tol(dtype))
    torch.testing.assert_close(path.velocity_to_x0(ps.u_t, ps.x_t, t), x0, **_tol(dtype))


@FAST
@given(shapes, dtypes, seeds, st.data())
def test_loss_with_given_noise_and_times_is_the_closed_form_mse(shape, dtype, seed, data):
    t = torch.tensor(data.draw(st.lists(times, min_size=shape[0], max_size=shape[0])), dtype=dtype)
    x0, x1 = _randn(shape, dtype, seed), _randn(shape, dtype, seed + 1)
    w = _randn(shape[1:], dtype, seed + 2)
    seen = {}

    def model(x_t, tt, y=None):
        seen["t"], seen["x_t"] = tt, x_t
        return w * x_t  # a fixed linear "network"

    loss = FlowMatchingLoss()(model, x1, x0=x0, t=t)
    tb = t.double().reshape((-1,) + (1,) * (len(shape) - 1))
    x_t = (1 - tb) * x0.double() + tb * x1.double()
    want = ((w.double() * x_t - (x1.double() - x0.double())) ** 2).mean()
    assert loss.ndim == 0 and loss.dtype == dtype
    assert seen["t"].shape == (shape[0],) and seen["t"].dtype == dtype
    torch.testing.assert_close(seen["x_t"].double(), x_t, **_tol(dtype))
    torch.testing.assert_close(loss.double(), want, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-6)


# ----------------------------------------------------------------------------- solvers


@st.composite
def linear_fields(draw):
    d = draw(st.integers(1, 4))
    seed = draw(seeds)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = a / max(1.0, float(torch.linalg.matrix_norm(a, ord=2))) * draw(st.floats(0.0, 1.5))  # ||A|| <= 1.5
    b = torch.randn(d, generator=g, dtype=torch.float64) * draw(st.floats(0.0, 2.0))
    batch = draw(st.integers(1, 5))
    x0 = torch.randn(batch, d, generator=g, dtype=torch.float64)
    return a, b, x0


def _expm_solution(a, b, x0, t0, t1):
    """x(t1) for dx/dt = A x + b, x(t0) = x0: exp((t1 - t0) M) with M = [[A, b], [0, 0]]."""
    d = a.shape[0]
    m = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    m[:d, :d], m[:d, d] = a, b
    e = torch.linalg.matrix_exp((t1 - t0) * m)
    aug = torch.cat([x0, torch.ones(x0.shape[0], 1, dtype=torch.float64)], dim=1)
    return (aug @ e.T)[:, :d]


# method -> (steps, tolerance on the solution for ||A|| <= 1.5 and |b| <= 2)
METHODS = {"euler": (1000, 1e-2), "midpoint": (50, 1e-3), "heun": (50, 1e-3), "rk4": (20, 1e-5), "dopri5": (None, 1e-6)}


@SLOWER
@given(linear_fields(), dtypes, st.sampled_from([(0.0, 1.0), (1.0, 0.0), (0.25, 0.75)]))
def test_every_solver_matches_the_matrix_exponential_on_linear_fields(field, dtype, interval):
    a, b, x0 = field
    t0, t1 = interval
    want = _expm_solution(a, b, x0, t0, t1)
    at, bt = a.to(dtype), b.to(dtype)
    got = {}
    for method, (steps, tol) in METHODS.items():
        calls = []

        def v(x, t, y=None, calls=calls):  # binds this method's list
            calls.append(t)
            return x @ at.T + bt

        kw = dict(steps=steps) if steps else dict(atol=1e-9, rtol=1e-9)
        sol = solve_ode(v, x0.to(dtype), method=method, t0=t0, t1=t1, **kw)
        assert sol.x.dtype == dtype and sol.x.shape == x0.shape and sol.nfe == len(calls)
        assert all(c.shape == (x0.shape[0],) and c.dtype == dtype for c in calls)
        assert all(min(t0, t1) - 1e-12 <= float(c.min()) and float(c.max()) <= max(t0, t1) + 1e-12 for c in calls)
        scale = 1.0 + float(want.abs().max())
        tol = max(tol, 2e-5) if dtype == torch.float32 else tol
        err = float((sol.x.double() - want).abs().max())
        assert err <= tol * scale, (method, err)
        got[method] = sol.x.double()
    # and so the methods agree with each other (the looser of the two tolerances)
    for m1 in got:
        for m2 in got:
            tol = max(METHODS[m1][1], METHODS[m2][1], 2e-5 if dtype == torch.float32 else 0.0)
            assert float((got[m1] - got[m2]).abs().max()) <= 2 * tol * (1.0 + float(want.abs().max()))


@SLOWER
@given(st.floats(-2.0, 2.0), st.lists(st.floats(0.001, 0.999), min_size=0, max_size=8), dtypes, seeds)
def test_time_dependent_field_on_any_time_grid(c, inner, dtype, seed):
    """dx/dt = c t x has x(1) = x(0) exp(c / 2): the solver must hand the model the right times."""
    grid = sorted(set([0.0, 1.0] + inner))
    x0 = _randn((3, 2), dtype, seed)
    want = x0.double() * math.exp(c / 2)
    fine = [i / 64 for i in range(65)]
    # second-order methods: error ~ h^2 = 2.4e-4 on the 1/64 grid; rk4 ~ h^4 (float32: rounding)
    for method, tol in (("midpoint", 2e-3), ("heun", 2e-3), ("rk4", 1e-6 if dtype == torch.float64 else 2e-5)):
        sol = solve_ode(lambda x, t, y=None: c * t[:, None] * x, x0, method=method, time_grid=sorted(set(grid + fine)))
        assert float((sol.x.double() - want).abs().max()) <= tol * (1 + float(want.abs().max())), method
    coarse = solve_ode(lambda x, t, y=None: c * t[:, None] * x, x0, method="rk4", time_grid=grid)
    assert coarse.nfe == 4 * (len(grid) - 1)  # the grid's steps, no more


@SLOWER
@given(linear_fields(), st.sampled_from(["midpoint", "rk4", "dopri5"]))
def test_encode_then_decode_returns_the_start(field, method):
    a, b, x0 = field

    def v(x, t, y=None):
        return x @ a.T + b

    kw = dict(steps=50) if method != "dopri5" else dict(atol=1e-10, rtol=1e-10)
    there = solve_ode(v, x0, method=method, t0=0.0, t1=1.0, **kw).x
    back = solve_ode(v, there, method=method, t0=1.0, t1=0.0, **kw).x
    assert float((back - x0).abs().max()) <= 1e-5 * (1 + float(x0.abs().max()))


# ----------------------------------------------------------------------------- refusing bad input

non_finite = st.sampled_from([float("nan"), float("inf"), -float("inf")])


@FAST
@given(shapes, dtypes, non_finite, st.data())
def test_non_finite_start_is_refused(shape, dtype, bad, data):
    x = torch.zeros(shape, dtype=dtype)
    flat = x.view(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = bad
    called = []
    method = data.draw(st.sampled_from(["euler", "rk4", "dopri5"]))
    with pytest.raises(ValueError, match="non-finite"):
        solve_ode(lambda x, t, y=None: called.append(1) or x, x, method=method)
    assert not called  # refused before the first model evaluation


@FAST
@given(st.lists(times, min_size=2, max_size=6, unique=True), non_finite, st.data())
def test_non_finite_time_grid_is_refused(grid, bad, data):
    grid = sorted(grid)
    grid[data.draw(st.integers(0, len(grid) - 1))] = bad
    with pytest.raises(ValueError, match="time_grid must be finite"):
        solve_ode(lambda x, t, y=None: x, torch.zeros(2, 2), method="euler", time_grid=grid)


@FAST
@given(non_finite, st.sampled_from(["t0", "t1"]))
def test_non_finite_end_times_are_refused(bad, which):
    with pytest.raises(ValueError, match=which):
        solve_ode(lambda x, t, y=None: x, torch.zeros(2, 2), method="rk4", steps=4, **{which: bad})


@FAST
@given(paths, non_finite)
def test_paths_refuse_non_finite_times(path_case, bad):
    _, path, _, _ = path_case
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.sample(x, x, torch.tensor([0.5, bad, 0.1]))
