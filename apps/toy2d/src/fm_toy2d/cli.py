"""The ``fm-toy2d`` command line: demo, train, sample, eval.

    fm-toy2d                                    # the demo: 8x8 checkerboard, pictures in runs/demo
    fm-toy2d train --dataset checkerboard --grid 8 --out runs/cb
    fm-toy2d sample --run runs/cb --n 20000 --solver midpoint --nfe 8 --out samples.npz
    fm-toy2d eval --run runs/cb
    fm-toy2d study --out runs/study                 # the scaling study (fm_toy2d.study); --quick for CI

Every argument is checked before any work starts; a bad value is an argparse usage error (exit
status 2) that names the value and what is allowed.

Model-kind seam (normalizing flows, issue 4)
--------------------------------------------
``RUN/config.json`` records ``"model": "fm"`` (flow matching, :mod:`fm_toy2d.training`) or
``"nf"``. For ``"nf"`` (``train --model nf``) the CLI delegates to the module ``fm_toy2d.nf``,
which must provide::

    train(cfg: dict, run_dir: Path, progress: bool = True) -> ...
        cfg is RunConfig.to_dict() (see fm_toy2d.config) with "model": "nf" plus "user_set":
        the names of the fields the user gave on the command line (apply your own defaults to
        the others; "steps"/"minutes" are None unless given). Must write RUN/config.json with
        "app": "fm-toy2d", "model": "nf" and "toy2d": the RunConfig dict.
    sample(run_dir: Path, n: int, label: int | None, seed: int) -> (x [n, D] float32, y [n] int64 | None)
    evaluate(run_dir: Path, n: int, seed: int, *, n_nll: int, nll: bool) -> dict   # exact NLL etc., merged into metrics.json
    pictures(run_dir: Path) -> list[Path]

``--solver``/``--nfe`` do not apply to flows (they are exact maps) and are refused for them.
``--hidden`` is the conditioners' width and ``--depth`` the number of coupling blocks.
If ``fm_toy2d/nf.py`` cannot be found, ``--model nf`` fails with a usage error saying so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["build_parser", "main"]

DATASETS = ("checkerboard", "olympic-rings", "moons", "8gaussians", "spirals")  # == fm_data.toy.TOY_DATASETS
FIXED_SOLVERS = ("euler", "midpoint", "heun", "rk4")
SAMPLE_SOLVERS = FIXED_SOLVERS + ("dopri5",)
NF_MISSING = (
    "--model nf: normalizing flows are not available yet: the module fm_toy2d/nf.py (the fm-nflows "
    "backend of issue 4) has not been written; use --model fm"
)


# ----------------------------------------------------------------------------- argument types
def _int_at_least(low: int, what: str, high: int | None = None):
    """An integer >= low (and <= high: a typo like 10**20 must not crash the run after data and model are built)."""
    if high is not None:
        what = f"{what} up to {high:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "an integer >= 0")
batch_int = _int_at_least(2, "an integer >= 2", 65536)
seed_int = _int_at_least(0, "an integer >= 0", 2**32 - 1)
count_int = _int_at_least(1, "a positive integer", 10**8)  # samples, evaluations
size_int = _int_at_least(1, "a positive integer", 16384)  # widths


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty path, got {text!r}")
    return Path(text)


def _device(text: str) -> str:
    from fm_train import resolve_device

    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fm-toy2d",
        description="Flow matching on 2D toy data, with pictures. Without a command: the demo "
        "(8x8 checkerboard with the default recipe; pictures and an animation in runs/demo).",
    )
    sub = p.add_subparsers(dest="command", metavar="{demo,train,sample,eval,study}")

    d = sub.add_parser("demo", help="train the 8x8 checkerboard with the defaults and draw the pictures")
    d.add_argument("--out", type=_path, default=None, help="run directory (default runs/demo, or runs/demo-<time> if taken)")
    d.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the default budget)")
    d.add_argument("--device", type=_device, default="auto")

    t = sub.add_parser("train", help="train a model on a toy dataset; writes the run directory and its pictures")
    t.add_argument("--dataset", choices=DATASETS, default="checkerboard")
    t.add_argument("--grid", type=_int_at_least(1, "a positive integer", 1000), default=None, help="checkerboard cells per axis (default 8)")
    t.add_argument("--dim", type=_int_at_least(1, "a positive integer", 64), default=None, help="checkerboard dimension (default 2)")
    t.add_argument("--conditional", action="store_true", help="class-conditional model (labels of the dataset)")
    t.add_argument("--model", choices=("fm", "nf"), default="fm", help="fm: flow matching (default); nf: normalizing flow")
    t.add_argument("--recipe", choices=("default", "post"), default="default",
                   help="default: this project's recipe; post: the blog post's (5x512 ReLU, uniform t, Euler, 2,000 steps)")
    t.add_argument("--coupling", choices=("independent", "ot"), default=None, help="noise-data coupling (default: the recipe's)")
    t.add_argument("--time", choices=("uniform", "logit-normal"), default=None, help="training-time distribution (default: the recipe's)")
    t.add_argument("--target", choices=("conditional", "batch-marginal"), default=None,
                   help="regression target: the conditional velocity, or its posterior mean over the batch "
                        "(default: the recipe's; --coupling ot implies conditional)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the dataset's budget)")
    budget.add_argument("--minutes", type=_positive_float, default=None, help="a time budget instead of steps")
    t.add_argument("--batch-size", type=batch_int, default=None)
    t.add_argument("--lr", type=_positive_float, default=None)
    t.add_argument("--seed", type=seed_int, default=0)
    t.add_argument("--out", type=_path, default=None, help="run directory (default runs/<dataset>-<time>)")
    t.add_argument("--device", type=_device, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    t.add_argument("--hidden", type=size_int, default=None, help="MLP width (advanced; tests use tiny nets)")
    t.add_argument("--depth", type=_int_at_least(0, "an integer >= 0", 256), default=None, help="MLP blocks (advanced)")
    t.add_argument("--no-pictures", dest="pictures", action="store_false", help="skip the pictures after training")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run into an .npz (x [N, D] float32, y [N] int64 if conditional)")
    s.add_argument("--run", type=_path, required=True)
    s.add_argument("--n", type=count_int, required=True)
    s.add_argument("--solver", choices=SAMPLE_SOLVERS, default=None, help="ODE solver (default: the run's)")
    s.add_argument("--nfe", type=count_int, default=None, help="velocity evaluations per sample (default: the run's)")
    s.add_argument("--label", type=nonneg_int, default=None, help="class label (conditional runs; default: uniform labels)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--out", type=_path, required=True, help="output file, FILE.npz")
    s.add_argument("--device", type=_device, default="auto")

    e = sub.add_parser("eval", help="write RUN/metrics.json: distances, quality, exact NLL on held-out data")
    e.add_argument("--run", type=_path, required=True)
    e.add_argument("--n", type=count_int, default=20000, help="samples for the quality metrics (default 20000)")
    e.add_argument("--solver", choices=SAMPLE_SOLVERS, default=None)
    e.add_argument("--nfe", type=count_int, default=None)
    e.add_argument("--seed", type=seed_int, default=None, help="sampling seed (default: derived from the run's)")
    e.add_argument("--n-nll", type=count_int, default=2000, help="held-out points for the NLL (default 2000)")
    e.add_argument("--no-nll", dest="nll", action="store_false", help="skip the (slow) likelihood")
    e.add_argument("--device", type=_device, default="auto")

    from .study import add_study_parser  # the scaling study (issue 9): its options live beside its code

    add_study_parser(sub, positive_int=positive_int, positive_float=_positive_float, nonneg_int=nonneg_int)
    return p


# ----------------------------------------------------------------------------- helpers
def _nf_module():
    """fm_toy2d.nf, or None while it has not been written."""
    if importlib.util.find_spec("fm_toy2d.nf") is None:
        return None
    return importlib.import_module("fm_toy2d.nf")


def _default_out(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_out_dir(parser: argparse.ArgumentParser, out: Path) -> None:
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a directory")
    if (out / "checkpoint").exists() or (out / "config.json").exists():
        parser.error(f"--out {str(out)!r} already holds a run; choose another directory")


def _run_info(parser: argparse.ArgumentParser, run: Path) -> tuple[str, Any]:
    """(model kind, RunConfig) of an existing run, or a usage error."""
    from .config import RunConfig
    from .training import read_run_config

    try:
        data = read_run_config(run)
    except ValueError as e:
        parser.error(f"--run {str(run)!r}: {e}")
    try:
        cfg = RunConfig.from_dict(data["toy2d"])
    except (ValueError, TypeError) as e:
        parser.error(f"--run {str(run)!r}: {run / 'config.json'}: bad \"toy2d\" section: {e}")
    kind = data.get("model", cfg.model)
    if not (run / "checkpoint").exists() and not (run / "checkpoint.old").exists():  # fm and nf runs alike (fm-train)
        parser.error(f"--run {str(run)!r} has no checkpoint yet (training has not saved one)")
    return kind, cfg


def _num_classes(cfg) -> int | None:
    from .training import build_distribution

    return build_distribution(cfg).num_classes if cfg.conditional else None


def _check_sampler(parser: argparse.ArgumentParser, kind: str, cfg, solver: str | None, nfe: int | None) -> tuple[str | None, int | None]:
    """Resolve --solver/--nfe against the run (usage errors for impossible combinations)."""
    if kind == "nf":
        if solver is not None or nfe is not None:
            parser.error("--solver/--nfe do not apply to a normalizing-flow run (it samples with one exact pass)")
        return None, None
    from fm_core.solvers import nfe_to_steps

    solver = solver or cfg.solver
    if solver == "dopri5":
        if nfe is not None:
            parser.error(f"--nfe {nfe} cannot be used with --solver dopri5 (an adaptive solver picks its own steps)")
        return solver, None
    nfe = cfg.nfe if nfe is None else nfe
    try:
        nfe_to_steps(solver, nfe)
    except ValueError as e:
        parser.error(f"--nfe {nfe}: {e}")
    return solver, nfe


# ----------------------------------------------------------------------------- commands
def _train_fm(cfg, out: Path, *, pictures: bool, progress: bool) -> None:
    from .pictures import write_pictures
    from .training import load_run, train

    print(f"fm-toy2d: training {cfg.dataset} ({cfg.recipe} recipe, {cfg.steps or cfg.minutes} "
          f"{'steps' if cfg.steps else 'minutes'}) into {out}", flush=True)
    result = train(cfg, out, progress=progress)
    print(f"fm-toy2d: trained {result.steps} steps in {result.seconds:.1f} s ({result.steps_this_call / max(result.seconds, 1e-9):.1f} steps/s), "
          f"final loss {result.final_loss:.4f}", flush=True)
    from fm_train import dist_info

    if pictures and dist_info().is_main:
        run = load_run(out, device=cfg.device)
        files = write_pictures(run)
        print("fm-toy2d: pictures:\n  " + "\n  ".join(str(f) for f in files), flush=True)


def cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .config import RunConfig, make_config

    if args.dataset != "checkerboard":
        for flag, value in (("--grid", args.grid), ("--dim", args.dim)):
            if value is not None:
                parser.error(f"{flag} {value} applies only to --dataset checkerboard, not {args.dataset!r}")
    grid = args.grid if args.grid is not None else 8  # RunConfig's default grid
    if args.dataset == "checkerboard" and args.dim is not None and args.dim > 2 and grid**args.dim > 10**7:
        parser.error(f"--grid {grid} --dim {args.dim}: {grid**args.dim:,} cells is too many to evaluate (at most 10^7)")
    from fm_train import distributed

    if distributed.launched_by_torchrun() and args.model == "nf":
        parser.error("--model nf trains in one process (its loss is not a forward call, which DDP needs); run it without torchrun")
    out = args.out or _default_out(args.dataset)
    if distributed.checks_files():
        _check_out_dir(parser, out)  # rank 0 checks; the others must not see the directory it starts writing
    net = {k: v for k, v in (("hidden", args.hidden), ("depth", args.depth)) if v is not None}
    given = {
        "grid": args.grid, "dim": args.dim, "conditional": args.conditional or None, "coupling": args.coupling,
        "time": args.time, "target": args.target, "steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed, "device": args.device, "net": net or None,
    }  # fmt: skip
    if args.model == "nf":
        nf = _nf_module()
        if nf is None:
            parser.error(NF_MISSING)
        try:
            cfg = RunConfig(dataset=args.dataset, model="nf", **{k: v for k, v in given.items() if v is not None and k != "net"})
        except ValueError as e:
            parser.error(str(e))
        cfg_dict = cfg.to_dict()
        cfg_dict["user_set"] = sorted(k for k, v in given.items() if v is not None)
        if net:
            cfg_dict["net"] = net
        print(f"fm-toy2d: training a normalizing flow on {args.dataset} into {out}", flush=True)
        nf.train(cfg_dict, out, progress=not args.quiet)
        if args.pictures:
            files = nf.pictures(out)
            print("fm-toy2d: pictures:\n  " + "\n  ".join(str(f) for f in files), flush=True)
        print(f"fm-toy2d: done: {out}")
        return 0
    try:
        cfg = make_config(args.dataset, args.recipe, **given)
    except ValueError as e:
        parser.error(str(e))
    try:
        distributed.start_training(cfg.batch_size, args.out is not None, cfg.device, "fm-toy2d", parser.error)
        _train_fm(cfg, out, pictures=args.pictures, progress=not args.quiet)
    finally:
        distributed.cleanup()
    print(f"fm-toy2d: done: {out}")
    return 0


def cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .config import make_config
    from .evaluation import evaluate, headline, update_metrics
    from .training import load_run

    out = args.out
    if out is None:
        out = Path("runs") / "demo"
        if out.exists():
            out = _default_out("demo")
    _check_out_dir(parser, out)
    cfg = make_config("checkerboard", "default", grid=8, steps=args.steps, device=args.device)
    t0 = time.perf_counter()
    _train_fm(cfg, out, pictures=True, progress=True)
    run = load_run(out, device=cfg.device)
    metrics = evaluate(run, n=20000, nll=False)
    update_metrics(out, metrics)
    print(f"fm-toy2d: {cfg.solver} NFE {metrics['samples']['nfe']}: {headline(metrics['quality'])}")
    print(f"fm-toy2d: demo done in {time.perf_counter() - t0:.0f} s; pictures, metrics.json and the animation "
          f"velocity.gif are in {out.resolve()}")
    return 0


def cmd_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import numpy as np

    if args.out.suffix != ".npz":
        parser.error(f"--out {str(args.out)!r} must end in .npz")
    kind, cfg = _run_info(parser, args.run)
    solver, nfe = _check_sampler(parser, kind, cfg, args.solver, args.nfe)
    if args.label is not None:  # fm and nf runs alike
        classes = _num_classes(cfg)
        if classes is None:
            parser.error(f"--label {args.label}: the run {str(args.run)!r} is unconditional (train with --conditional)")
        if args.label >= classes:
            parser.error(f"--label {args.label} is out of range: the run has classes 0..{classes - 1}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "nf":
        nf = _nf_module()
        if nf is None:
            parser.error(f"--run {str(args.run)!r} is a normalizing-flow run, but " + NF_MISSING.split(": ", 1)[1])
        x, y = nf.sample(args.run, args.n, args.label, args.seed)
    else:
        from .sampling import sample_points, steps_for
        from .training import load_run

        run = load_run(args.run, device=args.device)
        s = sample_points(run.velocity, args.n, cfg.data_dim, solver=solver, steps=steps_for(solver, nfe),
                          num_classes=run.num_classes, label=args.label, seed=args.seed, device=run.device)
        x, y = s.x, s.y
        print(f"fm-toy2d: {args.n} samples with {solver}, NFE {s.nfe}")
    arrays = {"x": np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)}
    if y is not None:
        arrays["y"] = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y, dtype=np.int64)
    np.savez(args.out, **arrays)
    print(f"fm-toy2d: wrote {args.out} (" + ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in arrays.items()) + ")")
    return 0


def cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .evaluation import evaluate, headline, update_metrics

    kind, cfg = _run_info(parser, args.run)
    solver, nfe = _check_sampler(parser, kind, cfg, args.solver, args.nfe)
    if kind == "nf":
        nf = _nf_module()
        if nf is None:
            parser.error(f"--run {str(args.run)!r} is a normalizing-flow run, but " + NF_MISSING.split(": ", 1)[1])
        metrics = nf.evaluate(args.run, args.n, args.seed, n_nll=args.n_nll, nll=args.nll)
    else:
        from .training import load_run

        run = load_run(args.run, device=args.device)
        metrics = evaluate(run, n=args.n, solver=solver, nfe=nfe, seed=args.seed, n_nll=args.n_nll, nll=args.nll)
    path = update_metrics(args.run, metrics)
    q = metrics.get("quality", {})
    print(f"fm-toy2d: energy distance {metrics.get('energy_distance', float('nan')):.4g}, W2 {metrics.get('w2', float('nan')):.4g}"
          + (f"; {headline(q)}" if q else ""))
    if metrics.get("nll"):
        n = metrics["nll"]
        gap = f", entropy {n['entropy']:.3f}, gap {n['gap']:+.3f}" if n.get("entropy") is not None else ""
        print(f"fm-toy2d: NLL {n['mean']:.3f} +- {n['stderr']:.3f} nats on {n['n']} held-out points{gap}")
    print(f"fm-toy2d: wrote {path}")
    return 0


def _run_command(command, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run a command; a runtime failure (broken checkpoint, full disk, diverged run) is one line
    ``fm-toy2d CMD: error: ...`` on stderr and exit status 1, not a traceback."""
    from fm_train import TrainingDivergedError

    try:
        return command(parser, args)
    except (ValueError, OSError, TrainingDivergedError) as e:  # CheckpointError is a ValueError
        msg = " ".join(str(e).split("\n")) or type(e).__name__
        print(f"fm-toy2d {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nfm-toy2d {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        args = parser.parse_args(["demo"])
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's parser, for its usage line
    from .study import cmd_study

    commands = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "study": cmd_study}
    return _run_command(commands[args.command], sub, args)


if __name__ == "__main__":
    sys.exit(main())
