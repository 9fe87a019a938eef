"""One round of reflow in closed form: Gaussian source N(0, I) to Gaussian data N(m, S), S = diag(s^2) not isotropic.

The teacher is the exact marginal velocity of the CondOT path (fm_core.gaussian_marginal_velocity); its
flow is x_t = t m + sig_t * x0 with sig_t = sqrt(t^2 s^2 + (1 - t)^2) per coordinate, so its endpoint is
x1 = m + s * x0 and its trajectories are curved: S_teacher = sum_d E[x0_d^2] int_0^1 (sig_d'(t) - (s_d - 1))^2 dt.
The rectified flow of the pairs (x0, m + s x0) is straight: v(x, t) = m + (s - 1) (x - t m) / (1 - t + t s),
affine in x, so the student is the exact minimiser of FlowMatchingLoss(x0=...) on the pairs over velocities
a(t) + B(t) x with a, B piecewise linear in t (one Newton step: the loss is quadratic in the parameters).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from fm_cli.reflow import PairBatches, generate_pairs
from fm_core import FlowMatchingLoss, gaussian_marginal_velocity, sample
from fm_eval import straightness

M = torch.tensor([1.0, -0.5])
STD = torch.tensor([2.0, 0.5])
N = 4096


def teacher(x, t):
    return gaussian_marginal_velocity(x, t, mean=M, std=STD)


class AffineVelocity:
    """v(x, t) = a(t) + B(t) x with a [2], B [2, 2] piecewise linear in t on ``k`` intervals (hat basis);
    ``theta`` [(k + 1) * 6] holds a at the knots, then B at the knots."""

    def __init__(self, k: int = 8, theta: torch.Tensor | None = None) -> None:
        self.k = k
        self.theta = torch.zeros((k + 1) * 6, dtype=torch.float64) if theta is None else theta

    def __call__(self, x, t):
        k = self.k
        hat = (1 - (t[:, None].double() * k - torch.arange(k + 1)).abs()).clamp(min=0)  # [B, k + 1]
        a = self.theta[: (k + 1) * 2].view(k + 1, 2)
        b = self.theta[(k + 1) * 2 :].view(k + 1, 4)
        bx = ((hat @ b).view(-1, 2, 2) @ x.double()[:, :, None])[:, :, 0]
        return (hat @ a + bx).to(x.dtype)


def _sig(t: float, s: float) -> float:
    return math.sqrt(t * t * s * s + (1 - t) ** 2)


def _dsig(t: float, s: float) -> float:
    return (t * s * s - (1 - t)) / _sig(t, s)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    store = tmp_path_factory.mktemp("reflow") / "pairs"
    return generate_pairs(teacher, store, N, (2,), method="dopri5", atol=1e-7, rtol=1e-7, seed=0, chunk=2048)


@pytest.fixture(scope="module")
def student(pairs):
    # the training batch: every pair once (epoch 0's order), twice over with independent times
    x0, x1, _ = PairBatches(pairs, N, seed=0).batch(1)
    x0, x1 = torch.cat([x0, x0]).double(), torch.cat([x1, x1]).double()
    t = torch.rand(2 * N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss_fn = FlowMatchingLoss()

    def loss(theta):
        return loss_fn(AffineVelocity(theta=theta), x1, x0=x0, t=t)

    theta = torch.zeros((8 + 1) * 6, dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(loss, theta)
    hess = torch.autograd.functional.hessian(loss, theta)
    theta = theta - torch.linalg.solve(hess, grad)
    assert float(loss(theta)) < 1e-5  # the rectified velocity lies (almost) in the family
    return AffineVelocity(theta=theta)


def test_teacher_pairs_map_the_source_to_the_data_distribution(pairs):
    # the flow's endpoint in closed form (per coordinate, x1 = m + s x0), to the solver's tolerance
    assert float((pairs.x1 - (M + STD * pairs.x0)).abs().max()) < 1e-4
    # and N(0, I) samples land on N(m, S): mean within 4 standard errors, covariance within 4 of its standard errors
    mean = pairs.x1.double().mean(0)
    assert torch.all((mean - M).abs() < 4 * STD / math.sqrt(N)), mean
    cov = torch.cov(pairs.x1.double().T)
    s2 = torch.diag(STD.double() ** 2)
    se = torch.sqrt((s2.diagonal()[:, None] * s2.diagonal()[None, :] + s2**2) / N)  # Gaussian Var of the entries
    assert torch.all((cov - s2).abs() < 4 * se), cov
    # the source really is N(0, I)
    assert torch.all(pairs.x0.double().mean(0).abs() < 4 / math.sqrt(N))


def test_student_is_straight_and_the_teacher_is_not(student):
    x0 = torch.randn(1024, 2, generator=torch.Generator().manual_seed(2))
    st = straightness(student, *_trajectory(student, x0))
    tt = straightness(teacher, *_trajectory(teacher, x0))
    # the teacher's value in closed form, with this batch's E[x0_d^2]
    ex2 = x0.double().pow(2).mean(0)
    s = STD.tolist()
    want = sum(float(ex2[d]) * quad(lambda t, d=d: (_dsig(t, s[d]) - (s[d] - 1)) ** 2, 0, 1)[0] for d in range(2))
    assert tt.value == pytest.approx(want, rel=1e-3)
    assert tt.normalised > 0.3  # about 0.42: far from straight
    assert st.normalised < 1e-4  # measured about 4e-7; the bound leaves room for the piecewise-linear fit
    assert st.value < 1e-4 * tt.value


def _trajectory(v, x0):
    """rk4 trajectories of ``v`` from x0 = randn(n, 2) of seed 2 (sample draws the same noise from the same seed)."""
    res = sample(v, x0.shape[0], (2,), seed=2, method="rk4", steps=50, trajectory=x0.shape[0])
    assert torch.equal(res.trajectory[0], x0)
    return res.trajectory, res.times


def test_one_euler_step_of_the_student_reaches_the_teachers_endpoints(student, pairs):
    one = sample(student, 4096, (2,), seed=3, method="euler", nfe=1)
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(3))
    err = one.x - (M + STD * x0)  # the teacher's endpoint in closed form
    assert one.nfe == 1
    assert float(err.abs().max()) < 0.05  # measured about 0.01 (std of the data: 2 and 0.5)
    assert float(err.pow(2).mean().sqrt()) < 0.01  # measured about 0.002
    teacher_one = sample(teacher, 4096, (2,), seed=3, method="euler", nfe=1).x - (M + STD * x0)
    assert float(teacher_one.pow(2).mean().sqrt()) > 0.5  # the curved teacher is far off in one step (about 1.5)
    # on the stored pairs themselves
    step = pairs.x0 + student(pairs.x0, torch.zeros(len(pairs)))
    assert float((step - pairs.x1).pow(2).mean().sqrt()) < 0.01
