"""Closed-form marginal velocities of the CondOT path.

- gaussian_marginal_velocity against a brute-force Monte-Carlo conditional expectation (binning),
  the continuity equation (autograd) and the CFM-loss orthogonality identity;
- EmpiricalMarginalVelocity against a direct softmax formula and against the Gaussian closed
  form when the data are many samples of that Gaussian;
- integrating the Gaussian closed form with a hand-written Euler loop maps N(0, I) to N(m, s^2);
- a small MLP trained with FlowMatchingLoss approaches the closed form.
"""

import math

import pytest
import torch
from torch import nn

from fm_core import EmpiricalMarginalVelocity, FlowMatchingLoss, StratifiedTime, gaussian_marginal_velocity

MEAN = torch.tensor([1.0, -0.5])
STD = torch.tensor([0.5, 0.8])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sample_pt(n, t, mean, std, g, sigma_min=0.0, dtype=torch.float64):
    """x_t = t x1 + (1 - (1 - sigma_min) t) x0 with x1 ~ N(mean, std^2), x0 ~ N(0, I)."""
    d = mean.numel()
    x1 = mean.to(dtype) + std.to(dtype) * torch.randn(n, d, generator=g, dtype=dtype)
    x0 = torch.randn(n, d, generator=g, dtype=dtype)
    tt = t[:, None] if torch.is_tensor(t) else t
    return tt * x1 + (1 - (1 - sigma_min) * tt) * x0, x0, x1


def _euler(velocity, x, steps):
    h = 1.0 / steps
    for i in range(steps):
        x = x + h * velocity(x, torch.full((x.shape[0],), i * h, dtype=x.dtype))
    return x


# ----------------------------------------------------------------- Gaussian closed form


@pytest.mark.parametrize("t, sigma_min", [(0.3, 0.0), (0.7, 0.0), (0.95, 0.0), (0.7, 0.1)])
def test_gaussian_velocity_matches_binned_monte_carlo(t, sigma_min):
    """E[x1 - (1 - sigma_min) x0 | x_t in bin] from 4e5 samples vs the closed form at the bin's
    mean x_t (exact comparison for a field affine in x), within 5 standard errors per bin."""
    n, m, s = 400_000, torch.tensor([0.7]), torch.tensor([0.6])
    xt, x0, x1 = _sample_pt(n, t, m, s, _gen(1), sigma_min)
    xt, u = xt[:, 0], (x1 - (1 - sigma_min) * x0)[:, 0]
    edges = torch.quantile(xt[:100_000], torch.linspace(0.02, 0.98, 16, dtype=torch.float64))
    idx = torch.bucketize(xt, edges)
    for k in range(1, len(edges)):
        sel = idx == k
        nk = int(sel.sum())
        x_mean, u_mean, u_se = xt[sel].mean(), u[sel].mean(), u[sel].std() / math.sqrt(nk)
        closed = gaussian_marginal_velocity(x_mean.reshape(1, 1), t, m, s, sigma_min=sigma_min)
        assert abs(closed.item() - u_mean.item()) < 5 * u_se.item() + 1e-4, (k, closed.item(), u_mean.item())


@pytest.mark.parametrize("sigma_min", [0.0, 0.05])
def test_gaussian_velocity_satisfies_continuity_equation(sigma_min):
    """d/dt p_t + d/dx (p_t u) = 0 for the Gaussian p_t = N(t m, t^2 s^2 + s_t^2) (1D, autograd)."""
    m, s = 0.7, 0.6

    def density(x, t):
        var = t**2 * s**2 + (1 - (1 - sigma_min) * t) ** 2
        return torch.exp(-((x - t * m) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)

    for tv in (0.1, 0.5, 0.9, 1.0):
        x = torch.linspace(-2, 3, 41, dtype=torch.float64).requires_grad_(True)
        t = torch.full((41,), tv, dtype=torch.float64, requires_grad=True)
        p = density(x, t)
        (dp_dt,) = torch.autograd.grad(p.sum(), t, create_graph=True)
        flux = p * gaussian_marginal_velocity(x[:, None], t, m, s, sigma_min=sigma_min)[:, 0]
        (dflux_dx,) = torch.autograd.grad(flux.sum(), x)
        torch.testing.assert_close(dp_dt + dflux_dx, torch.zeros_like(x), atol=1e-12, rtol=0)


def test_gaussian_velocity_minimises_cfm_loss():
    """L(v) = L(u) + E|v - u|^2 for any v iff u is the conditional expectation (orthogonality)."""
    g = _gen(2)
    n = 400_000
    t = torch.rand(n, generator=g, dtype=torch.float64)
    xt, x0, x1 = _sample_pt(n, t, MEAN, STD, g)
    target = x1 - x0
    u = gaussian_marginal_velocity(xt, t, MEAN, STD)
    v = torch.sin(xt) + t[:, None] * xt.flip(1)  # some other field
    lhs = ((v - target) ** 2).sum(1) - ((u - target) ** 2).sum(1)
    rhs = ((v - u) ** 2).sum(1)
    diff = lhs - rhs  # = 2 <v - u, u - target>, mean zero exactly when u = E[target | x_t]
    assert abs(diff.mean().item()) < 5 * diff.std().item() / math.sqrt(n)
    assert rhs.mean().item() > 0.5  # v is far from u, so the check has power


def test_gaussian_velocity_endpoints():
    x = torch.randn(5, 2, dtype=torch.float64)
    # t = 0: u = E[x1] - x = mean - x (x_0 is the noise itself)
    torch.testing.assert_close(gaussian_marginal_velocity(x, 0.0, MEAN, STD), MEAN.double() - x)
    # t = 1: x_1 = x1, and E[x0 | x1] = 0, so u = x1 - E[x0 | x] = ... finite: mean + (std^2 - 0)/std^2 (x - m)
    torch.testing.assert_close(gaussian_marginal_velocity(x, 1.0, MEAN, STD), x)


def test_euler_on_gaussian_velocity_maps_noise_to_data_distribution():
    g = _gen(3)
    x0 = torch.randn(10_000, 2, generator=g, dtype=torch.float64)
    x1 = _euler(lambda x, t: gaussian_marginal_velocity(x, t, MEAN, STD), x0, 400)
    # standard errors: std / sqrt(n) <= 0.008 for the mean, std / sqrt(2n) <= 0.006 for the std
    assert torch.allclose(x1.mean(0), MEAN.double(), atol=0.03)
    assert torch.allclose(x1.std(0), STD.double(), rtol=0.03)
    # sample-wise: the marginal flow of this path is the affine map x0 -> mean + std * x0;
    # Euler is first order (max error 0.032 / 0.016 / 0.008 at 100 / 200 / 400 steps on 200 points)
    torch.testing.assert_close(x1, MEAN.double() + STD.double() * x0, atol=0.03, rtol=0)


# ----------------------------------------------------------------- empirical (memoriser)


def _direct_empirical(x, t, data, sigma_min=0.0):
    """Textbook formula with an explicit softmax over all points (float64, no chunking)."""
    s = 1 - (1 - sigma_min) * t
    d2 = ((x[:, None, :] - t[:, None, None] * data[None]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * s[:, None] ** 2), dim=1)
    return (w @ data - (1 - sigma_min) * x) / s[:, None]


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_empirical_matches_direct_formula_with_chunks(sigma_min):
    g = _gen(4)
    data = torch.randn(10, 3, generator=g, dtype=torch.float64)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=torch.float64)
    emp = EmpiricalMarginalVelocity(data, sigma_min=sigma_min, chunk_size=3)
    torch.testing.assert_close(emp(x, t), _direct_empirical(x, t, data, sigma_min), rtol=1e-10, atol=1e-10)


def test_empirical_image_shapes_scalar_time_and_clamp():
    g = _gen(5)
    data = torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)
    x = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    emp = EmpiricalMarginalVelocity(data, t_max=0.99)
    v = emp(x, 0.5)
    assert v.shape == x.shape
    ref = _direct_empirical(x.reshape(4, -1), torch.full((4,), 0.5, dtype=torch.float64), data.reshape(6, -1))
    torch.testing.assert_close(v.reshape(4, -1), ref)
    torch.testing.assert_close(emp(x, 1.0), emp(x, 0.99))  # t clamped to t_max


def test_empirical_stable_close_to_data_end_float32():
    g = _gen(6)
    data = torch.randn(50, 784, generator=g)
    t = torch.full((8,), 1 - 1e-4)
    x = t[:, None] * data[:8] + 1e-4 * torch.randn(8, 784, generator=g)
    emp = EmpiricalMarginalVelocity(data)
    assert torch.isfinite(emp(x, t)).all()
    torch.testing.assert_close(emp.posterior_mean(x, t), data[:8])


def test_empirical_matches_gaussian_closed_form():
    """Data = 20k samples of N(m, s^2); query points from p_t. Self-normalised importance
    weights with N points: the error shrinks like 1/sqrt(N_eff); 10% of |u| on average is a
    loose bound (measured about 1-3%)."""
    g = _gen(7)
    data = MEAN.double() + STD.double() * torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    emp = EmpiricalMarginalVelocity(data)
    for tv in (0.2, 0.5, 0.8):
        t = torch.full((64,), tv, dtype=torch.float64)
        x, _, _ = _sample_pt(64, t, MEAN, STD, g)
        err = (emp(x, t) - gaussian_marginal_velocity(x, t, MEAN, STD)).norm(dim=1)
        scale = gaussian_marginal_velocity(x, t, MEAN, STD).norm(dim=1).mean()
        assert err.mean() < 0.1 * scale, (tv, err.mean().item(), scale.item())


def test_euler_on_empirical_velocity_memorises_data():
    """The perfect memoriser sends every noise sample onto one of the data points."""
    g = _gen(8)
    data = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    x = _euler(EmpiricalMarginalVelocity(data), torch.randn(300, 2, generator=g), 100)
    dist = torch.cdist(x, data).min(1).values
    assert dist.max() < 1e-2
    counts = torch.bincount(torch.cdist(x, data).argmin(1), minlength=3)
    assert (counts > 50).all()  # every point gets a share of the mass


def test_class_conditional_memoriser():
    data = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    emp = EmpiricalMarginalVelocity(data, labels=labels)
    y = torch.tensor([0, 1, 5] * 40)  # 5 is no class: unconditional rows
    x = torch.randn(120, 2, generator=_gen(9))
    h = 0.01
    for i in range(100):
        x = x + h * emp(x, torch.full((120,), i * h), y)
    nearest = torch.cdist(x, data).argmin(1)
    assert (labels[nearest[y == 0]] == 0).all() and (labels[nearest[y == 1]] == 1).all()
    assert set(labels[nearest[y == 5]].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="labels"):
        EmpiricalMarginalVelocity(data)(x, 0.5, y)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: EmpiricalMarginalVelocity(torch.zeros(0, 2)), "non-empty"),
        (lambda: EmpiricalMarginalVelocity(torch.zeros(4, 2, dtype=torch.long)), "floating"),
        (lambda: EmpiricalMarginalVelocity(torch.zeros(4, 2), t_max=1.0), "t_max"),
        (lambda: EmpiricalMarginalVelocity(torch.zeros(4, 2), labels=torch.zeros(3)), "labels"),
        (lambda: EmpiricalMarginalVelocity(torch.zeros(4, 2))(torch.zeros(3, 3), 0.5), r"\[B, 2\]"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------- learned velocity


def test_mlp_trained_with_fm_loss_approaches_closed_form():
    """300 Adam steps (batch 512) on N(0, I) -> N(m, diag s^2) in 2D.

    Metric: relative error E|v - u|^2 / E|u|^2 over (t ~ U[0, 1], x ~ p_t), which equals the
    excess CFM loss over its minimum divided by E|u|^2 (see the orthogonality test above).
    The untrained net scores about 1.0; after training 0.03-0.05 over seeds (measured), so
    0.1 leaves a 2x margin while still demanding that 90% of the field is learned.
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def model(x, t, y=None):
        return net(torch.cat([x, t[:, None]], 1))

    steps = 300
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    fm = FlowMatchingLoss(time_sampler=StratifiedTime())
    g = _gen(10)

    def relative_error():
        ge = _gen(11)
        t = torch.rand(4000, generator=ge)
        x, _, _ = _sample_pt(4000, t, MEAN, STD, ge, dtype=torch.float32)
        with torch.no_grad():
            u = gaussian_marginal_velocity(x, t, MEAN, STD)
            return (((model(x, t, None) - u) ** 2).sum(1).mean() / (u**2).sum(1).mean()).item()

    before = relative_error()
    for _ in range(steps):
        loss = fm(model, MEAN + STD * torch.randn(512, 2, generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    after = relative_error()
    assert before > 0.5
    assert after < 0.1, after
