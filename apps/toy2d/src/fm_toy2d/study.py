"""The scaling study (``fm-toy2d study``): training steps to a quality target against the number
of modes, the dimension, and both, for the project's default recipe and the blog post's.

One *run* trains one recipe on one checkerboard (grid K, dimension D: ceil(K^D / 2) filled
cells) with one seed, with the app's own training code (:func:`fm_toy2d.training.train`, i.e.
fm-train's Trainer) and evaluates the EMA weights every ``eval_every`` steps through the
Trainer's periodic callback (``sample_fn``, run under no_grad without consuming training
randomness). A run stops at the first evaluation that meets the **target** (fraction of samples
in filled cells >= 0.95 and every filled cell >= 0.8 of its expected share 1 / n_filled,
``fm_eval.checkerboard_quality``), or at its step cap ("not reached": censored at the cap), or
when the study's time budget is spent ("stopped": censored at its last evaluation), or when it
is "hopeless" (censored at its last evaluation; :func:`hopeless`).

Evaluation: samples from N(0, I) noise (t = 0) integrated to data (t = 1) with each recipe's own
fixed solver and NFE (default: midpoint, NFE 8; post: Euler, NFE 100), with
``max(per_cell * n_filled, min_eval)`` samples (so each filled cell expects >= 200), from the
same noise seed at every evaluation of a run. To save time a cheap *screen* comes first:
``screen_n`` samples; when their in-support fraction is more than 3 binomial standard errors
below 0.95 the target is out of reach at this step and the full evaluation is skipped (the row
is written with ``stage=screen``). The screen can only err by skipping a model that meets the
in-support target, with probability < 0.2% per evaluation.

Differences from the recipes (so that the default study fits 60 minutes on a 2-core CPU; see
:data:`DEFAULT_MAX_STEPS`): the step budget is the study's cap (default recipe 8,000 steps
instead of its 3,800 on the 8x8 board; post 1,000 instead of 2,000); the learning rate is
constant after the recipe's warm-up (``schedule="constant"``; the default recipe's own cosine
decay would make the steps to target depend on the cap: a run that stops early at the target
would have stopped at a higher lr than a run planned for that many steps; at a constant lr the
4x4 board took 2,500 steps, as with the cosine decay over 3,000); and a run past half its cap
that is too far from the target to meet it by the cap stops early (:func:`hopeless`). Batch
sizes, nets, losses, EMA and samplers are the recipes' own (:mod:`fm_toy2d.config`). A batch of
512 for the default recipe was tried and rejected: on the 4x4 board it stayed at 93.9% in filled
cells after 3,000 steps.

Files in the output directory (rows are appended as they happen, so an interrupted study keeps
its data, and ``resume=True`` skips the runs that finished)::

    study.json        the study's settings
    evaluations.csv   one row per evaluation (EVAL_COLUMNS)
    runs.csv          one row per finished run (RUN_COLUMNS)
    runs/ID/          each run's config.json (and loss.csv for runs that went to their cap; the
                      checkpoints are deleted after the run)
    summary.txt/.json steps to target per setting and the fitted growth (:func:`analyse`)
    steps_vs_modes.png, steps_vs_dim.png, steps_vs_both.png   (fm_toy2d.study_plots)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "EVAL_COLUMNS",
    "RUN_COLUMNS",
    "Fit",
    "RunOutcome",
    "RunSpec",
    "StudyConfig",
    "analyse",
    "fit_power_law",
    "fit_two_factors",
    "median_steps",
    "outcomes",
    "quick_config",
    "run_study",
    "screen_threshold",
    "steps_to_target",
]

IN_SUPPORT_TARGET = 0.95
CELL_TARGET = 0.8
RECIPES = ("default", "post")
#: Step caps per recipe: the post's recipe reaches ~54% in filled cells on 8x8 after its own 2,000
#: steps, so its cap is set low and its runs are mostly censored ("not reached"). The default
#: recipe at a constant lr reached the 4x4 board at 2,500 steps and the 8x8 board at 4,750, and the
#: 3D board (grid 2, 4 cells) was at 94.9% at 6,000 (seed 0).
DEFAULT_MAX_STEPS = {"default": 8000, "post": 1000}
#: Batch sizes of the study: the recipes' own.
DEFAULT_BATCH = {"default": 1024, "post": 256}

EVAL_COLUMNS = (
    "run_id", "recipe", "grid", "dim", "n_filled", "seed", "batch_size", "max_steps", "step", "stage", "n_samples",
    "solver", "nfe", "in_support", "min_cell_ratio", "max_cell_ratio", "target_met", "seconds",
)  # fmt: skip
RUN_COLUMNS = (
    "run_id", "recipe", "grid", "dim", "n_filled", "seed", "batch_size", "max_steps", "status", "steps_to_target",
    "last_step", "seconds", "message",
)  # fmt: skip
#: Run statuses: reached the target; not reached within the cap; stopped by the time budget;
#: skipped (the budget was spent before it started); error (training failed; message says why).
STATUSES = ("reached", "not-reached", "hopeless", "stopped", "skipped", "error")
FINISHED = ("reached", "not-reached", "hopeless")
#: Study learning-rate schedules: "constant" (after the recipe's warm-up) for every recipe, or
#: "recipe" (each recipe's own; a cosine decay then spans the cap).
SCHEDULES = ("constant", "recipe")


def n_filled(grid: int, dim: int) -> int:
    """Filled cells of fm_data's Checkerboard(grid, dim): ceil(grid^dim / 2)."""
    return (grid**dim + 1) // 2


# ----------------------------------------------------------------------------- configuration
@dataclass
class StudyConfig:
    """What the study trains (JSON-safe; stored in ``OUT/study.json``).

    grids: the modes sweep (dimension 2). dims: the dimension sweep (grid 2: 2^(D-1) filled
    cells). both_grids x both_dims: the joint sweep. Settings shared by sweeps train once.
    seeds: seeds 0..seeds-1. max_steps / batch_size: per recipe. budget_minutes: wall-clock
    budget of the whole study (runs not started by then are skipped, running ones stop at their
    next evaluation). net: MLPVelocity overrides for every recipe (tests and --quick only).
    schedule: "constant" (every recipe's lr constant after its warm-up, so that steps to target
    does not depend on the cap) or "recipe". futility_rate: a run past half its cap stops as
    "hopeless" when even this gain in in-support per 1,000 steps would not bring it to the target
    by its cap (0 turns the rule off); see :func:`hopeless`.
    """

    recipes: tuple[str, ...] = RECIPES
    grids: tuple[int, ...] = (4, 6, 8, 12)
    dims: tuple[int, ...] = (2, 4, 8)
    both_grids: tuple[int, ...] = (2, 4)
    both_dims: tuple[int, ...] = (2, 3)
    seeds: int = 3
    max_steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_STEPS))
    batch_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH))
    eval_every: int = 250
    per_cell: int = 200
    min_eval: int = 4000
    screen_n: int = 500
    budget_minutes: float = 55.0
    workers: int = 2
    net: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    schedule: str = "constant"
    futility_rate: float = 0.05
    quick: bool = False

    def __post_init__(self) -> None:
        for name in ("recipes", "grids", "dims", "both_grids", "both_dims"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad field, its value and what is allowed."""

        def pos_int(v: Any, low: int = 1) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        bad_recipes = [r for r in self.recipes if r not in RECIPES]
        if not self.recipes or bad_recipes:
            raise ValueError(f"recipes={list(self.recipes)!r} is invalid: choose from {', '.join(RECIPES)}")
        for name, low in (("grids", 2), ("dims", 1), ("both_grids", 2), ("both_dims", 1)):
            vals = getattr(self, name)
            if not all(pos_int(v, low) for v in vals):
                raise ValueError(f"{name}={list(vals)!r} is invalid: integers >= {low}")
        if bool(self.both_grids) != bool(self.both_dims):
            raise ValueError("both_grids and both_dims must be both empty or both non-empty")
        if not (self.grids or self.dims or self.both_grids):
            raise ValueError("the study has no settings: give grids, dims or both_grids/both_dims")
        for name in ("seeds", "eval_every", "per_cell", "min_eval", "workers"):
            if not pos_int(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: a positive integer")
        if not pos_int(self.screen_n, 0):
            raise ValueError(f"screen_n={self.screen_n!r} is invalid: an integer >= 0 (0: no screen)")
        for name, low in (("max_steps", 1), ("batch_size", 2)):
            d = getattr(self, name)
            missing = [r for r in self.recipes if r not in d]
            if missing:
                raise ValueError(f"{name} has no value for recipe(s) {', '.join(missing)}")
            for r, v in d.items():
                if not pos_int(v, low):
                    raise ValueError(f"{name}[{r!r}]={v!r} is invalid: an integer >= {low}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is invalid: choose from {', '.join(SCHEDULES)}")
        if not (isinstance(self.futility_rate, (int, float)) and math.isfinite(self.futility_rate) and self.futility_rate >= 0):
            raise ValueError(f"futility_rate={self.futility_rate!r} is invalid: a number >= 0 (0: never stop a run early)")
        if not (isinstance(self.budget_minutes, (int, float)) and math.isfinite(self.budget_minutes) and self.budget_minutes > 0):
            raise ValueError(f"budget_minutes={self.budget_minutes!r} is invalid: a positive number")
        for s in self.settings():
            cells = n_filled(*s)
            if self.n_eval(cells) > 2_000_000:
                raise ValueError(f"grid {s[0]} in {s[1]}D has {cells:,} filled cells: {self.per_cell} samples a cell "
                                 f"is too many to evaluate (at most 2,000,000 samples; keep n_filled <= {2_000_000 // self.per_cell:,})")

    def settings(self) -> list[tuple[int, int]]:
        """Unique (grid, dim) settings of the three sweeps, by number of filled cells."""
        s = {(g, 2) for g in self.grids} | {(2, d) for d in self.dims}
        s |= {(g, d) for g in self.both_grids for d in self.both_dims}
        return sorted(s, key=lambda gd: (n_filled(*gd), gd[1], gd[0]))

    def n_eval(self, cells: int) -> int:
        """Samples of a full evaluation: each filled cell expects at least ``per_cell``."""
        return max(self.per_cell * cells, self.min_eval)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("recipes", "grids", "dims", "both_grids", "both_dims"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    #: fields that change the numbers of a run; they must match to resume
    RESUME_MUST_MATCH = ("max_steps", "batch_size", "eval_every", "per_cell", "min_eval", "screen_n", "net", "device",
                         "schedule", "futility_rate")


def quick_config(**overrides: Any) -> StudyConfig:
    """The reduced study of ``--quick`` (CI: well under a minute): three small boards (grid 4 in 2D,
    grid 2 in 2D and 3D), 3 seeds, caps of 100 / 40 steps, 32-wide nets, one process (spawning
    workers would pay torch's import again). It checks that the pipeline produces the files; its
    numbers mean little."""
    base = dict(
        grids=(4,), dims=(2, 3), both_grids=(), both_dims=(), seeds=3,
        max_steps={"default": 100, "post": 40}, batch_size={"default": 256, "post": 128},
        eval_every=25, per_cell=200, min_eval=1000, screen_n=300, budget_minutes=2.0,
        net={"hidden": 32, "depth": 2}, workers=1, futility_rate=0.0, quick=True,
    )  # fmt: skip
    base.update(overrides)
    return StudyConfig(**base)


@dataclass(frozen=True)
class RunSpec:
    recipe: str
    grid: int
    dim: int
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.recipe}-g{self.grid}-d{self.dim}-s{self.seed}"

    @property
    def n_filled(self) -> int:
        return n_filled(self.grid, self.dim)


def run_specs(cfg: StudyConfig) -> list[RunSpec]:
    """Every run, seed-major (all settings of seed 0 first), so that a budget that runs out costs
    the last seeds rather than whole settings; recipes alternate."""
    return [RunSpec(r, g, d, s) for s in range(cfg.seeds) for (g, d) in cfg.settings() for r in cfg.recipes]


def run_config(spec: RunSpec, cfg: StudyConfig):
    """The fm_toy2d RunConfig of one run: the recipe, with the study's cap, batch size and schedule."""
    from .config import make_config

    rc = make_config("checkerboard", spec.recipe, grid=spec.grid, dim=spec.dim, seed=spec.seed,
                     steps=cfg.max_steps[spec.recipe], batch_size=cfg.batch_size[spec.recipe],
                     device=cfg.device, net=dict(cfg.net) or None)
    if cfg.schedule == "constant":
        rc.schedule = "constant"
    return rc


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


# ----------------------------------------------------------------------------- one run
class _StopRun(Exception):
    def __init__(self, status: str):
        self.status = status


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def train_one(spec: RunSpec, cfg: StudyConfig, out: Path, deadline: float, emit: Callable[[dict], None]) -> dict[str, Any]:
    """Train one run, evaluating every ``eval_every`` steps; ``emit(row)`` gets each evaluation row.
    Returns the run's row of runs.csv."""
    from fm_eval.metrics2d import checkerboard_quality

    from .evaluation import SAMPLE_OFFSET
    from .sampling import sample_points, steps_for
    from .training import train

    rc = run_config(spec, cfg)
    run_dir = out / "runs" / spec.run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start again
    cells = spec.n_filled
    n_full = cfg.n_eval(cells)
    screen_n = cfg.screen_n if 0 < cfg.screen_n < n_full else 0
    threshold = screen_threshold(screen_n) if screen_n else None
    steps = steps_for(rc.solver, rc.nfe)
    seed = rc.seed + SAMPLE_OFFSET
    base = {"run_id": spec.run_id, "recipe": spec.recipe, "grid": spec.grid, "dim": spec.dim, "n_filled": cells,
            "seed": spec.seed, "batch_size": rc.batch_size, "max_steps": rc.steps}
    state: dict[str, Any] = {"last": 0, "reached": None}
    t0 = time.perf_counter()

    def quality(model, n: int) -> dict:
        x = sample_points(model, n, spec.dim, solver=rc.solver, steps=steps, seed=seed, device=next(model.parameters()).device).x
        return checkerboard_quality(x, spec.grid, spec.dim)

    def callback(model, step: int, _run_dir: Path) -> None:
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
              "seconds": time.perf_counter() - t0})
        if met:
            state["reached"] = step
            raise _StopRun("reached")
        if hopeless(q["in_support"], step, rc.steps, cfg.futility_rate):
            raise _StopRun("hopeless")
        if time.time() > deadline and step < rc.steps:
            raise _StopRun("stopped")

    status, message = "not-reached", ""
    try:
        train(rc, run_dir, progress=False, callback=callback, callback_every=cfg.eval_every)
    except _StopRun as stop:
        status = stop.status
    except Exception as e:  # a diverged or failed run must not end the study; it is recorded
        status, message = "error", f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        shutil.rmtree(run_dir / name, ignore_errors=True)  # keep config.json and loss.csv only
    return {**base, "status": status, "steps_to_target": state["reached"], "last_step": state["last"],
            "seconds": time.perf_counter() - t0, "message": message}


# ----------------------------------------------------------------------------- workers
_QUEUE = None


def _init_worker(queue) -> None:
    global _QUEUE
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    _QUEUE = queue


def _worker(spec: RunSpec, cfg_dict: dict, out: str, deadline: float) -> dict:
    cfg = StudyConfig.from_dict(cfg_dict)
    if time.time() > deadline:
        return _skipped(spec, cfg)
    return train_one(spec, cfg, Path(out), deadline, lambda row: _QUEUE.put(("eval", row)))


def _skipped(spec: RunSpec, cfg: StudyConfig) -> dict:
    return {"run_id": spec.run_id, "recipe": spec.recipe, "grid": spec.grid, "dim": spec.dim, "n_filled": spec.n_filled,
            "seed": spec.seed, "batch_size": cfg.batch_size[spec.recipe], "max_steps": cfg.max_steps[spec.recipe],
            "status": "skipped", "steps_to_target": None, "last_step": 0, "seconds": 0.0,
            "message": "the study's time budget was spent before it started"}


class _CsvLog:
    """Append rows to a CSV (header once), flushed at every row."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path, self.columns = path, tuple(columns)
        new = not path.exists() or path.stat().st_size == 0
        self.f = open(path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self.w.writeheader()
            self.f.flush()

    def write(self, row: dict) -> None:
        self.w.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rewrite(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, path)


@dataclass
class StudyResult:
    out: Path
    runs: list[dict]
    seconds: float
    files: list[Path]


def run_study(cfg: StudyConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> StudyResult:
    """Train every run of the study into ``out`` (see the module docstring), then :func:`analyse`.

    ``cfg.workers`` > 1 trains runs in that many spawned processes with one torch thread each;
    1 trains them one after the other in this process (also with one torch thread)."""
    import torch
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    deadline = t_start + cfg.budget_minutes * 60.0
    study_json = out / "study.json"
    done: dict[str, dict] = {}
    if resume and study_json.exists():
        old = StudyConfig.from_dict(json.loads(study_json.read_text()))
        diffs = [f"{k}={getattr(old, k)!r} before but {getattr(cfg, k)!r} now" for k in StudyConfig.RESUME_MUST_MATCH
                 if getattr(old, k) != getattr(cfg, k)]
        if diffs:
            raise ValueError(f"cannot resume the study in {out}: " + "; ".join(diffs))
        done = {r["run_id"]: r for r in read_csv(out / "runs.csv") if r["status"] in FINISHED}
        keep = [r for r in read_csv(out / "evaluations.csv") if r["run_id"] in done]
        _rewrite(out / "evaluations.csv", EVAL_COLUMNS, keep)  # drop rows of unfinished attempts
        _rewrite(out / "runs.csv", RUN_COLUMNS, done.values())
    elif (out / "evaluations.csv").exists() or (out / "runs.csv").exists():
        raise ValueError(f"{out} already holds a study; pass resume=True (--resume) to continue it, or choose another directory")
    study_json.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    todo = [s for s in run_specs(cfg) if s.run_id not in done]
    if done:
        log(f"fm-toy2d study: resuming: {len(done)} runs finished, {len(todo)} to do")
    evals, runs = _CsvLog(out / "evaluations.csv", EVAL_COLUMNS), _CsvLog(out / "runs.csv", RUN_COLUMNS)
    results: list[dict] = []
    bar = tqdm(total=len(todo), unit="run", desc="study", dynamic_ncols=True, disable=not progress)

    def finish(res: dict) -> None:
        runs.write(res)
        results.append(res)
        bar.update(1)
        counts = {k: sum(r["status"] == k for r in results) for k in STATUSES}
        bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)

    old_threads = torch.get_num_threads()
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            torch.set_num_threads(1)
            for spec in todo:
                finish(_skipped(spec, cfg) if time.time() > deadline else train_one(spec, cfg, out, deadline, evals.write))
        else:
            _run_parallel(cfg, out, todo, deadline, evals, finish)
    finally:
        torch.set_num_threads(old_threads)
        bar.close()
        evals.close()
        runs.close()
    seconds = time.time() - t_start
    files = analyse(out)
    return StudyResult(out=out, runs=results, seconds=seconds, files=files)


def _run_parallel(cfg: StudyConfig, out: Path, todo: list[RunSpec], deadline: float, evals: _CsvLog, finish) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by the spawned interpreters when torch loads

    def drain() -> None:
        while True:
            try:
                kind, row = q.get_nowait()
            except queue_mod.Empty:
                return
            if kind == "eval":
                evals.write(row)

    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as pool:
        pending = {pool.submit(_worker, spec, cfg.to_dict(), str(out), deadline) for spec in todo}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for fut in finished:
                    time.sleep(0.05)  # let the worker's last rows reach the queue before its run row
                    drain()
                    finish(fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            drain()


# ----------------------------------------------------------------------------- analysis
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


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    return float(v)


def steps_to_target(rows: Iterable[dict], in_support: float = IN_SUPPORT_TARGET, cell: float = CELL_TARGET) -> tuple[int | None, int]:
    """(first step whose full evaluation meets the target or None, last evaluated step) of one run's rows.

    A row meets the target when in_support >= ``in_support`` and min_cell_ratio >= ``cell``;
    screen rows (no cell ratio) never do."""
    first, last = None, 0
    for r in sorted(rows, key=lambda r: int(float(r["step"]))):
        step = int(float(r["step"]))
        last = max(last, step)
        ins, mc = _num(r.get("in_support")), _num(r.get("min_cell_ratio"))
        if first is None and ins is not None and mc is not None and ins >= in_support and mc >= cell:
            first = step
    return first, last


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
        first, last = steps_to_target(rows)
        status = rec.get("status") or "incomplete"
        if first is not None:
            status = "reached"
        out.append(RunOutcome(run_id=run_id, recipe=src["recipe"], grid=int(src["grid"]), dim=int(src["dim"]),
                              n_filled=int(src["n_filled"]), seed=int(src["seed"]), max_steps=int(src["max_steps"]),
                              status=status, steps=first, censored_at=None if first is not None else last))
    return out


@dataclass
class Fit:
    """log(steps) = intercept + sum(coef * features) (features: log(cells), or log(cells) and dim):
    ``coef`` with 95% intervals ``low``/``high`` (t distribution, n - k - 1 dof; None without dof)."""

    coef: list[float]
    low: list[float | None]
    high: list[float | None]
    intercept: float
    n: int


def _ols(X, y) -> Fit | None:
    import numpy as np
    from scipy import stats

    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    n, k = X.shape
    if n < k + 1:
        return None
    A = np.column_stack([np.ones(n), X])
    if np.linalg.matrix_rank(A) < k + 1:
        return None
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    dof = n - k - 1
    low: list[float | None] = [None] * k
    high: list[float | None] = [None] * k
    if dof > 0:
        resid = y - A @ beta
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.inv(A.T @ A)
        tq = float(stats.t.ppf(0.975, dof))
        for i in range(k):
            se = math.sqrt(max(cov[i + 1, i + 1], 0.0))
            low[i], high[i] = float(beta[i + 1] - tq * se), float(beta[i + 1] + tq * se)
    return Fit(coef=[float(b) for b in beta[1:]], low=low, high=high, intercept=float(beta[0]), n=n)


def fit_power_law(x: Sequence[float], steps: Sequence[float]) -> Fit | None:
    """Least squares of log(steps) on log(x): steps ~ C x^a; ``coef[0]`` = a. None without at
    least two distinct x values (or fewer than 2 points)."""
    import numpy as np

    lx = np.log(np.asarray(x, dtype=float))
    return _ols(lx[:, None], np.log(np.asarray(steps, dtype=float)))


def fit_two_factors(cells: Sequence[float], dims: Sequence[float], steps: Sequence[float]) -> Fit | None:
    """log(steps) = c + a log(cells) + b dim (the joint sweep); None when not identifiable."""
    import numpy as np

    X = np.column_stack([np.log(np.asarray(cells, dtype=float)), np.asarray(dims, dtype=float)])
    return _ols(X, np.log(np.asarray(steps, dtype=float)))


def sweep_members(cfg: StudyConfig) -> dict[str, set[tuple[int, int]]]:
    """(grid, dim) settings shown in each figure: modes = dimension 2 boards of the modes sweep;
    dims = every grid-2 board; both = the joint sweep's boards."""
    settings = set(cfg.settings())
    return {
        "modes": {(g, 2) for g in cfg.grids},
        "dims": {s for s in settings if s[0] == 2},
        "both": {(g, d) for g in cfg.both_grids for d in cfg.both_dims},
    }


def _interval(fit: Fit, i: int) -> str:
    if fit.low[i] is None:
        return "(no interval: as many points as parameters)"
    return f"[{fit.low[i]:.2f}, {fit.high[i]:.2f}]"


def _fit_dict(fit: Fit | None) -> dict | None:
    return None if fit is None else dataclasses.asdict(fit)


def _changes(cfg: StudyConfig) -> str:
    """What the study changes from fm_toy2d.config's recipes, in words."""
    from .config import DEFAULT_STEPS, RECIPES as RECIPE_SETTINGS

    parts = []
    for r in cfg.recipes:
        own_steps = RECIPE_SETTINGS[r].get("steps", DEFAULT_STEPS["checkerboard"])
        part = f"{r}: step cap {cfg.max_steps[r]} (recipe budget {own_steps} on the 8x8 board)"
        if cfg.batch_size[r] != RECIPE_SETTINGS[r]["batch_size"]:
            part += f", batch {cfg.batch_size[r]} (recipe {RECIPE_SETTINGS[r]['batch_size']})"
        parts.append(part)
    text = "; ".join(parts)
    text += ("; lr constant after the warm-up for every recipe" if cfg.schedule == "constant"
             else "; each run's lr schedule spans its cap")
    if cfg.futility_rate > 0:
        text += (f"; a run past half its cap stops ('hopeless', censored where it stopped) when a gain of "
                 f"{cfg.futility_rate:g} in-support per 1,000 steps would not reach the target by the cap")
    return text + (f"; nets overridden: {cfg.net}" if cfg.net else "")


def analyse(out: str | Path) -> list[Path]:
    """Read OUT/evaluations.csv and OUT/runs.csv; write summary.txt, summary.json and the three figures."""
    from . import study_plots

    out = Path(out)
    cfg_path = out / "study.json"
    cfg = StudyConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else StudyConfig()
    evaluations, runs = read_csv(out / "evaluations.csv"), read_csv(out / "runs.csv")
    res = outcomes(evaluations, runs)
    members = sweep_members(cfg)
    recipes = [r for r in cfg.recipes if any(o.recipe == r for o in res)]
    skipped = sum(r["status"] == "skipped" for r in runs)

    lines = [
        "fm-toy2d scaling study: training steps until the quality target is met",
        f"target: >= {IN_SUPPORT_TARGET:.0%} of samples in filled cells and every filled cell >= {CELL_TARGET} of its expected "
        f"share; EMA weights, evaluated every {cfg.eval_every} steps with max({cfg.per_cell} x filled cells, {cfg.min_eval}) "
        f"samples (screen: {cfg.screen_n} samples first)",
        "solver/NFE: default recipe midpoint NFE 8, post recipe Euler NFE 100 (each recipe's own sampler)",
        "changes from the recipes: " + _changes(cfg),
        f"seeds: {cfg.seeds}; runs: {len(res)} evaluated, {skipped} skipped (time budget)" + (" -- QUICK MODE: numbers are not meaningful" if cfg.quick else ""),
        "fits use reached runs only (one point per run, log-log least squares, 95% t intervals); censored runs "
        "('>N': not reached by step N) are left out, so where the hardest settings are censored the growth is underestimated.",
        "",
    ]
    summary: dict[str, Any] = {"config": cfg.to_dict(), "target": {"in_support": IN_SUPPORT_TARGET, "min_cell_ratio": CELL_TARGET},
                               "runs": [dataclasses.asdict(o) for o in res], "fits": {}}
    for recipe in recipes:
        lines.append(f"== recipe {recipe}")
        lines.append(f"{'grid':>4} {'dim':>3} {'cells':>5}  steps to target per seed{'':14}median")
        for g, d in cfg.settings():
            rs = sorted((o for o in res if o.recipe == recipe and (o.grid, o.dim) == (g, d)), key=lambda o: o.seed)
            if not rs:
                continue
            cells_txt = "  ".join(f"{o.steps:>6}" if o.reached else f"{'>' + str(o.censored_at):>6}" for o in rs)
            reached = sorted(o.steps for o in rs if o.reached)
            med = median_steps(rs)[1]
            lines.append(f"{g:>4} {d:>3} {n_filled(g, d):>5}  {cells_txt:<38}{med}  ({len(reached)}/{len(rs)} reached)")
        fits: dict[str, Any] = {}
        for sweep, label in (("modes", "modes sweep (2D, grids " + ",".join(map(str, cfg.grids)) + ")"),
                             ("dims", "dimension sweep (grid 2)")):
            pts = [o for o in res if o.recipe == recipe and o.reached and (o.grid, o.dim) in members[sweep]]
            cens = [o for o in res if o.recipe == recipe and not o.reached and (o.grid, o.dim) in members[sweep]]
            fit = fit_power_law([o.n_filled for o in pts], [o.steps for o in pts]) if pts else None
            fits[sweep] = _fit_dict(fit)
            if fit is None:
                lines.append(f"{label}: no fit ({len(pts)} reached runs on {len({o.n_filled for o in pts})} settings; "
                             f"{len(cens)} censored)")
            else:
                a = fit.coef[0]
                extra = f"; i.e. x{2 ** a:.2f} per added dimension" if sweep == "dims" else ""
                lines.append(f"{label}: steps ~ cells^{a:.2f}, 95% {_interval(fit, 0)}{extra}; "
                             f"{fit.n} reached runs on {len({o.n_filled for o in pts})} settings, {len(cens)} censored left out")
        pts = [o for o in res if o.recipe == recipe and o.reached and (o.grid, o.dim) in members["both"]]
        fit = fit_two_factors([o.n_filled for o in pts], [o.dim for o in pts], [o.steps for o in pts]) if len(pts) >= 3 else None
        fits["both"] = _fit_dict(fit)
        if fit is None:
            lines.append(f"joint sweep: no fit ({len(pts)} reached runs; needs >= 2 cell counts and >= 2 dimensions "
                         "not tied to each other)")
        else:
            lines.append(f"joint sweep: steps ~ cells^{fit.coef[0]:.2f} {_interval(fit, 0)} x exp({fit.coef[1]:.2f} {_interval(fit, 1)} x dim); "
                         f"{fit.n} reached runs")
        summary["fits"][recipe] = fits
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    figs = study_plots.plot_all(res, cfg, members, summary["fits"], out)
    return [out / "evaluations.csv", out / "runs.csv", out / "summary.txt", out / "summary.json", *figs]


def median_steps(rs: Sequence[RunOutcome]) -> tuple[float | None, str]:
    """Median steps to target over seeds, with censoring: a censored run counts as larger than
    every reached one when it was censored at or after the largest reached step (always true for
    the cap); otherwise its order is unknown and so may be the median. Returns (value or None,
    text): the value when the median is a reached step, text ``>N`` when it is a censored run
    (known to exceed N), ``?`` when undetermined."""
    if not rs:
        return None, "?"
    top = max((o.steps for o in rs if o.reached), default=0)
    if any(not o.reached and o.censored_at < top for o in rs):
        return None, "?"
    key = sorted(rs, key=lambda o: (not o.reached, o.steps if o.reached else o.censored_at))
    n = len(key)
    mid = key[(n - 1) // 2 : n // 2 + 1]
    if all(o.reached for o in mid):
        v = sum(o.steps for o in mid) / len(mid)
        return v, f"{v:g}"
    low = mid[0]
    return None, f">{low.steps if low.reached else low.censored_at}"


# ----------------------------------------------------------------------------- command line
def _int_list(low: int):
    def parse(text: str) -> tuple[int, ...]:
        import argparse

        if text.strip().lower() in ("", "none"):
            return ()
        try:
            vals = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= {low} (or 'none'), got {text!r}") from None
        if any(v < low for v in vals):
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= {low} (or 'none'), got {text!r}")
        return vals

    parse.__name__ = f"list of integers >= {low}"
    return parse


def _nonneg_float(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return v


def _recipes(text: str) -> tuple[str, ...]:
    import argparse

    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in RECIPES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {', '.join(RECIPES)}, got {text!r}")
    return vals


def _per_recipe(low: int):
    """'N' (every recipe) or 'RECIPE=N,RECIPE=N' -> {recipe or '*': N}."""

    def parse(text: str) -> dict[str, int]:
        import argparse

        msg = f"must be an integer >= {low} or RECIPE=N pairs (recipes: {', '.join(RECIPES)}), got {text!r}"
        out: dict[str, int] = {}
        try:
            for part in text.split(","):
                key, _, val = part.rpartition("=")
                key = key.strip() or "*"
                if key != "*" and key not in RECIPES:
                    raise ValueError
                out[key] = int(val)
        except ValueError:
            raise argparse.ArgumentTypeError(msg) from None
        if any(v < low for v in out.values()):
            raise argparse.ArgumentTypeError(msg)
        return out

    parse.__name__ = "per-recipe integer"
    return parse


def add_study_parser(sub, *, positive_int, positive_float, nonneg_int) -> None:
    """The ``study`` subcommand's options (called by fm_toy2d.cli.build_parser, which owns the argument types)."""
    d = StudyConfig()
    s = sub.add_parser(
        "study", help="the scaling study: training steps to the quality target against modes, dimension and both",
        description="Train each recipe on each checkerboard (seeds 0..N-1) until the quality target (>= 95%% of samples "
        "in filled cells, every filled cell >= 0.8 of its share) is met or the step cap / time budget ends; write "
        "evaluations.csv, runs.csv, three figures and summary.txt into --out. Defaults fit 60 minutes on a 2-core CPU.")
    s.add_argument("--out", type=Path, default=None, help="output directory (default runs/study-<time>)")
    s.add_argument("--recipes", type=_recipes, default=None, help=f"comma-separated (default {','.join(d.recipes)})")
    s.add_argument("--grids", type=_int_list(2), default=None,
                   help=f"modes sweep: 2D grids (default {','.join(map(str, d.grids))}: 8 to 72 filled cells)")
    s.add_argument("--dims", type=_int_list(1), default=None,
                   help=f"dimension sweep with grid 2 (default {','.join(map(str, d.dims))}: 2^(D-1) filled cells)")
    s.add_argument("--both-grids", type=_int_list(2), default=None, help=f"joint sweep grids (default {','.join(map(str, d.both_grids))}; 'none' to drop)")
    s.add_argument("--both-dims", type=_int_list(1), default=None, help=f"joint sweep dimensions (default {','.join(map(str, d.both_dims))})")
    s.add_argument("--seeds", type=positive_int, default=None, help=f"seeds 0..N-1 (default {d.seeds})")
    s.add_argument("--max-steps", type=_per_recipe(1), default=None,
                   help="step cap per run: N or RECIPE=N,... (default " + ",".join(f"{k}={v}" for k, v in d.max_steps.items()) + ")")
    s.add_argument("--batch-size", type=_per_recipe(2), default=None,
                   help="N or RECIPE=N,... (default " + ",".join(f"{k}={v}" for k, v in d.batch_size.items()) + ")")
    s.add_argument("--eval-every", type=positive_int, default=None, help=f"steps between evaluations (default {d.eval_every})")
    s.add_argument("--per-cell", type=positive_int, default=None, help=f"expected samples per filled cell (default {d.per_cell})")
    s.add_argument("--screen-n", type=nonneg_int, default=None, help=f"screening samples, 0 for none (default {d.screen_n})")
    s.add_argument("--budget-minutes", type=positive_float, default=None, help=f"wall-clock budget of the study (default {d.budget_minutes:g})")
    s.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"lr after the warm-up: constant for every recipe, or each recipe's own (default {d.schedule})")
    s.add_argument("--futility-rate", type=_nonneg_float, default=None,
                   help=f"stop a run past half its cap when this in-support gain per 1,000 steps would not reach the target "
                        f"by the cap; 0 never stops early (default {d.futility_rate:g})")
    s.add_argument("--workers", type=positive_int, default=None,
                   help=f"parallel processes, one torch thread each (default {d.workers})")
    s.add_argument("--quick", action="store_true", help="a reduced study for CI (< 1 minute; numbers not meaningful)")
    s.add_argument("--resume", action="store_true", help="continue a study in --out, skipping its finished runs")
    s.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None, help="default cpu")
    s.add_argument("--hidden", type=positive_int, default=None, help="override every recipe's MLP width (advanced; tests)")
    s.add_argument("--depth", type=positive_int, default=None, help="override every recipe's MLP depth (advanced; tests)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_study(parser, args) -> int:
    """Run ``fm-toy2d study``: usage errors (exit 2) for bad settings before any work starts."""
    base = quick_config() if args.quick else StudyConfig()
    recipes = args.recipes or base.recipes
    over: dict[str, Any] = {"recipes": recipes}
    for name in ("grids", "dims", "both_grids", "both_dims", "seeds", "eval_every", "per_cell", "budget_minutes", "workers", "device",
                 "schedule", "futility_rate"):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.screen_n is not None:
        over["screen_n"] = args.screen_n
    for name in ("max_steps", "batch_size"):
        given = getattr(args, name)
        merged = {r: getattr(base, name)[r] for r in recipes if r in getattr(base, name)}
        if given:
            for r in recipes:
                if r in given:
                    merged[r] = given[r]
                elif "*" in given:
                    merged[r] = given["*"]
        over[name] = merged
    if args.hidden is not None or args.depth is not None:
        net = dict(base.net)
        net.update({k: v for k, v in (("hidden", args.hidden), ("depth", args.depth)) if v is not None})
        over["net"] = net
    for sweep in ("both_grids", "both_dims"):  # dropping one half of the joint sweep drops both
        if over.get(sweep) == ():
            over["both_grids"], over["both_dims"] = (), ()
    try:
        cfg = StudyConfig(**{**base.to_dict(), **over})
    except ValueError as e:
        parser.error(str(e))
    out = args.out or Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a directory")
    if not args.resume and ((out / "evaluations.csv").exists() or (out / "runs.csv").exists()):
        parser.error(f"--out {str(out)!r} already holds a study; pass --resume to continue it, or choose another directory")
    if args.resume and (out / "study.json").exists():
        try:
            old = StudyConfig.from_dict(json.loads((out / "study.json").read_text()))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            parser.error(f"--resume: {out / 'study.json'} is not readable: {e}")
        diffs = [k for k in StudyConfig.RESUME_MUST_MATCH if getattr(old, k) != getattr(cfg, k)]
        if diffs:
            parser.error(f"--resume: the study in {str(out)!r} used different " + ", ".join(
                f"{k} ({getattr(old, k)!r}, now {getattr(cfg, k)!r})" for k in diffs))
    specs = run_specs(cfg)
    print(f"fm-toy2d study: {len(specs)} runs ({len(cfg.settings())} boards x {len(cfg.recipes)} recipes x {cfg.seeds} seeds), "
          f"{cfg.workers} worker(s), budget {cfg.budget_minutes:g} min, into {out}", flush=True)
    result = run_study(cfg, out, resume=args.resume, progress=not args.quiet)
    counts = {k: sum(r["status"] == k for r in result.runs) for k in STATUSES}
    print(f"fm-toy2d study: {len(result.runs)} runs in {result.seconds:.0f} s: "
          + ", ".join(f"{v} {k}" for k, v in counts.items() if v), flush=True)
    print((out / "summary.txt").read_text(), end="")
    print("fm-toy2d study: wrote\n  " + "\n  ".join(str(f) for f in result.files), flush=True)
    return 0
