"""One run of the scaling study: train a recipe on a checkerboard with fm_toy2d's training code and
evaluate it every ``eval_every`` steps until it meets the target, reaches its cap, is hopeless or
the study's deadline passes.

The evaluation is the Trainer's periodic ``sample_fn`` (EMA weights, under no_grad, without
consuming training randomness); the run is stopped from outside through ``Trainer(stop_fn=...)``,
which ends it cleanly at the step of the evaluation that decided it.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fm_train import CHECKPOINT_DIRNAME
from fm_train.sweep import TaskContext

from .study_config import CELL_TARGET, IN_SUPPORT_TARGET, RunSpec, StudyConfig

__all__ = ["hopeless", "run_config", "run_row", "run_task", "screen_threshold", "train_one"]


def run_config(spec: RunSpec, cfg: StudyConfig):
    """The fm_toy2d RunConfig of one run: the recipe, with the study's cap, batch size and schedule."""
    from .config import make_config

    return make_config("checkerboard", spec.recipe, grid=spec.grid, dim=spec.dim, seed=spec.seed,
                       steps=cfg.max_steps[spec.recipe], batch_size=cfg.batch_size[spec.recipe], device=cfg.device,
                       net=dict(cfg.net) or None, schedule="constant" if cfg.schedule == "constant" else None)  # fmt: skip


def hopeless(in_support: float, step: int, max_steps: int, rate: float, target: float = IN_SUPPORT_TARGET) -> bool:
    """True when a run past half its cap could not meet the in-support target by the cap even if
    it gained ``rate`` per 1,000 steps from now on (``rate`` 0: never). The default 0.05 is twice
    the fastest late gain measured (0.021 to 0.026 per 1,000 steps on 2, 8 and 32 cells, in the
    second half of runs that went on to reach the target or came close), so the rule stops runs
    that are far off (e.g. 45% in filled cells at half the cap) and leaves the ones creeping towards 95%."""
    if rate <= 0 or step < max_steps / 2 or step >= max_steps:
        return False
    return in_support + rate * (max_steps - step) / 1000.0 < target


def screen_threshold(n: int, target: float = IN_SUPPORT_TARGET) -> float:
    """In-support below this on n samples is > 3 binomial standard errors below ``target``."""
    return target - 3.0 * math.sqrt(target * (1.0 - target) / n)


def _spec_fields(spec: RunSpec, cfg: StudyConfig) -> dict[str, Any]:
    """The columns that evaluations.csv and runs.csv share: which run this is."""
    return {
        "run_id": spec.run_id,
        "recipe": spec.recipe,
        "grid": spec.grid,
        "dim": spec.dim,
        "n_filled": spec.n_filled,
        "seed": spec.seed,
        "batch_size": cfg.batch_size[spec.recipe],
        "max_steps": cfg.max_steps[spec.recipe],
    }


def run_row(spec: RunSpec, cfg: StudyConfig, status: str, *, steps_to_target: int | None = None, last_step: int = 0,
            seconds: float = 0.0, message: str = "") -> dict[str, Any]:  # fmt: skip
    """The run's row of runs.csv (RUN_COLUMNS)."""
    return {
        **_spec_fields(spec, cfg),
        "status": status,
        "steps_to_target": steps_to_target,
        "last_step": last_step,
        "seconds": seconds,
        "message": message,
    }


def train_one(spec: RunSpec, cfg: StudyConfig, out: Path, deadline: float | None,
              emit: Callable[[dict], None]) -> dict[str, Any]:  # fmt: skip
    """Train one run into ``out/runs/ID``, evaluating every ``eval_every`` steps; ``emit(row)`` gets
    each evaluation row (EVAL_COLUMNS). Returns the run's row of runs.csv (RUN_COLUMNS).

    Evaluation: samples from N(0, I) noise (t = 0) integrated to data (t = 1) with the recipe's own
    solver and NFE (fm_core.sample), ``cfg.n_eval(cells)`` of them, from the same noise seed at
    every evaluation; a screen of ``cfg.screen_n`` samples first skips the full evaluation when its
    in-support fraction is below :func:`screen_threshold` (row ``stage=screen``).
    """
    from fm_core import sample
    from fm_eval.metrics2d import checkerboard_quality

    from .evaluation import SAMPLE_OFFSET
    from .training import train

    rc = run_config(spec, cfg)
    run_dir = out / "runs" / spec.run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start again
    cells, cap = spec.n_filled, cfg.max_steps[spec.recipe]
    n_full = cfg.n_eval(cells)
    screen_n = cfg.screen_n if 0 < cfg.screen_n < n_full else 0
    threshold = screen_threshold(screen_n) if screen_n else None
    seed = spec.seed + SAMPLE_OFFSET
    base = _spec_fields(spec, cfg)
    state: dict[str, Any] = {"last": 0, "reached": None, "stop": None}
    t0 = time.perf_counter()

    def quality(model, n: int) -> dict:
        x = sample(model, n, (spec.dim,), seed=seed, method=rc.solver, nfe=rc.nfe,
                   device=next(model.parameters()).device).x  # fmt: skip
        return checkerboard_quality(x, spec.grid, spec.dim)

    def evaluate(model, step: int, _run_dir: Path) -> None:
        if step == state["last"]:
            return  # the Trainer's end-of-run call after an in-loop call at the same step
        state["last"] = step
        q, stage, n = None, "full", n_full
        if screen_n:
            q = quality(model, screen_n)
            if q["in_support"] < threshold:
                stage, n = "screen", screen_n
        if stage == "full":
            q = quality(model, n_full)
        met = stage == "full" and q["in_support"] >= IN_SUPPORT_TARGET and q["min_cell_ratio"] >= CELL_TARGET
        emit({**base, "step": step, "stage": stage, "n_samples": n, "solver": rc.solver, "nfe": rc.nfe,
              "in_support": q["in_support"], "min_cell_ratio": q["min_cell_ratio"] if stage == "full" else None,
              "max_cell_ratio": q["max_cell_ratio"] if stage == "full" else None, "target_met": int(met),
              "seconds": time.perf_counter() - t0})  # fmt: skip
        if met:
            state["reached"], state["stop"] = step, "reached"
        elif hopeless(q["in_support"], step, cap, cfg.futility_rate):
            state["stop"] = "hopeless"
        elif deadline is not None and time.time() > deadline and step < cap:
            state["stop"] = "stopped"

    status, message = "not-reached", ""
    try:
        train(rc, run_dir, progress=False, callback=evaluate, callback_every=cfg.eval_every,
              stop_fn=lambda info: state["stop"] is not None)  # fmt: skip
        status = state["stop"] or "not-reached"
    except Exception as e:  # a diverged or failed run must not end the study; it is recorded
        status, message = "error", f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
    for path in run_dir.glob(CHECKPOINT_DIRNAME + "*"):  # checkpoint, .old, .tmp-*: keep config.json and loss.csv
        shutil.rmtree(path, ignore_errors=True)
    return run_row(spec, cfg, status, steps_to_target=state["reached"], last_step=state["last"],
                   seconds=time.perf_counter() - t0, message=message)  # fmt: skip


def run_task(task: tuple[RunSpec, StudyConfig, str], ctx: TaskContext) -> dict[str, Any]:
    """fm_train.sweep.run_pool's ``fn``: one run; its evaluation rows go to ``ctx.emit``."""
    spec, cfg, out = task
    return train_one(spec, cfg, Path(out), ctx.deadline, ctx.emit)
