"""Sampling from a trained fm-pixel run: noise (t = 0) -> images (t = 1) with an ODE solver.

The velocity is the network with its EMA weights; for a conditional run with guidance w != 1 it
is classifier-free guidance, v = v_null + w (v_cond - v_null), evaluated as one batched call of
size 2B (fm_core.CFGVelocity). NFE counts velocity evaluations (a guided evaluation counts once,
though it runs the network on 2B images). All noise is drawn up front from one generator seeded
with ``seed``, so the images do not depend on ``batch_size``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fm_core import CFGVelocity, nfe_to_steps, solve_ode
from fm_data.images import to_uint8

from .config import NUM_CLASSES, PixelConfig

__all__ = ["SampleResult", "balanced_labels", "generate", "write_samples"]


@dataclass
class SampleResult:
    """images uint8 [N, 28, 28] (native resolution, padding cropped); labels int64 [N] or None;
    trajectory uint8 [T, G, 28, 28] of the first G images at the solver's time points (or None);
    nfe per sample; seconds of sampling; solver, guidance as used."""

    images: Tensor
    labels: Tensor | None
    trajectory: Tensor | None
    nfe: int
    seconds: float
    solver: str
    guidance: float


def balanced_labels(n: int, classes: list[int]) -> Tensor:
    """[n] int64 cycling through ``classes`` (0, 1, ..., k-1, 0, 1, ...): balanced to within one."""
    c = torch.tensor(classes, dtype=torch.long)
    return c[torch.arange(n) % len(c)]


def generate(
    model: nn.Module,
    cfg: PixelConfig,
    n: int,
    *,
    solver: str | None = None,
    nfe: int | None = None,
    guidance: float | None = None,
    label: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    trajectory_for: int = 0,
    device: torch.device | str = "cpu",
) -> SampleResult:
    """Draw ``n`` images from ``model`` (EMA weights, on ``device``).

    solver / nfe / guidance default to the run's (``cfg``); ``label`` (conditional runs) gives
    every image that class, otherwise labels are balanced over the trained classes.
    ``trajectory_for`` > 0 also returns the states of the first that many images at every
    solver time point (for the GIF). Raises ValueError for arguments the run cannot take.
    """
    solver = solver or cfg.solver
    nfe = cfg.nfe if nfe is None else nfe
    guidance = cfg.guidance if guidance is None else float(guidance)
    steps = nfe_to_steps(solver, nfe)
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    if not cfg.conditional:
        if label is not None:
            raise ValueError(f"label={label} given, but the run is unconditional (trained without --conditional)")
        if guidance != 1.0:
            raise ValueError(f"guidance={guidance} needs a conditional run; this run is unconditional")
        labels = None
    else:
        if label is not None:
            if not 0 <= label < NUM_CLASSES:
                raise ValueError(f"label={label} out of range: class ids are 0..{NUM_CLASSES - 1}")
            if label not in cfg.sample_classes:
                raise ValueError(f"label={label} was not trained: this run's classes are {cfg.sample_classes}")
            labels = torch.full((n,), label, dtype=torch.long)
        else:
            labels = balanced_labels(n, cfg.sample_classes)
        if guidance != 1.0 and cfg.label_dropout == 0.0:
            raise ValueError(f"guidance={guidance} needs a run trained with label dropout (this run: 0); use guidance 1")

    device = torch.device(device)
    size = cfg.model_size
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, size, size, generator=g)
    velocity: nn.Module = model
    if cfg.conditional and guidance != 1.0:
        velocity = CFGVelocity(model, guidance, NUM_CLASSES)

    out, frames = [], None
    t0 = time.perf_counter()
    used_nfe = 0
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x0 = noise[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device) if labels is not None else None
            keep = trajectory_for > 0 and start == 0
            sol = solve_ode(velocity, x0, method=solver, steps=steps, y=y, return_trajectory=keep)
            used_nfe = sol.nfe
            out.append(to_uint8(sol.x.float().cpu()))
            if keep:
                tr = sol.trajectory[:, : min(trajectory_for, x0.shape[0])].float().cpu()
                frames = torch.stack([to_uint8(s) for s in tr])
    seconds = time.perf_counter() - t0
    return SampleResult(
        images=torch.cat(out), labels=labels, trajectory=frames, nfe=used_nfe, seconds=seconds,
        solver=solver, guidance=guidance,
    )  # fmt: skip


def write_samples(res: SampleResult, out: Path, *, grid: Path | None = None, gif: Path | None = None,
                  ncol: int | None = None, n_grid: int = 100) -> str:
    """Write ``res`` as the npz of the sample commands (``images`` uint8 [N, 28, 28], ``labels``
    int64 [N] when conditional; written atomically), the first ``n_grid`` images as a PNG grid and
    the trajectory as a GIF when asked; returns the one-line summary the CLIs print."""
    import numpy as np

    from .pictures import save_gif, save_grid

    arrays = {"images": res.images.numpy()}
    if res.labels is not None:
        arrays["labels"] = res.labels.numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    written = [str(out)]
    if grid is not None:
        written.append(str(save_grid(res.images[:n_grid], grid, ncol)))
    if gif is not None:
        written.append(str(save_gif(res.trajectory, gif, ncol)))
    what = f"labels {sorted(set(res.labels.tolist()))}" if res.labels is not None else "unconditional"
    return (f"sampled {len(res.images)} images ({what}; {res.solver}, NFE {res.nfe}, guidance {res.guidance:g}) "
            f"in {res.seconds:.1f} s -> {', '.join(written)}")
