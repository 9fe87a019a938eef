"""The scaling study's analysis: steps to target of every run (censored where not reached), the
median over seeds and the growth fits (fm_eval.stats), written as summary.txt, summary.json and
the three figures (fm_toy2d.study_plots)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm_eval.stats import Fit, fit_power_law, fit_two_factors, format_interval, median_steps, steps_to_target
from fm_train.sweep import read_csv_rows

from .study_config import CELL_TARGET, IN_SUPPORT_TARGET, TARGET, StudyConfig, n_filled, sweep_members

__all__ = ["RunOutcome", "analyse", "outcomes"]


@dataclass
class RunOutcome:
    """Steps to target of one run: ``steps`` (reached) or None with ``censored_at`` (the last
    evaluated step: the target was not met by then)."""

    run_id: str
    recipe: str
    grid: int
    dim: int
    n_filled: int
    seed: int
    max_steps: int
    status: str
    steps: int | None
    censored_at: int | None

    @property
    def reached(self) -> bool:
        return self.steps is not None


def outcomes(evaluations: list[dict], runs: list[dict]) -> list[RunOutcome]:
    """One outcome per run that has evaluations or a record (skipped runs are left out). Runs with
    evaluations but no record were interrupted: status "incomplete"."""
    by_run: dict[str, list[dict]] = {}
    for r in evaluations:
        by_run.setdefault(r["run_id"], []).append(r)
    records = {r["run_id"]: r for r in runs}
    out = []
    for run_id in sorted(set(by_run) | set(records)):
        rows = by_run.get(run_id, [])
        rec = records.get(run_id, {})
        if rec.get("status") == "skipped" or (not rows and rec.get("status") != "error"):
            continue
        src = rows[0] if rows else rec
        first, last = steps_to_target(rows, TARGET)
        status = rec.get("status") or "incomplete"
        if first is not None:
            status = "reached"
        out.append(RunOutcome(run_id=run_id, recipe=src["recipe"], grid=int(src["grid"]), dim=int(src["dim"]),
                              n_filled=int(src["n_filled"]), seed=int(src["seed"]), max_steps=int(src["max_steps"]),
                              status=status, steps=first, censored_at=None if first is not None else last))  # fmt: skip
    return out


def _fit_dict(fit: Fit | None) -> dict | None:
    return None if fit is None else fit.to_dict()


def _changes(cfg: StudyConfig) -> str:
    """What the study changes from fm_toy2d.config's recipes, in words."""
    from .config import DEFAULT_STEPS
    from .config import RECIPES as RECIPE_SETTINGS

    parts = []
    for r in cfg.recipes:
        own_steps = RECIPE_SETTINGS[r].get("steps", DEFAULT_STEPS["checkerboard"])
        part = f"{r}: step cap {cfg.max_steps[r]} (recipe budget {own_steps} on the 8x8 board)"
        if cfg.batch_size[r] != RECIPE_SETTINGS[r]["batch_size"]:
            part += f", batch {cfg.batch_size[r]} (recipe {RECIPE_SETTINGS[r]['batch_size']})"
        parts.append(part)
    text = "; ".join(parts)
    text += ("; lr constant after the warm-up for every recipe" if cfg.schedule == "constant"
             else "; each run's lr schedule spans its cap")  # fmt: skip
    if cfg.futility_rate > 0:
        text += (f"; a run past half its cap stops ('hopeless', censored where it stopped) when a gain of "
                 f"{cfg.futility_rate:g} in-support per 1,000 steps would not reach the target by the cap")  # fmt: skip
    return text + (f"; nets overridden: {cfg.net}" if cfg.net else "")


def _recipe_lines(recipe: str, cfg: StudyConfig, res: list[RunOutcome], members: dict) -> tuple[list[str], dict]:
    """summary.txt's block of one recipe (steps per board and seed, the fits) and its fits as dicts."""
    lines = [f"== recipe {recipe}", f"{'grid':>4} {'dim':>3} {'cells':>5}  steps to target per seed{'':14}median"]
    for g, d in cfg.settings():
        rs = sorted((o for o in res if o.recipe == recipe and (o.grid, o.dim) == (g, d)), key=lambda o: o.seed)
        if not rs:
            continue
        cells_txt = "  ".join(f"{o.steps:>6}" if o.reached else f"{'>' + str(o.censored_at):>6}" for o in rs)
        reached = sum(o.reached for o in rs)
        lines.append(f"{g:>4} {d:>3} {n_filled(g, d):>5}  {cells_txt:<38}{median_steps(rs)[1]}  "
                     f"({reached}/{len(rs)} reached)")  # fmt: skip
    fits: dict[str, Any] = {}
    for sweep, label in (("modes", "modes sweep (2D, grids " + ",".join(map(str, cfg.grids)) + ")"),
                         ("dims", "dimension sweep (grid 2)")):  # fmt: skip
        pts = [o for o in res if o.recipe == recipe and o.reached and (o.grid, o.dim) in members[sweep]]
        cens = [o for o in res if o.recipe == recipe and not o.reached and (o.grid, o.dim) in members[sweep]]
        fit = fit_power_law([o.n_filled for o in pts], [o.steps for o in pts]) if pts else None
        fits[sweep] = _fit_dict(fit)
        settings = len({o.n_filled for o in pts})
        if fit is None:
            lines.append(f"{label}: no fit ({len(pts)} reached runs on {settings} settings; {len(cens)} censored)")
        else:
            a = fit.coef[0]
            extra = f"; i.e. x{2**a:.2f} per added dimension" if sweep == "dims" else ""
            lines.append(f"{label}: steps ~ cells^{a:.2f}, 95% {format_interval(fit, 0)}{extra}; "
                         f"{fit.n} reached runs on {settings} settings, {len(cens)} censored left out")  # fmt: skip
    pts = [o for o in res if o.recipe == recipe and o.reached and (o.grid, o.dim) in members["both"]]
    fit = (
        fit_two_factors([o.n_filled for o in pts], [o.dim for o in pts], [o.steps for o in pts])
        if len(pts) >= 3
        else None
    )
    fits["both"] = _fit_dict(fit)
    if fit is None:
        lines.append(f"joint sweep: no fit ({len(pts)} reached runs; needs >= 2 cell counts and >= 2 dimensions "
                     "not tied to each other)")  # fmt: skip
    else:
        lines.append(f"joint sweep: steps ~ cells^{fit.coef[0]:.2f} {format_interval(fit, 0)} x exp({fit.coef[1]:.2f} "
                     f"{format_interval(fit, 1)} x dim); {fit.n} reached runs")  # fmt: skip
    return lines + [""], fits


def analyse(out: str | Path) -> list[Path]:
    """Read OUT/evaluations.csv and OUT/runs.csv; write summary.txt, summary.json and the three figures."""
    from . import study_plots

    out = Path(out)
    cfg_path = out / "study.json"
    cfg = StudyConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else StudyConfig()
    evaluations, runs = read_csv_rows(out / "evaluations.csv"), read_csv_rows(out / "runs.csv")
    res = outcomes(evaluations, runs)
    members = sweep_members(cfg)
    recipes = [r for r in cfg.recipes if any(o.recipe == r for o in res)]
    skipped = sum(r["status"] == "skipped" for r in runs)

    lines = [
        "fm-toy2d scaling study: training steps until the quality target is met",
        f"target: >= {IN_SUPPORT_TARGET:.0%} of samples in filled cells and every filled cell >= {CELL_TARGET} of its "
        f"expected share; EMA weights, evaluated every {cfg.eval_every} steps with max({cfg.per_cell} x filled cells, "
        f"{cfg.min_eval}) samples (screen: {cfg.screen_n} samples first)",
        "solver/NFE: default recipe midpoint NFE 8, post recipe Euler NFE 100 (each recipe's own sampler)",
        "changes from the recipes: " + _changes(cfg),
        f"seeds: {cfg.seeds}; runs: {len(res)} evaluated, {skipped} skipped (time budget)"
        + (" -- QUICK MODE: numbers are not meaningful" if cfg.quick else ""),
        "fits use reached runs only (one point per run, log-log least squares, 95% t intervals); censored runs "
        "('>N': not reached by step N) are left out, so where the hardest settings are censored the growth is "
        "underestimated.",
        "",
    ]
    summary: dict[str, Any] = {"config": cfg.to_dict(), "target": {"in_support": IN_SUPPORT_TARGET,
                                                                   "min_cell_ratio": CELL_TARGET},
                               "runs": [dataclasses.asdict(o) for o in res], "fits": {}}  # fmt: skip
    for recipe in recipes:
        block, fits = _recipe_lines(recipe, cfg, res, members)
        lines += block
        summary["fits"][recipe] = fits
    text = "\n".join(lines).rstrip() + "\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    figs = study_plots.plot_all(res, cfg, members, summary["fits"], out)
    return [out / "evaluations.csv", out / "runs.csv", out / "summary.txt", out / "summary.json", *figs]
