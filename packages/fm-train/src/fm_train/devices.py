"""Device selection, bf16 autocast and optional ``torch.compile``.

Nothing here moves tensors by itself: callers place models and batches on the
device that :func:`resolve_device` returns.
"""

from __future__ import annotations

import contextlib
import re
from typing import cast

import torch
from torch import nn

__all__ = ["DEVICE_CHOICES", "resolve_device", "autocast", "maybe_compile"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
_DEVICE_RE = re.compile(r"^(cpu|cuda|mps)(:(\d+))?$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"|"cpu"|"cuda"|"cuda:1"|"mps"`` into a ``torch.device``.

    ``"auto"`` picks CUDA, then MPS, then CPU. Asking for a device that this
    machine does not have raises ``ValueError`` naming it and what is available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps', got {spec!r}")
    name = spec.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    match = _DEVICE_RE.match(name)
    if match is None:
        raise ValueError(f"unknown device {spec!r}; use one of {', '.join(DEVICE_CHOICES)} or 'cuda:N'")
    kind, index = match.group(1), match.group(3)
    if kind == "cpu":
        if index not in (None, "0"):
            raise ValueError(f"unknown device {spec!r}; the CPU has no index other than 0")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ValueError(
                f"device {spec!r} asked for, but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", int(index)) if index is not None else torch.device("cuda")
    # mps
    if not _mps_available():
        raise ValueError(f"device {spec!r} asked for, but MPS (Apple GPU) is not available here; use 'cpu' or 'auto'")
    if index not in (None, "0"):
        raise ValueError(f"unknown device {spec!r}; MPS has only device 0")
    return torch.device("mps")


def autocast(device: torch.device | str, bf16: bool = False) -> contextlib.AbstractContextManager:
    """Context for the forward pass: bf16 autocast when ``bf16`` is true, else a no-op.

    On CUDA this is the usual mixed precision (weights and optimizer stay float32).
    It also works on CPU (``torch.autocast("cpu", bfloat16)``): it pays on CPUs with
    AVX512-BF16 or AMX and costs a lot on AVX2-only ones, so a run's ``precision="auto"``
    measures it first (fm_train.precision).
    """
    if not bf16:
        return contextlib.nullcontext()
    device = torch.device(device)
    if device.type not in ("cuda", "cpu", "mps"):
        raise ValueError(f"bf16 autocast is supported on cuda, cpu and mps, not on {device.type!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def maybe_compile(model: nn.Module, enabled: bool = False, **compile_kwargs) -> nn.Module:
    """Return ``torch.compile(model)`` when ``enabled``, else ``model`` itself (CPU and CUDA; on the
    CPU inductor needs a C++ compiler). Compilation happens lazily, at the first call.

    The compiled wrapper shares parameters with ``model``; keep using the original
    module for ``state_dict()`` so checkpoint keys carry no ``_orig_mod.`` prefix.
    """
    if not enabled:
        return model
    return cast(nn.Module, torch.compile(model, **compile_kwargs))
