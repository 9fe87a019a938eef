"""Fixed permutation of the coordinates (volume preserving, log-determinant 0).

Dinh et al. (2017) alternate the coupling masks; a fixed permutation between couplings
does the same for any dimension. The permutation and its inverse are index buffers, so
they are saved in the ``state_dict`` and restored exactly on load.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import FlowLayer, check_points
from .functional import invert_permutation

__all__ = ["Permutation"]


class Permutation(FlowLayer):
    """``z = x[:, perm]`` (data -> noise), ``x = z[:, inv_perm]``; logdet is 0.

    Args:
        dim: number of coordinates D.
        kind: ``"reverse"`` (``perm = [D-1, ..., 0]``) or ``"random"``.
        generator: torch.Generator for ``kind="random"`` (reproducible permutations).
        perm: an explicit permutation of ``range(D)``; overrides ``kind``.
    """

    KINDS = ("reverse", "random")
    perm: Tensor  # buffer [D] long
    inv_perm: Tensor  # buffer [D] long

    def __init__(
        self,
        dim: int,
        kind: str = "reverse",
        *,
        generator: torch.Generator | None = None,
        perm: Tensor | list[int] | None = None,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if perm is not None:
            p = torch.as_tensor(perm, dtype=torch.long)
            if p.shape != (dim,) or not torch.equal(p.sort().values, torch.arange(dim)):
                raise ValueError(f"perm must be a permutation of range({dim}), got {p.tolist()}")
        elif kind == "reverse":
            p = torch.arange(dim - 1, -1, -1)
        elif kind == "random":
            p = torch.randperm(dim, generator=generator)
        else:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.dim = dim
        self.register_buffer("perm", p)
        self.register_buffer("inv_perm", invert_permutation(p))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> noise. ``x [B, D] -> (x[:, perm], zeros [B])``."""
        check_points(x, self.dim)
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise -> data. ``z [B, D] -> (z[:, inv_perm], zeros [B])``."""
        check_points(z, self.dim, "z")
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])

    def extra_repr(self) -> str:
        return f"perm={self.perm.tolist()}"
