"""Invertible linear map with an LU parametrisation (Glow's LU-decomposed 1x1 convolution,
Kingma & Dhariwal 2018, section 3.2, eq. 10).

``W = P @ L @ (U + diag(sign * exp(log_abs_diag)))`` with ``P`` a fixed permutation
(buffer), ``L`` unit lower triangular and ``U`` strictly upper triangular (parameters),
``sign`` fixed (buffer) and ``log_abs_diag`` a parameter. ``log|det W| = sum(log_abs_diag)``
costs O(D), and the inverse is two triangular solves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FlowLayer, check_points
from .functional import lu_weight

__all__ = ["InvertibleLinear"]


class InvertibleLinear(FlowLayer):
    """``z = x @ W.T`` (data -> noise), ``x = z @ W.T^{-1}``.

    Initialised from a random orthogonal matrix (QR of a Gaussian matrix, drawn with
    ``generator``), so it starts volume preserving but not the identity.

    ``forward(x [B, D]) -> (z [B, D], logdet [B])`` with ``logdet = sum(log_abs_diag)``;
    ``inverse`` returns the negative.
    """

    perm: Tensor  # buffer [D, D], the permutation matrix P
    sign: Tensor  # buffer [D], sign of the diagonal of U

    def __init__(self, dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        p, l_mat, u_mat = torch.linalg.lu(q)
        diag = torch.diagonal(u_mat)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.lower = nn.Parameter(torch.tril(l_mat, diagonal=-1).float())
        self.upper = nn.Parameter(torch.triu(u_mat, diagonal=1).float())
        self.log_abs_diag = nn.Parameter(torch.log(diag.abs()).float())

    def weight(self) -> Tensor:
        """The matrix ``W [D, D]``."""
        return lu_weight(self.perm, self.lower, self.upper, self.sign, self.log_abs_diag)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> noise. ``x [B, D] -> (x @ W.T, log|det W| [B])``."""
        check_points(x, self.dim)
        return x @ self.weight().T, self.log_abs_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise -> data. ``z [B, D] -> (z @ W.T^{-1}, -log|det W| [B])``."""
        check_points(z, self.dim, "z")
        eye = torch.eye(self.dim, dtype=z.dtype, device=z.device)
        l_mat = torch.tril(self.lower, diagonal=-1) + eye
        u_mat = torch.triu(self.upper, diagonal=1) + torch.diag(self.sign * torch.exp(self.log_abs_diag))
        # W x = z per row  <=>  L U x = P^T z.
        rhs = (z @ self.perm).T  # (P^T z^T) = (z P)^T,  [D, B]
        y = torch.linalg.solve_triangular(l_mat, rhs, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(u_mat, y, upper=True)
        return x.T, (-self.log_abs_diag.sum()).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
