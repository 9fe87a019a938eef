"""Samplers of the training time t in [0, 1] (t = 0 noise, t = 1 data).

Each sampler is called as ``sampler(n, device=None, generator=None) -> Tensor[n]`` (float32).
With a generator the draw happens on the generator's device (so a CPU generator gives the same
numbers whatever ``device`` is) and is then moved to ``device``.

References: logit-normal: Esser et al., "Scaling Rectified Flow Transformers" (SD3, 2024), sec. 3.1;
stratified: Kingma et al., "Variational Diffusion Models" (2021), low-discrepancy sampler;
u-shaped: Lee, Lin and Fanti, "Improving the Training of Rectified Flows" (2024), sec. 4.1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._internal import build_from_registry

__all__ = [
    "TimeSampler",
    "UniformTime",
    "LogitNormalTime",
    "StratifiedTime",
    "UShapedTime",
    "TIME_SAMPLERS",
    "get_time_sampler",
]


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of times n must be a non-negative int, got {n!r}")
    return n


def _rand(kind: str, n: int, device, generator: torch.Generator | None) -> Tensor:
    """rand/randn of shape [n] drawn on the generator's device, then moved to ``device``."""
    fn = torch.rand if kind == "rand" else torch.randn
    if generator is None:
        return fn(n, device=device)
    out = fn(n, generator=generator, device=generator.device)
    return out if device is None else out.to(device)


class TimeSampler:
    """Base class: ``sampler(n, *, device=None, generator=None) -> Tensor[n]`` in [0, 1]."""

    def __call__(
        self, n: int, *, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class UniformTime(TimeSampler):
    """t ~ U[0, 1)."""

    def __call__(self, n, *, device=None, generator=None) -> Tensor:
        return _rand("rand", _check_n(n), device, generator)


class LogitNormalTime(TimeSampler):
    """t = sigmoid(m + s * z), z ~ N(0, 1): logit(t) ~ N(mean, std^2). Puts more weight on the
    middle of the path (SD3 uses mean 0, std 1)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if not float(std) > 0.0:
            raise ValueError(f"logit-normal std must be > 0, got {std!r}")
        self.mean = float(mean)
        self.std = float(std)

    def __call__(self, n, *, device=None, generator=None) -> Tensor:
        z = _rand("randn", _check_n(n), device, generator)
        return torch.sigmoid(self.mean + self.std * z)


class StratifiedTime(TimeSampler):
    """Stratified uniform: [0, 1) is cut into n equal strata and each holds exactly one sample,
    uniform within it; the order is shuffled. Lower-variance estimate of the loss over t."""

    def __call__(self, n, *, device=None, generator=None) -> Tensor:
        n = _check_n(n)
        gen_device = generator.device if generator is not None else device
        perm = torch.randperm(n, generator=generator, device=gen_device)
        # float64 so that (k + u) / n does not round across a stratum boundary (MPS has no float64)
        wide = torch.float32 if torch.device(gen_device or "cpu").type == "mps" else torch.float64
        u = torch.rand(n, generator=generator, device=gen_device, dtype=wide)
        t = ((perm.to(wide) + u) / max(n, 1)).to(torch.float32).clamp_max(1.0)
        return t if device is None else t.to(device)


class UShapedTime(TimeSampler):
    """U-shaped: density p(t) = a (e^(a t) + e^(a (1 - t))) / (2 (e^a - 1)) on [0, 1], symmetric about
    1/2 and cosh(a / 2) times denser at t = 0 and 1 than at t = 1/2 (a = 4: 3.8x).
    Drawn as the inverse CDF of the exponential half, t = log(1 + u (e^a - 1)) / a, mirrored to 1 - t
    with probability 1/2. For reflow (one-round rectified flow) students, whose one-step sample is
    decided at t = 0, where the straight-pair velocity is hardest to learn."""

    def __init__(self, a: float = 4.0) -> None:
        a = float(a)
        if not 0.0 < a <= 50.0:
            raise ValueError(f"u-shaped scale a must be in (0, 50], got {a!r}")
        self.a = a

    def __call__(self, n, *, device=None, generator=None) -> Tensor:
        n = _check_n(n)
        u = _rand("rand", 2 * n, device, generator)
        u = u if u.device.type == "mps" else u.to(torch.float64)  # MPS has no float64
        t = torch.log1p(u[:n] * math.expm1(self.a)) / self.a
        t = torch.where(u[n:] < 0.5, t, 1.0 - t)
        return t.to(torch.float32).clamp(0.0, 1.0)


TIME_SAMPLERS = ("uniform", "logit-normal", "stratified", "u-shaped")
_TIME_SAMPLER_TABLE = {
    "uniform": UniformTime,
    "logit-normal": LogitNormalTime,
    "logitnormal": LogitNormalTime,
    "stratified": StratifiedTime,
    "u-shaped": UShapedTime,
}


def get_time_sampler(name: str, **kw) -> TimeSampler:
    """Build a time sampler by name: "uniform", "logit-normal" (mean, std), "stratified", "u-shaped" (a)."""
    return build_from_registry("time sampler", name, _TIME_SAMPLER_TABLE, TIME_SAMPLERS, kw)
