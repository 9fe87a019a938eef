"""Evaluation and pictures of normalizing-flow runs: the exact NLL, the same sample metrics as
flow-matching runs, and the pictures drawn by :mod:`fm_toy2d.nf_plots`.

The NLL is exact by the change of variables, ``-log p(x) = -log N(z; 0, I) - log|det dz/dx|``
with ``z = flow(x)`` (data -> noise), in float64. Samples run the flow's ``inverse`` (noise,
t = 0, to data, t = 1).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fm_train import RunDir

from . import nf_plots, plots
from .evaluation import (
    SAMPLE_OFFSET,
    headline,
    heldout_data,
    heldout_seed,
    nll_summary,
    sample_metrics,
    sample_quality,
    true_entropy,
)
from .nf_run import NFRun, load_nf_run, nll_terms_history, sample_run, source
from .pictures import picture_inputs

__all__ = ["evaluate", "layerwise_points", "likelihood", "pictures"]


@torch.no_grad()
def _log_prob(flow, x: Tensor, y: Tensor | int | None, batch: int = 50_000) -> Tensor:
    """Exact log p(x | y) in float64 (a float64 copy of the flow), batched; x [n, D] -> [n]."""
    f64 = _float64(flow)
    out = []
    for i in range(0, len(x), batch):
        yb = y[i : i + batch] if isinstance(y, Tensor) else y
        out.append(f64.log_prob(x[i : i + batch].double(), yb))
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)


def _float64(flow):
    return flow if next(flow.parameters()).dtype == torch.float64 else copy.deepcopy(flow).double().eval()


@torch.no_grad()
def likelihood(run: NFRun, n: int = 2000) -> dict[str, Any]:
    """Exact NLL (nats per point) of n held-out points by the change of variables,
    ``-log p(x) = -log N(z; 0, I) - log|det dz/dx|``, computed in float64.

    Conditional runs: ``mean`` is the NLL of log p(x | y) with the true labels, compared with the
    conditional entropy H(X | Y) where known; ``marginal`` is log p(x) = log mean_k p(x | k)
    (labels are uniform in every toy set) against H(X).
    """
    cfg, dist = run.config, run.dist
    x, y = heldout_data(cfg, dist, n)
    f64 = _float64(run.flow)
    z, logdet = f64(x.double(), y)
    base = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    nll = -(base + logdet)
    out: dict[str, Any] = {
        **nll_summary(nll, n, cfg, dist),
        "method": "exact",
        "divergence": None,
        "formula": "-log p(x) = -log N(z; 0, I) - log|det dz/dx|, z = flow(x)",
        "dtype": "float64",
        "base_log_prob": float(base.mean()),
        "logdet": float(logdet.mean()),
        "heldout_seed": heldout_seed(cfg.seed),
    }
    if cfg.conditional:
        k = dist.num_classes
        per = torch.stack([f64.log_prob(x.double(), c) for c in range(k)], -1)  # [n, K]
        marg = -(torch.logsumexp(per, -1) - math.log(k))
        try:
            h = float(dist.entropy())
        except NotImplementedError:
            h = None
        m = float(marg.mean())
        out["marginal"] = {
            "mean": m,
            "stderr": float(marg.std() / math.sqrt(len(marg))) if len(marg) > 1 else None,
            "entropy": h,
            "gap": None if h is None else m - h,
        }
    return out


def evaluate(
    run_dir: str | Path,
    n: int = 20000,
    seed: int | None = None,
    *,
    n_nll: int = 2000,
    nll: bool = True,
    w2_n: int = 2000,
    ed_n: int = 5000,
) -> dict[str, Any]:
    """The metrics of an nf run, the same keys as flow-matching runs (fm_toy2d.evaluation.evaluate).

    n samples (seed ``seed``, default the run's seed + SAMPLE_OFFSET) against n held-out points
    (:func:`fm_toy2d.evaluation.sample_metrics`); and the exact NLL of ``n_nll`` held-out points
    (:func:`likelihood`).
    """
    run = load_nf_run(run_dir)
    seed = run.config.seed + SAMPLE_OFFSET if seed is None else int(seed)
    x, y = sample_run(run, n, None, seed)
    out: dict[str, Any] = {
        "step": run.step,
        "model": "nf",
        "samples": {"n": n, "solver": None, "nfe": 1, "seed": seed, "method": "flow inverse (one exact pass)"},
        **sample_metrics(run.config, run.dist, x, y, w2_n=w2_n, ed_n=ed_n),
    }
    if nll:
        out["nll"] = likelihood(run, n_nll)
    return out


# ----------------------------------------------------------------------------- pictures
@torch.no_grad()
def layerwise_points(run: NFRun, n: int, seed: int) -> tuple[Tensor, tuple[str, ...], Tensor | None]:
    """Noise points carried through the flow layer by layer, noise -> data (the sampling direction).

    Returns (points [L + 1, n, D], layer names [L], labels [n] or None).
    """
    z, y = source(n, run.config.data_dim, seed, run.num_classes)
    lw = run.flow.layerwise(z, y, direction="inverse")
    return lw.points.float(), lw.names, y


@torch.no_grad()
def _density_grid(run: NFRun, extent, k: int) -> tuple[Any, Any, list[tuple[str, Any]]]:
    """Learned densities on a k x k grid: [("learned p(x)", [k, k])] (+ p(x | y) per label), and the true one."""
    xs, ys = np.linspace(extent[0], extent[1], k), np.linspace(extent[2], extent[3], k)
    gx, gy = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], -1)).double()
    panels: list[tuple[str, Any]] = []
    if run.num_classes is None:
        panels.append(("learned p(x) = exp(log_prob)", _log_prob(run.flow, pts, None).exp().reshape(k, k).numpy()))
    else:
        per = torch.stack([_log_prob(run.flow, pts, c) for c in range(run.num_classes)], 0)  # [K, k*k]
        marg = (torch.logsumexp(per, 0) - math.log(run.num_classes)).exp()
        panels.append(("learned p(x) = mean over labels of p(x | y)", marg.reshape(k, k).numpy()))
        for c in range(run.num_classes):
            panels.append((f"learned p(x | y = {c})", per[c].exp().reshape(k, k).numpy()))
    true = run.dist.log_prob(pts).exp().reshape(k, k).numpy()
    return gx, gy, [("true p(x)", true)] + panels


def pictures(run_dir: str | Path, *, n: int = 20000, fast: bool | None = None) -> list[Path]:
    """Draw the pictures of an nf run into its directory; returns the files written.

        samples.png    held-out data and samples side by side (coloured by label when conditional)
        layers.png     noise carried through the flow layer by layer to data, one panel per layer
        loss.png       the NLL over training split into -log p_base(z) and -log|det dz/dx|
        density.png    the learned density exp(log_prob) on a grid beside the true density
                       (conditional runs: also p(x | y) per label); 2D data only

    ``fast`` (default: env FM_TOY2D_FAST=1) uses fewer points and a coarser grid (tests).
    Merges "pictures_samples" into RUN/metrics.json.
    """
    run = load_nf_run(run_dir)
    cfg, d = run.config, run.run_dir
    fast, n, data, extent, name, seed = picture_inputs(cfg, run.dist, n, fast)
    what = f"normalizing flow, {cfg.net['n_layers']} blocks, {run.step} steps"
    written: list[Path] = []

    x, y = sample_run(run, n, None, seed)
    q = sample_quality(cfg, x, y)
    written.append(
        plots.plot_samples(d / "samples.png", data, x, extent, labels=y, title=f"{name}: {what}", subtitle=headline(q))
    )

    pts, names, ly = layerwise_points(run, 1500 if fast else 4000, seed + 1)
    written.append(
        nf_plots.plot_layers(
            d / "layers.png",
            pts,
            names,
            labels=ly,
            data_extent=extent,
            title=f"{name}: noise (top left) carried through the flow layer by layer to data",
        )
    )

    hist = nll_terms_history(d)
    if hist["step"]:
        written.append(
            nf_plots.plot_nll_terms(
                d / "loss.png",
                hist,
                entropy=true_entropy(cfg, run.dist),
                conditional=cfg.conditional,
                title=f"{name}: maximum-likelihood loss ({what})",
            )
        )

    if cfg.data_dim == 2:
        gx, gy, panels = _density_grid(run, extent, 100 if fast else 220)
        written.append(
            nf_plots.plot_density(
                d / "density.png", gx, gy, panels, extent, title=f"{name}: density of the flow, exp(log_prob) on a grid"
            )
        )
    RunDir(d).merge_metrics({"pictures_samples": {"n": n, "model": "nf", "quality": q}})
    return written
