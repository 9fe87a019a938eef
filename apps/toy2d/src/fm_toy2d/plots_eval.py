"""Matplotlib figures of fm-toy2d's evaluation: the loss curve (fm_cli.pictures.plot_loss, shared by the
apps), quality against NFE per solver, the samples of each (solver, NFE), and the encode/decode round
trip. Pure plotting, as in :mod:`fm_toy2d.plots` (whose helpers these share): arrays in, a PNG
written, its path returned.

Time convention: t = 0 is N(0, I) noise, t = 1 is data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker

from fm_cli.pictures import plot_loss  # the loss chart all apps share (loss and lr against step)

from .plots import SOLVER_COLORS, Extent, _np, _save, _square, plt

__all__ = ["plot_loss", "plot_nfe_grid", "plot_nfe_quality", "plot_reversibility"]


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
    # constrained layout: the panels' tick and axis labels get their own room (without it the right panel's
    # y label ran into its minor tick labels, e.g. 2.4e-3, when the energy distances span less than a decade)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False, layout="constrained")
    for ax, (key, label, log) in zip(axes[0], panels):
        for s in solvers:
            rs = [r for r in rows if r["solver"] == s and r.get(key) is not None]
            ax.plot(
                [r["nfe"] for r in rs], [r[key] for r in rs], "o-", color=SOLVER_COLORS.get(s), label=s, lw=1.6, ms=4
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["nfe"] for r in rows}))
        ax.get_xaxis().set_major_formatter(ticker.ScalarFormatter())
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
    colors = mcolors.hsv_to_rgb(np.stack([hue, 0.85 * np.ones_like(hue), 0.45 + 0.55 * light], 1))
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
