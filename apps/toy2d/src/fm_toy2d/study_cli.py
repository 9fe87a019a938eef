"""``fm-toy2d study``: the scaling study's command line (argument types from fm_cli.argtypes; every
bad setting is a usage error, exit status 2, before any work starts)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from fm_cli import flags
from fm_cli.argtypes import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_STEPS,
    count_int,
    int_at_least,
    int_list,
    nonneg_float,
    per_key_int,
    positive_float,
    steps_int,
    subset_of,
    threads_int,
    width_int,
)

from .config import MAX_DIM, MAX_GRID
from .study_config import RECIPES, SCHEDULES, STATUSES, StudyConfig, quick_config, run_specs

__all__ = ["add_study_parser", "cmd_study"]

DESCRIPTION = (
    "Train each recipe on each checkerboard (seeds 0..N-1) until the quality target (>= 95% of samples in filled "
    "cells, every filled cell >= 0.8 of its share) is met, or the step cap or the time budget ends it; write "
    "evaluations.csv, runs.csv, three figures, summary.txt and summary.json into --out. The default study (54 runs) "
    "needs about 84 minutes of two cores: its 55-minute budget finishes about 41 runs, and --resume the rest."
)


def _ints(values: Any) -> str:
    return ",".join(map(str, values)) or "none"


def _per_recipe(values: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def _options(d: StudyConfig) -> list[tuple[str, Any, str, str]]:
    """(flag, type, help, default shown) of the study's settings; each flag defaults to None (not given)."""
    return [
        ("--recipes", subset_of(RECIPES), "comma-separated recipes", ",".join(d.recipes)),
        ("--grids", int_list(2, high=MAX_GRID), "modes sweep: 2D grids, or 'none'", f"{_ints(d.grids)}: 8 to 72 filled cells"),
        ("--dims", int_list(1, high=MAX_DIM), "dimension sweep with grid 2, or 'none'", f"{_ints(d.dims)}: 2^(D-1) filled cells"),
        ("--both-grids", int_list(2, high=MAX_GRID), "joint sweep grids; 'none' drops the joint sweep", _ints(d.both_grids)),
        ("--both-dims", int_list(1, high=MAX_DIM), "joint sweep dimensions; 'none' drops the joint sweep", _ints(d.both_dims)),
        ("--seeds", int_at_least(1, "a positive integer", 10**4), "seeds 0..N-1", str(d.seeds)),
        ("--max-steps", per_key_int(1, RECIPES, high=MAX_STEPS), "step cap of a run: N or RECIPE=N,...", _per_recipe(d.max_steps)),
        ("--batch-size", per_key_int(2, RECIPES, high=MAX_BATCH), "N or RECIPE=N,...", _per_recipe(d.batch_size)),
        ("--eval-every", steps_int, "steps between evaluations", str(d.eval_every)),
        ("--per-cell", count_int, "expected samples per filled cell in an evaluation", str(d.per_cell)),
        ("--screen-n", int_at_least(0, "an integer >= 0", MAX_COUNT), "screening samples before a full evaluation, 0 for none", str(d.screen_n)),
        ("--budget-minutes", positive_float, "wall-clock budget of the study: runs not started by then are skipped, "
         "running ones stop at their next evaluation", f"{d.budget_minutes:g}"),
        ("--futility-rate", nonneg_float, "stop a run past half its cap when this in-support gain per 1,000 steps "
         "would not reach the target by the cap; 0 never stops early", f"{d.futility_rate:g}"),
        ("--workers", threads_int, "parallel processes, one torch thread each", f"{d.workers}; --quick: 1"),
        ("--hidden", width_int, "override every recipe's MLP width (advanced; tests)", "the recipe's"),
        ("--depth", int_at_least(1, "a positive integer", 256), "override every recipe's MLP depth (advanced; tests)", "the recipe's"),
    ]  # fmt: skip


def add_study_parser(sub: Any, **ignored: Any) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to ``sub`` (the subparsers of fm_toy2d.cli); returns its parser.
    Keyword arguments are accepted and ignored (the argument types come from fm_cli.argtypes)."""
    d, q = StudyConfig(), quick_config()
    help_ = "the scaling study: training steps to the quality target against modes, dimension and both"
    s = sub.add_parser("study", description=DESCRIPTION, help=help_)
    flags.add_out(s, default_text="runs/study-<time>", help="output directory")
    for flag, type_, text, default in _options(d):
        s.add_argument(flag, type=type_, default=None, help=f"{text} (default: {default})")
    s.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help=f"lr after the warm-up: constant for every recipe, or each recipe's own (default: {d.schedule})",
    )
    boards = f"grid {_ints(q.grids)} in 2D and grid 2 in {' and '.join(f'{dim}D' for dim in q.dims)}"
    s.add_argument(
        "--quick",
        action="store_true",
        help=f"a reduced study for CI, under a minute, numbers not meaningful: boards {boards}, {q.seeds} "
        f"seeds, caps {_per_recipe(q.max_steps)}, batches {_per_recipe(q.batch_size)}, nets {q.net}, "
        f"{q.workers} worker, budget {q.budget_minutes:g} minutes (flags given override these)",
    )
    flags.add_resume(s, help="continue the study in --out, skipping its finished runs")
    flags.add_device(s, default=d.device)
    flags.add_quiet(s)
    return s


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> StudyConfig:
    """The StudyConfig of the command line: --quick's or the defaults, with the flags given."""
    base = quick_config() if args.quick else StudyConfig()
    recipes = args.recipes or base.recipes
    over: dict[str, Any] = {"recipes": recipes}
    for name in ("grids", "dims", "both_grids", "both_dims", "seeds", "eval_every", "per_cell", "screen_n",
                 "budget_minutes", "workers", "device", "schedule", "futility_rate"):  # fmt: skip
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    for name in ("max_steps", "batch_size"):
        given = getattr(args, name) or {}
        defaults = getattr(base, name)
        over[name] = {r: given.get(r, given.get("*", defaults.get(r))) for r in recipes}
    if args.hidden is not None or args.depth is not None:
        over["net"] = {
            **base.net,
            **{k: v for k, v in (("hidden", args.hidden), ("depth", args.depth)) if v is not None},
        }
    if over.get("both_grids") == () or over.get("both_dims") == ():  # dropping one half of the joint sweep drops both
        over["both_grids"], over["both_dims"] = (), ()
    try:
        return StudyConfig(**{**base.to_dict(), **over})
    except ValueError as e:
        parser.error(str(e))


def cmd_study(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``fm-toy2d study``: usage errors (exit 2) for bad settings before any work starts."""
    from .study import resume_problem, run_study

    cfg = _config(parser, args)
    out = args.out or Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a directory")
    problem = resume_problem(cfg, out, args.resume)
    if problem:
        parser.error(problem)
    specs = run_specs(cfg)
    print(f"fm-toy2d study: {len(specs)} runs ({len(cfg.settings())} boards x {len(cfg.recipes)} recipes x "
          f"{cfg.seeds} seeds), {cfg.workers} worker(s), budget {cfg.budget_minutes:g} min, into {out}", flush=True)  # fmt: skip
    result = run_study(cfg, out, resume=args.resume, progress=not args.quiet)
    counts = {k: sum(r["status"] == k for r in result.runs) for k in STATUSES}
    print(f"fm-toy2d study: {len(result.runs)} runs in {result.seconds:.0f} s: "
          + ", ".join(f"{v} {k}" for k, v in counts.items() if v), flush=True)  # fmt: skip
    print((out / "summary.txt").read_text(), end="")
    print("fm-toy2d study: wrote\n  " + "\n  ".join(str(f) for f in result.files), flush=True)
    return 0
