"""Matplotlib figures of fm-toy2d (PNG, and a GIF through PillowWriter). Pure plotting: every
function takes arrays (numpy or torch, CPU) and a path, draws, saves and returns the path.

Time convention in every picture: t = 0 is N(0, I) noise, t = 1 is data. Points of more than
two dimensions are shown by their first two coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

__all__ = [
    "plot_samples",
    "plot_trajectories",
    "plot_velocity_snapshots",
    "velocity_gif",
]

SOLVER_COLORS = {"euler": "#d62728", "midpoint": "#1f77b4", "heun": "#2ca02c", "rk4": "#9467bd"}
Extent = tuple[float, float, float, float]


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _save(fig, path: Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _square(ax, extent: Extent) -> None:
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _hist(ax, x: np.ndarray, extent: Extent, bins: int = 160, cmap: str = "magma") -> None:
    h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=[extent[:2], extent[2:]])
    ax.imshow(
        h.T,
        origin="lower",
        extent=extent,
        cmap=cmap,
        interpolation="nearest",
        vmax=np.percentile(h[h > 0], 99) if (h > 0).any() else None,
    )


def _label_colors(y: np.ndarray | None, n: int):
    if y is None:
        return "#1f77b4"
    k = int(y.max()) + 1 if len(y) else 1
    cmap = plt.get_cmap("tab10" if k <= 10 else "hsv")
    return cmap((y % 10) / 9.0 if k <= 10 else y / max(k, 1))


def plot_samples(
    path: Path, data: Any, samples: Any, extent: Extent, *, title: str = "", subtitle: str = "", labels: Any = None
) -> Path:
    """Held-out data and model samples as 2D histograms side by side (and, with labels, the samples
    coloured by their label)."""
    data, samples = _np(data), _np(samples)
    labels = None if labels is None else _np(labels)
    ncols = 3 if labels is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 4.6))
    _hist(axes[0], data, extent)
    axes[0].set_title(f"data ({len(data):,} held-out points)")
    _hist(axes[1], samples, extent)
    axes[1].set_title(f"samples ({len(samples):,})")
    if labels is not None:
        idx = np.random.default_rng(0).permutation(len(samples))[:6000]
        axes[2].scatter(samples[idx, 0], samples[idx, 1], s=1.5, c=_label_colors(labels[idx], len(idx)), linewidths=0)
        axes[2].set_title("samples coloured by their label")
    for ax in axes:
        _square(ax, extent)
    fig.suptitle(title + ("\n" + subtitle if subtitle else ""), fontsize=11)
    return _save(fig, path)


def plot_trajectories(
    path: Path, traj: Any, times: Any, extent: Extent, *, data: Any = None, labels: Any = None, title: str = ""
) -> Path:
    """Paths of points from noise (t = 0, black dots) to data (t = 1, coloured dots); the line colour
    follows t (viridis). traj [T, N, D]."""
    traj, times = _np(traj), _np(times)
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    if data is not None:
        _hist(ax, _np(data), extent, bins=120, cmap="Greys")
    t_n, n = traj.shape[0], traj.shape[1]
    segs = np.stack([traj[:-1, :, :2], traj[1:, :, :2]], axis=2).reshape(-1, 2, 2)  # [(T-1)*N, 2, 2]
    tt = np.repeat(0.5 * (times[:-1] + times[1:]), n)
    lc = LineCollection(segs, cmap="viridis", linewidths=0.6, alpha=0.65)
    lc.set_array(tt)
    lc.set_clim(0, 1)
    ax.add_collection(lc)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=4, c="black", label="noise, t = 0", zorder=3)
    end_c = _label_colors(None if labels is None else _np(labels), n)
    ax.scatter(
        traj[-1, :, 0],
        traj[-1, :, 1],
        s=6,
        c=end_c if labels is not None else "#e4572e",
        label="sample, t = 1",
        zorder=4,
    )
    cb = fig.colorbar(lc, ax=ax, fraction=0.04, pad=0.02)
    cb.set_label("t")
    _square(ax, extent)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    ax.set_title(title or f"trajectories of {n} points from noise to data ({t_n - 1} steps)")
    return _save(fig, path)


def _grid(extent: Extent, k: int = 25) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.linspace(extent[0], extent[1], k), np.linspace(extent[2], extent[3], k))
    return gx, gy


def velocity_gif(
    path: Path,
    velocity_on_grid: Callable[[float], np.ndarray],
    particles: Any,
    times: Any,
    extent: Extent,
    *,
    grid: tuple[np.ndarray, np.ndarray],
    labels: Any = None,
    title: str = "",
    fps: int = 8,
) -> Path:
    """Animated GIF: at each time of ``times`` the velocity field on ``grid`` (arrows coloured by
    speed, ``velocity_on_grid(t) -> [k*k, 2]``) and the particles [T, N, 2] moving along it."""
    particles, times = _np(particles), _np(times)
    gx, gy = grid
    fields = [velocity_on_grid(float(t)) for t in times]
    speed_max = max(float(np.linalg.norm(f, axis=1).max()) for f in fields) or 1.0
    colors = (
        _label_colors(None if labels is None else _np(labels), particles.shape[1]) if labels is not None else "#e4572e"
    )
    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    f0 = fields[0]
    q = ax.quiver(
        gx,
        gy,
        f0[:, 0].reshape(gx.shape),
        f0[:, 1].reshape(gx.shape),
        np.linalg.norm(f0, axis=1),
        cmap="Blues",
        clim=(0, speed_max),
        scale=speed_max * 22,
        width=0.004,
        alpha=0.9,
    )
    sc = ax.scatter(particles[0, :, 0], particles[0, :, 1], s=3, c=colors, linewidths=0, zorder=3)
    _square(ax, extent)
    head = ax.set_title("")

    def draw(i: int):
        f = fields[i]
        q.set_UVC(f[:, 0].reshape(gx.shape), f[:, 1].reshape(gx.shape), np.linalg.norm(f, axis=1))
        sc.set_offsets(particles[i, :, :2])
        head.set_text(f"{title}  t = {times[i]:.2f}".strip())
        return q, sc, head

    frames = list(range(len(times))) + [len(times) - 1] * fps  # hold the last frame for a second
    anim = FuncAnimation(fig, draw, frames=frames, blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=72)
    plt.close(fig)
    return path


def plot_velocity_snapshots(
    path: Path,
    velocity_on_grid: Callable[[float], np.ndarray],
    particles: Any,
    times: Any,
    extent: Extent,
    *,
    grid: tuple[np.ndarray, np.ndarray],
    show: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    labels: Any = None,
) -> Path:
    """The GIF's frames nearest to the times in ``show``, side by side (a still for READMEs)."""
    particles, times = _np(particles), _np(times)
    gx, gy = grid
    fig, axes = plt.subplots(1, len(show), figsize=(3.3 * len(show), 3.6))
    colors = (
        _label_colors(None if labels is None else _np(labels), particles.shape[1]) if labels is not None else "#e4572e"
    )
    for ax, t in zip(axes, show):
        i = int(np.argmin(np.abs(times - t)))
        f = velocity_on_grid(float(times[i]))
        sp = np.linalg.norm(f, axis=1)
        ax.quiver(
            gx,
            gy,
            f[:, 0].reshape(gx.shape),
            f[:, 1].reshape(gx.shape),
            sp,
            cmap="Blues",
            scale=(sp.max() or 1.0) * 22,
            width=0.005,
        )
        ax.scatter(particles[i, :, 0], particles[i, :, 1], s=1.5, c=colors, linewidths=0, zorder=3)
        _square(ax, extent)
        ax.set_title(f"t = {times[i]:.2f}")
    fig.suptitle("learned velocity field v(x, t) (arrows) and points moving along it", fontsize=11)
    return _save(fig, path)
