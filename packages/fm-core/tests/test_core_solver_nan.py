"""An adaptive solver on a NaN or exploding velocity ends in a one-line ValueError naming the solver
(torchdiffeq itself stops with ``AssertionError: underflow in dt nan``)."""

from __future__ import annotations

import pytest
import torch

from fm_core.solvers import solve_ode


@pytest.mark.parametrize("field", ["nan", "inf"])
def test_dopri5_on_a_non_finite_velocity_is_a_one_line_error(field):
    value = float(field)

    def velocity(x, t):
        return torch.full_like(x, value)

    with pytest.raises(ValueError, match=r"the dopri5 solver could not integrate this velocity field") as e:
        solve_ode(velocity, torch.zeros(3, 2), method="dopri5")
    assert "\n" not in str(e.value)


def test_dopri5_on_a_finite_field_still_matches_the_closed_form():
    """Control: dx/dt = -x from x0 = 1 over [0, 1] gives exp(-1)."""
    out = solve_ode(lambda x, t: -x, torch.ones(2, 1, dtype=torch.float64), method="dopri5", atol=1e-9, rtol=1e-9)
    assert torch.allclose(out.x, torch.full((2, 1), torch.e**-1, dtype=torch.float64), atol=1e-7)
