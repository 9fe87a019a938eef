"""Sampling from a latent run: noise (t = 0) -> latents (t = 1) with an ODE solver, then the VAE decodes.

The velocity is the DiT with its EMA weights; with guidance w != 1 it is classifier-free
guidance (fm_core.CFGVelocity, one batched call of size 2B, all channels). All noise is drawn
up front from one generator seeded with ``seed``, so the images do not depend on ``batch_size``.
The result is fm-pixel's :class:`fm_pixel.sampling.SampleResult` (images uint8 [N, 28, 28]), so
fm-pixel's pictures and fm-eval scoring take it as it is.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from fm_core import CFGVelocity, nfe_to_steps, solve_ode
from fm_data.images import to_uint8
from fm_latent import LatentVAE
from fm_pixel.sampling import SampleResult, balanced_labels

from .config import NUM_CLASSES, LatentConfig

__all__ = ["generate", "sample_labels"]


def sample_labels(cfg: LatentConfig, n: int, label: int | None, guidance: float) -> Tensor | None:
    """Labels [n] for a conditional run (``label`` for all, or balanced over the trained classes);
    None for an unconditional one. ValueError for what the run cannot do."""
    if not cfg.conditional:
        if label is not None or guidance != 1.0:
            raise ValueError(f"label={label}, guidance={guidance}: the run is unconditional (labels and guidance need --conditional)")
        return None
    if guidance != 1.0 and cfg.label_dropout == 0.0:
        raise ValueError(f"guidance={guidance} needs a run trained with label dropout (this run: 0); use guidance 1")
    if label is None:
        return balanced_labels(n, cfg.sample_classes)
    if label not in cfg.sample_classes:
        raise ValueError(f"label={label} was not trained: this run's classes are {cfg.sample_classes}")
    return torch.full((n,), label, dtype=torch.long)


def generate(
    model: nn.Module, vae: LatentVAE, cfg: LatentConfig, n: int, *, solver: str | None = None, nfe: int | None = None,
    guidance: float | None = None, label: int | None = None, seed: int = 0, batch_size: int = 500,
    trajectory_for: int = 0, device: torch.device | str = "cpu",
) -> SampleResult:
    """Draw ``n`` images: integrate the latent ODE, decode with the VAE, crop to 28x28 uint8.

    ``trajectory_for`` > 0 also decodes the first that many latents at every solver time (GIF).
    """
    solver = solver or cfg.solver
    nfe = cfg.nfe if nfe is None else nfe
    guidance = cfg.guidance if guidance is None else float(guidance)
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    labels = sample_labels(cfg, n, label, guidance)
    device = torch.device(device)
    noise = torch.randn(n, *cfg.latent_shape, generator=torch.Generator().manual_seed(seed))
    velocity = CFGVelocity(model, guidance, NUM_CLASSES) if cfg.conditional and guidance != 1.0 else model
    steps = nfe_to_steps(solver, nfe)
    out, frames, used = [], None, 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            y = labels[start : start + batch_size].to(device) if labels is not None else None
            keep = trajectory_for > 0 and start == 0
            sol = solve_ode(velocity, noise[start : start + batch_size].to(device), method=solver, steps=steps, y=y,
                            return_trajectory=keep)
            used = sol.nfe
            out.append(to_uint8(vae.decode(sol.x.float()).cpu()))
            if keep:
                frames = torch.stack([to_uint8(vae.decode(s[:trajectory_for].float()).cpu()) for s in sol.trajectory])
    return SampleResult(images=torch.cat(out), labels=labels, trajectory=frames, nfe=used,
                        seconds=time.perf_counter() - t0, solver=solver, guidance=guidance)
