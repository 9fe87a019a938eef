"""The scaling study (``fm-toy2d study``): training steps to a quality target against the number
of modes, the dimension, and both, for the project's default recipe and the blog post's.

One *run* trains one recipe on one checkerboard (grid K, dimension D: ceil(K^D / 2) filled
cells) with one seed, with the app's own training code (:func:`fm_toy2d.training.train`, i.e.
fm-train's Trainer) and evaluates the EMA weights every ``eval_every`` steps through the
Trainer's periodic callback (``sample_fn``, run under no_grad without consuming training
randomness). A run stops (``Trainer(stop_fn=...)``) at the first evaluation that meets the
**target** (fraction of samples in filled cells >= 0.95 and every filled cell >= 0.8 of its
expected share 1 / n_filled, ``fm_eval.checkerboard_quality``), or at its step cap ("not reached":
censored at the cap), or when the study's time budget is spent ("stopped": censored at its last
evaluation), or when it is "hopeless" (censored at its last evaluation;
:func:`fm_toy2d.study_run.hopeless`).

Evaluation: samples from N(0, I) noise (t = 0) integrated to data (t = 1) with each recipe's own
fixed solver and NFE (default: midpoint, NFE 8; post: Euler, NFE 100), with
``max(per_cell * n_filled, min_eval)`` samples (so each filled cell expects >= 200), from the
same noise seed at every evaluation of a run. To save time a cheap *screen* comes first:
``screen_n`` samples; when their in-support fraction is more than 3 binomial standard errors
below 0.95 the target is out of reach at this step and the full evaluation is skipped (the row
is written with ``stage=screen``). The screen can only err by skipping a model that meets the
in-support target, with probability < 0.2% per evaluation.

Differences from the recipes (see :data:`fm_toy2d.study_config.DEFAULT_MAX_STEPS`): the step
budget is the study's cap (default recipe 8,000 steps instead of its 3,800 on the 8x8 board; post
1,000 instead of 2,000); the learning rate is constant after the recipe's warm-up
(``schedule="constant"``; the default recipe's own cosine decay would make the steps to target
depend on the cap: a run that stops early at the target would have stopped at a higher lr than a
run planned for that many steps; at a constant lr the 4x4 board took 2,500 steps, as with the
cosine decay over 3,000); and a run past half its cap that is too far from the target to meet it
by the cap stops early (``hopeless``). Batch sizes, nets, losses, EMA and samplers are the
recipes' own (:mod:`fm_toy2d.config`). A batch of 512 for the default recipe was tried and
rejected: on the 4x4 board it stayed at 93.9% in filled cells after 3,000 steps.

Time: the default study (54 runs) needs about 84 minutes of two cores (``--workers 2``); its
55-minute budget finished 41 of them on the project's idle 2-core machine, and ``--resume``
finished the other 13 in 29 minutes (the app's README).

The pieces: :mod:`fm_toy2d.study_config` (settings, runs, CSV columns), :mod:`fm_toy2d.study_run`
(one run), fm-train's :mod:`fm_train.sweep` (the process pool with the deadline, the CSV logs
with resume), :mod:`fm_toy2d.study_analysis` (steps to target, medians and fits through
fm_eval.stats; summary files), :mod:`fm_toy2d.study_plots` (figures), :mod:`fm_toy2d.study_cli`.

Files in the output directory (rows are appended as they happen, so an interrupted study keeps
its data, and ``resume=True`` skips the runs that finished)::

    study.json        the study's settings
    evaluations.csv   one row per evaluation (EVAL_COLUMNS)
    runs.csv          one row per finished run (RUN_COLUMNS)
    runs/ID/          each run's config.json and loss.csv (the checkpoints are deleted after the run)
    summary.txt/.json steps to target per setting and the fitted growth (:func:`analyse`)
    steps_vs_modes.png, steps_vs_dim.png, steps_vs_both.png   (fm_toy2d.study_plots)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fm_train.sweep import CsvLog, TaskResult, run_pool

from .study_analysis import RunOutcome, analyse, outcomes
from .study_cli import add_study_parser, cmd_study
from .study_config import (
    EVAL_COLUMNS,
    FINISHED,
    RUN_COLUMNS,
    STATUSES,
    RunSpec,
    StudyConfig,
    n_filled,
    quick_config,
    run_specs,
)
from .study_run import hopeless, run_row, run_task, screen_threshold, train_one

__all__ = [
    "EVAL_COLUMNS",
    "RUN_COLUMNS",
    "RunOutcome",
    "RunSpec",
    "StudyConfig",
    "StudyResult",
    "add_study_parser",
    "analyse",
    "cmd_study",
    "hopeless",
    "n_filled",
    "outcomes",
    "quick_config",
    "resume_problem",
    "run_specs",
    "run_study",
    "screen_threshold",
    "train_one",
]

#: CSV values as the study has always written them: floats with 6 significant digits
FLOAT_FORMAT = ".6g"


@dataclass
class StudyResult:
    """What :func:`run_study` did: the runs.csv rows of the runs it ran now, its seconds, the files written."""

    out: Path
    runs: list[dict]
    seconds: float
    files: list[Path]


def resume_problem(cfg: StudyConfig, out: str | Path, resume: bool) -> str | None:
    """Why the study ``cfg`` cannot start in ``out`` (None when it can): without ``resume``, ``out``
    must not hold a study; with it, the study there must have the same RESUME_MUST_MATCH settings."""
    out = Path(out)
    if not resume:
        if (out / "evaluations.csv").exists() or (out / "runs.csv").exists():
            return (f"{out} already holds a study; pass --resume (resume=True) to continue it, "
                    "or choose another directory")  # fmt: skip
        return None
    if not (out / "study.json").exists():
        return None
    try:
        old = StudyConfig.from_dict(json.loads((out / "study.json").read_text()))
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        return f"cannot resume the study in {out}: {out / 'study.json'} is not readable: {e}"
    diffs = [f"{k}={getattr(old, k)!r} before but {getattr(cfg, k)!r} now" for k in StudyConfig.RESUME_MUST_MATCH
             if getattr(old, k) != getattr(cfg, k)]  # fmt: skip
    return f"cannot resume the study in {out}: " + "; ".join(diffs) if diffs else None


def run_study(cfg: StudyConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> StudyResult:  # fmt: skip
    """Train every run of the study into ``out`` (see the module docstring), then :func:`analyse`.

    ``cfg.workers`` > 1 trains runs in that many spawned processes with one torch thread each;
    1 trains them one after the other in this process (also with one torch thread). ``resume``
    keeps the runs that finished (reached, not reached, hopeless) with their evaluations and
    trains the others again (their earlier rows are dropped, so no row appears twice).
    """
    from fm_cli.progress import progress as progress_bar

    out = Path(out)
    problem = resume_problem(cfg, out, resume)
    if problem:
        raise ValueError(problem)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    deadline = t_start + cfg.budget_minutes * 60.0
    with (
        CsvLog(out / "evaluations.csv", EVAL_COLUMNS, float_format=FLOAT_FORMAT) as evals,
        CsvLog(out / "runs.csv", RUN_COLUMNS, float_format=FLOAT_FORMAT) as runs,
    ):
        done: dict[str, dict] = {}
        if resume:  # drop the rows of unfinished attempts: those runs train again
            done = {r["run_id"]: r for r in runs.keep(lambda r: r["status"] in FINISHED)}
            evals.keep(lambda r: r["run_id"] in done)
        (out / "study.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

        todo = [s for s in run_specs(cfg) if s.run_id not in done]
        if done:
            log(f"fm-toy2d study: resuming: {len(done)} runs finished, {len(todo)} to do")
        results: list[dict] = []
        bar = progress_bar(total=len(todo), unit="run", desc="study", quiet=not progress, delay=0.0)

        def finish(res: TaskResult) -> None:
            spec, _, _ = res.task
            if res.status == "done":
                row = res.value
            elif res.status == "skipped":
                row = run_row(spec, cfg, "skipped", message="the study's time budget was spent before it started")
            else:
                row = run_row(spec, cfg, "error", seconds=res.seconds, message=(res.error or "")[:300])
            runs.append(row)
            results.append(row)
            bar.update(1)
            counts = {k: sum(r["status"] == k for r in results) for k in STATUSES}
            bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)

        try:
            run_pool([(spec, cfg, str(out)) for spec in todo], run_task, workers=cfg.workers, deadline=deadline,
                     on_result=finish, on_event=lambda _i, row: evals.append(row), threads=1)  # fmt: skip
        finally:
            bar.close()
    seconds = time.time() - t_start
    files = analyse(out)
    return StudyResult(out=out, runs=results, seconds=seconds, files=files)
