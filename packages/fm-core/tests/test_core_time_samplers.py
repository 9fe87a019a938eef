"""Time samplers: range, distribution (KS tests, logit-normal moments), one sample per stratum."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from fm_core import LogitNormalTime, StratifiedTime, TimeSampler, UniformTime, UShapedTime, get_time_sampler

SAMPLERS = [UniformTime(), LogitNormalTime(), LogitNormalTime(mean=-1.0, std=2.0), StratifiedTime(), UShapedTime()]
IDS = [repr(s) for s in SAMPLERS]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=IDS)
def test_shape_dtype_range_device(sampler):
    t = sampler(1000, device="cpu", generator=torch.Generator().manual_seed(0))
    assert t.shape == (1000,) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert sampler(0).shape == (0,)
    assert sampler(5).shape == (5,)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=IDS)
def test_generator_makes_draws_reproducible(sampler):
    a = sampler(64, generator=torch.Generator().manual_seed(3))
    b = sampler(64, generator=torch.Generator().manual_seed(3))
    c = sampler(64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", SAMPLERS, ids=IDS)
def test_cpu_generator_cuda_device(sampler):
    a = sampler(16, device="cuda", generator=torch.Generator().manual_seed(1))
    b = sampler(16, generator=torch.Generator().manual_seed(1))
    assert a.device.type == "cuda" and torch.equal(a.cpu(), b)


def test_uniform_is_uniform():
    t = UniformTime()(20000, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(t.double().numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.5, 0.7), (-1.0, 1.5)])
def test_logit_normal_moments(mean, std):
    n = 200_000
    t = LogitNormalTime(mean, std)(n, generator=torch.Generator().manual_seed(1)).double()
    logit = torch.log(t) - torch.log1p(-t)
    # standard errors: std / sqrt(n) ~ 0.003 for the mean, std / sqrt(2n) for the std
    assert logit.mean().item() == pytest.approx(mean, abs=5 * std / n**0.5)
    assert logit.std().item() == pytest.approx(std, abs=5 * std / (2 * n) ** 0.5 + 1e-3)
    # and the distribution of t itself against scipy's normal CDF through the logit
    assert stats.kstest(logit.numpy(), "norm", args=(mean, std)).pvalue > 1e-3


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_stratified_one_sample_per_stratum(n):
    t = StratifiedTime()(n, generator=torch.Generator().manual_seed(2))
    strata = torch.floor(t.double() * n).long()
    assert torch.equal(torch.sort(strata).values, torch.arange(n))
    if n >= 7:
        assert not torch.equal(strata, torch.arange(n)), "strata should come back shuffled"


def test_stratified_is_uniform_marginally():
    # the first sample over many independent draws of a batch of 4 is uniform on [0, 1)
    g = torch.Generator().manual_seed(5)
    first = torch.stack([StratifiedTime()(4, generator=g)[0] for _ in range(4000)])
    assert stats.kstest(first.double().numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("a", [0.5, 4.0, 12.0])
def test_u_shaped_matches_its_cdf(a):
    # p(t) = a (e^(a t) + e^(a (1 - t))) / (2 (e^a - 1)), integrated by hand:
    # F(t) = (e^(a t) - 1 + e^a - e^(a (1 - t))) / (2 (e^a - 1))
    def cdf(t):
        return (np.expm1(a * t) + math.exp(a) - np.exp(a * (1.0 - t))) / (2.0 * math.expm1(a))

    t = UShapedTime(a)(20000, generator=torch.Generator().manual_seed(2)).double().numpy()
    assert stats.kstest(t, cdf).pvalue > 1e-3
    assert abs(t.mean() - 0.5) < 0.01  # symmetric about 1/2

    # the mass near the ends and in the middle, against the density integrated numerically
    def pdf(x):
        return a * (math.exp(a * x) + math.exp(a * (1.0 - x))) / (2.0 * math.expm1(a))

    ends = 2 * integrate.quad(pdf, 0.0, 0.05)[0]
    middle = integrate.quad(pdf, 0.45, 0.55)[0]
    assert ((t < 0.05) | (t > 0.95)).mean() == pytest.approx(ends, abs=4 * math.sqrt(ends / 20000))
    assert (np.abs(t - 0.5) < 0.05).mean() == pytest.approx(middle, abs=4 * math.sqrt(middle / 20000))
    assert pdf(0.0) / pdf(0.5) == pytest.approx(math.cosh(a / 2))  # as the docstring says


def test_get_time_sampler():
    assert isinstance(get_time_sampler("uniform"), UniformTime)
    s = get_time_sampler("logit-normal", mean=0.3, std=0.5)
    assert isinstance(s, LogitNormalTime) and (s.mean, s.std) == (0.3, 0.5)
    assert isinstance(get_time_sampler("stratified"), StratifiedTime)
    assert get_time_sampler("u-shaped", a=2.0).a == 2.0
    assert isinstance(get_time_sampler("logit_normal"), TimeSampler)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_time_sampler("beta"), "beta"),
        (lambda: get_time_sampler("uniform", std=1.0), "std"),
        (lambda: LogitNormalTime(std=0.0), "std"),
        (lambda: UShapedTime(a=0.0), "u-shaped"),
        (lambda: UShapedTime(a=float("nan")), "u-shaped"),
        (lambda: UniformTime()(-1), "-1"),
        (lambda: StratifiedTime()(2.5), "2.5"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
