"""Metrics of a trained fm-toy2d run: sample quality, likelihood, quality against NFE, reversibility.

All metrics compare with HELD-OUT data: drawn from a generator seeded with
``heldout_seed(cfg.seed)``, never from the training stream (the Trainer's generator seeded with
``cfg.seed``). Time convention: t = 0 is N(0, I) noise, t = 1 is data.

* :func:`sample_quality`: the dataset's own quality numbers (fm_eval.metrics2d):
  checkerboard -> in_support, min/max_cell_ratio; olympic-rings -> in_support, ring ratios and,
  with labels, on_own_ring (overall, per label and the worst label).
* :func:`sample_metrics`: energy distance, W2 on a subsample, precision / recall / density /
  coverage on raw coordinates and the quality above, of any samples (flow-matching and nf runs alike).
* :func:`evaluate`: :func:`sample_metrics` of a flow-matching run's samples and the exact NLL
  (fm_core.log_likelihood, dopri5, exact divergence) with the true entropy and the gap.
* :func:`nfe_sweep`: quality for each fixed-step solver at several NFE ("time quantization").
* :func:`reversibility`: encode data to noise (t = 1 -> 0) and decode back; reconstruction error
  and how Gaussian the codes are.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fm_cli import progress, progress_enabled
from fm_cli.method import DEFAULT_FLOW_MAP_NFE, FLOW_MAP, sampler_straightness
from fm_core import evals_per_step, solve_ode
from fm_core.likelihood import log_likelihood
from fm_eval.manifold import manifold_scores
from fm_eval.metrics2d import checkerboard_quality, energy_distance, rings_quality, wasserstein2

from .config import SOLVERS, RunConfig
from .training import FlowRun

__all__ = [
    "HELDOUT_OFFSET",
    "NFE_GRID",
    "evaluate",
    "heldout_data",
    "heldout_seed",
    "likelihood",
    "nfe_sweep",
    "reversibility",
    "sample_metrics",
    "sample_quality",
    "true_entropy",
]

#: Held-out data use the seed ``cfg.seed + HELDOUT_OFFSET``; sampling noise ``cfg.seed + SAMPLE_OFFSET``.
HELDOUT_OFFSET = 1_000_003
SAMPLE_OFFSET = 2_000_029
#: NFE values of the "time quantization" sweep (multiples of 4, so every solver can use them).
NFE_GRID = (4, 8, 16, 32, 64)
#: NFE values added to the sweep of a meanflow or reflow run (one- and two-step sampling).
FEW_NFE = (1, 2)
#: Trajectories eval measures the straightness of the sampler's paths on (fm_eval.straightness).
STRAIGHTNESS_N = 2000


def heldout_seed(seed: int) -> int:
    return int(seed) + HELDOUT_OFFSET


def heldout_data(cfg: RunConfig, dist, n: int) -> tuple[Tensor, Tensor | None]:
    """n held-out data points [n, D] and labels [n] (None when unconditional), fresh seed."""
    g = torch.Generator().manual_seed(heldout_seed(cfg.seed))
    if cfg.conditional:
        return dist.sample_labeled(n, generator=g)
    return dist.sample(n, generator=g), None


def sample_quality(cfg: RunConfig, x: Tensor, y: Tensor | None = None) -> dict[str, Any]:
    """The dataset-specific quality of samples x [n, D] (labels y for conditional rings); {} if none."""
    if cfg.dataset == "checkerboard":
        q = checkerboard_quality(x, cfg.grid, cfg.dim)
        return {"kind": "checkerboard", **q}
    if cfg.dataset == "olympic-rings":
        return {"kind": "rings", **rings_quality(x, y if cfg.conditional else None)}
    return {}


def headline(q: dict[str, Any]) -> str:
    """One short line for a quality dict (pictures and the CLI)."""
    if q.get("kind") == "checkerboard":
        return f"in filled cells {q['in_support']:.1%}, smallest cell {q['min_cell_ratio']:.2f} of its share"
    if q.get("kind") == "rings":
        s = f"on a ring {q['in_support']:.1%}"
        if q.get("on_own_ring_min") is not None:
            s += f", on own ring (worst label) {q['on_own_ring_min']:.1%}"
        return s
    return ""


def likelihood(
    run: FlowRun, n: int = 2000, *, batch: int = 1000, atol: float = 1e-5, rtol: float = 1e-5, quiet: bool = True
) -> dict[str, Any]:
    """Exact NLL (nats per point) of n held-out points: fm_core.log_likelihood with dopri5 and the
    exact divergence. Conditional runs give log p(x | y) with the true labels, compared with the
    conditional entropy H(X | Y) where known. A progress bar unless ``quiet``."""
    cfg, dist = run.config, run.dist
    x, y = heldout_data(cfg, dist, n)
    logps, nfe = [], 0
    for start in progress(range(0, n, batch), desc="likelihood", unit="batch", quiet=quiet):
        xb = x[start : start + batch].to(run.device)
        yb = None if y is None else y[start : start + batch].to(run.device)
        res = log_likelihood(run.velocity, xb, y=yb, method="dopri5", atol=atol, rtol=rtol, divergence="exact")
        logps.append(res.log_prob.double().cpu())
        nfe = max(nfe, res.nfe)
    nll = -torch.cat(logps)
    return {
        **nll_summary(nll, n, cfg, dist),
        "method": "dopri5",
        "divergence": "exact",
        "atol": atol,
        "rtol": rtol,
        "nfe": nfe,
        "heldout_seed": heldout_seed(cfg.seed),
    }


def nll_summary(nll: Tensor, n: int, cfg: RunConfig, dist) -> dict[str, Any]:
    """Mean, standard error, entropy and gap of per-point NLLs (nats); shared by flow-matching and nf runs."""
    entropy = true_entropy(cfg, dist)
    mean = float(nll.mean())
    return {
        "mean": mean,
        "stderr": float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else None,
        "n": n,
        "conditional": cfg.conditional,
        "entropy": entropy,
        "gap": None if entropy is None else mean - entropy,
    }


def true_entropy(cfg: RunConfig, dist) -> float | None:
    """True entropy H(X) (unconditional) or H(X | Y) (conditional) in nats, where known."""
    if not cfg.conditional:
        try:
            return float(dist.entropy())
        except NotImplementedError:
            return None
    if cfg.dataset == "checkerboard":  # uniform on one cell given its label
        return cfg.dim * math.log(dist.side)
    if cfg.dataset == "olympic-rings":  # uniform on one annulus given its label
        return math.log(dist.ring_area)
    return None


def sample_metrics(
    cfg: RunConfig, dist, x: Tensor, y: Tensor | None, *, w2_n: int = 2000, ed_n: int = 5000, pr_n: int = 5000
) -> dict[str, Any]:
    """Samples x [n, D] (labels y) against n held-out points: energy distance on up to ``ed_n``
    points per side, W2 (exact assignment) on ``w2_n``, improved precision / recall and density /
    coverage on the raw coordinates of the first ``pr_n`` of each (k = 3, fm_eval.manifold_scores;
    equal counts), and the dataset's quality."""
    n = len(x)
    data, _ = heldout_data(cfg, dist, n)
    m = min(n, pr_n)
    manifold = manifold_scores(x[:m], data[:m]) if m > 3 else None
    return {
        "energy_distance": energy_distance(x, data, max_n=ed_n, generator=0),
        "energy_distance_n": min(n, ed_n),
        "w2": wasserstein2(x, data, max_n=w2_n, generator=0),
        "w2_n": min(n, w2_n),
        "manifold": None if manifold is None else {**manifold.to_dict(), "reference": "held-out data"},
        "quality": sample_quality(cfg, x, y),
    }


# fmt: off
def evaluate(run: FlowRun, *, n: int = 20000, solver: str | None = None, nfe: int | None = None,
             seed: int | None = None, n_nll: int = 2000, w2_n: int = 2000, ed_n: int = 5000, nll: bool = True,
             quiet: bool = True) -> dict[str, Any]:
    # fmt: on
    """Sample n points with (solver, nfe) (default: the run's) and compare with n held-out points.

    Returns {"step", "samples": {...}, "energy_distance", "w2", "quality": {...}, "straightness": {...},
    "nll": {...}} (:func:`sample_metrics`, fm_cli.method.sampler_straightness on the sampler's own paths,
    :func:`likelihood`). A two-time (meanflow) run samples by flow map unless told otherwise. Progress
    bars unless ``quiet``.
    """
    cfg = run.config
    solver = solver or (FLOW_MAP if run.two_time else cfg.solver)
    if nfe is None:
        nfe = DEFAULT_FLOW_MAP_NFE if solver == FLOW_MAP else cfg.nfe if solver in SOLVERS else None
    seed = cfg.seed + SAMPLE_OFFSET if seed is None else seed
    s = run.sample(n, seed=seed, solver=solver, nfe=nfe, progress=progress_enabled(quiet))
    out: dict[str, Any] = {
        "step": run.step,
        "samples": {"n": n, "solver": solver, "nfe": s.nfe, "seed": seed},
        **sample_metrics(cfg, run.dist, s.x, s.labels, w2_n=w2_n, ed_n=ed_n),
        "straightness": sampler_straightness(run.model, min(n, STRAIGHTNESS_N), (cfg.data_dim,), solver=solver,
                                             nfe=nfe, seed=seed, num_classes=run.num_classes,
                                             random_labels=run.num_classes is not None, device=run.device),
    }  # fmt: skip
    if nll:
        out["nll"] = likelihood(run, n_nll, quiet=quiet)
    return out


def nfe_sweep(
    run: FlowRun,
    *,
    n: int = 5000,
    nfes: tuple[int, ...] = NFE_GRID,
    solvers: tuple[str, ...] = SOLVERS,
    seed: int | None = None,
    keep: int = 0,
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], Tensor]]:
    """Quality of every fixed-step solver at every NFE in ``nfes``, all from the same noise.

    A meanflow or reflow run adds NFE 1 and 2 (:data:`FEW_NFE`, where a solver's steps allow them), a
    meanflow run the flow-map sampler, and both their teacher (the ``--init-from`` or ``--teacher`` run)
    at its own solver and NFE, as the solver ``"teacher (SOLVER)"`` (none when that run cannot be loaded).
    Returns (rows, samples): rows are {"solver", "nfe", "energy_distance", **quality}; samples maps
    (solver, nfe) to the first ``keep`` samples (for the picture).
    """
    cfg = run.config
    seed = cfg.seed + SAMPLE_OFFSET if seed is None else seed
    data, _ = heldout_data(cfg, run.dist, n)
    rows, kept = [], {}
    few = run.method.name != "fm"
    if few:
        nfes = tuple(sorted({*FEW_NFE, *nfes}))
        solvers = (FLOW_MAP, *solvers) if run.two_time and FLOW_MAP not in solvers else solvers
    runs = [(s, k, run) for s in solvers for k in nfes if s == FLOW_MAP or k % evals_per_step(s) == 0]
    teacher = _teacher(run) if few else None
    if teacher is not None:
        runs.append((f"teacher ({teacher.config.solver})", teacher.config.nfe, teacher))
    for solver, k, source in runs:
        name = source.config.solver if source is not run else solver
        s = source.sample(n, seed=seed, solver=name, nfe=k)
        q = sample_quality(cfg, s.x, s.labels)
        row = {"solver": solver, "nfe": k, "energy_distance": energy_distance(s.x, data, max_n=2000, generator=0)}
        row.update(
            {key: q[key] for key in ("in_support", "min_cell_ratio", "on_own_ring", "on_own_ring_min") if key in q}
        )
        rows.append(row)
        if keep:
            kept[(solver, k)] = s.x[:keep]
    return rows, kept


def _teacher(run: FlowRun) -> FlowRun | None:
    """The run ``run`` learnt from (meanflow --init-from, reflow --teacher), loaded; None without one or
    when it cannot be loaded (moved, deleted)."""
    from .training import load_run

    other = run.method.teacher_run
    if other is None:
        return None
    try:
        return load_run(other, device=str(run.device))
    except (ValueError, OSError):
        return None


def reversibility(
    run: FlowRun, *, n: int = 2000, solver: str = "rk4", steps: int = 50
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Encode n held-out points to noise (t = 1 -> 0) and decode them back (0 -> 1).

    Returns (metrics, arrays): reconstruction error (mean / max Euclidean distance, relative to the
    data's RMS radius), the codes' mean and covariance (N(0, I) has 0 and I), the energy distance
    of the codes to fresh N(0, I) points and, as its noise floor, of two fresh N(0, I) sets of the
    same size. ``arrays`` holds x, z (codes), x_rec and y for the picture.
    """
    cfg = run.config
    x, y = heldout_data(cfg, run.dist, n)
    yd = None if y is None else y.to(run.device)
    with torch.no_grad():
        enc = solve_ode(run.velocity, x.to(run.device), method=solver, steps=steps, t0=1.0, t1=0.0, y=yd)
        dec = solve_ode(run.velocity, enc.x, method=solver, steps=steps, t0=0.0, t1=1.0, y=yd)
    z, x_rec, nfe_enc, nfe_dec = enc.x.float().cpu(), dec.x.float().cpu(), enc.nfe, dec.nfe
    err = (x_rec - x).norm(dim=1)
    g = torch.Generator().manual_seed(heldout_seed(cfg.seed) + 1)
    fresh_a, fresh_b = torch.randn(n, cfg.data_dim, generator=g), torch.randn(n, cfg.data_dim, generator=g)
    zc = z.double()
    cov = torch.cov(zc.T).reshape(cfg.data_dim, cfg.data_dim)
    metrics = {
        "n": n,
        "solver": solver,
        "nfe_encode": nfe_enc,
        "nfe_decode": nfe_dec,
        "reconstruction_error_mean": float(err.mean()),
        "reconstruction_error_max": float(err.max()),
        "data_rms_radius": float(x.norm(dim=1).pow(2).mean().sqrt()),
        "code_mean": zc.mean(0).tolist(),
        "code_cov": cov.tolist(),
        "code_cov_error": float((cov - torch.eye(cfg.data_dim, dtype=cov.dtype)).abs().max()),
        "code_energy_distance": energy_distance(z, fresh_a),
        "gaussian_energy_distance_floor": energy_distance(fresh_b, fresh_a),
    }
    return metrics, {"x": x, "z": z, "x_rec": x_rec, "y": y}
