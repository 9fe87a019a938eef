"""Helpers shared by fm-core's modules (private: names here may change without notice).

The one public name defined here is :class:`VelocityField`, re-exported as ``fm_core.VelocityField``.
Time convention: t = 0 is the source (Gaussian noise), t = 1 is data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

__all__ = ["VelocityField", "call_velocity", "device_check", "build_from_registry"]

T = TypeVar("T")


@runtime_checkable
class VelocityField(Protocol):
    """What fm-core integrates and trains: ``v = model(x, t, y=None)``.

    x [B, ...] float, t float [B] in [0, 1] (t = 0 noise, t = 1 data), y int64 labels [B] or None;
    returns v shaped like x. fm-core calls ``model(x, t)`` when there are no labels and
    ``model(x, t, y)`` when there are, so an ``nn.Module`` whose ``forward(x, t)`` takes no labels
    fits an unconditional use, and ``forward(x, t, y=None)`` fits both.
    """

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None, /) -> Tensor: ...


def call_velocity(model: Callable[..., Tensor], x: Tensor, t: Tensor, y: Any = None) -> Tensor:
    """``model(x, t)`` when ``y`` is None, else ``model(x, t, y)`` (the calling convention above)."""
    return model(x, t) if y is None else model(x, t, y)


def device_check(ok: Tensor, what: str, error: Callable[[], Exception]) -> None:
    """Raise ``error()`` unless the bool tensor ``ok`` is all true, without a host-device sync.

    On the CPU the value is read at once (a CPU tensor costs nothing to read) and ``error()``
    builds a detailed message. On a GPU ``torch._assert_async`` checks it on the device: no
    stall inside a training step; a failure surfaces at the next synchronising call as a
    device-side assertion carrying ``what``.
    """
    if ok.device.type == "cpu":
        if not bool(ok.all()):
            raise error()
    else:
        torch._assert_async(ok.all(), what)


def _as_time_batch(t: Tensor | float, x: Tensor, name: str = "x") -> Tensor:
    """Check t against x [B, ...] and return it as a [B] tensor in x's dtype and device."""
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension [B, ...], got a 0-d tensor")
    b = x.shape[0]
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), dtype=dtype)  # in x's dtype at once: 0.1 stays 0.1 in float64
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(
            f"t must have shape [B] = [{b}] (one time per row of {name} {tuple(x.shape)}) or be a "
            f"scalar, got shape {tuple(t.shape)}"
        )
    return t.to(device=x.device, dtype=dtype)


def _expand(c: Tensor, x: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] to broadcast over the trailing dimensions of x."""
    return c.reshape(c.shape + (1,) * (x.ndim - 1))


def build_from_registry(
    kind: str, name: Any, table: Mapping[str, Callable[..., T]], allowed: Sequence[str], kw: dict[str, Any]
) -> T:
    """``table[key](**kw)`` for the registry of ``kind`` (e.g. "scheduler").

    ``key`` is ``name`` lower-cased with "_" read as "-"; ``table`` holds the allowed names and
    their aliases. An unknown name or arguments the constructor does not take are a ValueError
    naming the bad value and the allowed names.
    """
    key = name.lower().replace("_", "-") if isinstance(name, str) else None
    if key is None or key not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(allowed)}")
    try:
        return table[key](**kw)
    except TypeError as e:
        raise ValueError(f"bad arguments {kw!r} for {kind} {name!r}: {e}") from None
