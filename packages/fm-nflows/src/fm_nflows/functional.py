"""Pure math of the flow layers: no parameters, no state, only tensors in and out.

Direction convention of the whole package: ``forward`` maps data ``x`` to noise ``z``,
``inverse`` maps noise to data. Every function that returns a log-determinant returns
``log |det dz/dx|`` (or ``log |det dx/dz|`` for the inverse direction) per sample,
shape ``[B]``.

References: Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP" (2017);
Kingma, Dhariwal, "Glow" (2018), sections 3.1 (ActNorm) and 3.2 (LU-decomposed 1x1
convolution).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "soft_bound",
    "affine_forward",
    "affine_inverse",
    "standard_normal_log_prob",
    "invert_permutation",
    "lu_weight",
]


def soft_bound(s: Tensor, bound: float) -> Tensor:
    """Smoothly bound ``s`` to ``(-bound, bound)``: ``bound * tanh(s / bound)``.

    Close to the identity for ``|s| << bound`` (slope 1 at 0) and never flat like a hard
    clamp, so gradients neither explode nor vanish abruptly. ``bound`` must be > 0.
    """
    if not bound > 0:
        raise ValueError(f"bound must be a positive float, got {bound!r}")
    return bound * torch.tanh(s / bound)


def affine_forward(x: Tensor, shift: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise affine map ``z = x * exp(log_scale) + shift``.

    Shapes: ``x``, ``shift``, ``log_scale`` all ``[B, K]``. Returns ``(z [B, K], logdet [B])``
    with ``logdet = sum_k log_scale``.
    """
    return x * torch.exp(log_scale) + shift, log_scale.sum(dim=-1)


def affine_inverse(z: Tensor, shift: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`affine_forward`: ``x = (z - shift) * exp(-log_scale)``.

    Returns ``(x [B, K], logdet [B])`` with ``logdet = -sum_k log_scale``.
    """
    return (z - shift) * torch.exp(-log_scale), -log_scale.sum(dim=-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per row of ``z [B, D]`` -> ``[B]``."""
    d = z.shape[-1]
    return -0.5 * (z * z).sum(dim=-1) - 0.5 * d * math.log(2.0 * math.pi)


def invert_permutation(perm: Tensor) -> Tensor:
    """Index tensor ``inv`` with ``inv[perm[i]] = i`` (so ``x[:, perm][:, inv] == x``)."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv


def lu_weight(perm: Tensor, lower: Tensor, upper: Tensor, sign: Tensor, log_abs_diag: Tensor) -> Tensor:
    """Assemble ``W = P @ L @ (U + diag(sign * exp(log_abs_diag)))``  (Glow, eq. 10).

    ``perm [D, D]`` is a permutation matrix, ``lower``/``upper`` ``[D, D]`` whose strict
    lower / strict upper triangles are used (the rest is ignored), ``sign`` and
    ``log_abs_diag`` ``[D]``. ``log |det W| = sum(log_abs_diag)``.
    """
    eye = torch.eye(perm.shape[0], dtype=lower.dtype, device=lower.device)
    l_mat = torch.tril(lower, diagonal=-1) + eye
    u_mat = torch.triu(upper, diagonal=1) + torch.diag(sign * torch.exp(log_abs_diag))
    return perm @ l_mat @ u_mat
