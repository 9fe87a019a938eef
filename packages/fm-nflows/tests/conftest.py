"""Shared fixtures for the fm-nflows tests: random, non-identity weights everywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fm_nflows import ActNorm, AffineCoupling, InvertibleLinear


def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.4) -> nn.Module:
    """Perturb every layer away from its identity initialisation (in place).

    Couplings: the zero-initialised last conditioner layer gets Gaussian weights, so shift
    and log-scale are non-trivial functions. ActNorm: random loc / log_scale and marked
    initialised (so no data-dependent init interferes). InvertibleLinear: random L, U and
    log|diag|. Returns the module.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(p: torch.Tensor, s: float) -> torch.Tensor:
        return (torch.randn(p.shape, generator=g, dtype=torch.float64) * s).to(p.dtype)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, AffineCoupling):
                m.conditioner.out.weight.copy_(rnd(m.conditioner.out.weight, scale))
                m.conditioner.out.bias.copy_(rnd(m.conditioner.out.bias, scale))
            elif isinstance(m, ActNorm):
                m.loc.copy_(rnd(m.loc, 0.5))
                m.log_scale.copy_(rnd(m.log_scale, 0.3))
                m.initialized.fill_(True)
            elif isinstance(m, InvertibleLinear):
                m.lower.add_(rnd(m.lower, 0.3))
                m.upper.add_(rnd(m.upper, 0.3))
                m.log_abs_diag.add_(rnd(m.log_abs_diag, 0.3))
    return module


@pytest.fixture
def randomize():
    return randomize_
