"""Activation normalisation with data-dependent initialisation (Glow, Kingma & Dhariwal
2018, section 3.1).

``z = (x - loc) * exp(-log_scale)`` per coordinate. On the first ``forward`` call in
training mode (data -> noise direction), ``loc`` and ``log_scale`` are set to the batch
mean and log standard deviation, so that batch comes out with zero mean and unit
variance. The ``initialized`` flag is a registered buffer: it is saved in the
``state_dict``, so a loaded model never re-initialises itself and loses its training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FlowLayer, check_points

__all__ = ["ActNorm"]


class ActNorm(FlowLayer):
    """Per-coordinate affine normalisation, ``forward(x [B, D]) -> (z [B, D], logdet [B])``.

    ``logdet = -sum(log_scale)`` (the same for every sample). The data-dependent
    initialisation runs once, on the first ``forward`` in training mode, and needs a batch
    of at least 2 points; ``inverse`` and evaluation mode never initialise. Set
    ``initialized`` yourself (``layer.initialized.fill_(True)``) to skip it.

    Args:
        dim: number of coordinates D.
        eps: added to the batch standard deviation at initialisation.
    """

    initialized: Tensor  # buffer, 0-d bool

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.eps = float(eps)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc``/``log_scale`` from the batch ``x [B, D]`` and mark as initialised."""
        if x.shape[0] < 2:
            raise ValueError(
                f"ActNorm's data-dependent initialisation needs a batch of at least 2 "
                f"points, got {x.shape[0]}; call forward once with a larger batch in "
                "training mode, or set layer.initialized.fill_(True)"
            )
        x = x.detach().to(self.loc.dtype)
        self.loc.copy_(x.mean(dim=0))
        self.log_scale.copy_(torch.log(x.std(dim=0, unbiased=False) + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> noise. ``x [B, D] -> (z [B, D], log|det dz/dx| [B])``."""
        check_points(x, self.dim)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise -> data. ``z [B, D] -> (x [B, D], log|det dx/dz| [B])``."""
        check_points(z, self.dim, "z")
        x = z * torch.exp(self.log_scale) + self.loc
        return x, self.log_scale.sum().expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, initialized={bool(self.initialized)}"
