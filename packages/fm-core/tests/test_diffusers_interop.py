"""fm_core.diffusers_interop against diffusers' own FlowMatchEulerDiscreteScheduler (imported here only).

The scheduler's Euler steps on a known analytic velocity field and fm-core's euler on the converted grid
agree to 1e-6, both ways round (a diffusers model in fm-core's sampler, an fm-core model in a diffusers loop).
"""

from __future__ import annotations

import math

import pytest
import torch

from fm_core import sample, solve_ode
from fm_core.diffusers_interop import (
    FromDiffusers,
    ToDiffusers,
    flow_match_euler_sigmas,
    shift_sigmas,
    sigmas_from_time_grid,
    time_grid_from_sigmas,
)

N_TRAIN = 1000


def diffusers_field(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """An analytic velocity in diffusers' convention (d x / d sigma), nonlinear in x and in sigma."""
    sigma = (timestep / N_TRAIN).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.cos(3.0 * sigma) * x + sigma**2 - 0.5 * torch.sin(x)


def fm_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same field in fm-core's convention: v(x, t) = -v_d(x, sigma = 1 - t), written out by hand."""
    s = (1.0 - t).reshape(-1, *([1] * (x.ndim - 1)))
    return -(torch.cos(3.0 * s) * x + s**2 - 0.5 * torch.sin(x))


def _scheduler(shift: float):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=N_TRAIN, shift=shift)


def _diffusers_loop(scheduler, model, x: torch.Tensor) -> torch.Tensor:
    for ts in scheduler.timesteps:
        x = scheduler.step(model(x, ts.expand(x.shape[0])), ts, x).prev_sample
    return x


@pytest.mark.parametrize(("steps", "shift"), [(10, 3.0), (28, 1.0), (7, 0.5)])
def test_sigmas_without_diffusers_match_the_scheduler(steps, shift):
    scheduler = _scheduler(shift)
    scheduler.set_timesteps(steps)
    ours = flow_match_euler_sigmas(steps, shift=shift, num_train_timesteps=N_TRAIN)
    assert ours.shape == scheduler.sigmas.shape == (steps + 1,)
    torch.testing.assert_close(ours, scheduler.sigmas.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(scheduler.timesteps.double(), scheduler.sigmas[:-1].double() * N_TRAIN)


@pytest.mark.parametrize(("steps", "shift"), [(10, 3.0), (6, 1.0)])
def test_diffusers_model_in_fm_core_euler_matches_scheduler_steps(steps, shift):
    scheduler = _scheduler(shift)
    scheduler.set_timesteps(steps)
    grid = time_grid_from_sigmas(scheduler.sigmas)
    assert grid[0] == pytest.approx(0.0) and grid[-1] == 1.0 and grid.shape == (steps + 1,)
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    expected = _diffusers_loop(scheduler, diffusers_field, x0.clone())
    sol = solve_ode(FromDiffusers(diffusers_field, num_train_timesteps=N_TRAIN), x0, method="euler", time_grid=grid)
    assert sol.nfe == steps
    torch.testing.assert_close(sol.x, expected, atol=1e-6, rtol=0)
    # fm-core's sample() draws the same noise from the seed: the same images through the public entry point
    noise = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    drawn = sample(FromDiffusers(diffusers_field), 6, (3,), seed=5, method="euler", time_grid=grid)
    scheduler.set_timesteps(steps)
    torch.testing.assert_close(drawn.x, _diffusers_loop(scheduler, diffusers_field, noise), atol=1e-6, rtol=0)


def test_fm_core_model_in_a_diffusers_loop_matches_fm_core_euler():
    scheduler = _scheduler(3.0)
    scheduler.set_timesteps(12)
    x0 = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1))
    in_diffusers = _diffusers_loop(scheduler, ToDiffusers(fm_field, num_train_timesteps=N_TRAIN), x0.clone())
    ours = solve_ode(fm_field, x0, method="euler", time_grid=time_grid_from_sigmas(scheduler.sigmas)).x
    torch.testing.assert_close(in_diffusers, ours, atol=1e-6, rtol=0)


def test_the_wrappers_are_sign_and_time_conversions():
    """Closed form: FromDiffusers(v_d) is fm_field, ToDiffusers(fm_field) is v_d, with labels passed along."""
    x, t = torch.randn(5, 3), torch.rand(5)
    torch.testing.assert_close(FromDiffusers(diffusers_field)(x, t), fm_field(x, t), atol=1e-6, rtol=0)
    ts = (1 - t) * N_TRAIN
    torch.testing.assert_close(ToDiffusers(fm_field)(x, ts), diffusers_field(x, ts), atol=1e-6, rtol=0)
    torch.testing.assert_close(ToDiffusers(fm_field)(x, 250.0), diffusers_field(x, torch.full((5,), 250.0)))
    seen = {}

    def labelled(x, timestep, y):
        seen["y"] = y
        return x

    y = torch.arange(5)
    assert torch.equal(FromDiffusers(labelled)(x, t, y), -x) and seen["y"] is y

    class Output:  # diffusers' output classes carry the tensor in .sample
        def __init__(self, sample):
            self.sample = sample

    assert torch.equal(FromDiffusers(lambda x, ts: Output(2 * x))(x, t), -2 * x)
    assert torch.equal(FromDiffusers(lambda x, ts: (3 * x,))(x, t), -3 * x)
    with pytest.raises(ValueError, match="expected a tensor"):
        FromDiffusers(lambda x, ts: "no")(x, t)


def test_the_shift_matters():
    """A uniform grid of the same length is not the scheduler's: it samples something else."""
    scheduler = _scheduler(3.0)
    scheduler.set_timesteps(8)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    right = solve_ode(fm_field, x0, method="euler", time_grid=time_grid_from_sigmas(scheduler.sigmas)).x
    uniform = solve_ode(fm_field, x0, method="euler", steps=8).x
    assert (right - uniform).abs().max() > 1e-2
    torch.testing.assert_close(right, _diffusers_loop(scheduler, ToDiffusers(fm_field), x0.clone()), atol=1e-6, rtol=0)


def test_conversions_closed_form_and_errors():
    sig = torch.tensor([1.0, 0.75, 0.5, 0.0])
    assert time_grid_from_sigmas(sig).tolist() == [0.0, 0.25, 0.5, 1.0]
    assert sigmas_from_time_grid([0.0, 0.25, 0.5, 1.0]).tolist() == [1.0, 0.75, 0.5, 0.0]
    s = 0.5
    assert shift_sigmas([s], 3.0).item() == pytest.approx(3 * s / (1 + 2 * s))
    assert shift_sigmas([0.0, 1.0], 3.0).tolist() == [0.0, 1.0]
    assert flow_match_euler_sigmas(1).tolist() == [1.0, 0.0]
    assert math.isclose(float(flow_match_euler_sigmas(4)[1]), 1 - (1 - 1e-3) / 3, abs_tol=1e-6)  # shift 1: linspace
    for bad in ([1.0], [1.0, 1.5], [1.0, 0.5, 0.7], [[1.0, 0.0]], "x", [float("nan"), 0.0]):
        with pytest.raises(ValueError):
            time_grid_from_sigmas(bad)
    with pytest.raises(ValueError, match="shift must be a positive number"):
        shift_sigmas([0.5], 0.0)
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1"):
        flow_match_euler_sigmas(0)


def test_importing_the_module_does_not_import_diffusers():
    import subprocess
    import sys

    code = "import sys, fm_core, fm_core.diffusers_interop; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr
