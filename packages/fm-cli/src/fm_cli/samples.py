"""Sample files for programs (``.npz``), the pictures that go with them, and the line the sample
commands print.

Two layouts, by what is sampled:

- images: ``images`` uint8 [N, H, W] (native resolution) and, for a conditional run, ``labels``
  int64 [N];
- points: ``x`` float32 [N, D] and, for a conditional run, ``y`` int64 [N].

Read them back with ``numpy.load(path)``. Every file is written atomically with a temporary name
unique to its writer, so concurrent writers of one path leave one complete file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .pictures import _numpy, save_gif, save_grid

__all__ = ["describe_labels", "sample_summary", "write_samples"]


def write_samples(
    out: str | Path,
    samples: Any,
    labels: Any | None = None,
    *,
    grid: str | Path | None = None,
    gif_frames: Any | None = None,
    gif: str | Path | None = None,
    ncol: int | None = None,
    n_grid: int = 100,
    grid_labels: Sequence[str | int] | None = None,
) -> list[Path]:
    """Write ``samples`` (uint8 images [N, H, W] or float points [N, D]) and ``labels`` ([N] or None) to
    ``out`` (.npz); with ``grid``, the first ``n_grid`` images as a PNG grid of ``ncol`` columns
    (``grid_labels`` drawn above them, see :func:`fm_cli.pictures.grid_image`); with ``gif``,
    ``gif_frames`` uint8 [T, G, H, W] as a GIF. Returns the paths written, ``out`` first.

    Everything is checked before anything is written; a bad combination is a ValueError.
    """
    arr = _numpy(samples)
    if arr.dtype == np.uint8 and arr.ndim == 3:
        keys = ("images", "labels")
    elif arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
        keys = ("x", "y")
        arr = arr.astype(np.float32, copy=False)
        if grid is not None or gif is not None:
            raise ValueError("grid and gif pictures need images (uint8 [N, H, W]), not points")
    else:
        raise ValueError(
            f"samples must be uint8 images [N, H, W] or float points [N, D], got {arr.dtype} {tuple(arr.shape)}"
        )
    arrays = {keys[0]: arr}
    if labels is not None:
        lab = _numpy(labels).astype(np.int64, copy=False)
        if lab.shape != (arr.shape[0],):
            raise ValueError(f"labels must have shape [{arr.shape[0]}] (one per sample), got {tuple(lab.shape)}")
        arrays[keys[1]] = lab
    if gif is not None and gif_frames is None:
        raise ValueError("gif given without gif_frames (the trajectory [T, G, H, W])")
    from fm_train.checkpoint import atomic_file

    with atomic_file(out) as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    written = [Path(out)]
    if grid is not None:
        written.append(save_grid(arr[:n_grid], grid, ncol, labels=grid_labels))
    if gif is not None:
        written.append(save_gif(gif_frames, gif, ncol, labels=grid_labels))
    return written


def describe_labels(labels: Any | None) -> str:
    """``labels [0, 3, 5]`` (the distinct classes, sorted) or ``unconditional`` for None."""
    if labels is None:
        return "unconditional"
    return f"labels {sorted(set(_numpy(labels).tolist()))}"


def sample_summary(
    n: int,
    what: str,
    method: str,
    nfe: int,
    guidance: float | None,
    seconds: float,
    written: Sequence[str | Path],
    *,
    noun: str = "images",
) -> str:
    """The line a sample command prints, e.g.
    ``sampled 1000 images (labels [0, 1]; euler, NFE 10, guidance 2) in 1.2 s -> a.npz, a.png``
    (``what`` as from :func:`describe_labels`; without ``guidance`` its part is left out)."""
    g = f", guidance {guidance:g}" if guidance is not None else ""
    return (
        f"sampled {n} {noun} ({what}; {method}, NFE {nfe}{g}) in {seconds:.1f} s -> "
        f"{', '.join(str(p) for p in written)}"
    )
