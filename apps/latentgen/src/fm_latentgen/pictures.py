"""Pictures of fm-latentgen: originals beside their reconstructions; sample grids and GIFs come
from fm-pixel's ``pictures`` (uint8 [N, 28, 28] in, PNG/GIF out)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fm_pixel.pictures import save_gif, save_grid

__all__ = ["save_gif", "save_grid", "save_reconstructions"]


def save_reconstructions(originals: Tensor, reconstructions: Tensor, path: str | Path, ncol: int = 10) -> Path:
    """uint8 [N, 28, 28] twice -> one PNG: a row of ``ncol`` originals, below it their reconstructions, and so on."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} differ in shape")
    rows = []
    for start in range(0, originals.shape[0], ncol):
        a, b = originals[start : start + ncol], reconstructions[start : start + ncol]
        pad = ncol - a.shape[0]
        if pad:
            blank = torch.zeros((pad, *a.shape[1:]), dtype=a.dtype)
            a, b = torch.cat([a, blank]), torch.cat([b, blank])
        rows += [a, b]
    return save_grid(torch.cat(rows), path, ncol)
