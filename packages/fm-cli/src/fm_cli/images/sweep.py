"""The classifier-free guidance sweep of an image run (``eval --guidance-sweep 1,1.25,1.5,2,3``):
for each guidance scale the same noise and labels (one seed) are drawn into images, scored with
fm-eval (FID, improved precision / recall, density / coverage, label accuracy:
:func:`fm_eval.image_scores`), and the rows go into RUN/metrics.json ``"guidance_sweep"``, a chart
RUN/guidance.png and a printed table.

Guidance w mixes the conditional and unconditional velocities, v = v(x, t, null) + w (v(x, t, y) -
v(x, t, null)) (Ho & Salimans 2022); w = 1 is the conditional model alone. Larger w trades
diversity (recall) for fidelity (precision); the FID column picks the balance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fm_eval import image_scores
from fm_train import RunDir, machine_info

from ..pictures import plot_guidance_sweep
from .config import ImageRunConfig

__all__ = ["GUIDANCE_FILE", "GuidanceSweep", "guidance_sweep", "record_sweep", "sweep_table"]

#: The chart of a sweep in the run directory.
GUIDANCE_FILE = "guidance.png"

#: The columns of a sweep row shown in the table (key, heading, format).
_COLUMNS = (
    ("guidance", "guidance", "{:g}"),
    ("fid", "FID", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("density", "density", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("label_accuracy", "label acc.", "{:.3f}"),
    ("seconds", "seconds", "{:.1f}"),
)


@dataclass
class GuidanceSweep:
    """The rows of a sweep (one per guidance, in the order given: {"guidance", "fid", "precision",
    "recall", "density", "coverage", "label_accuracy", "class_coverage_min_ratio", "sampling_seconds",
    "scoring_seconds", "seconds"}), the guidance with the lowest FID, how the images were drawn and
    scored, and the sweep's wall-clock seconds."""

    rows: list[dict[str, Any]]
    best_guidance: float
    n: int
    solver: str
    nfe: int
    seed: int
    fid_reference: str
    manifold_reference: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


def guidance_sweep(
    draw: Callable[..., Any],
    cfg: ImageRunConfig,
    guidances: Sequence[float],
    *,
    n: int,
    solver: str,
    nfe: int | None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    device: Any = "cpu",
    progress: bool = False,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> GuidanceSweep:
    """Score ``n`` images drawn at each guidance in ``guidances`` with ``draw(n, solver=, nfe=,
    guidance=, seed=, progress=)`` (an app's sampler: uint8 images [n, 28, 28] in ``.x``, labels in
    ``.labels``), all from the same ``seed``. ``report(row)`` is called after each row (e.g. to print
    it). ValueError (from the sampler or fm-eval) for what the run cannot do."""
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}
    method, used_nfe = solver, nfe
    for g in guidances:
        t1 = time.perf_counter()
        res = draw(n, solver=solver, nfe=nfe, guidance=float(g), seed=seed, progress=progress)
        scores = image_scores(res.x, cfg.dataset, labels=res.labels, classes=cfg.classes, data_dir=data_dir,
                              device=device, manifold=True)  # fmt: skip
        m = scores["manifold"]
        row = {
            "guidance": float(g), "fid": scores["fid"], "precision": m["precision"], "recall": m["recall"],
            "density": m["density"], "coverage": m["coverage"], "label_accuracy": scores.get("label_accuracy"),
            "class_coverage_min_ratio": scores["coverage"]["min_ratio"],
            "sampling_seconds": round(res.seconds, 2), "scoring_seconds": scores["scoring_seconds"],
            "seconds": round(time.perf_counter() - t1, 2),
        }  # fmt: skip
        method, used_nfe = res.method, res.nfe
        rows.append(row)
        if report is not None:
            report(row)
    best = min(rows, key=lambda r: r["fid"])
    return GuidanceSweep(
        rows=rows,
        best_guidance=best["guidance"],
        n=n,
        solver=method,
        nfe=int(used_nfe or 0),
        seed=seed,
        fid_reference=f"{scores['fid_n_reference']} images, {scores['fid_reference']}",
        manifold_reference=scores["manifold"]["reference"],
        seconds=round(time.perf_counter() - t0, 2),
    )


def record_sweep(run_dir: str | Path, sweep: GuidanceSweep, *, dataset: str) -> tuple[Path, Path | None]:
    """RUN/metrics.json ``"guidance_sweep"`` (the last sweep replaces the one before, with the time
    and the machine's load) and the chart RUN/guidance.png; returns both paths (the chart's None
    where matplotlib is not installed)."""
    run = RunDir(run_dir)
    record = {**sweep.to_dict(), "machine": machine_info(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    metrics = run.update_metrics("guidance_sweep", record)
    title = (f"{dataset}: guidance sweep ({sweep.n} samples per guidance, {sweep.solver}, NFE {sweep.nfe}, "
             f"seed {sweep.seed})")  # fmt: skip
    try:
        chart: Path | None = plot_guidance_sweep(run.path / GUIDANCE_FILE, sweep.rows, title=title)
    except ImportError:  # matplotlib missing: the numbers are in metrics.json and the table
        chart = None
    return metrics, chart


def sweep_table(rows: Sequence[dict[str, Any]], best_guidance: float | None = None) -> str:
    """A plain-text table of sweep rows (one line a guidance; the best FID's row marked with *)."""
    cols = [(k, h, f) for k, h, f in _COLUMNS if any(r.get(k) is not None for r in rows)]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else f.format(r[k]) for k, _, f in cols])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = []
    for j, c in enumerate(cells):
        mark = " *" if j > 0 and best_guidance is not None and rows[j - 1]["guidance"] == best_guidance else ""
        lines.append("  ".join(v.rjust(w) for v, w in zip(c, widths)) + mark)
    return "\n".join(lines)
