"""Pictures for people: sample grids (PNG) and the noise-to-images animation (GIF), with Pillow.

Images come in as uint8 [N, 28, 28] (what ``fm-pixel sample`` writes); grids are drawn on a
black background with a 2-pixel gap, ``ncol`` images per row, scaled up ``scale`` times with
nearest-neighbour so single pixels stay visible.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["grid_array", "save_grid", "save_gif"]


def grid_array(images: Tensor, ncol: int | None = None, *, gap: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 [N, H, W] -> one uint8 image [rows*(H+gap)+gap, ...] * scale holding them in a grid."""
    if images.dtype != torch.uint8 or images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"grid_array expects uint8 images [N, H, W], got {images.dtype} {tuple(images.shape)}")
    n, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    out = np.zeros((nrow * (h + gap) + gap, ncol * (w + gap) + gap), dtype=np.uint8)
    arr = images.cpu().numpy()
    for i in range(n):
        r, c = divmod(i, ncol)
        out[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = arr[i]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def _atomic_save(img: Image.Image, path: Path, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    img.save(tmp, format=kw.pop("format"), **kw)
    os.replace(tmp, path)
    return path


def save_grid(images: Tensor, path: str | Path, ncol: int | None = None, *, scale: int = 2) -> Path:
    """Write uint8 images [N, 28, 28] as one PNG grid (atomically); returns the path."""
    return _atomic_save(Image.fromarray(grid_array(images, ncol, scale=scale), mode="L"), Path(path), format="PNG")


def save_gif(frames: Tensor, path: str | Path, ncol: int | None = None, *, scale: int = 2,
             frame_ms: int = 250, hold_ms: int = 1500) -> Path:
    """Write uint8 frames [T, N, 28, 28] (the grid at each solver time, noise first) as a looping GIF.

    The first and last frames are held for ``hold_ms``; the others last ``frame_ms`` each.
    """
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"save_gif expects uint8 frames [T, N, H, W], got {tuple(frames.shape)}")
    pics = [Image.fromarray(grid_array(f, ncol, scale=scale), mode="L") for f in frames]
    durations = [frame_ms] * len(pics)
    durations[0] = durations[-1] = hold_ms
    return _atomic_save(pics[0], Path(path), format="GIF", save_all=True, append_images=pics[1:],
                        duration=durations, loop=0)
