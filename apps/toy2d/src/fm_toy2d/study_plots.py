"""Figures of the scaling study (``fm-toy2d study``): steps to the quality target against the
number of filled cells (2D), against the dimension (grid 2), and both together.

Every run is one point: filled markers reached the target at that step; open triangles pointing
up are censored runs (not reached by that step: the cap, or the time budget), drawn at the step
where they stopped. The line joins the median over seeds where the median was reached; dashed
lines are the power-law fits of ``summary.txt`` (on reached runs only), drawn over the settings
they were fitted on. Log axes for steps and
cells; the dimension axis is linear (cells = 2^(D-1) on grid 2, so a straight line on it is the
same power law).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fm_eval.stats import median_steps  # noqa: E402

__all__ = ["plot_all", "FIGURES"]

FIGURES = ("steps_vs_modes.png", "steps_vs_dim.png", "steps_vs_both.png")
COLORS = {"default": "#1f77b4", "post": "#d62728"}
GRID_MARKERS = ["o", "s", "D", "v", "P", "X"]


def _points(ax, runs: list, xfun, color: str, marker: str = "o", jitter: float = 0.0, label: str | None = None) -> None:
    seeds = sorted({o.seed for o in runs})
    for o in runs:
        x = xfun(o) * (1 + jitter * (seeds.index(o.seed) - (len(seeds) - 1) / 2))
        if o.reached:
            ax.plot(x, o.steps, marker=marker, ls="none", color=color, ms=5, alpha=0.8)
        else:
            ax.plot(x, o.censored_at, marker="^", ls="none", mfc="none", mec=color, ms=8, alpha=0.9)
    groups: dict[float, list] = {}
    for o in runs:
        groups.setdefault(xfun(o), []).append(o)
    xs = sorted(groups)
    med = [median_steps(groups[x])[0] for x in xs]
    xm = [x for x, m in zip(xs, med) if m is not None]
    ym = [m for m in med if m is not None]
    if xm:
        ax.plot(xm, ym, "-", color=color, lw=1.5, marker=marker, ms=3, label=label)
    elif label:
        ax.plot([], [], "-", color=color, marker=marker, label=label)


def _legend_censored(ax) -> None:
    ax.plot([], [], marker="^", ls="none", mfc="none", mec="0.3", ms=8, label="not reached by this step (censored)")


def _cap_lines(ax, cfg, recipes: list[str]) -> None:
    for r in recipes:
        ax.axhline(cfg.max_steps[r], color=COLORS.get(r, "0.5"), ls=":", lw=1, alpha=0.7)


def _finish(ax, title: str, xlabel: str, empty: bool = False) -> None:
    if empty:  # nothing ran (e.g. the budget was spent): keep the log axes drawable
        ax.set_xlim(1, 100)
        ax.set_ylim(10, 10_000)
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training steps to target")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="best")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_all(res: list, cfg, members: dict, fits: dict[str, Any], out: Path) -> list[Path]:
    """Draw the three figures into ``out``; returns their paths."""
    out = Path(out)
    recipes = [r for r in cfg.recipes if any(o.recipe == r for o in res)] or list(cfg.recipes)
    paths = []
    target = "target: >= 95% in filled cells, every cell >= 0.8 of its share"

    # 1. modes (2D)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in recipes:
        runs = [o for o in res if o.recipe == r and (o.grid, o.dim) in members["modes"]]
        fit = (fits.get(r) or {}).get("modes")
        label = f"{r} (median over seeds)"
        if fit:
            label += f"; fit cells^{fit['coef'][0]:.2f}"
        _points(ax, runs, lambda o: o.n_filled, COLORS.get(r, "k"), jitter=0.03, label=label)
        reached = [o for o in runs if o.reached]
        if fit and reached:  # drawn over the settings it was fitted on, not extrapolated
            xs = np.geomspace(min(o.n_filled for o in reached), max(o.n_filled for o in reached), 50)
            ax.plot(xs, np.exp(fit["intercept"] + fit["coef"][0] * np.log(xs)), "--", color=COLORS.get(r, "k"), lw=1)
    _cap_lines(ax, cfg, recipes)
    _legend_censored(ax)
    cells = sorted({o.n_filled for o in res if (o.grid, o.dim) in members["modes"]})
    if not cells:
        ax.set_xlim(1, 100)
    ax.set_xscale("log")
    if cells:
        ax.set_xticks(cells, [str(c) for c in cells])
        ax.minorticks_off()
    _finish(
        ax,
        f"2D checkerboards, grid {','.join(map(str, cfg.grids))}\n{target}",
        "filled cells (modes), log scale",
        empty=not cells,
    )
    paths.append(_save(fig, out / FIGURES[0]))

    # 2. dimension (grid 2)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in recipes:
        runs = [o for o in res if o.recipe == r and (o.grid, o.dim) in members["dims"]]
        fit = (fits.get(r) or {}).get("dims")
        label = f"{r} (median over seeds)"
        if fit:
            label += f"; fit x{2 ** fit['coef'][0]:.2f} per dimension"
        _points(ax, runs, lambda o: float(o.dim), COLORS.get(r, "k"), jitter=0.01, label=label)
        reached = [o for o in runs if o.reached]
        if fit and reached:  # drawn over the settings it was fitted on, not extrapolated
            ds = np.linspace(min(o.dim for o in reached), max(o.dim for o in reached), 50)
            ax.plot(
                ds,
                np.exp(fit["intercept"] + fit["coef"][0] * np.log(2.0 ** (ds - 1))),
                "--",
                color=COLORS.get(r, "k"),
                lw=1,
            )
    _cap_lines(ax, cfg, recipes)
    _legend_censored(ax)
    dims = sorted({o.dim for o in res if (o.grid, o.dim) in members["dims"]})
    if dims:
        ax.set_xticks(dims, [f"{d}\n({2 ** (d - 1)})" for d in dims])
    _finish(
        ax,
        f"grid-2 checkerboards in D dimensions (2^(D-1) filled cells)\n{target}",
        "dimension D (filled cells)",
        empty=not dims,
    )
    if not dims:
        ax.set_xlim(1, 9)
    paths.append(_save(fig, out / FIGURES[1]))

    # 3. both: one panel per recipe, one line per grid across dimensions, x = filled cells
    fig, axes = plt.subplots(1, len(recipes), figsize=(5.2 * len(recipes), 4.4), sharey=True, squeeze=False)
    grids = sorted({g for g, _ in members["both"]})
    for ax, r in zip(axes[0], recipes):
        for i, g in enumerate(grids):
            runs = [o for o in res if o.recipe == r and o.grid == g and (o.grid, o.dim) in members["both"]]
            if not runs:
                continue
            shade = plt.get_cmap("viridis")(i / max(len(grids) - 1, 1) * 0.8)
            _points(
                ax,
                runs,
                lambda o: o.n_filled,
                shade,
                marker=GRID_MARKERS[i % len(GRID_MARKERS)],
                jitter=0.03,
                label=f"grid {g}, D = {','.join(str(d) for d in sorted({o.dim for o in runs}))}",
            )
            for d in sorted({o.dim for o in runs}):  # name each board beside its highest point
                top = max((o for o in runs if o.dim == d), key=lambda o: o.steps if o.reached else o.censored_at)
                ax.annotate(
                    f"{g}^{d}",
                    (top.n_filled, top.steps if top.reached else top.censored_at),
                    fontsize=7,
                    color=shade,
                    xytext=(6, -3),
                    textcoords="offset points",
                )
        ax.axhline(cfg.max_steps[r], color="0.4", ls=":", lw=1)
        fit = (fits.get(r) or {}).get("both")
        title = f"recipe {r}: grid and dimension together"
        if fit:
            title += f"\nfit: cells^{fit['coef'][0]:.2f} x exp({fit['coef'][1]:.2f} D)"
        _legend_censored(ax)
        empty = not any(o.recipe == r and (o.grid, o.dim) in members["both"] for o in res)
        if empty:
            ax.set_xlim(1, 100)
        ax.set_xscale("log")
        cells = sorted({o.n_filled for o in res if o.recipe == r and (o.grid, o.dim) in members["both"]})
        if cells:
            ax.set_xticks(cells, [str(c) for c in cells])
            ax.minorticks_off()
        _finish(ax, title, "filled cells (log scale); labels grid^D", empty=empty)
    paths.append(_save(fig, out / FIGURES[2]))
    return paths
