"""Solvers against closed-form ODE solutions (float64), NFE accounting and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fm_core.solvers import (
    ADAPTIVE_METHODS,
    DEFAULT_STEPS,
    FIXED_METHODS,
    ODESolution,
    evals_per_step,
    fit_nfe,
    solve_ode,
    steps_for_nfe,
)

ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
EVALS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
# step counts in the asymptotic regime and well above float64 round-off for each method
STEP_LISTS = {
    "euler": [32, 64, 128, 256],
    "midpoint": [16, 32, 64, 128],
    "heun": [16, 32, 64, 128],
    "rk4": [4, 8, 16, 32],
}

A = 1.3


def _x0(shape=(3, 2)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=g, dtype=torch.float64) - 0.5  # in [-0.5, 0.5): x^2 ODE stays finite


# (velocity, closed-form solution x(t) given x(0)) -- all defined on t in [0, 1]
ANALYTIC = {
    "linear": (lambda x, t, y=None: A * x, lambda x0, t: x0 * math.exp(A * t)),
    "time-dependent": (
        lambda x, t, y=None: 2.0 * torch.cos(2.0 * t)[:, None] * x,
        lambda x0, t: x0 * math.exp(math.sin(2.0 * t)),
    ),
    "nonlinear": (lambda x, t, y=None: x * x, lambda x0, t: x0 / (1.0 - x0 * t)),
}


@pytest.mark.parametrize("ode", sorted(ANALYTIC))
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_methods_converge_at_their_order(method, ode):
    v, exact = ANALYTIC[ode]
    x0 = _x0()
    steps = STEP_LISTS[method]
    errors = []
    for n in steps:
        sol = solve_ode(v, x0, method=method, steps=n)
        errors.append((sol.x - exact(x0, 1.0)).abs().max().item())
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    slope = np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0]
    assert abs(slope - ORDER[method]) < 0.25, (method, ode, slope, errors)


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_methods_reverse_time_order(method):
    # encoding direction: from t=1 back to t=0 with the closed-form start x(1)
    v, exact = ANALYTIC["time-dependent"]
    x0 = _x0()
    x1 = exact(x0, 1.0)
    steps = STEP_LISTS[method]
    errors = [(solve_ode(v, x1, method=method, steps=n, t0=1.0, t1=0.0).x - x0).abs().max().item() for n in steps]
    slope = np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0]
    assert abs(slope - ORDER[method]) < 0.25, (method, slope, errors)


@pytest.mark.parametrize("ode", sorted(ANALYTIC))
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_dopri5_error_within_tolerance(ode, tol):
    v, exact = ANALYTIC[ode]
    x0 = _x0()
    sol = solve_ode(v, x0, method="dopri5", atol=tol, rtol=tol)
    target = exact(x0, 1.0)
    bound = 20.0 * (tol + tol * target.abs())  # global error stays within a small multiple of the local tolerance
    assert ((sol.x - target).abs() <= bound).all(), (sol.x - target).abs().max()


def test_dopri5_tighter_tolerance_more_accurate_and_more_nfe():
    v, exact = ANALYTIC["time-dependent"]
    x0 = _x0()
    loose = solve_ode(v, x0, method="dopri5", atol=1e-3, rtol=1e-3)
    tight = solve_ode(v, x0, method="dopri5", atol=1e-9, rtol=1e-9)
    target = exact(x0, 1.0)
    assert (tight.x - target).abs().max() < (loose.x - target).abs().max()
    assert tight.nfe > loose.nfe
    assert (tight.x - target).abs().max() < 1e-7


# tolerances that keep the low-order adaptive methods (bosh3: 3, adaptive_heun: 2) fast
ADAPTIVE_TOL = {"dopri5": 1e-8, "dopri8": 1e-8, "bosh3": 1e-6, "adaptive_heun": 1e-5}


@pytest.mark.parametrize("method", [m for m in ADAPTIVE_METHODS if m != "dopri5"])
def test_other_adaptive_methods_accurate(method):
    v, exact = ANALYTIC["nonlinear"]
    x0 = _x0()
    tol = ADAPTIVE_TOL[method]
    sol = solve_ode(v, x0, method=method, atol=tol, rtol=tol)
    assert (sol.x - exact(x0, 1.0)).abs().max() < 20 * tol


def _nonlinear_field(x, t, y=None):
    return torch.tanh(x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1)))) - 0.5 * x.flip(-1)


ROUND_TRIP_TOL = {"euler": 5e-2, "midpoint": 1e-6, "heun": 1e-6, "rk4": 1e-11}


@pytest.mark.parametrize("method", FIXED_METHODS + ADAPTIVE_METHODS)
def test_forward_then_reverse_returns_start(method):
    x0 = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tol = ADAPTIVE_TOL.get(method)
    kw = {"steps": 200} if method in FIXED_METHODS else {"atol": tol, "rtol": tol}
    fwd = solve_ode(_nonlinear_field, x0, method=method, **kw)
    back = solve_ode(_nonlinear_field, fwd.x, method=method, t0=1.0, t1=0.0, **kw)
    assert (fwd.x - x0).abs().max() > 0.1  # the map is far from the identity
    assert (back.x - x0).abs().max() < ROUND_TRIP_TOL.get(method, 20 * tol if tol else 0.0)


@pytest.mark.parametrize("method", FIXED_METHODS + ("dopri5",))
def test_model_receives_time_of_shape_batch(method):
    seen = []

    def v(x, t, y=None):
        assert x.shape == (5, 2, 3, 3)
        assert t.shape == (5,) and t.dtype == x.dtype and t.device == x.device
        assert torch.all(t == t[0])
        assert y is None
        seen.append(t[0].item())
        return -x

    x = torch.randn(5, 2, 3, 3)
    kw = {"steps": 3} if method in FIXED_METHODS else {}
    sol = solve_ode(v, x, method=method, **kw)
    assert sol.x.dtype == torch.float32 and sol.x.shape == x.shape
    assert min(seen) >= 0.0 and max(seen) <= 1.0
    if method == "euler":
        assert seen == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_dopri5_never_evaluates_outside_the_interval():
    seen = []

    def v(x, t, y=None):  # tiny velocity: torchdiffeq's initial-step probe would go far past t=1
        seen.append(t[0].item())
        return 1e-3 * torch.ones_like(x)

    for t0, t1 in ((0.0, 1.0), (1.0, 0.0), (0.2, 0.7)):
        seen.clear()
        sol = solve_ode(v, torch.zeros(2, 3), method="dopri5", t0=t0, t1=t1)
        assert min(seen) >= min(t0, t1) and max(seen) <= max(t0, t1), seen
        assert torch.allclose(sol.x, torch.full((2, 3), 1e-3 * (t1 - t0)), atol=1e-7)


def test_conditioning_is_passed_explicitly():
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], dtype=torch.float64)

    def v(x, t, y=None):
        return means[y]

    y = torch.tensor([0, 2, 1, 1])
    sol = solve_ode(v, torch.zeros(4, 2, dtype=torch.float64), method="euler", steps=5, y=y)
    assert torch.allclose(sol.x, means[y])


@pytest.mark.parametrize("method", FIXED_METHODS)
@pytest.mark.parametrize("steps", [1, 7])
def test_nfe_fixed_equals_steps_times_evals(method, steps):
    sol = solve_ode(lambda x, t, y=None: -x, torch.ones(2, 2), method=method, steps=steps)
    assert sol.nfe == steps * EVALS[method]
    assert steps_for_nfe(method, sol.nfe) == steps


def test_default_steps_is_100():
    assert DEFAULT_STEPS == 100
    sol = solve_ode(lambda x, t, y=None: -x, torch.ones(2, 2))  # midpoint by default
    assert sol.nfe == 2 * 100 and sol.times.shape == (101,)
    assert torch.allclose(sol.times[[0, -1]], torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_nfe_adaptive_matches_counting_wrapper(method):
    calls = [0]

    def v(x, t, y=None):
        calls[0] += 1
        return torch.sin(3.0 * x) + t[:, None]

    sol = solve_ode(v, torch.randn(3, 2, dtype=torch.float64), method=method, atol=1e-4, rtol=1e-4)
    assert sol.nfe == calls[0] > 0


def test_steps_for_nfe_errors():
    assert steps_for_nfe("rk4", 40) == 10
    assert steps_for_nfe("euler", 3) == 3
    for method, nfe in (("rk4", 6), ("midpoint", 3), ("euler", 0), ("heun", -2), ("euler", 2.0)):
        with pytest.raises(ValueError, match="nfe"):
            steps_for_nfe(method, nfe)
    with pytest.raises(ValueError, match="fixed-step"):
        steps_for_nfe("dopri5", 10)
    with pytest.raises(ValueError, match="unknown ODE method"):
        steps_for_nfe("rk45", 10)
    assert steps_for_nfe("rk4", None) is None and steps_for_nfe("dopri5", None) is None
    with pytest.raises(ValueError, match="unknown ODE method"):
        steps_for_nfe("rk45", None)


def test_evals_per_step_is_the_count_of_solve_ode():
    for method in FIXED_METHODS:
        one_step = solve_ode(lambda x, t: -x, torch.ones(1, 1), method=method, steps=1)
        assert evals_per_step(method) == EVALS[method] == one_step.nfe
    with pytest.raises(ValueError, match="adaptive"):
        evals_per_step("dopri5")
    with pytest.raises(ValueError, match="unknown ODE method"):
        evals_per_step("rk45")


@pytest.mark.parametrize(
    "method, nfe, fitted",
    [("rk4", 10, 8), ("rk4", 8, 8), ("rk4", 2, 4), ("midpoint", 7, 6), ("heun", 1, 2), ("euler", 5, 5)],
)
def test_fit_nfe_rounds_down_to_whole_steps(method, nfe, fitted):
    assert fit_nfe(method, nfe) == fitted


@pytest.mark.parametrize(
    "method, nfe, match", [("dopri5", 10, "adaptive"), ("rk4", 0, "positive"), ("euler", 2.5, "positive")]
)
def test_fit_nfe_errors(method, nfe, match):
    with pytest.raises(ValueError, match=match):
        fit_nfe(method, nfe)


def _v(x, t, y=None):
    return -x


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "dopri5", "steps": 10}, "adaptive"),
        ({"method": "euler", "steps": 10, "time_grid": [0.0, 0.5, 1.0]}, "not both"),
        ({"method": "rk45"}, "allowed: fixed-step euler, midpoint, heun, rk4; adaptive dopri5"),
        ({"steps": 0}, "positive integer"),
        ({"steps": -3}, "positive integer"),
        ({"steps": 2.5}, "positive integer"),
        ({"steps": True}, "positive integer"),
        ({"time_grid": [[0.0, 1.0]]}, "1-D"),
        ({"time_grid": [0.0]}, "at least 2"),
        ({"time_grid": [0.0, 0.5, 0.5, 1.0]}, "strictly"),
        ({"time_grid": [0.0, 0.7, 0.3, 1.0]}, "strictly"),
        ({"time_grid": [0.0, 0.5, 1.5]}, r"within \[0, 1\]"),
        ({"time_grid": [0.0, float("nan"), 1.0]}, "finite"),
        ({"time_grid": [1.0, 0.5, 0.0], "t0": 0.0}, "t0=0.0 contradicts"),
        ({"time_grid": [0.0, 0.5, 0.9], "t1": 1.0}, "t1=1.0 contradicts"),
        ({"t0": 0.5, "t1": 0.5}, "must differ"),
        ({"t1": 2.0}, r"\[0, 1\]"),
        ({"t0": float("nan")}, r"\[0, 1\]"),
        ({"method": "dopri5", "atol": -1.0}, "atol"),
    ],
)
def test_contradictory_or_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_ode(_v, torch.ones(2, 2), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_start_raises(bad):
    x = torch.ones(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        solve_ode(_v, x, method="euler", steps=2)


def test_wrong_velocity_shape_raises():
    with pytest.raises(ValueError, match="velocity returned shape"):
        solve_ode(lambda x, t, y=None: x.sum(-1), torch.ones(2, 3), method="euler", steps=2)


def test_time_grid_non_uniform_euler_matches_closed_form_product():
    # Euler on dx/dt = a x multiplies by (1 + a h_i) per step: an independent closed form
    grid = [0.0, 0.1, 0.35, 0.4, 0.8, 1.0]
    x0 = _x0()
    sol = solve_ode(lambda x, t, y=None: A * x, x0, method="euler", time_grid=grid, return_trajectory=True)
    expected = [x0]
    for ta, tb in zip(grid[:-1], grid[1:]):
        expected.append(expected[-1] * (1.0 + A * (tb - ta)))
    assert sol.nfe == len(grid) - 1
    assert torch.allclose(sol.times, torch.tensor(grid, dtype=torch.float64))
    assert sol.trajectory.shape == (len(grid), *x0.shape)
    assert torch.allclose(sol.trajectory, torch.stack(expected))
    assert torch.equal(sol.trajectory[-1], sol.x) and torch.equal(sol.trajectory[0], x0)


def test_time_grid_accepts_tensor_and_consistent_endpoints():
    grid = torch.tensor([1.0, 0.6, 0.0])  # reverse grid, endpoints repeated consistently
    x1 = _x0()
    sol = solve_ode(lambda x, t, y=None: A * x, x1, method="rk4", time_grid=grid, t0=1.0, t1=0.0)
    assert sol.nfe == 8
    assert sol.times.dtype == torch.float64 and torch.allclose(sol.times, grid.double())
    assert torch.allclose(sol.x, x1 * math.exp(-A), rtol=1e-2)


def test_adaptive_trajectory_at_grid_points_or_endpoints():
    x0 = _x0((2, 2, 2))
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    sol = solve_ode(
        lambda x, t, y=None: A * x, x0, method="dopri5", time_grid=grid, atol=1e-9, rtol=1e-9, return_trajectory=True
    )
    assert sol.trajectory.shape == (5, 2, 2, 2)
    expected = torch.stack([x0 * math.exp(A * t) for t in grid])
    assert torch.allclose(sol.trajectory, expected, atol=1e-7)
    plain = solve_ode(lambda x, t, y=None: A * x, x0, method="dopri5", return_trajectory=True)
    assert plain.trajectory.shape == (2, 2, 2, 2)
    assert torch.allclose(plain.times, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert solve_ode(lambda x, t, y=None: A * x, x0, method="dopri5").trajectory is None


def test_fixed_trajectory_shape_and_times():
    x0 = torch.randn(3, 1, 4, 4)
    sol = solve_ode(_v, x0, method="heun", steps=6, t0=1.0, t1=0.0, return_trajectory=True)
    assert isinstance(sol, ODESolution)
    assert sol.trajectory.shape == (7, 3, 1, 4, 4) and sol.times.shape == (7,)
    assert torch.allclose(sol.times, torch.linspace(1.0, 0.0, 7))
    assert torch.equal(sol.trajectory[-1], sol.x)


def test_no_graph_by_default_and_gradient_with_grad_true():
    x0 = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    sol = solve_ode(lambda x, t, y=None: A * x, x0, method="rk4", steps=20)
    assert not sol.x.requires_grad
    sol = solve_ode(lambda x, t, y=None: A * x, x0, method="rk4", steps=20, grad=True)
    (g,) = torch.autograd.grad(sol.x.sum(), x0)
    assert torch.allclose(g, torch.full_like(g, math.exp(A)), rtol=1e-6)  # d x(1) / d x(0) = e^A
    sol = solve_ode(lambda x, t, y=None: A * x, x0, method="dopri5", grad=True, atol=1e-9, rtol=1e-9)
    (g,) = torch.autograd.grad(sol.x.sum(), x0)
    assert torch.allclose(g, torch.full_like(g, math.exp(A)), rtol=1e-6)


def test_dopri5_with_grad_after_torchdiffeq_was_first_imported_in_inference_mode():
    """sample() runs under inference mode; if it is the first to import torchdiffeq, the tableaux
    must still be ordinary tensors so that a later solve can backpropagate."""
    import subprocess
    import sys

    code = (
        "import math, torch\n"
        "from fm_core import sample, solve_ode\n"
        "sample(lambda x, t: -x, 4, (2,), method='dopri5', seed=0)\n"
        "x0 = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)\n"
        "sol = solve_ode(lambda x, t: 1.3 * x, x0, method='dopri5', grad=True, atol=1e-9, rtol=1e-9)\n"
        "(g,) = torch.autograd.grad(sol.x.sum(), x0)\n"
        "assert torch.allclose(g, torch.full_like(g, math.exp(1.3)), rtol=1e-6), g\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
