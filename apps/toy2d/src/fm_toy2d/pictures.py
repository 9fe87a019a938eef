"""The pictures of a trained flow-matching run (computed here, drawn by :mod:`fm_toy2d.plots`).

:func:`write_pictures` writes into the run directory:

    samples.png         held-out data and samples (run's solver/NFE) side by side
    trajectories.png    paths of points from noise (t = 0) to data (t = 1)
    velocity.gif        the velocity field over t (arrows) with points moving along it
    velocity.png        five frames of that animation
    loss.png            training loss and learning rate
    nfe_quality.png     quality against NFE for euler, midpoint, heun, rk4 ("time quantization")
    nfe_grid.png        the samples behind it, one panel per solver and NFE
    reversibility.png   data -> noise codes -> data, and how Gaussian the codes are

and merges "quality_vs_nfe", "reversibility" and "pictures_samples" into RUN/metrics.json.
The ``sample`` command's ``--grid`` and ``--gif`` use :func:`samples_picture` and :func:`velocity_animation`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fm_cli import progress
from fm_core import SampleResult
from fm_train import RunDir

from . import plots, plots_eval
from .config import RunConfig
from .evaluation import SAMPLE_OFFSET, headline, heldout_data, nfe_sweep, reversibility, sample_quality
from .training import FlowRun

__all__ = [
    "dataset_label",
    "extent_of",
    "picture_inputs",
    "sample_gif",
    "samples_picture",
    "velocity_animation",
    "write_pictures",
]

Extent = tuple[float, float, float, float]


def dataset_label(cfg: RunConfig) -> str:
    """The dataset's name for picture titles: "checkerboard 8x8" for a 2D checkerboard, else the name."""
    return f"{cfg.dataset}{f' {cfg.grid}x{cfg.grid}' if cfg.dataset == 'checkerboard' and cfg.dim == 2 else ''}"


def extent_of(cfg: RunConfig, data: Tensor | None = None) -> Extent:
    """Axis limits (xmin, xmax, ymin, ymax) for pictures of the dataset (first two coordinates)."""
    if cfg.dataset == "checkerboard":
        return (-4.4, 4.4, -4.4, 4.4)
    x = data[:, :2].numpy()
    lo, hi = x.min(0), x.max(0)
    pad = 0.12 * (hi - lo).max()
    return (float(lo[0] - pad), float(hi[0] + pad), float(lo[1] - pad), float(hi[1] + pad))


def _quality_axis(cfg: RunConfig) -> tuple[str | None, str, float | None]:
    if cfg.dataset == "checkerboard":
        return "in_support", "fraction of samples in filled cells", 0.95
    if cfg.dataset == "olympic-rings":
        if cfg.conditional:
            return "on_own_ring_min", "on own ring (worst label)", 0.95
        return "in_support", "fraction of samples on a ring", None
    return None, "", None


def picture_inputs(cfg: RunConfig, dist, n: int, fast: bool | None) -> tuple[bool, int, Tensor, Extent, str, int]:
    """What a run's pictures share: (fast, n, held-out data [n, D], extent, dataset label, sampling seed).
    ``fast`` None reads the environment variable FM_TOY2D_FAST=1; fast pictures use at most 4,000 points."""
    fast = os.environ.get("FM_TOY2D_FAST", "") == "1" if fast is None else fast
    n = min(n, 4000) if fast else n
    data, _ = heldout_data(cfg, dist, n)
    return fast, n, data, extent_of(cfg, data), dataset_label(cfg), cfg.seed + SAMPLE_OFFSET


def samples_picture(path: Path, cfg: RunConfig, dist, x: Tensor, y: Tensor | None, *, title: str) -> Path:
    """Held-out data beside the samples x [n, D] (coloured by label y when given), titled with the
    dataset, ``title`` and the samples' quality (:func:`fm_toy2d.plots.plot_samples`)."""
    data, _ = heldout_data(cfg, dist, min(len(x), 20000))
    subtitle = headline(sample_quality(cfg, x, y))
    return plots.plot_samples(path, data, x, extent_of(cfg, data), labels=y, title=f"{dataset_label(cfg)}: {title}",
                              subtitle=subtitle)  # fmt: skip


def velocity_animation(
    path: Path,
    run: FlowRun,
    particles: Tensor,
    times: Tensor,
    labels: Tensor | None,
    extent: Extent,
    *,
    title: str,
    arrows: int = 27,
    still: Path | None = None,
) -> list[Path]:
    """The velocity field on an ``arrows`` x ``arrows`` grid (label 0's for conditional runs; other
    coordinates 0 beyond the first two) with ``particles`` [T, N, D] moving along it at ``times`` [T]:
    a GIF at ``path`` and, with ``still``, five of its frames in one PNG."""
    cfg = run.config
    gx, gy = plots._grid(extent, arrows)
    grid_pts = torch.zeros(gx.size, cfg.data_dim)
    grid_pts[:, 0], grid_pts[:, 1] = torch.from_numpy(gx.ravel()).float(), torch.from_numpy(gy.ravel()).float()
    grid_y = None if run.num_classes is None else torch.zeros(gx.size, dtype=torch.long, device=run.device)

    @torch.no_grad()
    def field(t: float) -> np.ndarray:
        tt = torch.full((gx.size,), t, device=run.device)
        return run.velocity(grid_pts.to(run.device), tt, grid_y)[:, :2].float().cpu().numpy()

    what = "velocity field" + (" of label 0" if run.num_classes is not None else "")
    out = [plots.velocity_gif(path, field, particles, times, extent, grid=(gx, gy), labels=labels,
                              title=f"{title}: {what},")]  # fmt: skip
    if still is not None:
        out.append(plots.plot_velocity_snapshots(still, field, particles, times, extent, grid=(gx, gy), labels=labels))
    return out


def sample_gif(path: Path, run: FlowRun, res: SampleResult, *, title: str) -> list[Path]:
    """GIF of the samples that ``res`` followed (``run.sample(..., trajectory=k)``) moving from noise
    to data along the velocity field, one frame per solver time (:func:`velocity_animation`)."""
    data, _ = heldout_data(run.config, run.dist, 2000)
    k = res.trajectory.shape[1]
    labels = None if res.labels is None else res.labels[:k]
    return velocity_animation(path, run, res.trajectory, res.times, labels, extent_of(run.config, data), title=title)


def write_pictures(run: FlowRun, *, n: int = 20000, fast: bool | None = None, quiet: bool = True) -> list[Path]:
    """Compute and draw every picture of the run; returns the files written.

    ``fast`` uses fewer points and frames (for tests); by default it is on when the environment
    variable ``FM_TOY2D_FAST=1`` is set. A progress bar over the pictures unless ``quiet``.
    """
    cfg, d = run.config, run.run_dir
    fast, n, data, extent, label, seed = picture_inputs(cfg, run.dist, n, fast)
    recipe = f"recipe {cfg.recipe}, {run.step} steps"
    written: list[Path] = []
    metrics: dict[str, Any] = {}

    def samples() -> None:  # samples against data
        s = run.sample(n, seed=seed)
        q = sample_quality(cfg, s.x, s.labels)
        written.append(
            plots.plot_samples(
                d / "samples.png",
                data,
                s.x,
                extent,
                labels=s.labels,
                title=f"{label}: {cfg.solver}, NFE {s.nfe} ({recipe})",
                subtitle=headline(q),
            )
        )
        metrics["pictures_samples"] = {"n": n, "solver": cfg.solver, "nfe": s.nfe, "quality": q}

    def trajectories() -> None:  # noise -> data
        n_traj = 200 if fast else 400
        tr = run.sample(n_traj, seed=seed + 1, solver="midpoint", steps=40, trajectory=n_traj)
        written.append(
            plots.plot_trajectories(
                d / "trajectories.png",
                tr.trajectory,
                tr.times,
                extent,
                data=data,
                labels=tr.labels,
                title=f"{label}: trajectories of {n_traj} points from noise (t = 0) to data (t = 1)",
            )
        )

    def velocity() -> None:  # the field over t (GIF + stills); conditional runs: arrows of label 0
        n_part = 600 if fast else 2500
        pt = run.sample(n_part, seed=seed + 2, solver="midpoint", steps=12 if fast else 40, trajectory=n_part)
        written.extend(
            velocity_animation(
                d / "velocity.gif",
                run,
                pt.trajectory,
                pt.times,
                pt.labels,
                extent,
                title=label,
                arrows=21 if fast else 27,
                still=d / "velocity.png",
            )
        )

    def loss() -> None:
        hist = RunDir(d).read_history(("step", "loss", "lr", "elapsed_s"))
        if hist["step"]:
            written.append(plots_eval.plot_loss(d / "loss.png", hist, title=f"{label}: training loss ({recipe})"))

    def quantization() -> None:
        key, key_label, target = _quality_axis(cfg)
        rows, kept = nfe_sweep(run, n=2000 if fast else 5000, seed=seed, keep=1500 if fast else 3000)
        written.append(
            plots_eval.plot_nfe_quality(
                d / "nfe_quality.png",
                rows,
                quality_key=key,
                quality_label=key_label,
                target=target,
                title=f"{label}: time quantization, quality against NFE ({recipe})",
            )
        )
        notes = {(r["solver"], r["nfe"]): (f"{r[key]:.1%}" if key and r.get(key) is not None
                                           else f"ED {r['energy_distance']:.3f}") for r in rows}  # fmt: skip
        written.append(
            plots_eval.plot_nfe_grid(
                d / "nfe_grid.png",
                kept,
                extent,
                annotate=notes,
                title=f"{label}: samples per solver and NFE (same noise)",
            )
        )
        metrics["quality_vs_nfe"] = rows

    def reversible() -> None:
        rev, arrays = reversibility(run, n=1000 if fast else 3000)
        written.append(
            plots_eval.plot_reversibility(
                d / "reversibility.png", arrays["x"], arrays["z"], arrays["x_rec"], extent, rev
            )
        )
        metrics["reversibility"] = rev

    for stage in progress([samples, trajectories, velocity, loss, quantization, reversible], desc="pictures",
                          unit="picture", quiet=quiet):  # fmt: skip
        stage()
    RunDir(d).merge_metrics({k: metrics[k] for k in ("quality_vs_nfe", "reversibility", "pictures_samples")})
    return written
