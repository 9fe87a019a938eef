"""The commands of the image apps: ``train`` (the part after the app's own flags), ``sample`` and
``eval`` (their flags and what they do with a run).

An app hands in how to read its run (``read(run_dir) -> (config, config.json)``, ValueError naming it),
how to load it (``load(args, cfg) -> (draw, device)``, where ``draw(n, **options)`` samples uint8
images [n, 28, 28] as :func:`fm_cli.images.sample_images` does) and how to train it. Everything
the user can get wrong is a usage error (exit 2) before data or weights are loaded; runtime
failures are one line ``PROG COMMAND: error: ...`` (exit 1).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fm_eval import image_scores
from fm_train import SCHEDULES

from .. import flags
from ..app import error, one_line
from ..argtypes import (
    batch_int,
    count_int,
    finite_float,
    nonempty_path,
    nonneg_int,
    positive_float,
    positive_int,
    unit_float,
    value_type,
)
from ..progress import progress_enabled
from ..samples import describe_labels, sample_summary, write_samples
from ..train import RunChoice, choose_run_dir, nothing_left, resume_budget, resume_conflicts, run_training
from .config import COUPLINGS, SOLVERS, TIMES, ImageRunConfig, field_path
from .sampling import check_label_guidance, eval_line, record_eval
from .training import column_labels

__all__ = [
    "GRID_EVERY",
    "add_eval_parser",
    "add_sample_parser",
    "add_train_parser",
    "eval_command",
    "sample_command",
    "train_command",
]

#: The images of a sample command that go into its --grid and --gif.
GRID_IMAGES = 100
#: Steps between the sample grids drawn during training (--sample-every).
GRID_EVERY = 500

Read = Callable[[Any], tuple[Any, dict[str, Any]]]
Load = Callable[[argparse.Namespace, Any], tuple[Callable[..., Any], Any]]


def add_train_parser(
    sub: Any,
    help: str,
    description: str,
    *,
    config: type[ImageRunConfig],
    defaults: Mapping[str, Any],
    recipe: str,
    default_steps: int,
    out_default: str,
) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """The ``train`` sub-command with the flags both image apps mean the same way: --classes
    (``config.parse_classes``), --conditional, --steps/--minutes, --batch-size, --lr, --seed, --bf16,
    --compile, --out, --resume, --device, and in the returned "advanced" group --time, --coupling,
    --label-dropout, --schedule, --warmup-steps, --ema-decay, --solver/--nfe/--guidance (the run's
    default sampler), --sample-every, --threads, --quiet. Left out, a flag takes the ``recipe``'s
    value (``defaults``, shown in the help). The app adds its data and network flags."""

    def d(key: str, what: str = "") -> str:
        return f"{what}(default: the {recipe} recipe's, {defaults[key]})".lstrip()

    t = sub.add_parser("train", help=help, description=description)
    t.add_argument("--classes", type=value_type(config.parse_classes, "classes"), default=None,
                   help="train on these class ids only, e.g. 3 or 3,5 (default: all)")  # fmt: skip
    t.add_argument("--conditional", action="store_true", default=None,
                   help="class-conditional model, guidance possible (default: unconditional)")  # fmt: skip
    flags.add_budget(t, str(default_steps))
    t.add_argument("--batch-size", type=batch_int, default=None, help=d("batch_size", "global batch "))
    t.add_argument("--lr", type=positive_float, default=None, help=d("lr", "peak learning rate, AdamW "))
    flags.add_seed(t, None, default_text="0")
    flags.add_bf16(t)
    flags.add_compile(t)
    flags.add_out(t, default_text=out_default)
    flags.add_resume(t)
    flags.add_device(t)
    adv = t.add_argument_group(f"advanced (default: the {recipe} recipe's)")
    adv.add_argument("--time", choices=TIMES, default=None, help=d("time", "training-time distribution "))
    adv.add_argument("--coupling", choices=COUPLINGS, default=None,
                     help=d("coupling", "noise-data coupling, ot: exact, per class "))  # fmt: skip
    adv.add_argument("--label-dropout", type=unit_float, default=None,
                     help=d("label_dropout", "null-label probability of a conditional run "))  # fmt: skip
    adv.add_argument("--schedule", choices=SCHEDULES, default=None, help=d("schedule", "lr after warmup "))
    adv.add_argument("--warmup-steps", type=nonneg_int, default=None, help=d("warmup_steps"))
    adv.add_argument("--ema-decay", type=unit_float, default=None, help=d("ema_decay"))
    adv.add_argument("--solver", choices=SOLVERS, default=None, help=d("solver", "the run's default sampler "))
    adv.add_argument("--nfe", type=count_int, default=None, help=d("nfe", "the run's default NFE "))
    adv.add_argument("--guidance", type=finite_float, default=None,
                     help=d("guidance", "the run's default guidance scale, 1 if unconditional "))  # fmt: skip
    adv.add_argument("--sample-every", type=positive_int, default=GRID_EVERY,
                     help=f"steps between sample grids (default: {GRID_EVERY})")  # fmt: skip
    flags.add_threads(adv)
    flags.add_quiet(adv)
    return t, adv


def _common(p: argparse.ArgumentParser, n_default: int | None, what: str) -> None:
    p.add_argument("--run", type=nonempty_path, required=True, help="the run directory (written by train)")
    if n_default is None:
        p.add_argument("--n", type=count_int, required=True, help=f"number of {what}")
    else:
        p.add_argument("--n", type=count_int, default=n_default, help=f"{what} scored (default: {n_default})")
    flags.add_sampler(p, SOLVERS)


def add_sample_parser(sub: Any, help: str, what: str = "the images") -> argparse.ArgumentParser:
    """The ``sample`` sub-command: --run, --n, --solver (dopri5 too) / --nfe / --guidance, --label,
    --seed, --out FILE.npz, --grid, --gif, --batch-size, --device, --threads, --quiet."""
    s = sub.add_parser("sample", help=help, description=help)
    _common(s, None, "images")
    s.add_argument(
        "--label", type=nonneg_int, default=None,
        help="class of every image (default: balanced over the trained classes)",
    )  # fmt: skip
    flags.add_seed(s, 0)
    s.add_argument("--out", type=nonempty_path, required=True, help="output file, FILE.npz")
    flags.add_pictures(s, what)
    s.add_argument("--batch-size", type=positive_int, default=500, help="images per solver batch (default: 500)")
    flags.add_device(s)
    flags.add_threads(s)
    flags.add_quiet(s)
    return s


def add_eval_parser(sub: Any, help: str) -> argparse.ArgumentParser:
    """The ``eval`` sub-command: --run, --n (1000), the sampler flags, --seed, --data-dir, --device,
    --threads, --quiet."""
    e = sub.add_parser("eval", help=help, description=help)
    _common(e, 1000, "samples")
    flags.add_seed(e, 0)
    flags.add_data_dir(e)
    flags.add_device(e)
    flags.add_threads(e)
    flags.add_quiet(e)
    return e


def _read_run(parser: argparse.ArgumentParser, args: argparse.Namespace, read: Read) -> tuple[Any, str, int | None]:
    """The run's config and the sampler (solver, nfe) to use; usage errors for anything that does not fit."""
    try:
        cfg, _ = read(args.run)
    except ValueError as e:
        parser.error(f"--run {str(args.run)!r}: {one_line(e)}")
    if not (args.run / "checkpoint").exists() and not (args.run / "checkpoint.old").exists():
        parser.error(f"--run {str(args.run)!r} has no checkpoint yet (training has not saved one)")
    solver, nfe = flags.resolve_sampler(parser, args.solver, args.nfe, run_solver=cfg.solver, run_nfe=cfg.nfe)
    try:
        check_label_guidance(cfg, getattr(args, "label", None), args.guidance, flags=True)
    except ValueError as e:
        parser.error(str(e))
    return cfg, solver, nfe


def sample_command(
    prog: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    read: Read,
    load: Load,
    errors: tuple[type[BaseException], ...] = (ValueError,),
) -> int:
    """``PROG sample``: the .npz (images uint8 [N, 28, 28], labels int64 [N] for a conditional run),
    optionally a PNG grid of the first 100 (class names above the columns when each column is a
    class) and a GIF of them moving from noise to images."""
    flags.check_output_paths(parser, out=args.out, grid=args.grid, gif=args.gif, create=False)
    cfg, solver, nfe = _read_run(parser, args, read)
    flags.check_output_paths(parser, out=args.out, grid=args.grid, gif=args.gif)  # folders, before the work
    flags.set_threads(args.threads)
    n_grid = min(args.n, GRID_IMAGES)
    try:
        draw, _ = load(args, cfg)
        res = draw(args.n, solver=solver, nfe=nfe, guidance=args.guidance, label=args.label, seed=args.seed,
                   batch_size=args.batch_size, trajectory=n_grid if args.gif else 0,
                   progress=progress_enabled(args.quiet))  # fmt: skip
    except errors as e:
        return error(prog, "sample", one_line(e))
    classes = cfg.sample_classes
    columns = len(classes) if cfg.conditional and args.label is None and len(classes) >= 5 else None
    grid_labels = None
    if args.grid is not None or args.gif is not None:
        ncol = columns or math.ceil(math.sqrt(n_grid))
        lab = None if res.labels is None else res.labels[:n_grid]
        grid_labels = column_labels(lab, ncol, cfg.names)
    written = write_samples(args.out, res.x, res.labels, grid=args.grid, gif=args.gif, gif_frames=res.trajectory,
                            ncol=columns, n_grid=n_grid, grid_labels=grid_labels)  # fmt: skip
    print(sample_summary(args.n, describe_labels(res.labels), res.method, res.nfe, res.guidance, res.seconds, written))
    return 0


def eval_command(
    prog: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    read: Read,
    load: Load,
    errors: tuple[type[BaseException], ...] = (ValueError,),
) -> int:
    """``PROG eval``: sample ``--n`` images (balanced labels) and score them with fm-eval (FID against
    the test split of the trained classes, label accuracy, coverage) into RUN/metrics.json "eval"."""
    flags.check_data_dir(parser, args.data_dir)
    cfg, solver, nfe = _read_run(parser, args, read)
    flags.set_threads(args.threads)

    caught: tuple[type[BaseException], ...] = (FileNotFoundError, *errors)
    try:
        draw, device = load(args, cfg)
        res = draw(args.n, solver=solver, nfe=nfe, guidance=args.guidance, seed=args.seed,
                   progress=progress_enabled(args.quiet))  # fmt: skip
        scores = image_scores(res.x, cfg.dataset, labels=res.labels, classes=cfg.classes, data_dir=args.data_dir,
                              device=device)  # fmt: skip
    except caught as e:
        return error(prog, "eval", one_line(e))
    path = record_eval(args.run, res, scores, n=args.n, seed=args.seed)
    print(eval_line(res, scores, path))
    return 0


def train_command(
    prog: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    prefix: str,
    read: Read,
    from_args: Callable[[], Any],
    train: Callable[[Any, RunChoice], Any],
    fields: Sequence[str],
    fixed: Sequence[str] = (),
    default_steps: int,
    settings: Mapping[str, Any] | None = None,
    errors: tuple[type[BaseException], ...] = (),
    command: str = "train",
    report: Callable[[Any, Path], str] | None = None,
) -> int:
    """The train command of an image app after its own checks, in order:

    - the run directory (``--out``, default ``runs/PREFIX-...``);
    - on ``--resume`` the stored config (``read(out) -> (config, config.json)``) with the flags given
      checked against it (``fields``: dests named as the config's flat fields; ``fixed``: dests that
      cannot change), else ``from_args()``;
    - the budget (``--steps``/``--minutes``, the stored one, or ``default_steps``); a resumed run with
      nothing left to do prints one line and exits 0 (metrics.json untouched);
    - the config's ``train`` with the budget, ``--device``, ``--quiet`` and ``settings`` (e.g. bf16);
    - ``train(config, run)`` through :func:`fm_cli.train.run_training`, which prints
      ``report(summary, run_dir)`` (default: fm_cli.train.trained_line).
    """
    run = choose_run_dir(parser, args.out, resume=args.resume, prefix=prefix, read_config=lambda out: read(out)[1])
    if run.stored is not None:
        cfg, _ = read(run.out)
        resume_conflicts(parser, args, cfg, {f: field_path(f) for f in fields}, fixed=fixed)
    else:
        cfg = from_args()
    steps, minutes = resume_budget(parser, run, args.steps, args.minutes, default_steps=default_steps)
    done = nothing_left(run, steps, minutes)
    if done:
        from fm_train.distributed import checks_files

        if checks_files():  # under torchrun: rank 0 only
            print(done)
        return 0
    try:
        tcfg = cfg.train.replace(
            steps=steps, minutes=minutes, device=args.device, progress=not args.quiet, **(settings or {})
        )
        cfg = cfg.replace(train=tcfg)
    except ValueError as e:
        parser.error(str(e))
    return run_training(
        prog,
        parser,
        lambda: train(cfg, run),
        out=run.out,
        out_given=args.out is not None,
        batch_size=cfg.train.batch_size,
        device=args.device,
        threads=args.threads,
        errors=errors,
        command=command,
        report=None if report is None else (lambda summary: report(summary, run.out)),
    )
