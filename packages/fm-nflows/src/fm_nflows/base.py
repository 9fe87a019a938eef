"""The interface every flow layer implements.

A layer is a bijection of ``R^D`` acting on rows of a ``[B, D]`` tensor:

- ``forward(x, context=None) -> (z, logdet)``: data -> noise direction,
  ``logdet = log |det dz/dx|`` per sample, shape ``[B]``;
- ``inverse(z, context=None) -> (x, logdet)``: noise -> data direction,
  ``logdet = log |det dx/dz|`` per sample, shape ``[B]``.

So ``forward`` then ``inverse`` is the identity and the two log-determinants sum to 0.
``context`` (``[B, C]`` or None) is an optional conditioning vector, e.g. a label
embedding; layers that do not use it ignore it.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["FlowLayer", "check_points"]


def check_points(x: Tensor, dim: int, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a floating ``[B, dim]`` tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, {dim}], got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape [B, {dim}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


class FlowLayer(nn.Module):
    """Base class of the invertible layers (see the module docstring for the contract)."""

    dim: int

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError
