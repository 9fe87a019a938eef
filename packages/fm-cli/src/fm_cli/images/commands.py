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
import functools
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
    float_list,
    label_int,
    nfe_int,
    nonempty_path,
    positive_float,
    sample_batch_int,
    steps_int,
    unit_float,
    value_type,
    warmup_int,
)
from ..method import FLOW_MAP, resolve_run_sampler, run_is_two_time
from ..pictures import save_grid
from ..progress import progress_enabled
from ..samples import describe_labels, sample_summary, write_samples
from ..train import RunChoice, choose_run_dir, nothing_left, resume_budget, resume_conflicts, run_training
from .config import COUPLINGS, SOLVERS, TIMES, ImageRunConfig, field_path
from .sampling import check_label_guidance, eval_line, record_eval, sampler_caption
from .sweep import guidance_sweep, record_sweep, sweep_table
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
    (``config.parse_classes``), --conditional, --steps/--minutes, --batch-size, --lr, --seed, --precision (and the old --bf16),
    --compile, --out, --resume, --device, --log, and in the returned "advanced" group --time, --coupling,
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
    flags.add_precision(t)
    flags.add_compile(t)
    flags.add_out(t, default_text=out_default)
    flags.add_resume(t)
    flags.add_device(t)
    flags.add_log(t)
    adv = t.add_argument_group(f"advanced (default: the {recipe} recipe's)")
    adv.add_argument("--time", choices=TIMES, default=None, help=d("time", "training-time distribution "))
    adv.add_argument("--coupling", choices=COUPLINGS, default=None,
                     help=d("coupling", "noise-data coupling, ot: exact, per class "))  # fmt: skip
    adv.add_argument("--label-dropout", type=unit_float, default=None,
                     help=d("label_dropout", "null-label probability of a conditional run "))  # fmt: skip
    adv.add_argument("--schedule", choices=SCHEDULES, default=None, help=d("schedule", "lr after warmup "))
    adv.add_argument("--warmup-steps", type=warmup_int, default=None, help=d("warmup_steps"))
    adv.add_argument("--ema-decay", type=unit_float, default=None, help=d("ema_decay"))
    adv.add_argument("--solver", choices=SOLVERS, default=None, help=d("solver", "the run's default sampler "))
    adv.add_argument("--nfe", type=nfe_int, default=None, help=d("nfe", "the run's default NFE "))
    adv.add_argument("--guidance", type=finite_float, default=None,
                     help=d("guidance", "the run's default guidance scale, 1 if unconditional "))  # fmt: skip
    adv.add_argument("--sample-every", type=steps_int, default=GRID_EVERY,
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
    flags.add_sampler(p, (*SOLVERS, FLOW_MAP))  # flow-map: two-time (meanflow) runs


def add_sample_parser(sub: Any, help: str, what: str = "the images") -> argparse.ArgumentParser:
    """The ``sample`` sub-command: --run, --n, --solver (dopri5 too) / --nfe / --guidance, --label,
    --seed, --out FILE.npz, --grid, --gif, --batch-size, --device, --threads, --quiet."""
    s = sub.add_parser("sample", help=help, description=help)
    _common(s, None, "images")
    s.add_argument(
        "--label", type=label_int, default=None,
        help="class of every image (default: balanced over the trained classes)",
    )  # fmt: skip
    flags.add_seed(s, 0)
    s.add_argument("--out", type=nonempty_path, required=True, help="output file, FILE.npz")
    flags.add_pictures(s, what)
    s.add_argument("--batch-size", type=sample_batch_int, default=500, help="images per solver batch (default: 500)")
    flags.add_device(s)
    flags.add_threads(s)
    flags.add_quiet(s)
    return s


def add_eval_parser(sub: Any, help: str) -> argparse.ArgumentParser:
    """The ``eval`` sub-command: --run, --n (1000), the sampler flags, --guidance-sweep, --seed,
    --data-dir, --device, --threads, --quiet."""
    e = sub.add_parser("eval", help=help, description=help)
    _common(e, 1000, "samples")
    e.add_argument("--guidance-sweep", type=float_list, default=None, metavar="G1,G2,...",
                   help="score --n samples at each guidance scale, e.g. 1,1.25,1.5,2,3, into RUN/guidance.png and "
                        "metrics.json (a conditional run with label dropout; default: no sweep)")  # fmt: skip
    flags.add_seed(e, 0)
    flags.add_data_dir(e)
    flags.add_device(e)
    flags.add_threads(e)
    flags.add_quiet(e)
    return e


def _read_run(parser: argparse.ArgumentParser, args: argparse.Namespace, read: Read) -> tuple[Any, str, int | None]:
    """The run's config and the sampler (solver, nfe) to use; usage errors for anything that does not fit."""
    try:
        cfg, config = read(args.run)
    except ValueError as e:
        parser.error(f"--run {str(args.run)!r}: {one_line(e)}")
    if not (args.run / "checkpoint").exists() and not (args.run / "checkpoint.old").exists():
        parser.error(f"--run {str(args.run)!r} has no checkpoint yet (training has not saved one)")
    solver, nfe = resolve_run_sampler(parser, args.solver, args.nfe, two_time=run_is_two_time(config),
                                      run_solver=cfg.solver, run_nfe=cfg.nfe)  # fmt: skip
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
        draw, _ = _load(load, args, cfg)
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
    try:  # an encoder's error half-way through a file: one line (the temporary file is already removed)
        written = write_samples(args.out, res.x, res.labels, gif=args.gif, gif_frames=res.trajectory,
                                ncol=columns, n_grid=n_grid, grid_labels=grid_labels)  # fmt: skip
        if args.grid is not None:  # the grid with its caption (the sampler), after the .npz as before
            caption = sampler_caption(res)
            written.insert(1, save_grid(res.x[:n_grid], args.grid, columns, labels=grid_labels, caption=caption))
    except errors as e:
        return error(prog, "sample", one_line(e))
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
    the test split of the trained classes, precision / recall / density / coverage against a random
    test subset of ``--n`` images, label accuracy, class coverage) into RUN/metrics.json "eval".
    With ``--guidance-sweep`` the same at each guidance (:mod:`fm_cli.images.sweep`)."""
    flags.check_data_dir(parser, args.data_dir)
    sweep = getattr(args, "guidance_sweep", None)
    if sweep is not None and args.guidance is not None:
        parser.error(f"--guidance {args.guidance:g} and --guidance-sweep: give one of them")
    cfg, solver, nfe = _read_run(parser, args, read)
    if sweep is not None:
        _check_sweep(parser, cfg, sweep)
    flags.set_threads(args.threads)

    caught: tuple[type[BaseException], ...] = (FileNotFoundError, *errors)
    if sweep is not None:
        return _sweep_command(prog, args, cfg, sweep, solver, nfe, load=load, errors=caught)
    try:
        draw, device = _load(load, args, cfg)
        res = draw(args.n, solver=solver, nfe=nfe, guidance=args.guidance, seed=args.seed,
                   progress=progress_enabled(args.quiet))  # fmt: skip
        scores = image_scores(res.x, cfg.dataset, labels=res.labels, classes=cfg.classes, data_dir=args.data_dir,
                              device=device, manifold=True)  # fmt: skip
        measure = getattr(draw, "straightness", None)  # the app's sample_straightness on the model, if any
        if measure is not None:  # fm_eval.straightness along the sampler's own trajectories
            scores["straightness"] = measure(solver=solver, nfe=nfe, guidance=args.guidance, seed=args.seed)
    except caught as e:
        return error(prog, "eval", one_line(e))
    path = record_eval(args.run, res, scores, n=args.n, seed=args.seed)
    print(eval_line(res, scores, path))
    return 0


def _load(load: Load, args: argparse.Namespace, cfg: Any) -> tuple[Callable[..., Any], Any]:
    """``load(args, cfg)``, its draw sampling in the run's precision on that device
    (fm_train.precision.sampling_precision: fp32 unless the run trained in bf16 on this kind of device)."""
    from fm_train.precision import sampling_precision

    draw, device = load(args, cfg)
    wrapped = functools.partial(draw, precision=sampling_precision(args.run, device))
    wrapped.straightness = getattr(draw, "straightness", None)  # type: ignore[attr-defined]
    return wrapped, device


def _check_sweep(parser: argparse.ArgumentParser, cfg: Any, guidances: Sequence[float]) -> None:
    """Usage errors for ``--guidance-sweep``: fm_cli.flags.guidance_problem for each value (guidance
    other than 1 needs a conditional run trained with label dropout), no value twice."""
    text = ",".join(f"{g:g}" for g in guidances)
    for g in guidances:
        problem = flags.guidance_problem(g, conditional=cfg.conditional, label_dropout=cfg.label_dropout, flags=False)
        if problem:
            parser.error(f"--guidance-sweep {text}: {problem}")
    if len(set(guidances)) != len(guidances):
        parser.error(f"--guidance-sweep {text}: a guidance appears twice")


def _sweep_command(
    prog: str,
    args: argparse.Namespace,
    cfg: Any,
    guidances: Sequence[float],
    solver: str,
    nfe: int | None,
    *,
    load: Load,
    errors: tuple[type[BaseException], ...],
) -> int:
    """``PROG eval --guidance-sweep``: the sweep, RUN/metrics.json "guidance_sweep", RUN/guidance.png, a table."""

    def report(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"guidance {row['guidance']:g}: FID {row['fid']:.3f}, precision {row['precision']:.3f}, "
                  f"recall {row['recall']:.3f} ({row['seconds']:.1f} s)", flush=True)  # fmt: skip

    try:
        draw, device = _load(load, args, cfg)
        sweep = guidance_sweep(draw, cfg, guidances, n=args.n, solver=solver, nfe=nfe, seed=args.seed,
                               data_dir=args.data_dir, device=device, progress=progress_enabled(args.quiet),
                               report=report)  # fmt: skip
    except errors as e:
        return error(prog, "eval", one_line(e))
    metrics, chart = record_sweep(args.run, sweep, dataset=cfg.dataset)
    print(sweep_table(sweep.rows, sweep.best_guidance))
    print(
        f"best FID at guidance {sweep.best_guidance:g} (* above); {sweep.n} samples per guidance ({sweep.solver}, "
        f"NFE {sweep.nfe}, seed {sweep.seed}); FID vs {sweep.fid_reference}; precision/recall vs "
        f"{sweep.manifold_reference}; {len(sweep.rows)} guidances in {sweep.seconds:.1f} s -> {metrics}"
        + (f", {chart}" if chart else " (no guidance.png: matplotlib is not installed)")
    )
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
    - the config's ``train`` with the budget, ``--device``, ``--quiet``, ``--precision`` (or the old
      ``--bf16``; when given) and ``settings`` (e.g. compile);
    - ``train(config, run)`` through :func:`fm_cli.train.run_training`, which prints
      ``report(summary, run_dir)`` (default: fm_cli.train.trained_line); fm-train's precision
      decision and compile time are printed as ``PROG: precision ...`` lines while it trains.
    """
    precision = flags.precision_given(parser, args, prog)
    flags.check_log(parser, getattr(args, "log", None))
    run = choose_run_dir(
        parser,
        args.out,
        resume=args.resume,
        prefix=prefix,
        read_config=lambda out: read(out)[1],
        require_checkpoint=True,
    )
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
        given = {"precision": precision} if precision is not None else {}
        tcfg = cfg.train.replace(
            steps=steps, minutes=minutes, device=args.device, progress=not args.quiet, **given, **(settings or {})
        )
        cfg = cfg.replace(train=tcfg)
    except ValueError as e:
        parser.error(str(e))

    def noted_train() -> Any:
        with flags.precision_notes(prog):
            return train(cfg, run)

    return run_training(
        prog,
        parser,
        noted_train,
        out=run.out,
        out_given=args.out is not None,
        batch_size=cfg.train.batch_size,
        device=args.device,
        threads=args.threads,
        errors=errors,
        command=command,
        report=None if report is None else (lambda summary: report(summary, run.out)),
    )
