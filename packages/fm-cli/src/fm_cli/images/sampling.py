"""Sampling and scoring a trained image run: which labels and guidance the run can take, the
batched draw through :func:`fm_core.sample`, and the evaluation record of metrics.json.

Noise (t = 0) -> images (t = 1): all noise is drawn up front from one generator seeded with
``seed`` (then labels, balanced over the trained classes, need no draw), so the images do not
depend on ``batch_size`` or the device. ``decode`` turns the solver's final states into uint8
images [N, 28, 28] (a crop of padded pixels, or a VAE's decoder first).

Precision: ``precision="bf16"`` runs the velocity calls (and ``decode``) under bf16 autocast, the
solver state stays float32; ``None`` leaves whatever autocast the caller runs under (fm-train's
Trainer calls its ``sample_fn`` under the run's precision); adaptive solvers (dopri5) always run
in float32, since bf16 rounding of the velocity would make their error control shrink the steps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fm_core import ADAPTIVE_METHODS, SampleResult, fit_nfe, sample
from fm_train import RunDir, machine_info
from fm_train.precision import precision_autocast

from ..flags import guidance_problem
from ..method import FLOW_MAP, flow_map_sampler, is_two_time, sampler_straightness, sampling_model
from .config import ImageRunConfig

__all__ = [
    "check_label_guidance",
    "eval_line",
    "record_eval",
    "sample_images",
    "sample_straightness",
    "sampler_caption",
]


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
    precision: str | None = None,
) -> SampleResult:
    """Draw ``n`` images from ``model`` (its EMA weights, on ``device``) with :func:`fm_core.sample`.

    shape: one solver state, e.g. (1, 32, 32) or the latent shape. solver / nfe / guidance default to
    the run's (``cfg``; nfe None with an adaptive solver such as dopri5); a two-time (meanflow) model
    samples by ``flow-map`` by default (fm_cli.method.DEFAULT_FLOW_MAP_NFE steps), or through u(x, t, t)
    with an ODE solver; ``label`` gives every
    image that class, otherwise a conditional run's labels are balanced over its trained classes.
    ``trajectory`` > 0 also keeps the first that many images at every solver time (decoded).
    ``precision``: "fp32", "bf16" or None (the caller's autocast); see the module docstring.
    Returns fm-core's SampleResult with ``x`` the decoded images. ValueError for what the run
    cannot do (:func:`check_label_guidance`) or a bad solver/NFE.
    """
    if solver == FLOW_MAP or (solver is None and is_two_time(model)):  # a two-time (meanflow) run
        solver, nfe = flow_map_sampler(model, nfe)
    solver = solver or cfg.solver
    if nfe is None and solver not in ADAPTIVE_METHODS:
        nfe = fit_nfe(solver, cfg.nfe)  # the run's NFE, rounded down to the solver's steps
    guidance = cfg.guidance if guidance is None else float(guidance)
    check_label_guidance(cfg, label, guidance)
    labels = torch.full((n,), label, dtype=torch.long) if label is not None else None
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    amp: contextlib.AbstractContextManager = contextlib.nullcontext()
    if solver in ADAPTIVE_METHODS:
        if dev.type in ("cpu", "cuda", "mps"):
            amp = torch.autocast(dev.type, enabled=False)
    elif precision is not None:
        amp = precision_autocast(dev, precision)
    with amp:
        return sample(
            sampling_model(model, solver),  # a two-time model through u(x, t, t) for an ODE solver
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


def sample_straightness(
    model: nn.Module,
    cfg: ImageRunConfig,
    n: int,
    shape: Sequence[int],
    *,
    solver: str | None = None,
    nfe: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """fm_cli.method.sampler_straightness of the run's sampler (the defaults of :func:`sample_images`:
    the run's solver, NFE and guidance, flow-map for a two-time model; balanced labels) on ``n``
    trajectories of solver states (not decoded), in float32."""
    if solver == FLOW_MAP or (solver is None and is_two_time(model)):
        solver, nfe = flow_map_sampler(model, nfe)
    solver = solver or cfg.solver
    if nfe is None and solver not in ADAPTIVE_METHODS:
        nfe = fit_nfe(solver, cfg.nfe)
    guidance = cfg.guidance if guidance is None else float(guidance)
    with torch.autocast(torch.device(device or "cpu").type, enabled=False):
        return sampler_straightness(model, n, tuple(shape), solver=solver, nfe=nfe, seed=seed,
                                    num_classes=cfg.num_classes,
                                    classes=cfg.sample_classes if cfg.conditional else None, guidance=guidance,
                                    device=device)  # fmt: skip


def record_eval(run_dir: str | Path, res: SampleResult, scores: dict[str, Any], *, n: int, seed: int) -> Path:
    """Append the scores of ``res`` (with how the images were drawn and the machine's load) to the
    list ``"eval"`` of RUN/metrics.json; returns its path."""
    record = {
        "n": n, "solver": res.method, "nfe": res.nfe, "guidance": res.guidance, "seed": seed,
        **scores, "sampling_seconds": round(res.seconds, 2), "machine": machine_info(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    return RunDir(run_dir).append_metrics("eval", record)


def sampler_caption(res: SampleResult, prefix: str = "") -> str:
    """How images were drawn, for a grid's caption: ``[PREFIX: ]guidance 2, NFE 10 (euler)``."""
    g = "" if res.guidance is None else f"guidance {res.guidance:g}, "
    return f"{prefix + ': ' if prefix else ''}{g}NFE {res.nfe} ({res.method})"


def eval_line(res: SampleResult, scores: dict[str, Any], path: str | Path) -> str:
    """The line the eval commands print: FID with its counts, precision / recall / density / coverage
    with theirs (when scored), label accuracy, class coverage, the sampler."""
    acc = f", label accuracy {scores['label_accuracy']:.3f}" if "label_accuracy" in scores else ""
    cov = scores["coverage"]
    m = scores.get("manifold")
    pr = (
        f"; precision {m['precision']:.3f}, recall {m['recall']:.3f}, density {m['density']:.3f}, coverage "
        f"{m['coverage']:.3f} (k={m['k']}, {m['n_samples']} samples vs {m['reference']})"
        if m
        else ""
    )
    st = scores.get("straightness")
    acc += f", straightness {st['normalised']:.4f} (normalised, {st['n']} trajectories)" if st else ""
    return (
        f"FID {scores['fid']:.2f} ({scores['fid_n_samples']} samples vs {scores['fid_n_reference']} "
        f"{scores['fid_reference']}){pr}{acc}, classes present {cov['classes_present']}, "
        f"min coverage ratio {cov['min_ratio']:.2f} ({res.method}, NFE {res.nfe}, guidance {res.guidance:g}) -> {path}"
    )
