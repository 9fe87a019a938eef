"""The ``train`` and ``demo`` commands of ``fm-toy2d`` (the parser is :func:`fm_toy2d.cli.build_parser`).

``train`` checks every option against the model kind and the dataset, then hands fm-cli's train
tail (``fm_cli.run_training``: threads, the torchrun start, one-line errors, Ctrl-C) a callable
that trains (:func:`fm_toy2d.training.train` or ``fm_toy2d.nf.train``) and draws the pictures.
``--resume`` continues the run in ``--out`` from its checkpoint to its own budget; options given
with it must agree with the stored run, and a run whose budget is used says so in one line and
changes nothing (metrics.json, pictures).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm_cli import choose_run_dir, default_run_dir, flags, resume_conflicts, run_training

__all__ = ["cmd_demo", "cmd_train"]

PROG = "fm-toy2d"
#: train options that do not apply to normalizing flows.
NF_REFUSED = dict.fromkeys(
    ("--recipe", "--coupling", "--time", "--target", "--precision", "--bf16", "--compile", "--method",
     "--equal-fraction", "--init-from", "--teacher", "--pairs", "--teacher-solver", "--teacher-nfe", "--from-scratch"), "--model nf"
)  # fmt: skip
#: train options that do not apply to discrete runs (flow-matching options; fm-train's precision options).
DISCRETE_REFUSED = dict.fromkeys((*NF_REFUSED, "--coupling"), "--model discrete")
#: train options that only discrete runs take.
DISCRETE_ONLY = ("--lattice", *flags.DISCRETE_FLAGS)
#: train options (dest -> RunConfig field) that --resume must find equal to the stored run's.
RESUME_FIELDS = {
    "dataset": "dataset", "cells": "grid", "dim": "dim", "conditional": "conditional", "model": "model",
    "recipe": "recipe", "coupling": "coupling", "time": "time", "target": "target", "steps": "steps",
    "minutes": "minutes", "batch_size": "batch_size", "lr": "lr", "seed": "seed", "device": "device",
    "lattice": "lattice", "source": "source", "kappa": "kappa", "discrete_loss": "discrete_loss",
}  # fmt: skip
NET_FLAGS = ("hidden", "depth")


@dataclass
class Trained:
    """What the train callable hands fm_cli.run_training's report: the fm-train result (None from a
    stand-in nf backend) and the pictures written."""

    result: Any
    pictures: list[Path]


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.grid_cells is not None:
        if args.cells is not None:
            parser.error(f"--grid {args.grid_cells} is the old name of --cells; give --cells only")
        print(f"{PROG} train: note: --grid N is deprecated and goes in 0.3.0; use --cells N", file=sys.stderr)
        args.cells = args.grid_cells
    if args.dataset != "checkerboard":
        for flag, value in (("--cells", args.cells), ("--dim", args.dim)):
            if value is not None:
                parser.error(f"{flag} {value} applies only to --dataset checkerboard, not {args.dataset!r}")
    cells = args.cells if args.cells is not None else 8  # RunConfig's default grid
    if args.dataset == "checkerboard" and args.dim is not None and args.dim > 2 and cells**args.dim > 10**7:
        parser.error(
            f"--cells {cells} --dim {args.dim}: {cells**args.dim:,} cells is too many to evaluate (at most 10^7)"
        )


def _check_discrete(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors for a discrete run (flow-matching options, torchrun) and for discrete options elsewhere."""
    from fm_train import distributed

    if args.model != "discrete":
        flags.refuse_inapplicable(parser, args, dict.fromkeys(DISCRETE_ONLY, f"--model {args.model}"))
        return
    flags.refuse_inapplicable(parser, args, DISCRETE_REFUSED)
    if distributed.launched_by_torchrun():
        parser.error("--model discrete trains in one process; run it without torchrun")


def _check_nf(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors for a normalizing-flow run: flow-matching options, torchrun, no backend."""
    from fm_train import distributed

    from . import cli

    flags.refuse_inapplicable(parser, args, NF_REFUSED)
    if distributed.launched_by_torchrun():
        parser.error("--model nf trains in one process (its loss is not a forward call, which DDP needs); "
                     "run it without torchrun")  # fmt: skip
    if cli._nf_module() is None:
        parser.error(cli.NF_MISSING)


def _method_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """What ``--method meanflow|reflow`` changes in a new run's config: the conditional target (MeanFlow's
    own target is built on it; reflow's pairs are coupled, so the batch's points are no posterior), and
    for reflow the independent coupling (the pairs are the coupling) and fm_cli.method.method_overrides'
    rules (``--coupling ot`` refused; U-shaped training times unless ``--time``)."""
    from fm_cli.method import method_overrides

    method = getattr(args, "method", None)
    if method in (None, "fm"):
        return {}
    if args.target == "batch-marginal":
        parser.error(
            f"--target batch-marginal does not apply to --method {method} (it trains on the conditional target)"
        )
    over = method_overrides(parser, args)
    over.pop("guidance", None)  # toy runs train without label dropout: they sample at guidance 1 anyway
    return {"target": "conditional", **({"coupling": "independent"} if method == "reflow" else {}), **over}


def _new_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Any, Any]:
    """(RunConfig, what the trainer gets) from the options: for nf the CLI's dict with "user_set"."""
    from .config import RunConfig, make_config

    net = {k: getattr(args, k) for k in NET_FLAGS if getattr(args, k) is not None}
    given = {
        "grid": args.cells, "dim": args.dim, "conditional": args.conditional or None, "coupling": args.coupling,
        "time": args.time, "target": args.target, "steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed, "device": args.device, "net": net or None,
        "precision": flags.precision_given(parser, args, PROG), "compile": args.compile or None,
    }  # fmt: skip
    try:
        if args.model == "fm":
            cfg = make_config(args.dataset, args.recipe, **{**given, **_method_options(parser, args)})
            return cfg, cfg
        if args.model == "discrete":
            given.update(lattice=args.lattice, source=args.source, kappa=args.kappa, discrete_loss=args.discrete_loss)
        cfg = RunConfig(
            dataset=args.dataset, model=args.model, **{k: v for k, v in given.items() if v is not None and k != "net"}
        )
    except ValueError as e:
        parser.error(str(e))
    cfg_dict = cfg.to_dict()
    cfg_dict["user_set"] = sorted(k for k, v in given.items() if v is not None)
    if net:
        cfg_dict["net"] = net
    return cfg, cfg_dict


def _stored_config(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path) -> Any:
    """The stored run's RunConfig; the options given with --resume must agree with it."""
    from .training import read_run

    _, cfg = read_run(out)  # read (and checked) by choose_run_dir already
    given = {d: (getattr(args, d) if flags.flag_given(parser, args, d) else None) for d in [*RESUME_FIELDS, *NET_FLAGS]}
    resume_conflicts(parser, argparse.Namespace(**given), cfg, RESUME_FIELDS, fixed=NET_FLAGS)
    return cfg


def _trainer(cfg, spec, out: Path, *, resume: bool, pictures: bool, quiet: bool, log: str = "csv", method=None):
    """The callable that trains ``cfg`` into ``out`` (``spec``: what the trainer gets; ``method``: the
    fm_cli.method.MethodConfig of a flow-matching run) and draws the pictures."""
    from fm_train import dist_info

    from . import cli, training

    def work() -> Trained:
        budget = f"{cfg.steps} steps" if cfg.steps else f"{cfg.minutes:g} minutes" if cfg.minutes else "default budget"
        kind = {"nf": "normalizing flow", "discrete": "discrete flow matching"}.get(cfg.model, f"{cfg.recipe} recipe")
        print(f"{PROG}: {'resuming' if resume else 'training'} {cfg.dataset} ({kind}, {budget}) into {out}",
              flush=True)  # fmt: skip
        if cfg.model == "discrete":
            from . import discrete

            result = discrete.train(spec, out, progress=not quiet, resume=resume, loggers=flags.make_loggers(log, out))
        elif cfg.model == "nf":
            nf = cli._nf_module()
            more = {} if log == "csv" else {"loggers": flags.make_loggers(log, out)}  # csv: the backend's own
            result = nf.train(spec, out, progress=not quiet, resume=resume, **more)
        else:
            with flags.precision_notes(PROG):
                result = training.train(cfg, out, progress=not quiet, resume=resume,
                                        loggers=flags.make_loggers(log, out), method=method)  # fmt: skip
        if result is not None and result.steps_this_call == 0:  # a resumed run with its budget used
            return Trained(result, [])
        if cfg.model == "fm":
            print(f"{PROG}: trained {result.steps} steps in {result.seconds:.1f} s "
                  f"({result.steps_this_call / max(result.seconds, 1e-9):.1f} steps/s), final loss {result.final_loss:.4f}",
                  flush=True)  # fmt: skip
        if not pictures or not dist_info().is_main:
            return Trained(result, [])
        if cfg.model == "nf":
            files = nf.pictures(out)
        elif cfg.model == "discrete":
            files = discrete.pictures(out)
        else:
            from .pictures import write_pictures

            files = write_pictures(training.load_run(out, device=cfg.device), quiet=quiet)
        print(f"{PROG}: pictures:\n  " + "\n  ".join(str(f) for f in files), flush=True)
        return Trained(result, files)

    return work


def _report(out: Path, resume: bool):
    def report(done: Trained) -> str:
        if resume and done.result is not None and done.result.steps_this_call == 0:
            return (f"{PROG} train: nothing to do: the run in {out} has used its budget ({done.result.steps} steps "
                    "trained); metrics.json and the pictures are unchanged")  # fmt: skip
        return f"{PROG}: done: {out}"

    return report


def cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_options(parser, args)
    flags.check_log(parser, args.log)
    if args.model == "nf":
        _check_nf(parser, args)
    if not args.resume:  # a resumed run's kind is the stored one (checked below)
        _check_discrete(parser, args)
    from fm_cli.method import method_for_command

    from .cli import REFLOW_PAIRS
    from .training import read_run

    method = method_for_command(parser, args, pairs_default=REFLOW_PAIRS)

    run = choose_run_dir(parser, args.out, resume=args.resume, prefix=args.dataset, require_checkpoint=True,
                         read_config=lambda out: read_run(out)[0])  # fmt: skip
    if run.stored is not None:
        cfg = spec = _stored_config(parser, args, run.out)
        if cfg.model == "nf":
            _check_nf(parser, args)
        elif cfg.model == "discrete":
            args.model = "discrete"
            _check_discrete(parser, args)
        else:  # precision and compile may change on --resume (not the optimisation)
            precision = flags.precision_given(parser, args, PROG)
            cfg = spec = cfg.replace(compile=args.compile, **({"precision": precision} if precision else {}))
    else:
        cfg, spec = _new_config(parser, args)
    work = _trainer(cfg, spec, run.out, resume=args.resume, pictures=args.pictures, quiet=args.quiet, log=args.log,
                    method=method)  # fmt: skip
    return run_training(
        PROG,
        parser,
        work,
        out=run.out,
        out_given=args.out is not None,
        batch_size=cfg.batch_size,
        device=cfg.device,
        threads=args.threads,
        errors=(ValueError,),
        report=_report(run.out, args.resume),
    )


def cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_train import RunDir

    from . import training
    from .config import make_config
    from .evaluation import evaluate, headline

    out = args.out
    if out is None:
        out = Path("runs") / "demo"
        if out.exists():
            out = default_run_dir("demo")
    choose_run_dir(parser, out, resume=False, prefix="demo")
    flags.set_threads(args.threads)
    cfg = make_config("checkerboard", "default", grid=8, steps=args.steps, device=args.device)
    t0 = time.perf_counter()
    _trainer(cfg, cfg, out, resume=False, pictures=True, quiet=False)()
    run = training.load_run(out, device=cfg.device)
    metrics = evaluate(run, n=20000, nll=False, quiet=False)
    RunDir(out).merge_metrics(metrics)
    print(f"{PROG}: {cfg.solver} NFE {metrics['samples']['nfe']}: {headline(metrics['quality'])}")
    print(
        f"{PROG}: demo done in {time.perf_counter() - t0:.0f} s; pictures, metrics.json and the animation "
        f"velocity.gif are in {out.resolve()}"
    )
    return 0
