"""Flags that mean the same thing in every fm-* command line, and the checks that go with them.

Each ``add_*`` adds its flag(s) to a parser (or argument group) with one name, one type and a
help text that ends with the default, and returns what it added. The checks turn a bad
combination into argparse's one-line usage error (exit status 2) before any work starts.

    import argparse
    from fm_cli import flags

    p = argparse.ArgumentParser(prog="fm-demo")
    flags.add_budget(p, default_steps="3000")
    flags.add_sampler(p, ("euler", "midpoint", "heun", "rk4"))
    flags.add_seed(p, 0)
    args = p.parse_args(["--minutes", "2", "--solver", "dopri5"])
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .argtypes import (
    device_spec,
    finite_float,
    nfe_int,
    nonempty_path,
    positive_float,
    seed_int,
    steps_int,
    threads_int,
)

__all__ = [
    "ADAPTIVE_SOLVERS",
    "add_bf16",
    "add_budget",
    "add_compile",
    "add_data_dir",
    "add_device",
    "add_log",
    "add_method",
    "add_out",
    "add_pictures",
    "add_precision",
    "add_quiet",
    "add_resume",
    "add_sampler",
    "add_seed",
    "add_threads",
    "check_data_dir",
    "check_log",
    "check_output_paths",
    "flag_given",
    "guidance_problem",
    "make_loggers",
    "precision_given",
    "precision_notes",
    "refuse_inapplicable",
    "resolve_sampler",
    "set_threads",
]

#: The adaptive solver a command line offers wherever sampling allows one (its NFE is its own).
ADAPTIVE_SOLVERS = ("dopri5",)

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def _with_default(text: str, default: Any, default_text: str | None = None) -> str:
    """``text (default: X)`` with ``%`` escaped for argparse's help formatting."""
    shown = str(default_text if default_text is not None else default).replace("%", "%%")
    return f"{text} (default: {shown})"


def add_device(p: Parser, default: str = "auto") -> argparse.Action:
    """``--device``: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps; checked when parsed."""
    return p.add_argument(
        "--device",
        type=device_spec,
        default=default,
        help=_with_default("auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps", default),
    )


def add_threads(p: Parser) -> argparse.Action:
    """``--threads``: torch CPU threads (1..1024); None keeps torch's choice. Apply with :func:`set_threads`."""
    return p.add_argument(
        "--threads", type=threads_int, default=None, help=_with_default("torch CPU threads", None, "torch's choice")
    )


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` unless ``threads`` is None."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def add_seed(
    p: Parser, default: int | None = 0, *, default_text: str | None = None, help: str = "random seed"
) -> argparse.Action:
    """``--seed`` (0..2**32-1). With ``default=None`` say what stands in for it in ``default_text``
    (e.g. "the recipe's")."""
    return p.add_argument("--seed", type=seed_int, default=default, help=_with_default(help, default, default_text))


def add_out(
    p: Parser, *, required: bool = False, default_text: str | None = None, help: str = "run directory"
) -> argparse.Action:
    """``--out`` (a non-empty path): a run directory or an output file, as ``help`` says."""
    text = help if required else _with_default(help, None, default_text or "a new directory under runs/")
    return p.add_argument("--out", type=nonempty_path, required=required, default=None, help=text)


def add_resume(p: Parser, help: str = "continue the run in --out from its checkpoint") -> argparse.Action:
    """``--resume``: continue the run in ``--out`` (it must hold one; see fm_cli.train.choose_run_dir)."""
    return p.add_argument("--resume", action="store_true", help=help)


def add_quiet(p: Parser) -> argparse.Action:
    """``--quiet``: no progress bar."""
    return p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_bf16(p: Parser) -> argparse.Action:
    """``--bf16``: the deprecated spelling of ``--precision bf16``, hidden from the help (read it with
    :func:`precision_given`)."""
    return p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)


def add_precision(p: Parser) -> list[argparse.Action]:
    """``--precision auto|fp32|bf16`` (default None: fp32 for a new run, the run's own on ``--resume``)
    and the hidden old ``--bf16``; resolve both with :func:`precision_given`."""
    return [
        p.add_argument(
            "--precision",
            choices=("auto", "fp32", "bf16"),
            default=None,
            help="training precision: bf16 autocast of the forward pass (weights, optimizer and loss stay "
            "float32), fp32, or auto: time both on this machine at the start and keep bf16 only when it is "
            "at least 10%% faster; sampling follows (default: fp32, or the run's on --resume)",
        ),
        add_bf16(p),
    ]


def precision_given(parser: argparse.ArgumentParser, args: argparse.Namespace, prog: str) -> str | None:
    """The precision asked for: ``--precision``, or ``"bf16"`` for the old ``--bf16`` (with a note on
    standard error that it is deprecated); None when neither was given. ``--bf16`` with another
    ``--precision`` is a usage error."""
    precision = getattr(args, "precision", None)
    if getattr(args, "bf16", False):
        if precision not in (None, "bf16"):
            parser.error(f"--bf16 is the old spelling of --precision bf16 and contradicts --precision {precision}")
        print(f"{prog}: note: --bf16 is deprecated; use --precision bf16", file=sys.stderr)
        return "bf16"
    return precision


@contextlib.contextmanager
def precision_notes(prog: str) -> Iterator[None]:
    """While inside: fm-train's precision decision (``precision auto -> fp32 on cpu: ...``) and the
    compile time of a compiled run, printed to standard output as ``PROG: ...`` lines."""
    logger = logging.getLogger("fm_train.precision")

    class _Print(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(f"{prog}: {record.getMessage()}", flush=True)

    handler, level = _Print(logging.INFO), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def add_compile(p: Parser) -> argparse.Action:
    """``--compile``: torch.compile the network (CPU or CUDA)."""
    return p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (CPU or CUDA); its compile time, the first step's, is reported "
        "apart in metrics.json and counts in --minutes",
    )


def add_budget(p: Parser, default_steps: str) -> argparse._MutuallyExclusiveGroup:
    """``--steps`` (a positive integer up to 10**9) or ``--minutes`` (a positive number), not both; both default to
    None and ``default_steps`` says what the command uses then (e.g. "3000" or "the recipe's")."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--steps", type=steps_int, default=None, help=f"optimizer steps (default: {default_steps} unless --minutes)"
    )
    group.add_argument(
        "--minutes", type=positive_float, default=None, help="a training-time budget in minutes instead of steps"
    )
    return group


def add_sampler(
    p: Parser, solvers: Sequence[str], adaptive: bool = True, *, guidance: bool = True, default_text: str = "the run's"
) -> list[argparse.Action]:
    """``--solver`` (``solvers``, plus dopri5 when ``adaptive``), ``--nfe`` (velocity evaluations per
    sample) and, with ``guidance``, ``--guidance`` (classifier-free guidance scale); all default to
    None, which ``default_text`` describes. Resolve them with :func:`resolve_sampler`."""
    choices = tuple(solvers) + (tuple(s for s in ADAPTIVE_SOLVERS if s not in solvers) if adaptive else ())
    added = [
        p.add_argument("--solver", choices=choices, default=None, help=_with_default("ODE solver", None, default_text)),
        p.add_argument(
            "--nfe",
            type=nfe_int,
            default=None,
            help=_with_default("velocity evaluations per sample (fixed-step solvers)", None, default_text),
        ),
    ]
    if guidance:
        added.append(
            p.add_argument(
                "--guidance",
                type=finite_float,
                default=None,
                help=_with_default("classifier-free guidance scale", None, default_text),
            )
        )
    return added


def resolve_sampler(
    parser: argparse.ArgumentParser, solver: str | None, nfe: int | None, *, run_solver: str, run_nfe: int
) -> tuple[str, int | None]:
    """(solver, nfe) from ``--solver``/``--nfe`` and the run's defaults, or a usage error.

    An adaptive solver takes no ``--nfe`` (returns nfe None). A fixed-step solver needs an NFE
    that is a multiple of its evaluations per step; without ``--nfe`` the run's NFE is rounded
    down to one (at least one step).
    """
    from fm_core.solvers import ADAPTIVE_METHODS, evals_per_step, fit_nfe

    solver = solver or run_solver
    if solver in ADAPTIVE_METHODS:
        if nfe is not None:
            parser.error(f"--nfe {nfe} cannot be used with --solver {solver} (an adaptive solver picks its own steps)")
        return solver, None
    per = evals_per_step(solver)
    if nfe is None:
        return solver, fit_nfe(solver, run_nfe)
    if nfe % per:
        parser.error(f"--nfe {nfe} is not a multiple of {per}, the evaluations per step of {solver}")
    return solver, nfe


def add_pictures(p: Parser, what: str = "the images") -> list[argparse.Action]:
    """``--grid FILE.png`` and ``--gif FILE.gif`` (check them with :func:`check_output_paths`)."""
    return [
        p.add_argument(
            "--grid",
            type=nonempty_path,
            default=None,
            help=f"also write a PNG grid of (up to 100 of) {what} (default: none)",
        ),
        p.add_argument(
            "--gif",
            type=nonempty_path,
            default=None,
            help=f"also write a GIF of the grid moving from noise to {what} (default: none)",
        ),
    ]


def add_data_dir(p: Parser, holds: str = "mnist/ and fashion-mnist/") -> argparse.Action:
    """``--data-dir``: the folder holding the data sets (checked by :func:`check_data_dir`)."""
    return p.add_argument(
        "--data-dir",
        type=nonempty_path,
        default=None,
        help=f"folder with {holds} (default: $FM_DATA_DIR, then the system's, then a download)",
    )


def check_data_dir(
    parser: argparse.ArgumentParser, data_dir: Path | None, holds: str = "mnist/ and fashion-mnist/"
) -> None:
    """Usage error when ``--data-dir`` is given but is not a directory."""
    if data_dir is not None and not Path(data_dir).is_dir():
        parser.error(f"--data-dir {str(data_dir)!r} is not a directory (it should hold {holds})")


def check_output_paths(
    parser: argparse.ArgumentParser,
    *,
    out: Path | None = None,
    grid: Path | None = None,
    gif: Path | None = None,
    create: bool = True,
) -> None:
    """Usage errors for output files: ``--out`` must end in .npz, ``--grid`` in .png, ``--gif`` in
    .gif (any case); with ``create`` their folders are made now, so that a bad location fails
    before the work, not after it."""
    given = [
        (flag, Path(path), suffix)
        for flag, path, suffix in (("--out", out, ".npz"), ("--grid", grid, ".png"), ("--gif", gif, ".gif"))
        if path is not None
    ]
    for flag, path, suffix in given:
        if path.suffix.lower() != suffix:
            parser.error(f"{flag} {str(path)!r} must end in {suffix}")
    if create:
        for flag, path, _ in given:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                parser.error(f"{flag} {str(path)!r}: cannot create its folder ({e.strerror or e})")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def flag_given(parser: argparse.ArgumentParser, args: argparse.Namespace, flag: str) -> bool:
    """Whether ``flag`` (``--flag`` or its dest) has a value other than its default (a flag whose
    default is None counts as given whenever it has a value)."""
    dest = _dest(flag)
    value = getattr(args, dest, None)
    default = parser.get_default(dest)
    return value is not None and value != default


def refuse_inapplicable(parser: argparse.ArgumentParser, args: argparse.Namespace, flags: Mapping[str, str]) -> None:
    """Usage error for flags given where they do not apply: ``flags`` maps a flag to the choice it
    does not apply to, e.g. ``{"--time": "--model nf", "--coupling": "--model nf"}`` gives
    ``--time, --coupling do not apply to --model nf`` when both were given (see :func:`flag_given`)."""
    by_reason: dict[str, list[str]] = {}
    for flag, reason in flags.items():
        if flag_given(parser, args, flag):
            by_reason.setdefault(reason, []).append("--" + _dest(flag).replace("_", "-"))
    if by_reason:
        parser.error(
            "; ".join(
                f"{', '.join(names)} {'does' if len(names) == 1 else 'do'} not apply to {reason}"
                for reason, names in by_reason.items()
            )
        )


def guidance_problem(
    guidance: float | None, *, conditional: bool, label_dropout: float, flags: bool = True
) -> str | None:
    """Why a run cannot sample with classifier-free ``guidance`` (None or 1: nothing to check), or
    None: guidance other than 1 needs a conditional run trained with label dropout (the null label).
    ``flags`` names the value as the command line does (``--guidance 2``), else as an argument."""
    if guidance is None or guidance == 1.0:
        return None
    name, one = (f"--guidance {guidance:g}", "--guidance 1") if flags else (f"guidance={guidance:g}", "guidance=1")
    if not conditional:
        return f"{name}: the run is unconditional; guidance needs a conditional run"
    if label_dropout == 0.0:
        return f"{name}: the run was trained without label dropout, so it has no null label; use {one}"
    return None


def add_method(p: Parser, *, pairs_default: int, train_guidance: bool = False) -> list[argparse.Action]:
    """``--method fm|meanflow|reflow`` (default fm; a resumed run keeps its own) and the flags of each method:
    meanflow ``--equal-fraction``, ``--init-from RUN``, ``--distill`` (and ``--train-guidance W`` when ``train_guidance``:
    apps with classifier-free guidance); reflow ``--teacher RUN``, ``--pairs`` (default ``pairs_default``),
    ``--teacher-solver``, ``--teacher-nfe``, ``--from-scratch``. Resolve and check them with
    :func:`fm_cli.method.method_for_command`."""
    from .argtypes import count_int as pairs_int
    from .argtypes import float_in
    from .argtypes import nfe_int as teacher_nfe_int
    from .method import DEFAULT_TEACHER_NFE, DEFAULT_TEACHER_SOLVER, MAX_TRAIN_GUIDANCE, METHODS, TEACHER_SOLVERS

    share = float_in(0.0, 1.0, "a number in [0, 1]", high_open=False)

    g = p.add_argument_group("method (fm: flow matching; meanflow, reflow: one- and few-step sampling)")
    extra = []
    if train_guidance:
        scale = float_in(1.0, MAX_TRAIN_GUIDANCE, f"a guidance scale in [1, {MAX_TRAIN_GUIDANCE:g}]", high_open=False)
        extra.append(g.add_argument(
            "--train-guidance", type=scale, default=None, metavar="W",
            help="meanflow, conditional: classifier-free guidance W built into the training target (Geng et al. "
            "2025), so one flow-map step samples guided; the run then samples at guidance 1 (default: none)"))  # fmt: skip
    return extra + [
        g.add_argument("--method", choices=METHODS, default=None,
                       help="fm: flow matching; meanflow: a two-time network (MeanFlow) that samples in 1-2 steps "
                       "with --solver flow-map; reflow: flow matching on the noise-sample pairs of --teacher "
                       "(default: fm, or the run's on --resume)"),
        g.add_argument("--equal-fraction", type=share, default=None,
                       help="meanflow: share of training rows with r = t (plain flow matching) (default: 0.75)"),
        g.add_argument("--init-from", type=nonempty_path, default=None, metavar="RUN",
                       help="meanflow: start from the EMA weights of this flow-matching run (the same network "
                       "flags) (default: random weights)"),
        g.add_argument("--distill", action="store_true",
                       help="meanflow with --init-from: the target uses that run's velocity (and its guidance "
                       "with --train-guidance) in place of the noisy conditional one (default: the conditional)"),
        g.add_argument("--teacher", type=nonempty_path, default=None, metavar="RUN",
                       help="reflow: the trained fm or reflow run whose EMA network makes the pairs (required "
                       "with --method reflow)"),
        g.add_argument("--pairs", type=pairs_int, default=None,
                       help="reflow: (noise, sample) pairs the teacher makes, kept in RUN/reflow/ and reused on "
                       f"--resume; made before training, not counted in --minutes (default: {pairs_default:,})"),
        g.add_argument("--teacher-solver", choices=TEACHER_SOLVERS, default=None,
                       help=_with_default("reflow: the teacher's ODE solver", DEFAULT_TEACHER_SOLVER)),
        g.add_argument("--teacher-nfe", type=teacher_nfe_int, default=None,
                       help=_with_default("reflow: the teacher's evaluations per pair", DEFAULT_TEACHER_NFE)),
        g.add_argument("--from-scratch", action="store_true",
                       help="reflow: start from random weights, not the teacher's (default: the teacher's)"),
    ]  # fmt: skip


#: Where a train command logs its rows (``--log``): loss.csv always; tensorboard adds RUN/tensorboard.
#: The choices of --source, --kappa and --discrete-loss (== fm_discrete.SOURCES, KAPPA_SCHEDULERS and LOSSES;
#: fm-cli does not import fm-discrete, a test keeps them equal).
DISCRETE_SOURCES = ("mask", "uniform")
DISCRETE_KAPPAS = ("linear", "polynomial", "cosine")
DISCRETE_LOSSES = ("cross-entropy", "generalized-kl")
#: The train flags that only discrete runs take besides the app's own size flag (--lattice, --levels).
DISCRETE_FLAGS = ("--source", "--kappa", "--discrete-loss")


def add_discrete(p: Parser) -> Any:
    """The discrete flow-matching options of ``train --model discrete`` (fm_discrete): --source (mask or
    uniform), --kappa (the mixture path's scheduler) and --discrete-loss; returns the argument group, to
    which the app adds its size flag. Defaults (None here): the app's."""
    g = p.add_argument_group("discrete flow matching (--model discrete)")
    g.add_argument(
        "--source",
        choices=DISCRETE_SOURCES,
        default=None,
        help="the mixture path's source at t = 0: every token masked, or uniform tokens (default: mask)",
    )
    g.add_argument(
        "--kappa",
        choices=DISCRETE_KAPPAS,
        default=None,
        help="the path's scheduler kappa_t, the share of data tokens at t (default: linear)",
    )
    g.add_argument("--discrete-loss", choices=DISCRETE_LOSSES, default=None,
                   help="cross-entropy on the data token, or the generalized KL of the velocities "
                        "(default: cross-entropy)")  # fmt: skip
    return g


LOG_CHOICES = ("csv", "tensorboard")


def add_log(p: Parser) -> argparse.Action:
    """``--log csv|tensorboard`` (default csv); check it with :func:`check_log`, build the Trainer's
    loggers with :func:`make_loggers`."""
    return p.add_argument(
        "--log",
        choices=LOG_CHOICES,
        default="csv",
        help="where the training rows go: csv (RUN/loss.csv) or tensorboard (RUN/tensorboard too, view with "
        "tensorboard --logdir RUN; needs the tensorboard package) (default: csv)",
    )


def check_log(parser: argparse.ArgumentParser, log: str | None) -> None:
    """Usage error (one line) for ``--log tensorboard`` where the tensorboard package is not installed."""
    import importlib.util

    if log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        parser.error("--log tensorboard needs the tensorboard package, which is not installed: "
                     "pip install tensorboard (or use --log csv)")  # fmt: skip


def make_loggers(log: str | None, run_dir: str | Path) -> list[Any]:
    """fm-train loggers for ``--log``: ``[CSVLogger(run_dir)]`` (loss.csv) and, for "tensorboard",
    fm_train's TensorBoardLogger beside it (RUN/tensorboard)."""
    from fm_train import CSVLogger, TensorBoardLogger

    if log not in (None, *LOG_CHOICES):
        raise ValueError(f"log must be one of {', '.join(LOG_CHOICES)}, got {log!r}")
    loggers: list[Any] = [CSVLogger(run_dir)]
    if log == "tensorboard":
        loggers.append(TensorBoardLogger(run_dir))
    return loggers
