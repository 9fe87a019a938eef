"""The ``fm-toy2d`` command line: demo, train, sample, eval, study.

    fm-toy2d                                    # the demo: 8x8 checkerboard, pictures in runs/demo
    fm-toy2d train --dataset checkerboard --cells 8 --out runs/cb
    fm-toy2d train --out runs/cb --resume       # continue it from its checkpoint
    fm-toy2d sample --run runs/cb --n 20000 --solver midpoint --nfe 8 --out samples.npz --grid samples.png
    fm-toy2d eval --run runs/cb
    fm-toy2d study --out runs/study             # the scaling study (fm_toy2d.study); --quick for CI

Flags mean what they mean in fm-pixel and fm-latentgen (fm_cli.flags). Every argument is checked
before any work starts: a bad value, or a flag that does not apply (``--time`` with ``--model
nf``, ``--nfe`` for a flow), is a usage error (exit 2) naming it; a runtime failure (broken
checkpoint, full disk, diverged run) is one line ``fm-toy2d CMD: error: ...`` (exit 1).

Model-kind seam (normalizing flows, issue 4)
--------------------------------------------
``RUN/config.json`` records ``"model": "fm"`` (flow matching, :mod:`fm_toy2d.training`) or
``"nf"``. For ``"nf"`` (``train --model nf``) the CLI delegates to the module ``fm_toy2d.nf``,
which must provide::

    train(cfg: dict | RunConfig, run_dir: Path, progress: bool = True, resume: bool = False) -> TrainResult
        cfg is RunConfig.to_dict() (see fm_toy2d.config) with "model": "nf" plus "user_set":
        the names of the fields the user gave on the command line (apply your own defaults to
        the others; "steps"/"minutes" are None unless given); on --resume the stored RunConfig.
        Must write RUN/config.json with "app": "fm-toy2d", "model": "nf" and "toy2d": the RunConfig dict.
    sample(run_dir: Path, n: int, label: int | None, seed: int) -> (x [n, D] float32, y [n] int64 | None)
    evaluate(run_dir: Path, n: int, seed: int, *, n_nll: int, nll: bool) -> dict   # exact NLL etc., merged into metrics.json
    pictures(run_dir: Path) -> list[Path]

``--solver``/``--nfe``/``--guidance``/``--gif`` do not apply to flows (exact maps) and are refused for them.
``--hidden`` is the conditioners' width and ``--depth`` the number of coupling blocks.
If ``fm_toy2d/nf.py`` cannot be found, ``--model nf`` fails with a usage error saying so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fm_cli import add_version, argtypes, flags, run_cli
from fm_cli.method import FLOW_MAP, resolve_run_sampler, run_is_two_time

from .cli_train import cmd_demo, cmd_train
from .config import MAX_DIM, MAX_GRID, MAX_LATTICE, MODELS, TIMES

__all__ = ["build_parser", "cmd_demo", "cmd_eval", "cmd_sample", "cmd_train", "main"]

PROG = "fm-toy2d"
DATASETS = ("checkerboard", "olympic-rings", "moons", "8gaussians", "spirals")  # == fm_data.toy.TOY_DATASETS
FIXED_SOLVERS = ("euler", "midpoint", "heun", "rk4")  # == fm_toy2d.config.SOLVERS; --solver adds dopri5
NF_MISSING = (
    "--model nf: normalizing flows are not available yet: the module fm_toy2d/nf.py (the fm-nflows "
    "backend of issue 4) has not been written; use --model fm"
)
NF_EXACT = "a normalizing-flow run (it samples with one exact pass of the flow, no ODE)"
DISCRETE_CTMC = "a discrete run (it samples with fm-discrete's CTMC Euler sampler; --nfe sets its steps)"
#: Points drawn along their path for ``sample --gif``, and its frames with an adaptive solver.
GIF_POINTS = 2000
GIF_FRAMES = 40
#: --pairs of --method reflow when not given (the teacher's (noise, point) pairs).
REFLOW_PAIRS = 100_000

grid_int = argtypes.int_at_least(1, "a positive integer", MAX_GRID)
dim_int = argtypes.int_at_least(1, "a positive integer", MAX_DIM)
depth_int = argtypes.int_at_least(0, "an integer >= 0", 256)
lattice_int = argtypes.int_at_least(2, "an integer >= 2", MAX_LATTICE)
points_int = argtypes.int_at_least(1, "a positive integer", 10**8)  # 2D points are cheap: more than fm_cli's count_int


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Flow matching on 2D toy data, with pictures. Without a command: the demo "
        "(8x8 checkerboard with the default recipe; pictures and an animation in runs/demo).",
    )
    add_version(p, PROG)
    sub = p.add_subparsers(dest="command", metavar="{demo,train,sample,eval,study,export}")

    d = sub.add_parser("demo", help="train the 8x8 checkerboard with the defaults and draw the pictures")
    flags.add_out(d, default_text="runs/demo, or runs/demo-<time> if taken")
    d.add_argument(
        "--steps",
        type=argtypes.steps_int,
        default=None,
        help="training steps (default: the checkerboard's budget, 3800)",
    )
    flags.add_device(d)
    flags.add_threads(d)

    t = sub.add_parser("train", help="train a model on a toy dataset; writes the run directory and its pictures")
    t.add_argument("--dataset", choices=DATASETS, default="checkerboard", help="toy data set (default: checkerboard)")
    t.add_argument("--cells", type=grid_int, default=None, help="checkerboard cells per axis (default: 8)")
    t.add_argument("--grid", dest="grid_cells", type=grid_int, default=None, help=argparse.SUPPRESS)  # old --cells
    t.add_argument("--dim", type=dim_int, default=None, help="checkerboard dimension (default: 2)")
    t.add_argument("--conditional", action="store_true", help="class-conditional model (labels of the dataset)")
    t.add_argument("--model", choices=MODELS, default="fm",
                   help="fm: flow matching; nf: normalizing flow; discrete: discrete flow matching on a lattice "
                        "(fm-discrete) (default: fm)")  # fmt: skip
    t.add_argument("--recipe", choices=("default", "post"), default="default",
                   help="default: this project's recipe; post: the blog post's (5x512 ReLU, uniform t, Euler, "
                        "2,000 steps); flow matching only (default: default)")  # fmt: skip
    t.add_argument(
        "--coupling", choices=("independent", "ot"), default=None, help="noise-data coupling (default: the recipe's)"
    )
    t.add_argument(
        "--time",
        choices=TIMES,
        default=None,
        help="training-time distribution; u-shaped weights both ends, for reflow students (default: the "
        "recipe's, u-shaped for --method reflow)",
    )
    t.add_argument("--target", choices=("conditional", "batch-marginal"), default=None,
                   help="regression target: the conditional velocity, or its posterior mean over the batch "
                        "(default: the recipe's; --coupling ot implies conditional)")  # fmt: skip
    flags.add_budget(t, default_steps="the dataset's budget")
    t.add_argument("--batch-size", type=argtypes.batch_int, default=None, help="batch size (default: the recipe's)")
    t.add_argument("--lr", type=argtypes.positive_float, default=None, help="learning rate (default: the recipe's)")
    flags.add_seed(t, 0)
    flags.add_out(t, default_text="runs/<dataset>-<time>")
    flags.add_resume(t)
    flags.add_device(t)
    flags.add_log(t)
    flags.add_method(t, pairs_default=REFLOW_PAIRS)
    flags.add_precision(t)
    flags.add_compile(t)
    flags.add_threads(t)
    # fmt: off
    t.add_argument("--hidden", type=argtypes.width_int, default=None,
                   help="MLP width, or the flow's conditioner width (default: the recipe's)")
    t.add_argument("--depth", type=depth_int, default=None,
                   help="MLP blocks, or the flow's coupling blocks (default: the recipe's)")
    # fmt: on
    g = flags.add_discrete(t)
    g.add_argument("--lattice", type=lattice_int, default=None,
                   help="lattice points per axis over [-4, 4] (each coordinate one token) (default: 64)")  # fmt: skip
    t.add_argument("--no-pictures", dest="pictures", action="store_false", help="skip the pictures after training")
    flags.add_quiet(t)

    s = sub.add_parser("sample", help="draw samples from a trained run into an .npz (x [N, D] float32, "
                                      "y [N] int64 if conditional)")  # fmt: skip
    s.add_argument("--run", type=argtypes.nonempty_path, required=True, help="the run directory")
    s.add_argument("--n", type=points_int, required=True, help="number of samples")
    flags.add_sampler(s, (*FIXED_SOLVERS, FLOW_MAP), adaptive=True, guidance=True)  # flow-map: meanflow runs
    s.add_argument(
        "--label",
        type=argtypes.label_int,
        default=None,
        help="class label of every sample (conditional runs; default: uniform random labels)",
    )
    flags.add_seed(s, 0)
    flags.add_out(s, required=True, help="output file, FILE.npz")
    s.add_argument(
        "--grid",
        type=argtypes.nonempty_path,
        default=None,
        help="also write a PNG of the samples beside held-out data (default: none)",
    )
    s.add_argument("--gif", type=argtypes.nonempty_path, default=None,
                   help=f"also write a GIF of the first {GIF_POINTS} samples moving from noise to data along the "
                        f"velocity field, one frame per solver step ({GIF_FRAMES} with dopri5) (default: none)")  # fmt: skip
    flags.add_device(s)
    flags.add_threads(s)
    flags.add_quiet(s)

    e = sub.add_parser("eval", help="write RUN/metrics.json: distances, quality, exact NLL on held-out data")
    e.add_argument("--run", type=argtypes.nonempty_path, required=True, help="the run directory")
    e.add_argument("--n", type=points_int, default=20000, help="samples for the quality metrics (default: 20000)")
    flags.add_sampler(e, (*FIXED_SOLVERS, FLOW_MAP), adaptive=True, guidance=False)
    flags.add_seed(e, None, default_text="the run's seed + 2000029", help="sampling seed")
    e.add_argument("--n-nll", type=argtypes.count_int, default=2000, help="held-out points for the NLL (default: 2000)")
    e.add_argument("--no-nll", dest="nll", action="store_false", help="skip the (slow) likelihood")
    flags.add_device(e)
    flags.add_threads(e)
    flags.add_quiet(e)

    from .study import add_study_parser  # the scaling study (issue 9): its options live beside its code

    add_study_parser(sub)
    from fm_cli.export import add_export_parser

    add_export_parser(sub, "the EMA network (MLP) or flow")
    return p


# ----------------------------------------------------------------------------- helpers
def _nf_module():
    """fm_toy2d.nf, or None while it has not been written."""
    if importlib.util.find_spec("fm_toy2d.nf") is None:
        return None
    return importlib.import_module("fm_toy2d.nf")


def _run_info(parser: argparse.ArgumentParser, run: Path) -> tuple[str, Any]:
    """(model kind, RunConfig) of an existing run, or a usage error."""
    from .training import read_run

    try:
        data, cfg = read_run(run)
    except ValueError as e:
        parser.error(f"--run {str(run)!r}: {e}")
    if not (run / "checkpoint").exists() and not (run / "checkpoint.old").exists():  # fm and nf runs alike (fm-train)
        parser.error(f"--run {str(run)!r} has no checkpoint yet (training has not saved one)")
    return data.get("model", cfg.model), cfg


def _sampler(
    parser: argparse.ArgumentParser, args: argparse.Namespace, kind: str, cfg
) -> tuple[str | None, int | None]:
    """(solver, nfe) from --solver/--nfe and the run's; usage errors for flags that do not apply."""
    if kind == "nf":
        given = [f for f in ("--solver", "--nfe", "--guidance", "--gif") if hasattr(args, f[2:])]
        flags.refuse_inapplicable(parser, args, dict.fromkeys(given, NF_EXACT))
        return None, None
    if kind == "discrete":
        given = [f for f in ("--solver", "--gif") if hasattr(args, f[2:])]
        flags.refuse_inapplicable(parser, args, dict.fromkeys(given, DISCRETE_CTMC))
        problem = flags.guidance_problem(
            getattr(args, "guidance", None), conditional=cfg.conditional, label_dropout=0.0
        )
        if problem:
            parser.error(problem)
        return "ctmc", args.nfe
    from fm_train import RunDir

    two_time = run_is_two_time(RunDir(args.run).read_config())
    solver, nfe = resolve_run_sampler(parser, args.solver, args.nfe, two_time=two_time, run_solver=cfg.solver,
                                      run_nfe=cfg.nfe)  # fmt: skip
    # fm-toy2d trains without label dropout: no null label, so only guidance 1
    problem = flags.guidance_problem(getattr(args, "guidance", None), conditional=cfg.conditional, label_dropout=0.0)
    if problem:
        parser.error(problem)
    return solver, nfe


def _nf(parser: argparse.ArgumentParser, run: Path):
    nf = _nf_module()
    if nf is None:
        parser.error(f"--run {str(run)!r} is a normalizing-flow run, but " + NF_MISSING.split(": ", 1)[1])
    return nf


# ----------------------------------------------------------------------------- commands
def cmd_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_cli import describe_labels, progress_enabled, sample_summary, write_samples

    flags.check_output_paths(parser, out=args.out, grid=args.grid, gif=args.gif, create=False)
    kind, cfg = _run_info(parser, args.run)
    solver, nfe = _sampler(parser, args, kind, cfg)
    import torch

    from . import training

    dist = training.build_distribution(cfg)
    problem = training.label_problem(args.label, dist.num_classes if cfg.conditional else None)  # fm and nf runs alike
    if problem:
        parser.error(f"--{problem}")
    for path in (args.out, args.grid, args.gif):  # a bad location fails now (one line), not after sampling
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    flags.set_threads(args.threads)
    t0 = time.perf_counter()
    if kind == "nf":
        x, y = _nf(parser, args.run).sample(args.run, args.n, args.label, args.seed)
        method, used = "flow inverse", 1
    elif kind == "discrete":
        from . import discrete

        res = discrete.sample_run(discrete.load_discrete_run(args.run, device=args.device), args.n, label=args.label,
                                  seed=args.seed, nfe=nfe, progress=progress_enabled(args.quiet))  # fmt: skip
        x, y, method, used = res.x, res.labels, res.method, res.nfe
    else:
        run = training.load_run(args.run, device=args.device)
        frames = None  # an adaptive solver's own steps are not kept: its GIF shows 40 equal steps in t
        if args.gif is not None and nfe is None:
            frames = torch.linspace(0.0, 1.0, GIF_FRAMES + 1)
        res = run.sample(args.n, seed=args.seed, solver=solver, nfe=nfe, time_grid=frames, label=args.label,
                         trajectory=min(args.n, GIF_POINTS) if args.gif else 0,
                         progress=progress_enabled(args.quiet))  # fmt: skip
        x, y, method, used = res.x, res.labels, solver, res.nfe
    seconds = time.perf_counter() - t0
    written = write_samples(args.out, x, y)
    if args.grid is not None or args.gif is not None:
        from . import pictures

        what = "normalizing flow" if kind == "nf" else f"{method}, NFE {used}"
        if args.grid is not None:
            written.append(pictures.samples_picture(args.grid, cfg, dist, x, y, title=f"{what}, seed {args.seed}"))
        if args.gif is not None:
            written += pictures.sample_gif(args.gif, run, res, title=f"{pictures.dataset_label(cfg)} ({what})")
    print(f"{PROG}: " + sample_summary(args.n, describe_labels(y), method, used, None, seconds, written, noun="points"))
    return 0


def cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_train import RunDir

    from . import training
    from .evaluation import evaluate, headline

    kind, cfg = _run_info(parser, args.run)
    solver, nfe = _sampler(parser, args, kind, cfg)
    flags.set_threads(args.threads)
    if kind == "nf":
        metrics = _nf(parser, args.run).evaluate(args.run, args.n, args.seed, n_nll=args.n_nll, nll=args.nll)
    elif kind == "discrete":
        from . import discrete

        metrics = discrete.evaluate(args.run, args.n, args.seed, nfe=nfe, device=args.device, quiet=args.quiet)
    else:
        run = training.load_run(args.run, device=args.device)
        metrics = evaluate(run, n=args.n, solver=solver, nfe=nfe, seed=args.seed, n_nll=args.n_nll, nll=args.nll,
                           quiet=args.quiet)  # fmt: skip
    path = RunDir(args.run).merge_metrics(metrics)
    q = metrics.get("quality", {})
    print(f"{PROG}: energy distance {metrics.get('energy_distance', float('nan')):.4g}, "
          f"W2 {metrics.get('w2', float('nan')):.4g}" + (f"; {headline(q)}" if q else ""))  # fmt: skip
    if metrics.get("straightness"):  # fm_eval.straightness of the sampler's own paths (0: straight)
        st = metrics["straightness"]
        print(f"{PROG}: straightness {st['value']:.4g} ({st['normalised']:.4f} normalised; {st['n']} paths, "
              f"{st['solver']} NFE {st['sampler_nfe']})")  # fmt: skip
    if metrics.get("manifold"):
        m = metrics["manifold"]
        print(f"{PROG}: precision {m['precision']:.3f}, recall {m['recall']:.3f}, density {m['density']:.3f}, "
              f"coverage {m['coverage']:.3f} (k={m['k']}, {m['n_samples']} samples vs {m['n_reference']} "
              f"held-out points)")  # fmt: skip
    if metrics.get("nll"):
        n = metrics["nll"]
        gap = f", entropy {n['entropy']:.3f}, gap {n['gap']:+.3f}" if n.get("entropy") is not None else ""
        print(f"{PROG}: NLL {n['mean']:.3f} +- {n['stderr']:.3f} nats on {n['n']} held-out points{gap}")
    print(f"{PROG}: wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from fm_train import TrainingDivergedError

    from .export import cmd_export
    from .study import cmd_study

    commands = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "study": cmd_study,
                "export": cmd_export}  # fmt: skip
    return run_cli(PROG, build_parser(), commands, argv, default_command="demo",
                   errors=(ValueError, TrainingDivergedError))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
