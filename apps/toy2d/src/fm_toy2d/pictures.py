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

and merges "quality_vs_nfe" and "reversibility" into RUN/metrics.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import plots
from .config import RunConfig
from .evaluation import heldout_data, headline, nfe_sweep, reversibility, sample_quality, update_metrics, SAMPLE_OFFSET
from .sampling import sample_points, steps_for
from .training import FlowRun, loss_history

__all__ = ["extent_of", "write_pictures"]


def dataset_label(cfg) -> str:
    """The dataset's name for picture titles: "checkerboard 8x8" for a 2D checkerboard, else the name."""
    return f"{cfg.dataset}{f' {cfg.grid}x{cfg.grid}' if cfg.dataset == 'checkerboard' and cfg.dim == 2 else ''}"


def extent_of(cfg: RunConfig, data: torch.Tensor | None = None) -> tuple[float, float, float, float]:
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


def write_pictures(run: FlowRun, *, n: int = 20000, fast: bool | None = None) -> list[Path]:
    """Compute and draw every picture of the run; returns the files written.

    ``fast`` uses fewer points and frames (for tests); by default it is on when the environment
    variable ``FM_TOY2D_FAST=1`` is set.
    """
    if fast is None:
        fast = os.environ.get("FM_TOY2D_FAST", "") == "1"
    cfg, d = run.config, run.run_dir
    written: list[Path] = []
    n = min(n, 4000) if fast else n
    data, data_y = heldout_data(cfg, run.dist, n)
    extent = extent_of(cfg, data)
    label = dataset_label(cfg)
    recipe = f"recipe {cfg.recipe}, {run.step} steps"
    seed = cfg.seed + SAMPLE_OFFSET
    steps = steps_for(cfg.solver, cfg.nfe)

    # samples against data
    s = sample_points(run.velocity, n, cfg.data_dim, solver=cfg.solver, steps=steps, num_classes=run.num_classes,
                      seed=seed, device=run.device)
    q = sample_quality(cfg, s.x, s.y)
    written.append(plots.plot_samples(d / "samples.png", data, s.x, extent, labels=s.y,
                                      title=f"{label}: {cfg.solver}, NFE {s.nfe} ({recipe})", subtitle=headline(q)))

    # trajectories noise -> data
    n_traj = 200 if fast else 400
    tr = sample_points(run.velocity, n_traj, cfg.data_dim, solver="midpoint", steps=40, num_classes=run.num_classes,
                       seed=seed + 1, device=run.device, return_trajectory=True)
    written.append(plots.plot_trajectories(d / "trajectories.png", tr.trajectory, tr.times, extent, data=data, labels=tr.y,
                                           title=f"{label}: trajectories of {n_traj} points from noise (t = 0) to data (t = 1)"))

    # velocity field over t (GIF + stills); conditional runs: particles of all labels, arrows of label 0
    frames = 12 if fast else 40
    n_part = 600 if fast else 2500
    pt = sample_points(run.velocity, n_part, cfg.data_dim, solver="midpoint", steps=frames, num_classes=run.num_classes,
                       seed=seed + 2, device=run.device, return_trajectory=True)
    gx, gy = plots._grid(extent, 21 if fast else 27)
    grid_pts = torch.zeros(gx.size, cfg.data_dim)
    grid_pts[:, 0], grid_pts[:, 1] = torch.from_numpy(gx.ravel()).float(), torch.from_numpy(gy.ravel()).float()
    grid_y = None if run.num_classes is None else torch.zeros(gx.size, dtype=torch.long, device=run.device)

    @torch.no_grad()
    def field(t: float) -> np.ndarray:
        tt = torch.full((gx.size,), t, device=run.device)
        return run.velocity(grid_pts.to(run.device), tt, grid_y)[:, :2].float().cpu().numpy()

    what = "velocity field" + (" of label 0" if run.num_classes is not None else "")
    written.append(plots.velocity_gif(d / "velocity.gif", field, pt.trajectory, pt.times, extent, grid=(gx, gy),
                                      labels=pt.y, title=f"{label}: {what},"))
    written.append(plots.plot_velocity_snapshots(d / "velocity.png", field, pt.trajectory, pt.times, extent,
                                                 grid=(gx, gy), labels=pt.y))

    # loss curve
    hist = loss_history(d)
    if hist["step"]:
        written.append(plots.plot_loss(d / "loss.png", hist, title=f"{label}: training loss ({recipe})"))

    # time quantization
    key, key_label, target = _quality_axis(cfg)
    rows, kept = nfe_sweep(run, n=2000 if fast else 5000, seed=seed, keep=1500 if fast else 3000)
    written.append(plots.plot_nfe_quality(d / "nfe_quality.png", rows, quality_key=key, quality_label=key_label, target=target,
                                          title=f"{label}: time quantization, quality against NFE ({recipe})"))
    notes = {(r["solver"], r["nfe"]): (f"{r[key]:.1%}" if key and r.get(key) is not None else f"ED {r['energy_distance']:.3f}") for r in rows}
    written.append(plots.plot_nfe_grid(d / "nfe_grid.png", kept, extent, annotate=notes,
                                       title=f"{label}: samples per solver and NFE (same noise)"))

    # reversibility
    rev, arrays = reversibility(run, n=1000 if fast else 3000)
    written.append(plots.plot_reversibility(d / "reversibility.png", arrays["x"], arrays["z"], arrays["x_rec"], extent, rev))

    update_metrics(d, {"quality_vs_nfe": rows, "reversibility": rev,
                       "pictures_samples": {"n": n, "solver": cfg.solver, "nfe": s.nfe, "quality": q}})
    return written
