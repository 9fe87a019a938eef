"""Velocity networks for flow matching: ``model(x, t, y=None) -> v``; with ``two_time=True``
average-velocity networks ``model(x, r, t, y=None) -> u`` (see :mod:`fm_nets.two_time`).

t is a float tensor [B] in [0, 1] (t = 0 noise, t = 1 data); y holds integer labels [B] or is None,
and the label ``num_classes`` is the null class used by classifier-free guidance.

Token models for discrete flow matching (:class:`TokenDiT`, :class:`TokenMLP`; contract in
:mod:`fm_nets.tokens`): ``model(x, t, y=None) -> logits`` with x int64 token ids [B, *grid] and
logits [B, *grid, vocab_size], the posterior over the data token at each position.
"""

from __future__ import annotations

from torch import nn

from .embeddings import LabelEmbedding, TimeEmbedding, sinusoidal_embedding
from .hub import HubMixin, HubUnreachableError
from .mlp import MLPVelocity
from .token_mlp import TokenMLP
from .two_time import interval_embedding_params, load_one_time_weights
from .unet import UNet

__version__ = "0.3.0"

__all__ = [
    "HubMixin",
    "HubUnreachableError",
    "LabelEmbedding",
    "TimeEmbedding",
    "sinusoidal_embedding",
    "MLPVelocity",
    "UNet",
    "DiT",
    "DIT_CONFIGS",
    "TokenDiT",
    "TokenMLP",
    "build_net",
    "NETS",
    "load_one_time_weights",
    "interval_embedding_params",
]

NETS = ("mlp", "unet", "dit", "token-dit", "token-mlp")


def __getattr__(name: str):
    # The DiT pulls in timm, whose import costs seconds; load it only when a DiT is asked for.
    if name in ("DiT", "DIT_CONFIGS"):
        from . import dit

        return getattr(dit, name)
    if name == "TokenDiT":  # built from the DiT's blocks: timm too
        from .token_dit import TokenDiT

        return TokenDiT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _net_class(name: str) -> type[nn.Module]:
    """The class of registered network ``name`` ("mlp", "unet", "dit", "token-dit", "token-mlp")."""
    if name == "mlp":
        return MLPVelocity
    if name == "unet":
        return UNet
    if name == "dit":
        from .dit import DiT

        return DiT
    if name == "token-dit":
        from .token_dit import TokenDiT

        return TokenDiT
    if name == "token-mlp":
        return TokenMLP
    raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETS)}")


def build_net(name: str, **config) -> nn.Module:
    """Build a registered network from its name and its ``.config`` dict (as saved in config.json)."""
    return _net_class(name)(**config)
