"""Matplotlib figures of fm-toy2d (PNG, and a GIF through PillowWriter). Pure plotting: every
function takes arrays (numpy or torch, CPU) and a path, draws, saves and returns the path.

Time convention in every picture: t = 0 is N(0, I) noise, t = 1 is data. Points of more than
two dimensions are shown by their first two coordinates.
"""

from __future__ import annotations

import math
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
    "plot_loss",
    "plot_nfe_grid",
    "plot_nfe_quality",
    "plot_reversibility",
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


def plot_loss(path: Path, history: dict[str, list[float]], *, title: str = "") -> Path:
    """Training loss (mean over each logging interval, log scale) and the learning rate against step."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    ax.plot(steps, loss, color="#1f77b4", lw=1.5, label="flow-matching loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (MSE of the velocity)")
    ax.grid(alpha=0.3, which="both")
    if history.get("lr"):
        ax2 = ax.twinx()
        ax2.plot(steps, history["lr"], color="#ff7f0e", lw=1.0, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="#ff7f0e")
        ax2.tick_params(axis="y", colors="#ff7f0e")
        ax2.set_ylim(bottom=0)
    ax.set_title(title or "training loss")
    return _save(fig, path)


def plot_nfe_quality(
    path: Path,
    rows: list[dict[str, Any]],
    *,
    quality_key: str | None,
    quality_label: str = "",
    target: float | None = None,
    title: str = "",
) -> Path:
    """Quality against NFE for each solver: the dataset's quality (left, when there is one) and the
    energy distance to held-out data (right, log scale)."""
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    panels = [("energy_distance", "energy distance to data (lower is better)", True)]
    if quality_key:
        panels.insert(0, (quality_key, quality_label or quality_key, False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (key, label, log) in zip(axes[0], panels):
        for s in solvers:
            rs = [r for r in rows if r["solver"] == s and r.get(key) is not None]
            ax.plot(
                [r["nfe"] for r in rs], [r[key] for r in rs], "o-", color=SOLVER_COLORS.get(s), label=s, lw=1.6, ms=4
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["nfe"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        if log:
            ax.set_yscale("log")
        if key == quality_key and target is not None:
            ax.axhline(target, color="grey", ls=":", lw=1)
        ax.set_xlabel("NFE (velocity evaluations per sample)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title or "time quantization: sample quality against the number of function evaluations", fontsize=11)
    return _save(fig, path)


def plot_nfe_grid(
    path: Path,
    samples: dict[tuple[str, int], Any],
    extent: Extent,
    *,
    title: str = "",
    annotate: dict[tuple[str, int], str] | None = None,
) -> Path:
    """Samples of each solver (rows) at each NFE (columns)."""
    solvers = list(dict.fromkeys(k[0] for k in samples))
    nfes = sorted({k[1] for k in samples})
    fig, axes = plt.subplots(len(solvers), len(nfes), figsize=(2.3 * len(nfes), 2.4 * len(solvers)), squeeze=False)
    for i, s in enumerate(solvers):
        for j, k in enumerate(nfes):
            ax = axes[i][j]
            if (s, k) in samples:
                x = _np(samples[(s, k)])
                ax.scatter(x[:, 0], x[:, 1], s=0.6, c=SOLVER_COLORS.get(s, "k"), linewidths=0, alpha=0.7)
            _square(ax, extent)
            if i == 0:
                ax.set_title(f"NFE {k}", fontsize=10)
            if j == 0:
                ax.set_ylabel(s, fontsize=10)
            if annotate and (s, k) in annotate:
                ax.text(
                    0.02,
                    0.02,
                    annotate[(s, k)],
                    transform=ax.transAxes,
                    fontsize=7,
                    bbox=dict(facecolor="white", alpha=0.75, lw=0, pad=1),
                )
    fig.suptitle(title or "samples per solver (rows) and NFE (columns)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_reversibility(path: Path, x: Any, z: Any, x_rec: Any, extent: Extent, metrics: dict[str, Any]) -> Path:
    """Data -> codes (t = 1 -> 0) -> data (0 -> 1): points coloured by their data position, the
    codes against N(0, I) contours, the reconstruction, and the radial histogram of the codes
    against the chi distribution of |N(0, I)|."""
    x, z, x_rec = _np(x), _np(z), _np(x_rec)
    d = z.shape[1]
    hue = (np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi)) % 1.0
    light = np.clip(np.linalg.norm(x[:, :2], axis=1) / (np.abs(np.asarray(extent)).max() + 1e-9), 0, 1)
    colors = matplotlib.colors.hsv_to_rgb(np.stack([hue, 0.85 * np.ones_like(hue), 0.45 + 0.55 * light], 1))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    axes[0].scatter(x[:, 0], x[:, 1], s=2, c=colors, linewidths=0)
    _square(axes[0], extent)
    axes[0].set_title("data x (held out)")
    axes[1].scatter(z[:, 0], z[:, 1], s=2, c=colors, linewidths=0)
    for r in (1, 2, 3):
        axes[1].add_patch(plt.Circle((0, 0), r, fill=False, ls=":", color="grey"))
    _square(axes[1], (-4, 4, -4, 4))
    axes[1].set_title("codes z = encode(x), t: 1 -> 0\n(circles: 1, 2, 3 sigma of N(0, I))", fontsize=10)
    axes[2].scatter(x_rec[:, 0], x_rec[:, 1], s=2, c=colors, linewidths=0)
    _square(axes[2], extent)
    axes[2].set_title("decode(z), t: 0 -> 1")
    radius = np.linalg.norm(z, axis=1)
    axes[3].hist(radius, bins=40, density=True, color="#1f77b4", alpha=0.6, label="|z| of the codes")
    r = np.linspace(0, max(radius.max(), 4.0), 300)
    chi = r ** (d - 1) * np.exp(-0.5 * r**2) / (2 ** (d / 2 - 1) * math.gamma(d / 2))
    axes[3].plot(r, chi, "k--", lw=1.2, label=f"chi({d}): |N(0, I)|")
    axes[3].legend(fontsize=8)
    axes[3].set_xlabel("|z|")
    axes[3].set_title("how Gaussian are the codes?")
    m = metrics
    fig.suptitle(
        f"reversibility ({m['solver']}, {m['nfe_encode']} NFE each way): reconstruction error mean "
        f"{m['reconstruction_error_mean']:.1e}, max {m['reconstruction_error_max']:.1e}\ncodes: mean "
        f"[{', '.join(f'{v:+.2f}' for v in m['code_mean'][:2])}], max |cov - I| {m['code_cov_error']:.2f}, "
        f"energy distance to N(0, I) {m['code_energy_distance']:.4f} (floor {m['gaussian_energy_distance_floor']:.4f})",
        fontsize=10,
    )
    return _save(fig, path)
