"""Pictures for people: image grids (PNG), optionally labelled, and the noise-to-images animation (GIF).

Images come in as uint8 [N, H, W] (torch tensors or numpy arrays; what the sample commands write).
A grid has ``ncol`` images per row (default: about square) on a black background with a ``gap``
of 2 pixels around each image, everything scaled up ``scale`` times with nearest-neighbour so
single pixels stay visible: ``(rows (H + gap) + gap) scale`` by ``(ncol (W + gap) + gap) scale`` pixels.

With ``labels`` (class ids or names) a black strip of ``LABEL_HEIGHT`` pixels with white text is
added: one above every row when there is a label per image, one above the first row when there is
a label per column. Files are written atomically (:func:`fm_train.atomic_file`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["LABEL_HEIGHT", "grid_array", "grid_image", "save_gif", "save_grid", "save_reconstructions"]

#: Height in pixels (after scaling) of the strip that holds a row's labels.
LABEL_HEIGHT = 14


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _images(images: Any, what: str = "grid_array") -> np.ndarray:
    arr = _numpy(images)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] == 0:
        dtype, shape = getattr(images, "dtype", arr.dtype), tuple(getattr(images, "shape", arr.shape))
        raise ValueError(f"{what} expects uint8 images [N, H, W], got {dtype} {shape}")
    return arr


def grid_array(images: Any, ncol: int | None = None, *, gap: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 [N, H, W] -> one uint8 image [(rows (H + gap) + gap) scale, (ncol (W + gap) + gap) scale]
    holding them row by row (rows = ceil(N / ncol); ncol defaults to ceil(sqrt(N)))."""
    arr = _images(images)
    n, h, w = arr.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    out = np.zeros((nrow * (h + gap) + gap, ncol * (w + gap) + gap), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = arr[i]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def grid_image(
    images: Any, ncol: int | None = None, *, labels: Sequence[str | int] | None = None, gap: int = 2, scale: int = 2
) -> Image.Image:
    """The grid of :func:`grid_array` as a grayscale PIL image, with labels drawn above the images.

    ``labels``: one per image (a strip above every row, each image's label above it) or one per
    column (a strip above the first row); each label is centred over its image and cut to its width.
    The height grows by ``LABEL_HEIGHT`` per strip; the width is unchanged.
    """
    base = grid_array(images, ncol, gap=gap, scale=scale)
    if labels is None:
        return Image.fromarray(base)
    n, h, w = _images(images).shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    texts = [str(v) for v in labels]
    if len(texts) == n:
        rows = [texts[r * ncol : (r + 1) * ncol] for r in range(nrow)]
    elif len(texts) == ncol:
        rows = [texts]
    else:
        raise ValueError(f"labels: expected one per image ({n}) or one per column ({ncol}), got {len(texts)}")
    band = (h + gap) * scale  # a row of images with the gap above it
    pieces = []
    for r in range(nrow):
        if r < len(rows):
            pieces.append(np.zeros((LABEL_HEIGHT, base.shape[1]), dtype=np.uint8))
        pieces.append(base[r * band : (r + 1) * band])
    pieces.append(base[nrow * band :])  # the bottom gap
    img = Image.fromarray(np.concatenate(pieces))
    font = ImageFont.load_default()
    cell = w * scale
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            label = Image.new("L", (cell, LABEL_HEIGHT))  # drawn apart, then pasted: text never leaves its cell
            draw = ImageDraw.Draw(label)
            draw.fontmode = "1"  # crisp, not antialiased: white on black like the pixels below
            text = _fit(draw, text, font, cell)
            draw.text(((cell - draw.textlength(text, font=font)) / 2, 1), text, fill=255, font=font)
            img.paste(label, ((gap + c * (w + gap)) * scale, r * (LABEL_HEIGHT + band)))
    return img


def save_grid(
    images: Any, path: str | Path, ncol: int | None = None, *, labels: Sequence[str | int] | None = None, scale: int = 2
) -> Path:
    """Write uint8 images [N, H, W] as one PNG grid (see :func:`grid_image`); returns the path."""
    path = Path(path)
    img = grid_image(images, ncol, labels=labels, scale=scale)
    from fm_train.checkpoint import atomic_file

    with atomic_file(path) as f:
        img.save(f, format="PNG")
    return path


def save_gif(
    frames: Any,
    path: str | Path,
    ncol: int | None = None,
    *,
    labels: Sequence[str | int] | None = None,
    scale: int = 2,
    frame_ms: int = 250,
    hold_ms: int = 1500,
) -> Path:
    """Write uint8 frames [T, G, H, W] (the grid at each solver time, noise first) as a looping GIF.

    The first and last frames are held for ``hold_ms``; the others last ``frame_ms`` each.
    """
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"save_gif expects uint8 frames [T, N, H, W], got {tuple(frames.shape)}")
    pics = [grid_image(f, ncol, labels=labels, scale=scale) for f in frames]
    durations = [frame_ms] * len(pics)
    durations[0] = durations[-1] = hold_ms
    path = Path(path)
    from fm_train.checkpoint import atomic_file

    with atomic_file(path) as f:
        pics[0].save(f, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0)
    return path


def save_reconstructions(originals: Any, reconstructions: Any, path: str | Path, ncol: int = 10) -> Path:
    """uint8 [N, H, W] twice -> one PNG: a row of ``ncol`` originals, below it their reconstructions,
    and so on (a short last row is padded with black)."""
    a_all, b_all = _numpy(originals), _numpy(reconstructions)
    if a_all.shape != b_all.shape:
        raise ValueError(f"originals {tuple(a_all.shape)} and reconstructions {tuple(b_all.shape)} differ in shape")
    rows = []
    for start in range(0, a_all.shape[0], ncol):
        a, b = a_all[start : start + ncol], b_all[start : start + ncol]
        pad = ncol - a.shape[0]
        if pad:
            blank = np.zeros((pad, *a.shape[1:]), dtype=a.dtype)
            a, b = np.concatenate([a, blank]), np.concatenate([b, blank])
        rows += [a, b]
    return save_grid(np.concatenate(rows), path, ncol)
