"""Sampling and scoring a trained image run: which labels and guidance the run can take, the
batched draw through :func:`fm_core.sample`, and the evaluation record of metrics.json.

Noise (t = 0) -> images (t = 1): all noise is drawn up front from one generator seeded with
``seed`` (then labels, balanced over the trained classes, need no draw), so the images do not
depend on ``batch_size`` or the device. ``decode`` turns the solver's final states into uint8
images [N, 28, 28] (a crop of padded pixels, or a VAE's decoder first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fm_core import ADAPTIVE_METHODS, SampleResult, fit_nfe, sample
from fm_train import RunDir, machine_info

from ..flags import guidance_problem
from .config import ImageRunConfig

__all__ = ["check_label_guidance", "eval_line", "record_eval", "sample_images"]


def check_label_guidance(
    cfg: ImageRunConfig, label: int | None, guidance: float | None, *, flags: bool = False
) -> None:
    """ValueError when the run cannot sample with ``label`` (all images of one class) or ``guidance``
    (None: not asked for): labels need a conditional run and a trained class; guidance other than
    1 needs a conditional run trained with label dropout (the null label). ``flags`` names the
    values as the command line does (``--label 4``), else as arguments (``label=4``)."""

    label_name = f"--label {label}" if flags else f"label={label}"
    if not cfg.conditional and label is not None:
        raise ValueError(f"{label_name}: the run is unconditional (trained without --conditional)")
    problem = guidance_problem(guidance, conditional=cfg.conditional, label_dropout=cfg.label_dropout, flags=flags)
    if problem:
        raise ValueError(problem)
    if cfg.conditional and label is not None and label not in cfg.sample_classes:
        raise ValueError(f"{label_name}: not a trained class; this run's classes are {cfg.sample_classes}")


def sample_images(
    model: nn.Module,
    cfg: ImageRunConfig,
    n: int,
    shape: Sequence[int],
    *,
    decode: Callable[[Tensor], Tensor],
    solver: str | None = None,
    nfe: int | None = None,
    guidance: float | None = None,
    label: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    trajectory: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SampleResult:
    """Draw ``n`` images from ``model`` (its EMA weights, on ``device``) with :func:`fm_core.sample`.

    shape: one solver state, e.g. (1, 32, 32) or the latent shape. solver / nfe / guidance default to
    the run's (``cfg``; nfe None with an adaptive solver such as dopri5); ``label`` gives every
    image that class, otherwise a conditional run's labels are balanced over its trained classes.
    ``trajectory`` > 0 also keeps the first that many images at every solver time (decoded).
    Returns fm-core's SampleResult with ``x`` the decoded images. ValueError for what the run
    cannot do (:func:`check_label_guidance`) or a bad solver/NFE.
    """
    solver = solver or cfg.solver
    if nfe is None and solver not in ADAPTIVE_METHODS:
        nfe = fit_nfe(solver, cfg.nfe)  # the run's NFE, rounded down to the solver's steps
    guidance = cfg.guidance if guidance is None else float(guidance)
    check_label_guidance(cfg, label, guidance)
    labels = torch.full((n,), label, dtype=torch.long) if label is not None else None
    return sample(
        model,
        n,
        shape,
        seed=seed,
        labels=labels,
        num_classes=cfg.num_classes,
        classes=cfg.sample_classes if cfg.conditional and labels is None else None,
        method=solver,
        nfe=nfe,
        guidance=guidance,
        batch_size=batch_size,
        decode=decode,
        trajectory=trajectory,
        device=device,
        progress=progress,
    )


def record_eval(run_dir: str | Path, res: SampleResult, scores: dict[str, Any], *, n: int, seed: int) -> Path:
    """Append the scores of ``res`` (with how the images were drawn and the machine's load) to the
    list ``"eval"`` of RUN/metrics.json; returns its path."""
    record = {
        "n": n, "solver": res.method, "nfe": res.nfe, "guidance": res.guidance, "seed": seed,
        **scores, "sampling_seconds": round(res.seconds, 2), "machine": machine_info(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    return RunDir(run_dir).append_metrics("eval", record)


def eval_line(res: SampleResult, scores: dict[str, Any], path: str | Path) -> str:
    """The line the eval commands print: FID with its counts, label accuracy, coverage, the sampler."""
    acc = f", label accuracy {scores['label_accuracy']:.3f}" if "label_accuracy" in scores else ""
    cov = scores["coverage"]
    return (
        f"FID {scores['fid']:.2f} ({scores['fid_n_samples']} samples vs {scores['fid_n_reference']} "
        f"{scores['fid_reference']}){acc}, classes present {cov['classes_present']}, "
        f"min coverage ratio {cov['min_ratio']:.2f} ({res.method}, NFE {res.nfe}, guidance {res.guidance:g}) -> {path}"
    )
