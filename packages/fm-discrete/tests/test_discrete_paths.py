"""Schedulers, the mixture path's marginals and its rates against closed forms."""

import math

import pytest
import torch

from fm_discrete import CosineKappa, LinearKappa, MixturePath, PolynomialKappa, get_kappa

SCHEDULERS = [LinearKappa(), PolynomialKappa(2.0), PolynomialKappa(0.5), CosineKappa()]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
def test_kappa_ends_monotone_and_derivative(sched):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    k = sched.kappa(t)
    assert float(k[0]) == pytest.approx(0.0, abs=1e-12) and float(k[-1]) == pytest.approx(1.0, abs=1e-12)
    assert bool((k.diff() >= 0).all())
    ti = torch.linspace(0.05, 0.95, 19, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sched.kappa(ti).sum(), ti)
    assert torch.allclose(sched.d_kappa(ti.detach()), grad, atol=1e-10)


def test_kappa_closed_forms_and_registry():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert torch.allclose(
        get_kappa("cosine").kappa(t), torch.tensor([(1 - math.cos(math.pi / 4)) / 2, 0.5], dtype=torch.float64)
    )
    assert torch.allclose(get_kappa("polynomial", exponent=3).kappa(t), t**3)
    with pytest.raises(ValueError, match="unknown kappa scheduler 'cubic'"):
        get_kappa("cubic")
    with pytest.raises(ValueError, match="positive number"):
        PolynomialKappa(0)
    assert get_kappa(**LinearKappa().config()).kappa(t).tolist() == t.tolist()


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("sched", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.8, 1.0])
def test_marginal_is_the_mixture(source, sched, t, chi2_pvalue):
    """Token frequencies of x_t match (1 - kappa_t) p_0 + kappa_t delta(x1) (chi-square per position)."""
    v = 5
    path = MixturePath(v, source=source, scheduler=sched)
    g = torch.Generator().manual_seed(1)
    x1 = torch.tensor([[0, 3, 4]]).expand(20000, 3).contiguous()
    xt = path.sample(x1, torch.full((20000,), t), generator=g).x_t
    kappa = float(get_kappa(sched).kappa(torch.tensor(t, dtype=torch.float64)))
    for i in range(3):
        p0 = torch.zeros(v + 1, dtype=torch.float64)
        if source == "mask":
            p0[v] = 1.0
        else:
            p0[:v] = 1.0 / v
        want = (1 - kappa) * p0
        want[x1[0, i]] += kappa
        counts = torch.bincount(xt[:, i], minlength=v + 1)
        assert chi2_pvalue(counts, want) > 1e-3


def test_path_checks_and_mask_id():
    path = MixturePath(4)
    assert path.mask_id == 4 and path.input_vocab_size == 5
    assert MixturePath(4, source="uniform").mask_id is None
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\), got values in \[0, 4\]"):
        path.sample(torch.tensor([[0, 4]]), 0.5)
    with pytest.raises(ValueError, match="integer token ids"):
        path.sample(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.sample(torch.zeros(1, 2, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="unknown source"):
        MixturePath(4, source="absorbing")
    with pytest.raises(ValueError, match="vocab_size"):
        MixturePath(1)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
def test_rates(sched):
    """jump_coefficient = -d/dt log(1 - kappa) (finite differences); jump_probability is the path's own
    transition: the share of source tokens at t that are data at t + h is 1 - (1 - k(t+h)) / (1 - k(t))."""
    path = MixturePath(3, scheduler=sched)
    t = torch.tensor([0.1, 0.4, 0.7], dtype=torch.float64)
    e = 1e-6
    fd = -(torch.log(1 - sched.kappa(t + e)) - torch.log(1 - sched.kappa(t - e))) / (2 * e)
    assert torch.allclose(path.jump_coefficient(t), fd, rtol=1e-5)
    h = 0.2
    want = 1 - (1 - sched.kappa(t + h)) / (1 - sched.kappa(t))
    assert torch.allclose(path.jump_probability(t, h), want)
    assert float(path.jump_probability(torch.tensor(0.75, dtype=torch.float64), 0.25)) == pytest.approx(1.0)


def test_transition_keeps_the_path(chi2_pvalue):
    """Moving source positions to x1 with jump_probability takes the marginal at t to the one at t + h."""
    path = MixturePath(4, source="uniform", scheduler="cosine")
    g = torch.Generator().manual_seed(3)
    n, t, h = 40000, 0.3, 0.25
    x1 = torch.full((n, 1), 2)
    s = path.sample(x1, torch.full((n,), t), generator=g)
    lam = float(path.jump_probability(torch.tensor(t, dtype=torch.float64), h))
    move = torch.rand(n, 1, generator=g) < lam
    x_next = torch.where(move, x1, s.x_t)
    k = float(path.scheduler.kappa(torch.tensor(t + h, dtype=torch.float64)))
    want = torch.full((4,), (1 - k) / 4, dtype=torch.float64)
    want[2] += k
    assert chi2_pvalue(torch.bincount(x_next[:, 0], minlength=4), want) > 1e-3
