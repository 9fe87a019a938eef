"""Affine coupling layer (Dinh et al., "Density estimation using Real NVP", 2017, eq. 6-9).

A binary mask splits the coordinates into a conditioning part ``x_a`` (left unchanged)
and a transformed part ``x_b``. One conditioner MLP reads ``x_a`` (and the context, if
any) and outputs a shift ``t`` and a raw log-scale; the log-scale is bounded smoothly,
``s = c * tanh(s_raw / c)``, never hard-clamped. Then, in the data -> noise direction,

    z_a = x_a,    z_b = x_b * exp(s(x_a)) + t(x_a),    log|det dz/dx| = sum(s).

With ``zero_init=True`` the conditioner's last layer starts at zero, so a fresh coupling is
the identity; ``zero_init=False`` keeps PyTorch's default (small random) initialisation there,
as zuko does. The conditioner has no dropout and no batch statistics: those would make the map differ
between training and evaluation and break invertibility.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import FlowLayer, check_points
from .functional import affine_forward, affine_inverse, soft_bound

__all__ = ["AffineCoupling", "ConditionerMLP", "alternating_mask", "ACTIVATIONS"]

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU}


def alternating_mask(dim: int, parity: int) -> Tensor:
    """Boolean mask ``[dim]`` that keeps (conditions on) the coordinates ``i`` with
    ``i % 2 == parity``. For ``dim=2``: parity 0 -> ``[True, False]``."""
    if dim < 2:
        raise ValueError(f"a coupling needs dim >= 2, got dim={dim}")
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    return torch.arange(dim) % 2 == parity


class ConditionerMLP(nn.Module):
    """``in_dim -> hidden -> ... -> out_dim`` MLP with ``n_hidden`` hidden layers.

    The last Linear is zero-initialised when ``zero_init`` (else PyTorch's default init).
    No dropout, no normalisation layers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 128,
        n_hidden: int = 3,
        activation: str = "relu",
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if hidden < 1 or n_hidden < 1:
            raise ValueError(f"hidden and n_hidden must be >= 1, got hidden={hidden}, n_hidden={n_hidden}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        """``h [B, in_dim] -> [B, out_dim]``."""
        return self.out(self.net(h))


class AffineCoupling(FlowLayer):
    """Affine coupling: transform the coordinates where ``mask`` is False, conditioned on
    those where it is True (and on ``context`` when ``context_dim > 0``).

    Args:
        dim: number of coordinates D.
        mask: boolean ``[D]`` (True = conditioning coordinate, kept unchanged) or a
            sequence of bools/0-1 ints; at least one True and one False. Default: the
            first ``D // 2`` coordinates condition the rest (a "split").
        hidden, n_hidden, activation: conditioner MLP width, depth, nonlinearity.
        context_dim: size of the context vector concatenated to the conditioner input
            (0: unconditional; ``context`` must then be None).
        scale_bound: c in ``s = c * tanh(s_raw / c)``; each coupling scales a coordinate
            by a factor in ``(exp(-c), exp(c))``.
        zero_init: start the conditioner's last layer at zero (the coupling starts as the
            identity); False keeps PyTorch's default initialisation of that layer.

    ``forward(x [B, D], context [B, C] | None) -> (z [B, D], logdet [B])``, data -> noise;
    ``inverse(z, context) -> (x, logdet)`` with the opposite log-determinant.
    """

    mask: Tensor  # buffer [D] bool, True = conditioning coordinate
    cond_idx: Tensor  # buffer: indices where mask is True
    trans_idx: Tensor  # buffer: indices where mask is False

    def __init__(
        self,
        dim: int,
        mask: Tensor | Sequence[int | bool] | None = None,
        *,
        hidden: int = 128,
        n_hidden: int = 3,
        activation: str = "relu",
        context_dim: int = 0,
        scale_bound: float = 2.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling needs dim >= 2, got dim={dim}")
        if mask is None:
            mask = torch.arange(dim) < dim // 2
        mask = torch.as_tensor(mask)
        if mask.shape != (dim,):
            raise ValueError(f"mask must have shape [{dim}], got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"mask must be boolean or 0/1, got {mask.tolist()}")
            mask = mask.bool()
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError(f"mask needs at least one True and one False entry, got {mask.tolist()}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound!r}")
        self.dim = dim
        self.context_dim = context_dim
        self.scale_bound = float(scale_bound)
        self.register_buffer("mask", mask.clone())
        self.register_buffer("cond_idx", torch.nonzero(mask).flatten())
        self.register_buffer("trans_idx", torch.nonzero(~mask).flatten())
        n_cond, n_trans = int(mask.sum()), int((~mask).sum())
        self.conditioner = ConditionerMLP(
            n_cond + context_dim, 2 * n_trans, hidden, n_hidden, activation, zero_init=zero_init
        )

    def _shift_log_scale(self, x_cond: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_dim > 0:
            if context is None:
                raise ValueError(
                    f"this coupling was built with context_dim={self.context_dim}; pass context [B, context_dim]"
                )
            if context.shape != (x_cond.shape[0], self.context_dim):
                raise ValueError(
                    f"context must have shape [{x_cond.shape[0]}, {self.context_dim}], got {tuple(context.shape)}"
                )
            h = torch.cat([x_cond, context.to(x_cond.dtype)], dim=1)
        else:
            if context is not None:
                raise ValueError("this coupling was built with context_dim=0 but got a context")
            h = x_cond
        shift, s_raw = self.conditioner(h).chunk(2, dim=1)
        return shift, soft_bound(s_raw, self.scale_bound)

    def _assemble(self, kept: Tensor, changed: Tensor) -> Tensor:
        out = kept.new_empty(kept.shape[0], self.dim)
        out[:, self.cond_idx] = kept
        out[:, self.trans_idx] = changed
        return out

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> noise. ``x [B, D] -> (z [B, D], log|det dz/dx| [B])``."""
        check_points(x, self.dim)
        x_a, x_b = x[:, self.cond_idx], x[:, self.trans_idx]
        shift, log_scale = self._shift_log_scale(x_a, context)
        z_b, logdet = affine_forward(x_b, shift, log_scale)
        return self._assemble(x_a, z_b), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise -> data. ``z [B, D] -> (x [B, D], log|det dx/dz| [B])``."""
        check_points(z, self.dim, "z")
        z_a, z_b = z[:, self.cond_idx], z[:, self.trans_idx]
        shift, log_scale = self._shift_log_scale(z_a, context)
        x_b, logdet = affine_inverse(z_b, shift, log_scale)
        return self._assemble(z_a, x_b), logdet

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, mask={self.mask.int().tolist()}, context_dim={self.context_dim}, "
            f"scale_bound={self.scale_bound}"
        )
