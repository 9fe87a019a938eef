"""Matplotlib figures of normalizing-flow runs (``--model nf``). Pure plotting, like
:mod:`fm_toy2d.plots` (whose helpers it reuses): arrays in, a PNG out, the path returned.

A flow has no time variable; its layers go from noise (the sampling direction's start, t = 0
in the toolkit's convention) to data (t = 1). Points of more than two dimensions are shown by
their first two coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from .plots import Extent, _label_colors, _np, _save, _square

__all__ = ["plot_density", "plot_layers", "plot_nll_terms", "position_colors"]


def position_colors(x: np.ndarray) -> np.ndarray:
    """RGB colours [n, 3] from 2D positions: hue = angle around the points' mean, brightness = radius."""
    c = x[:, :2] - x[:, :2].mean(0)
    hue = (np.arctan2(c[:, 1], c[:, 0]) / (2 * np.pi)) % 1.0
    r = np.linalg.norm(c, axis=1)
    light = np.clip(r / (np.percentile(r, 99) + 1e-9), 0, 1)
    return matplotlib.colors.hsv_to_rgb(np.stack([hue, 0.85 * np.ones_like(hue), 0.35 + 0.65 * light], 1))


def _robust_extent(p: np.ndarray, q: float = 0.5) -> Extent:
    lo, hi = np.percentile(p[:, :2], q, axis=0), np.percentile(p[:, :2], 100 - q, axis=0)
    mid, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.12
    return (float(mid[0] - half), float(mid[0] + half), float(mid[1] - half), float(mid[1] + half))


def plot_layers(
    path: Path,
    points: Any,
    names: Sequence[str],
    *,
    labels: Any = None,
    data_extent: Extent | None = None,
    title: str = "",
    cols: int = 8,
) -> Path:
    """Points carried through a flow one layer at a time: ``points [L + 1, n, D]`` with ``points[0]``
    the input (noise) and ``points[i]`` the output of layer ``names[i - 1]``; one panel per stage.

    Colours follow the points: by label when ``labels`` are given, else by each point's final
    position (hue = angle, brightness = radius), so the same colour marks the same point in every
    panel. Each panel has its own square limits (0.5-99.5 % of its points); the last one uses
    ``data_extent`` when given.
    """
    pts = _np(points)
    stages = pts.shape[0]
    colors = _label_colors(_np(labels), pts.shape[1]) if labels is not None else position_colors(pts[-1])
    cols = min(cols, stages)
    rows = math.ceil(stages / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.15 * cols, 2.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= stages:
            ax.axis("off")
            continue
        p = pts[i]
        ax.scatter(p[:, 0], p[:, 1], s=0.8, c=colors, linewidths=0)
        ext = data_extent if (i == stages - 1 and data_extent is not None) else _robust_extent(p)
        _square(ax, ext)
        if i == 0:
            head = "0: noise z ~ N(0, I)"
        elif i == stages - 1:
            head = f"{i}: {names[i - 1]} = sample"
        else:
            head = f"{i}: {names[i - 1]}"
        ax.set_title(head, fontsize=7.5)
    fig.suptitle(title or "points through the flow, layer by layer (noise -> data)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def plot_nll_terms(
    path: Path,
    history: dict[str, list[float]],
    *,
    entropy: float | None = None,
    conditional: bool = False,
    title: str = "",
) -> Path:
    """The maximum-likelihood loss over training, ``-log p(x) = -log N(z; 0, I) - log|det dz/dx|``,
    and its two terms (means over each logging window, nats per point)."""
    steps = np.asarray(history["step"])
    base, logdet = np.asarray(history["base_log_prob"]), np.asarray(history["logdet"])
    nll = -(base + logdet)
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    ax.plot(steps, nll, color="black", lw=1.8, label="NLL = -log p(x)")
    ax.plot(steps, -base, color="#1f77b4", lw=1.3, label="-log N(z; 0, I)  (base term)")
    ax.plot(steps, -logdet, color="#d62728", lw=1.3, label="-log|det dz/dx|  (volume term)")
    if entropy is not None:
        ax.axhline(
            entropy,
            color="grey",
            ls=":",
            lw=1.2,
            label=f"true entropy {'H(X | Y)' if conditional else 'H(X)'} = {entropy:.3f}",
        )
    ax.axhline(0, color="grey", lw=0.5)
    lo = min(float(np.percentile(-logdet, 2)), float(np.percentile(nll, 2)), 0.0)
    hi = max(float(np.percentile(-base, 98)), float(np.percentile(nll, 98)))
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.15 * (hi - lo))
    ax.set_xlabel("step")
    ax.set_ylabel("nats per point (training batches)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "maximum-likelihood loss and its two terms", fontsize=10)
    return _save(fig, path)


def plot_density(
    path: Path,
    gx: np.ndarray,
    gy: np.ndarray,
    panels: list[tuple[str, Any]],
    extent: Extent,
    *,
    title: str = "",
    cols: int = 4,
) -> Path:
    """Densities on a grid as heat maps: ``panels`` = [(title, values [k, k])] with values at
    (gx, gy) (``np.meshgrid`` layout). Each panel has its own colour scale (0 to its 99.5 %)."""
    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(panels):
            ax.axis("off")
            continue
        head, values = panels[i]
        v = np.nan_to_num(_np(values).astype(np.float64), nan=0.0, posinf=0.0)
        vmax = float(np.percentile(v, 99.5)) or float(v.max()) or 1.0
        ax.imshow(
            v,
            origin="lower",
            extent=(gx.min(), gx.max(), gy.min(), gy.max()),
            cmap="magma",
            vmin=0.0,
            vmax=vmax,
            interpolation="bilinear",
        )
        _square(ax, extent)
        ax.set_title(head, fontsize=9)
    fig.suptitle(title or "density", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
