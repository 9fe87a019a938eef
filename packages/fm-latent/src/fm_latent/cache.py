"""A data set encoded once: a latent cache in one safetensors file.

Tensors ``latents`` (float32 [N, C, h, w], scaled: about N(0, 1)) and optionally ``labels``
(int64 [N]); the safetensors metadata holds ``format`` (``fm-latent-cache``), ``version``,
``vae`` (JSON: :meth:`fm_latent.LatentVAE.identity`, the class, config with scale and shift,
and a SHA-256 of the weights) and ``info`` (JSON chosen by the caller: data set, split, ...).

:func:`load_latent_cache` with a ``vae`` refuses a cache written by another VAE (other weights,
class or config, a re-fitted scale included), naming what differs: its latents would decode to
nonsense, silently. The file is written beside its target and renamed, so a killed encode never
leaves a half-written cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .vae import LatentVAE

__all__ = [
    "CACHE_FORMAT",
    "LatentCache",
    "LatentCacheError",
    "check_vae_identity",
    "load_latent_cache",
    "save_latent_cache",
]

CACHE_FORMAT = "fm-latent-cache"
CACHE_VERSION = 1


class LatentCacheError(ValueError):
    """A latent cache that is missing, corrupt, or belongs to another VAE."""


@dataclass
class LatentCache:
    """latents float32 [N, C, h, w]; labels int64 [N] or None; vae: the identity of the VAE that
    wrote them; info: the caller's metadata; path: the file."""

    latents: Tensor
    labels: Tensor | None
    vae: dict[str, Any]
    info: dict[str, Any]
    path: Path


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    diffs = []
    if found.get("class") != expected.get("class"):
        diffs.append(f"class {found.get('class')!r} vs {expected.get('class')!r}")
    fc, ec = found.get("config", {}), expected.get("config", {})
    for k in sorted(set(fc) | set(ec)):
        if fc.get(k) != ec.get(k):
            diffs.append(f"config {k}={fc.get(k)!r} vs {ec.get(k)!r}")
    if found.get("weights_sha256") != expected.get("weights_sha256"):
        diffs.append(
            f"weights sha256 {str(found.get('weights_sha256'))[:12]}... vs {str(expected.get('weights_sha256'))[:12]}..."
        )
    return diffs


def check_vae_identity(found: dict[str, Any], vae: LatentVAE | dict[str, Any], what: str) -> None:
    """Raise LatentCacheError naming the differences when ``found`` is not ``vae``'s identity."""
    expected = vae.identity() if isinstance(vae, LatentVAE) else vae
    diffs = _differences(found, expected)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise LatentCacheError(
            f"{what} was encoded by another VAE ({found.get('name_or_path') or 'unnamed'}) than "
            f"{expected.get('name_or_path') or 'the one given'}: {shown} (cache vs this VAE); re-encode with this VAE"
        )


def save_latent_cache(
    path: str | os.PathLike,
    latents: Tensor,
    vae: LatentVAE | dict[str, Any],
    *,
    labels: Tensor | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``latents`` (and ``labels``) with the VAE's identity and ``info`` (JSON-safe) atomically."""
    path = Path(path)
    if latents.ndim != 4 or not torch.is_floating_point(latents):
        raise LatentCacheError(
            f"latents must be a float tensor [N, C, h, w], got {latents.dtype} {tuple(latents.shape)}"
        )
    tensors = {"latents": latents.detach().to("cpu", torch.float32).contiguous()}
    if labels is not None:
        if labels.shape != (latents.shape[0],):
            raise LatentCacheError(f"labels must have shape [{latents.shape[0]}], got {tuple(labels.shape)}")
        tensors["labels"] = labels.detach().to("cpu", torch.int64).contiguous()
    identity = vae.identity() if isinstance(vae, LatentVAE) else vae
    meta = {
        "format": CACHE_FORMAT, "version": str(CACHE_VERSION),
        "vae": json.dumps(identity, sort_keys=True), "info": json.dumps(info or {}, sort_keys=True),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_latent_cache(
    path: str | os.PathLike, vae: LatentVAE | dict[str, Any] | None = None, *, device: str | torch.device = "cpu"
) -> LatentCache:
    """Read a cache; with ``vae`` (a LatentVAE or its identity) refuse one written by another VAE."""
    path = Path(path)
    if not path.is_file():
        raise LatentCacheError(f"{path}: no latent cache there (write one with fm-latentgen encode)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise LatentCacheError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != CACHE_FORMAT:
        raise LatentCacheError(
            f"{path}: not a latent cache (metadata format {meta.get('format')!r}, expected {CACHE_FORMAT!r})"
        )
    if meta.get("version") != str(CACHE_VERSION):
        raise LatentCacheError(
            f"{path}: cache version {meta.get('version')!r}, this fm-latent reads version {CACHE_VERSION}"
        )
    try:
        identity, info = json.loads(meta["vae"]), json.loads(meta["info"])
    except (KeyError, ValueError) as e:
        raise LatentCacheError(f"{path}: broken cache metadata ({e})") from None
    if "latents" not in tensors:
        raise LatentCacheError(f"{path}: no 'latents' tensor")
    if vae is not None:
        check_vae_identity(identity, vae, str(path))
    return LatentCache(latents=tensors["latents"], labels=tensors.get("labels"), vae=identity, info=info, path=path)
