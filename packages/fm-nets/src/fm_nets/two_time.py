r"""Two-time (average-velocity) networks: ``u = model(x, r, t, y=None)``, behind ``two_time=True``.

Contract (fm_core.meanflow): r and t are float [B] with 0 <= r <= t <= 1 (t = 0 noise, t = 1 data);
the current point x sits at the smaller time r, and u(x, r, t) is the average velocity of the flow
from r to t, so x_t = x_r + (t - r) u and u(x, r, r) = v(x, r) is the instantaneous velocity.

Every net of this package (MLPVelocity, UNet, DiT) takes ``two_time``. With it, the net embeds the
current time r with its usual time embedding (same module, same parameter names) and the interval
h = t - r with a second embedding of the same kind, ``interval_embed``, whose last layer starts at
zero; the two are summed where the one-time net uses its time embedding (Geng et al. 2025,
arXiv 2505.13447, embed (t, t - r) the same way). So a two-time net that received a trained
one-time net's weights (:func:`load_one_time_weights`) starts as u(x, r, t) = v(x, r) exactly, for
every t: fine-tuning a flow-matching run into a MeanFlow model begins where the run ended.

Example::

    >>> import torch
    >>> from fm_nets import MLPVelocity, load_one_time_weights
    >>> v_net = MLPVelocity(2)                                   # a trained flow-matching net
    >>> u_net = MLPVelocity(2, two_time=True)
    >>> load_one_time_weights(u_net, v_net.state_dict())
    >>> x, r = torch.randn(8, 2), torch.rand(8) / 2
    >>> torch.equal(u_net(x, r, r + 0.5), v_net(x, r))
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .embeddings import TimeEmbedding, as_time_batch

__all__ = [
    "INTERVAL_EMBED",
    "attention_with_forward_ad",
    "bind_times",
    "embed_times",
    "interval_embedding_params",
    "load_one_time_weights",
    "zero_last_layer",
]

#: Attribute name of the interval embedding (h = t - r) in every two-time net of this package.
INTERVAL_EMBED = "interval_embed"


def _one_time(t: Any, y: Any = None) -> tuple[None, Any, Any]:
    return None, t, y


def _two_time(r: Any, t: Any, y: Any = None) -> tuple[Any, Any, Any]:
    return r, t, y


def bind_times(net: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(r, t, y)`` from a forward call's arguments after x: ``(t, y=None)`` for a one-time net (r is
    None), ``(r, t, y=None)`` for a two-time one. Wrong arguments raise a one-line TypeError."""
    two = bool(getattr(net, "two_time", False))
    try:
        return _two_time(*args, **kwargs) if two else _one_time(*args, **kwargs)
    except TypeError as exc:
        call = "model(x, r, t, y=None)" if two else "model(x, t, y=None)"
        kind = "two-time (two_time=True)" if two else "one-time"
        raise TypeError(f"this {type(net).__name__} is {kind} and is called as {call}: {exc}") from None


def embed_times(
    time_embed: nn.Module,
    interval_embed: nn.Module | None,
    r: Tensor | float | None,
    t: Tensor | float,
    batch: int,
    like: Tensor,
) -> Tensor:
    """The time conditioning [B, D]: ``time_embed(t)`` for a one-time net (``interval_embed`` and r
    None); ``time_embed(r) + interval_embed(t - r)`` for a two-time one.

    Times come as floats, 0-d or [B] tensors (see ``as_time_batch``: float32 under autocast, so
    t - r near 1 is not rounded to bf16), and the embeddings compute in their weights' dtype.
    """
    if interval_embed is None:
        if r is not None:
            raise ValueError("a one-time network takes one time t, got r as well")
        return time_embed(as_time_batch(t, batch, like))
    if r is None:
        raise ValueError("a two-time network needs the current time r and the end time t")
    r_b = as_time_batch(r, batch, like)
    t_b = as_time_batch(t, batch, like)
    return time_embed(r_b) + interval_embed(t_b - r_b)


def attention_with_forward_ad(fn: Callable[..., Tensor], *args: Any) -> Tensor:
    """``fn(*args)``, where ``fn`` calls ``F.scaled_dot_product_attention``; when the fused kernel PyTorch
    picked has no forward-mode derivative (``torch.func.jvp``, which the MeanFlow target needs: flash
    attention on the CPU, flash / memory-efficient on CUDA raise NotImplementedError), again with the
    math kernel: the same attention by matmuls and softmax. Outside forward-mode AD nothing changes."""
    if torch.compiler.is_compiling():
        return fn(*args)
    try:
        return fn(*args)
    except NotImplementedError as exc:
        if "forward AD" not in str(exc):
            raise
    with sdpa_kernel([SDPBackend.MATH]):
        return fn(*args)


def zero_last_layer(embedding: nn.Module) -> None:
    """Zero the weight and bias of the last layer of ``embedding.mlp`` (a time embedding's MLP), so the
    embedding outputs exactly 0 whatever its input."""
    last = embedding.mlp[-1]  # type: ignore[index]
    if not isinstance(last, nn.Linear):
        raise TypeError(f"expected the time embedding's MLP to end in nn.Linear, got {type(last).__name__}")
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def load_one_time_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a one-time net's ``state_dict`` into the two-time ``model`` of the same architecture.

    Every key of ``model``'s state dict outside ``interval_embed`` must be in ``state_dict`` with
    the same shape and dtype, and ``state_dict`` must hold nothing else; the first mismatch is a
    one-line ValueError. The interval embedding keeps its first layers and gets its last layer set
    to zero (as built), so afterwards ``model(x, r, t, y) == v(x, r, y)`` of the one-time net exactly,
    for every t. ``model`` is a bare network (not DDP-wrapped or compiled).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"load_one_time_weights loads into a network (nn.Module), got {type(model).__name__}")
    if not getattr(model, "two_time", False):
        raise ValueError(
            f"load_one_time_weights loads into a two-time network; this {type(model).__name__} has two_time=False"
        )
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    prefix = INTERVAL_EMBED + "."
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    for name, ref in own.items():
        if name not in state_dict:
            raise ValueError(f"the one-time state dict has no {name!r} (a {type(model).__name__} of another shape?)")
        got = state_dict[name]
        if not isinstance(got, Tensor):
            raise ValueError(f"the one-time state dict's {name!r} is a {type(got).__name__}, not a tensor")
        if tuple(got.shape) != tuple(ref.shape):
            raise ValueError(
                f"the one-time state dict's {name!r} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise ValueError(f"the one-time state dict's {name!r} has dtype {got.dtype}, expected {ref.dtype}")
    extra = [k for k in state_dict if k not in own]
    if extra:
        what = "a two-time network's (use load_state_dict)" if extra[0].startswith(prefix) else "not this network's"
        raise ValueError(f"the one-time state dict has {extra[0]!r}, which is {what}")
    model.load_state_dict(dict(state_dict), strict=False)
    zero_last_layer(getattr(model, INTERVAL_EMBED))


def interval_embedding_params(name: str, config: Mapping[str, Any]) -> int:
    """Parameters that ``two_time=True`` adds to network ``name`` ("mlp", "unet", "dit") with the keyword
    arguments ``config`` (absent ones at their defaults), from the sizes alone (nothing is built): one
    time embedding, ``F * D + D + D * D + D`` for F sinusoidal features and width D (the raw-t MLP:
    ``2 * time_dim + time_dim * hidden + hidden``). For a size check before building a two-time net."""
    from . import _net_class

    cls = _net_class(name)
    if name.startswith("token-"):
        raise ValueError(f"network {name!r} has no two-time variant (the token models are one-time only)")
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    cfg = {**defaults, **config}
    if name == "mlp":
        d, f = int(cfg["hidden"]), int(cfg["time_dim"])
        if cfg["time_embedding"] == "raw":
            return 2 * f + f * d + d
        return f * d + d + d * d + d
    if name == "unet":
        d = int(cfg["emb_dim"]) if cfg["emb_dim"] is not None else 4 * int(list(cfg["channels"])[0])
        f = int(inspect.signature(TimeEmbedding).parameters["freq_dim"].default)
        return f * d + d + d * d + d
    d, f = int(cfg["hidden_size"]), int(cfg["time_freq_dim"])
    return f * d + d + d * d + d
