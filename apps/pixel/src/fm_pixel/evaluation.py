"""``fm-pixel eval``: sample a run and score it with fm-eval's classifier features.

Metrics (fm_eval): FID of the samples against the data set's test split (all 10,000 images, or
only the trained classes for a ``--classes`` run) in the penultimate-layer features of the shipped
classifier, with both counts stated; for conditional runs the label accuracy (the classifier's
prediction equals the label the sample was drawn for); the per-class coverage of predicted
labels over the trained classes. FID is biased upwards at small n: compare only equal counts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .config import PixelConfig
from .sampling import SampleResult

__all__ = ["record_eval", "score_samples"]


def score_samples(
    samples: SampleResult,
    cfg: PixelConfig,
    *,
    data_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """FID against the test split, label accuracy (conditional runs) and coverage of ``samples``."""
    from fm_data.images import load_images
    from fm_eval.classifier import coverage, label_accuracy
    from fm_eval.fid import fid

    t0 = time.perf_counter()
    images = samples.images
    if cfg.classes is None:
        res = fid(images, cfg.dataset, "test", data_dir=data_dir, device=device)
        reference = "test split, all classes"
    else:  # only the trained classes are a fair reference
        ref = load_images(cfg.dataset, "test", data_dir, classes=cfg.classes).images
        res = fid(images, cfg.dataset, ref, device=device)
        reference = f"test split, classes {cfg.classes}"
    out: dict[str, Any] = {
        "fid": round(res.fid, 4),
        "fid_n_samples": res.n_samples,
        "fid_n_reference": res.n_reference,
        "fid_reference": reference,
        "fid_features": f"fm_eval {cfg.dataset} classifier, {res.feature_dim}-dim penultimate layer",
    }
    if samples.labels is not None:
        out["label_accuracy"] = round(label_accuracy(images, samples.labels, cfg.dataset, device=device), 4)
    cov = coverage(images, cfg.dataset, classes=cfg.sample_classes, device=device)
    out["coverage"] = {
        "min_ratio": round(cov.min_ratio, 4), "max_ratio": round(cov.max_ratio, 4),
        "classes_present": cov.classes_present, "shares": [round(s, 4) for s in cov.shares],
    }  # fmt: skip
    out["scoring_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def record_eval(run_dir: Path, samples: SampleResult, scores: dict[str, Any], *, n: int, seed: int) -> str:
    """Append the scores of ``samples`` (with how they were drawn and the machine's load) to
    RUN/metrics.json under ``"eval"``; return the one-line summary the eval commands print."""
    from .training import machine_load, update_metrics

    record = {
        "n": n, "solver": samples.solver, "nfe": samples.nfe, "guidance": samples.guidance, "seed": seed,
        **scores, "sampling_seconds": round(samples.seconds, 2), "machine": machine_load(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    path = update_metrics(run_dir, "eval", record, append=True)
    acc = f", label accuracy {record['label_accuracy']:.3f}" if "label_accuracy" in record else ""
    return (f"FID {record['fid']:.2f} ({record['fid_n_samples']} samples vs {record['fid_n_reference']} "
            f"{record['fid_reference']}){acc}, classes present {record['coverage']['classes_present']}, "
            f"min coverage ratio {record['coverage']['min_ratio']:.2f} "
            f"({samples.solver}, NFE {samples.nfe}, guidance {samples.guidance:g}) -> {path}")
