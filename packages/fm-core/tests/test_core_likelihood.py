"""Likelihood by the instantaneous change of variables against closed-form Gaussian densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import fm_core.likelihood as likelihood_module
from fm_core.likelihood import (
    LikelihoodResult,
    _exact_divergence,
    bits_per_dim,
    log_likelihood,
    standard_normal_log_prob,
)


def _gauss_logpdf(x: torch.Tensor, mean=0.0, std=1.0) -> torch.Tensor:
    """Isotropic Gaussian log-density with scipy, summed over all non-batch dims."""
    flat = x.reshape(x.shape[0], -1).numpy()
    return torch.from_numpy(scipy.stats.norm.logpdf(flat, loc=mean, scale=std).sum(axis=1))


# ----------------------------------------------------------------------------- constant field
@pytest.mark.parametrize("method, steps", [("dopri5", None), ("rk4", 4), ("euler", 3)])
def test_constant_velocity_shifts_standard_normal(method, steps):
    # v = c (written as c + 0*x so the divergence really runs): x_1 = x_0 + c, p_1 = N(c, I)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x1 = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + c
    res = log_likelihood(lambda x, t, y=None: c + 0.0 * x, x1, method=method, steps=steps)
    assert isinstance(res, LikelihoodResult)
    assert torch.allclose(res.z, x1 - c, atol=1e-10)
    assert torch.allclose(res.log_prob, _gauss_logpdf(x1 - c), atol=1e-10)
    assert torch.allclose(res.delta_log_det, torch.zeros(6, dtype=torch.float64))
    if steps is not None:
        assert res.nfe == steps * {"rk4": 4, "euler": 1}[method]


def test_constant_velocity_without_graph_and_with_labels():
    # a field that does not depend on x at all (no autograd graph), conditioned on y
    shifts = torch.tensor([[1.0, 1.0], [-2.0, 0.5]])
    y = torch.tensor([0, 1, 1, 0])
    x1 = torch.zeros(4, 2)
    res = log_likelihood(lambda x, t, yy: shifts[yy], x1, y=y)
    assert res.log_prob.dtype == torch.float32
    assert torch.allclose(res.z, -shifts[y], atol=1e-5)
    assert torch.allclose(res.log_prob, _gauss_logpdf(-shifts[y]).float(), atol=1e-5)


# ----------------------------------------------------------------------------- sign check
def test_expanding_field_sign():
    # v = a x: x_1 = e^a x_0, so p_1 = N(0, e^{2a} I) and log p_1(x) = log N(e^{-a} x) - a D
    a, d = 0.7, 4
    x1 = torch.randn(5, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = log_likelihood(lambda x, t, y=None: a * x, x1, atol=1e-9, rtol=1e-9)
    assert torch.allclose(res.delta_log_det, torch.full((5,), -a * d, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(res.log_prob, _gauss_logpdf(x1, std=math.exp(a)), atol=1e-6)
    assert torch.allclose(res.log_prob, res.log_prob_source + res.delta_log_det)
    assert torch.allclose(res.log_prob_source, standard_normal_log_prob(res.z))


# ----------------------------------------------------------------------------- CondOT Gaussian
def test_condot_gaussian_marginal_velocity_isotropic():
    # N(0, I) -> N(m, s^2 I) under CondOT: x_t = (1 - t + s t) x_0 + t m,
    # v(x, t) = (s - 1) (x - t m) / (1 - t + s t) + m
    m, s = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.4

    def v(x, t, y=None):
        t = t[:, None]
        return (s - 1.0) * (x - t * m) / (1.0 - t + s * t) + m

    x1 = m + s * torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = log_likelihood(v, x1, atol=1e-8, rtol=1e-8)
    assert torch.allclose(res.z, (x1 - m) / s, atol=1e-6)
    assert torch.allclose(res.log_prob, _gauss_logpdf(x1, mean=m.numpy(), std=s), atol=1e-4)


def _linear_flow(dim: int, seed: int):
    """Affine flow x_t = A(t) x_0 + t m with A(t) = I + t (L - I), L lower-triangular, diag > 0.

    x_1 = L x_0 + m ~ N(m, L L^T). The velocity is v = (L - I) A(t)^{-1} (x - t m) + m, with a
    full (non-diagonal) Jacobian; since A(t) commutes with L - I, int_0^1 J dt = logm(L).
    """
    rng = np.random.default_rng(seed)
    low = np.tril(rng.normal(scale=0.3, size=(dim, dim)), -1) + np.diag(rng.uniform(0.5, 1.8, size=dim))
    m = rng.normal(size=dim)
    L, mt = torch.from_numpy(low), torch.from_numpy(m)
    eye = torch.eye(dim, dtype=torch.float64)

    def v(x, t, y=None):
        flat = x.reshape(x.shape[0], dim)
        a_t = eye + t[:, None, None] * (L - eye)  # [B, D, D], per-sample time
        jac = torch.linalg.solve(a_t, (L - eye).expand_as(a_t))  # A^{-1} (L - I) = (L - I) A^{-1}
        out = torch.einsum("bij,bj->bi", jac, flat - t[:, None] * mt) + mt
        return out.reshape(x.shape)

    return v, low, m


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 3)])
def test_linear_flow_exact_divergence_matches_closed_form(shape):
    # the [B, 2, 3, 3] case mixes channels and pixels: only a flattened trace gets it right
    dim = int(np.prod(shape[1:]))
    v, low, m = _linear_flow(dim, seed=dim)
    x0 = np.random.default_rng(5).normal(size=(shape[0], dim))
    x1_flat = x0 @ low.T + m
    x1 = torch.from_numpy(x1_flat).reshape(shape)
    res = log_likelihood(v, x1, atol=1e-8, rtol=1e-8)
    expected = scipy.stats.multivariate_normal(mean=m, cov=low @ low.T).logpdf(x1_flat)
    assert res.log_prob.shape == (shape[0],) and res.z.shape == shape
    assert np.allclose(res.log_prob.numpy(), expected, atol=1e-4)
    assert np.allclose(res.z.reshape(shape[0], dim).numpy(), x0, atol=1e-5)
    log_det = -np.log(np.diag(low)).sum()  # log |det dz/dx1| = -log det L
    assert np.allclose(res.delta_log_det.numpy(), log_det, atol=1e-5)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("shape", [(6, 4), (4, 2, 2, 2)])
def test_linear_flow_hutchinson_within_monte_carlo_tolerance(shape, probe):
    dim = int(np.prod(shape[1:]))
    v, low, m = _linear_flow(dim, seed=10 + dim)
    x1_flat = np.random.default_rng(6).normal(size=(shape[0], dim)) @ low.T + m
    x1 = torch.from_numpy(x1_flat).reshape(shape)
    n_probes = 64
    res = log_likelihood(v, x1, method="rk4", steps=8, divergence="hutchinson", n_probes=n_probes, seed=3, probe=probe)
    expected = scipy.stats.multivariate_normal(mean=m, cov=low @ low.T).logpdf(x1_flat)
    # fixed probe e: the estimate of int_0^1 div dt is e^T K e with K = logm(L); its variance
    # is 2 (||S||_F^2 - sum S_ii^2) for Rademacher and 2 ||S||_F^2 for Gaussian, S = sym(K)
    k = np.real(scipy.linalg.logm(low))
    sym = 0.5 * (k + k.T)
    var = 2.0 * (np.sum(sym**2) - (np.sum(np.diag(sym) ** 2) if probe == "rademacher" else 0.0))
    sd = math.sqrt(var / n_probes)
    err = res.log_prob.numpy() - expected
    assert np.all(np.abs(err) < 4.0 * sd + 1e-4), (err, sd)
    assert np.abs(err).max() > 1e-6  # really an estimate (the Jacobian is not diagonal)
    assert res.nfe == 32


def test_hutchinson_seeded_reproducible_and_seed_dependent():
    v, low, m = _linear_flow(3, seed=0)
    x1 = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3)))
    kw = dict(method="midpoint", steps=4, divergence="hutchinson", n_probes=2)
    a = log_likelihood(v, x1, seed=7, **kw)
    b = log_likelihood(v, x1, seed=7, **kw)
    c = log_likelihood(v, x1, seed=8, **kw)
    assert torch.equal(a.log_prob, b.log_prob)
    assert not torch.allclose(a.log_prob, c.log_prob)
    assert torch.allclose(a.z, c.z)  # probes only affect the divergence


def test_hutchinson_rademacher_is_exact_for_diagonal_jacobian():
    # e_i^2 = 1, so a Rademacher probe gives the exact trace of a diagonal Jacobian
    scales = torch.tensor([0.3, -0.6, 1.1], dtype=torch.float64)
    x1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = log_likelihood(lambda x, t, y=None: scales * x, x1, divergence="hutchinson", seed=0, atol=1e-9, rtol=1e-9)
    expected = _gauss_logpdf(x1 / torch.exp(scales)) - scales.sum()
    assert torch.allclose(res.log_prob, expected, atol=1e-6)


def test_exact_divergence_flattens_images_like_autograd_jacobian():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 3, padding=1))
    net = net.double()
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    div = _exact_divergence(net(x), x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], x[b].detach())
        assert torch.allclose(div[b], jac.reshape(18, 18).trace())


@pytest.mark.parametrize("batched_min", [1, 10**9])  # vmapped backward / loop of backward passes
def test_exact_and_hutchinson_divergence_batched_and_looped(monkeypatch, batched_min):
    monkeypatch.setattr(likelihood_module, "_BATCHED_MIN", batched_min)
    w = torch.randn(12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    v = torch.tanh(x.reshape(2, 12) @ w.T).reshape(x.shape)
    jac = (1.0 - torch.tanh(x.detach().reshape(2, 12) @ w.T) ** 2)[:, :, None] * w  # dv_i/dx_j per sample
    assert torch.allclose(_exact_divergence(v, x), jac.diagonal(dim1=1, dim2=2).sum(-1))
    probes = torch.randn(5, 2, 3, 2, 2, dtype=torch.float64)
    e = probes.reshape(5, 2, 12)
    expected = torch.einsum("pbi,bij,pbj->pb", e, jac, e).mean(0)
    assert torch.allclose(likelihood_module._hutchinson_divergence(v, x, probes), expected)


def test_result_is_detached_and_model_params_untouched():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def v(x, t, y=None):
        return net(torch.cat([x, t[:, None]], dim=1))

    for div in ("exact", "hutchinson"):
        res = log_likelihood(v, torch.randn(4, 2), method="rk4", steps=3, divergence=div, seed=0)
        assert not res.log_prob.requires_grad and not res.z.requires_grad
        assert res.nfe == 12
        assert all(p.grad is None for p in net.parameters())
        assert torch.isfinite(res.log_prob).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"divergence": "trace"}, "unknown divergence"),
        ({"divergence": "hutchinson", "probe": "sphere"}, "unknown probe"),
        ({"n_probes": 0}, "n_probes"),
        ({"method": "dopri5", "steps": 5}, "adaptive"),
        ({"method": "rk45"}, "unknown ODE method"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_likelihood(lambda x, t, y=None: x, torch.zeros(2, 2), **kwargs)


def test_non_finite_data_raises():
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(lambda x, t, y=None: x, torch.tensor([[0.0, float("nan")]]))


# ----------------------------------------------------------------------------- errors in the backward pass
class _OutOfMemoryOnce(torch.autograd.Function):
    """Doubles x; its first backward pass raises an out-of-memory error (as a vmapped backward
    over many cotangents may on a GPU) and later ones succeed, so swallowing the error would
    go unnoticed."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return 2.0 * x

    @staticmethod
    def backward(ctx, g):
        _OutOfMemoryOnce.calls += 1
        if _OutOfMemoryOnce.calls == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return 2.0 * g


class _ReadsItem(torch.autograd.Function):
    """Doubles x; its backward reads a value with .item(), which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return 2.0 * x

    @staticmethod
    def backward(ctx, g):
        scale = torch.tensor(1.0) * float(g.sum().item() * 0.0 + 2.0)
        return scale * g


def test_out_of_memory_in_the_batched_backward_propagates(monkeypatch):
    monkeypatch.setattr(likelihood_module, "_BATCHED_MIN", 1)
    _OutOfMemoryOnce.calls = 0
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        log_likelihood(lambda x, t: _OutOfMemoryOnce.apply(x), torch.ones(3, 2), method="euler", steps=1)


def test_a_backward_vmap_cannot_batch_falls_back_to_a_loop(monkeypatch):
    # v = 2x: x_1 = e^2 x_0, so log p_1(x) = log N(x; 0, e^4 I) (as in test_expanding_field_sign)
    monkeypatch.setattr(likelihood_module, "_BATCHED_MIN", 1)
    x1 = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = log_likelihood(lambda x, t: _ReadsItem.apply(x), x1, atol=1e-9, rtol=1e-9)
    assert torch.allclose(res.log_prob, _gauss_logpdf(x1, std=math.exp(2.0)), atol=1e-6)


# ----------------------------------------------------------------------------- bits per dim
def test_bits_per_dim_uniform_is_eight_bits():
    # uniform on [-1, 1)^D has log p = -D log 2; the dequantised uint8 data is then uniform
    # over 256 levels per dimension: exactly 8 bits per dimension
    d = 784
    assert bits_per_dim(-d * math.log(2.0), d) == pytest.approx(8.0)
    assert bits_per_dim(torch.tensor([0.0, 0.0]), d, data_range=(0.0, 1.0)).tolist() == pytest.approx([8.0, 8.0])
    # 16 levels on [0, 1): 4 bits
    assert bits_per_dim(0.0, 10, data_range=(0.0, 1.0), num_levels=16) == pytest.approx(4.0)
    # no correction: plain nats -> bits
    assert bits_per_dim(-3.0 * math.log(2.0) * d, d, data_range=None) == pytest.approx(3.0)


def test_bits_per_dim_matches_discrete_probability_of_a_fine_quantisation():
    # N(0, 0.3^2) per dim in model space [-1, 1): with 4096 levels the dequantised bound is
    # nearly tight, so bpd ~ -log2 P(bin) computed from the Gaussian CDF
    std, levels = 0.3, 4096
    k = np.array([1500, 2048, 2500])
    width = 2.0 / levels
    lo = -1.0 + k * width
    prob = scipy.stats.norm.cdf(lo + width, scale=std) - scipy.stats.norm.cdf(lo, scale=std)
    centre = torch.from_numpy(lo + 0.5 * width)
    log_p = torch.from_numpy(scipy.stats.norm.logpdf(centre.numpy(), scale=std))
    bpd = bits_per_dim(log_p, 1, data_range=(-1.0, 1.0), num_levels=levels)
    assert np.allclose(bpd.numpy(), -np.log2(prob), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_dims": 0}, "num_dims"), ({"data_range": (1.0, -1.0)}, "data_range"), ({"num_levels": 1}, "num_levels")],
)
def test_bits_per_dim_bad_arguments(kwargs, match):
    args = {"num_dims": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        bits_per_dim(torch.zeros(2), **args)
