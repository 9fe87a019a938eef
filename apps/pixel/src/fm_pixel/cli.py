"""The ``fm-pixel`` command line: train, sample, eval.

    fm-pixel train --dataset fashion-mnist --conditional --minutes 10 --out runs/fm
    fm-pixel sample --run runs/fm --n 1000 --nfe 10 --out samples.npz --grid grid.png --gif flow.gif
    fm-pixel eval --run runs/fm --n 1000

Every argument is checked before data or weights are loaded; a bad value is an argparse usage
error (exit status 2) that names the value and what is allowed. Runtime failures (missing or
corrupt data, a broken checkpoint, a diverged run) print one ``fm-pixel <command>: error: ...``
message and exit with status 1; Ctrl-C exits with 130 (``--resume`` continues the run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["build_parser", "main"]

DATASETS = ("mnist", "fashion-mnist")  # == fm_data.images.IMAGE_DATASETS
NETS = ("unet", "mlp", "dit")
RECIPES = ("default", "mit", "post")
SOLVERS = ("euler", "midpoint", "heun", "rk4")
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
#: PixelConfig fields the train command can set (argparse dest -> field); on --resume they must
#: agree with the stored run.
CONFIG_ARGS = {
    "dataset": "dataset", "classes": "classes", "conditional": "conditional", "recipe": "recipe", "net": "net",
    "time": "time", "coupling": "coupling", "label_dropout": "label_dropout", "batch_size": "batch_size", "lr": "lr",
    "schedule": "schedule", "warmup_steps": "warmup_steps", "ema_decay": "ema_decay", "seed": "seed",
    "solver": "solver", "nfe": "nfe", "guidance": "guidance",
}  # fmt: skip
NET_ARGS = ("channels", "res_blocks", "patch_size", "hidden", "depth")
#: Steps between sample grids written during training.
SAMPLE_EVERY = 500


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


def _float_in(low: float, high: float, what: str, low_open: bool = False, high_open: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        ok = value == value and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "an integer >= 0")
batch_int = _int_at_least(2, "an integer >= 2", 65536)
seed_int = _int_at_least(0, "an integer >= 0", 2**32 - 1)
count_int = _int_at_least(1, "a positive integer", 10**6)  # images, evaluations
threads_int = _int_at_least(1, "a positive integer", 1024)
MAX_WIDTH = 16384
positive_float = _float_in(0.0, float("inf"), "a positive number", low_open=True)
unit_float = _float_in(0.0, 1.0, "a number in [0, 1)")
finite_float = _float_in(-float("inf"), float("inf"), "a finite number", low_open=True)


def _classes(text: str) -> list[int]:
    from .config import parse_classes

    try:
        return parse_classes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _channels(text: str) -> list[int]:
    try:
        values = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated widths like 32,64,128, got {text!r}") from None
    if not values or len(values) > 6 or any(not 1 <= v <= MAX_WIDTH for v in values):
        raise argparse.ArgumentTypeError(f"must be 1 to 6 comma-separated widths in 1..{MAX_WIDTH} like 32,64,128, got {text!r}")
    return values


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
    p = argparse.ArgumentParser(prog="fm-pixel", description="Flow matching in pixel space on MNIST and Fashion-MNIST.")
    sub = p.add_subparsers(dest="command", metavar="{train,sample,eval}")

    t = sub.add_parser("train", help="train a model; writes the run directory (checkpoint, loss.csv, sample grids)",
                       description="Train a flow-matching model on MNIST or Fashion-MNIST. Options left out take "
                       "the recipe's value (see the README for the defaults and why).")
    t.add_argument("--dataset", choices=DATASETS, default=None, help="default fashion-mnist")
    t.add_argument("--classes", type=_classes, default=None, help="train on these class ids only, e.g. 3 or 3,5")
    t.add_argument("--net", choices=NETS, default=None, help="velocity network: unet (default), mlp or dit (fm_nets.DiT, 2x2 patches)")
    t.add_argument("--conditional", action="store_true", default=None, help="class-conditional model (guidance possible)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: 3000 unless --minutes)")
    budget.add_argument("--minutes", type=positive_float, default=None, help="training-time budget in minutes")
    t.add_argument("--batch-size", type=batch_int, default=None)
    t.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (AdamW)")
    t.add_argument("--seed", type=seed_int, default=None, help="default 0")
    t.add_argument("--device", type=_device, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    t.add_argument("--compile", action="store_true", help="torch.compile the network")
    t.add_argument("--data-dir", type=_path, default=None, help="folder with mnist/ and fashion-mnist/ (default: $FM_DATA_DIR, ...)")
    t.add_argument("--out", type=_path, default=None, help="run directory (default runs/<dataset>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    adv = t.add_argument_group("advanced (default: the recipe's)")
    adv.add_argument("--recipe", choices=RECIPES, default=None, help="default | mit (MIT 6.S184 lab) | post (blog post MLP)")
    adv.add_argument("--time", choices=("uniform", "logit-normal"), default=None, help="training-time distribution")
    adv.add_argument("--coupling", choices=("independent", "ot"), default=None, help="noise-data coupling (ot: exact, per class)")
    adv.add_argument("--label-dropout", type=unit_float, default=None, help="null-label probability (conditional)")
    adv.add_argument("--schedule", choices=("constant", "cosine"), default=None, help="lr after warmup")
    adv.add_argument("--warmup-steps", type=nonneg_int, default=None)
    adv.add_argument("--ema-decay", type=unit_float, default=None)
    adv.add_argument("--channels", type=_channels, default=None, help="U-Net widths per level, e.g. 32,64,128")
    adv.add_argument("--res-blocks", type=_int_at_least(1, "a positive integer", 16), default=None, help="U-Net residual blocks per level")
    adv.add_argument("--patch-size", type=_int_at_least(1, "a positive integer", 28), default=None, help="U-Net pixel-unshuffle patch (1, 2, 4); DiT patch side (2, 4, 7)")
    adv.add_argument("--hidden", type=_int_at_least(1, "a positive integer", MAX_WIDTH), default=None, help="MLP width; DiT token width")
    adv.add_argument("--depth", type=_int_at_least(0, "an integer >= 0", 256), default=None, help="MLP blocks; DiT blocks")
    adv.add_argument("--solver", choices=SOLVERS, default=None, help="the run's default sampler")
    adv.add_argument("--nfe", type=count_int, default=None, help="the run's default NFE")
    adv.add_argument("--guidance", type=finite_float, default=None, help="the run's default guidance scale")
    adv.add_argument("--sample-every", type=positive_int, default=SAMPLE_EVERY, help=f"steps between sample grids (default {SAMPLE_EVERY})")
    adv.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads (default: torch's choice)")
    adv.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw images from a trained run into an .npz (images uint8 [N,28,28], labels int64 [N])")
    s.add_argument("--run", type=_path, required=True)
    s.add_argument("--n", type=count_int, required=True, help="number of images")
    s.add_argument("--solver", choices=SOLVERS, default=None, help="ODE solver (default: the run's)")
    s.add_argument("--nfe", type=count_int, default=None, help="velocity evaluations per image (default: the run's)")
    s.add_argument("--guidance", type=finite_float, default=None, help="classifier-free guidance scale (default: the run's)")
    s.add_argument("--label", type=nonneg_int, default=None, help="class of every image (default: balanced over the trained classes)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--out", type=_path, required=True, help="output file, FILE.npz")
    s.add_argument("--grid", type=_path, default=None, help="also write a PNG grid of (up to 100 of) the images")
    s.add_argument("--gif", type=_path, default=None, help="also write a GIF of the grid moving from noise to images")
    s.add_argument("--batch-size", type=positive_int, default=500, help="images per solver batch (default 500)")
    s.add_argument("--device", type=_device, default="auto")
    s.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")

    e = sub.add_parser("eval", help="sample and score a run (FID vs the test split, label accuracy, coverage) into RUN/metrics.json")
    e.add_argument("--run", type=_path, required=True)
    e.add_argument("--n", type=count_int, default=1000, help="samples scored (default 1000)")
    e.add_argument("--solver", choices=SOLVERS, default=None)
    e.add_argument("--nfe", type=count_int, default=None)
    e.add_argument("--guidance", type=finite_float, default=None)
    e.add_argument("--seed", type=seed_int, default=0)
    e.add_argument("--data-dir", type=_path, default=None)
    e.add_argument("--device", type=_device, default="auto")
    e.add_argument("--threads", type=threads_int, default=None)
    return p


# ----------------------------------------------------------------------------- helpers
def _error(command: str, message: str, code: int = 1) -> int:
    print(f"fm-pixel {command}: error: {message}", file=sys.stderr)
    return code


def _check_data_dir(parser: argparse.ArgumentParser, data_dir: Path | None) -> None:
    if data_dir is not None and not data_dir.is_dir():
        parser.error(f"--data-dir {str(data_dir)!r} is not a directory (it should hold mnist/ and fashion-mnist/)")


#: Which network flags apply to which --net (argparse dest -> the network's keyword argument).
NET_FLAGS = {
    "unet": {"channels": "channels", "res_blocks": "num_res_blocks", "patch_size": "patch_size"},
    "mlp": {"hidden": "hidden", "depth": "depth"},
    "dit": {"patch_size": "patch_size", "hidden": "hidden_size", "depth": "depth"},
}


def _net_overrides(args: argparse.Namespace, net: str) -> dict[str, Any]:
    mine = NET_FLAGS[net]
    given_other = [dest for dest in NET_ARGS if dest not in mine and getattr(args, dest) is not None]
    if given_other:
        raise ValueError(f"{', '.join('--' + d.replace('_', '-') for d in given_other)} do not apply to --net {net}")
    return {kw: getattr(args, dest) for dest, kw in mine.items() if getattr(args, dest) is not None}


def _config_from_args(args: argparse.Namespace):
    """PixelConfig from the command line (ValueError for impossible combinations)."""
    from .config import RECIPES, make_config

    recipe = args.recipe or "default"
    net = args.net or RECIPES[recipe]["net"]
    over = {field: getattr(args, dest) for dest, field in CONFIG_ARGS.items() if dest not in ("dataset", "recipe")}
    over["net"] = net
    over["net_config"] = _net_overrides(args, net)
    over["conditional"] = bool(args.conditional)
    if args.guidance is None and over.get("conditional") and (args.label_dropout == 0.0):
        over["guidance"] = 1.0
    if args.solver is not None and args.nfe is None:  # keep the recipe's NFE if it fits the solver
        nfe = RECIPES[recipe]["nfe"]
        per = EVALS_PER_STEP[args.solver]
        over["nfe"] = nfe if nfe % per == 0 else per * max(1, nfe // per)
    return make_config(args.dataset or "fashion-mnist", recipe, **over)


def _resume_config(parser: argparse.ArgumentParser, args: argparse.Namespace, stored: dict[str, Any]):
    """The stored PixelConfig; options given now must agree with it."""
    from .config import PixelConfig

    try:
        cfg = PixelConfig.from_dict(stored["pixel"])
    except (ValueError, TypeError) as e:
        parser.error(f"--out {str(args.out)!r}: {args.out / 'config.json'}: bad \"pixel\" section: {e}")
    diffs = []
    for dest, field in CONFIG_ARGS.items():
        given = getattr(args, dest)
        if given is not None and given != getattr(cfg, field):
            diffs.append(f"--{dest.replace('_', '-')} {given!r} (the run has {getattr(cfg, field)!r})")
    net_given = {k: getattr(args, k) for k in NET_ARGS if getattr(args, k) is not None}
    if net_given:
        diffs.append("network options " + ", ".join(f"--{k.replace('_', '-')}" for k in net_given) + " (the run's network is fixed)")
    if diffs:
        parser.error(f"--resume keeps the run's settings; these differ: {'; '.join(diffs)}")
    return cfg


def _grid_layout(cfg) -> tuple[int, int]:
    """(number of images, images per row) of the training sample grids."""
    if cfg.conditional and len(cfg.sample_classes) >= 5:
        ncol = len(cfg.sample_classes)
        return 4 * ncol, ncol
    return 32, 8


def _grid_fn(cfg):
    from .pictures import save_grid
    from .sampling import generate

    n, ncol = _grid_layout(cfg)

    def grid(model, step: int, run_dir: Path) -> None:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            res = generate(model, cfg, n, seed=1234, device=device)
        finally:
            model.train(was_training)
        save_grid(res.images, run_dir / "samples" / f"step_{step:06d}.png", ncol)
        save_grid(res.images, run_dir / "samples.png", ncol)

    return grid


# ----------------------------------------------------------------------------- commands
def _cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from fm_train import resolve_device

    from .training import read_run_config, train, train_config

    _check_data_dir(parser, args.data_dir)
    device = resolve_device(args.device)
    if args.bf16 and device.type != "cuda":
        parser.error(f"--bf16 needs a CUDA device (bf16 autocast gains nothing on {device.type}; float32 is used there)")
    if args.resume and args.out is None:
        parser.error("--resume needs --out, the run directory to continue")
    out: Path = args.out or Path("runs") / f"{args.dataset or 'fashion-mnist'}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a directory")
    stored = None
    if args.resume and (out / "config.json").is_file():
        try:
            stored = read_run_config(out)
        except ValueError as e:
            parser.error(f"--out {str(out)!r}: {e}")
        cfg = _resume_config(parser, args, stored)
    else:
        from fm_train.distributed import checks_files

        if not args.resume and checks_files() and ((out / "checkpoint").exists() or (out / "config.json").exists()):
            parser.error(f"--out {str(out)!r} already holds a run; pass --resume to continue it or choose another directory")
        try:
            cfg = _config_from_args(args)
        except ValueError as e:
            parser.error(str(e))
    steps, minutes = args.steps, args.minutes
    if steps is None and minutes is None:
        if stored is not None:
            train_section = stored.get("train")
            if not isinstance(train_section, dict):
                parser.error(f"--out {str(out)!r}: {out / 'config.json'}: bad \"train\" section: expected a JSON object")
            steps, minutes = train_section.get("steps"), train_section.get("minutes")
        else:
            from .config import DEFAULT_STEPS

            steps = DEFAULT_STEPS
    try:
        tcfg = train_config(cfg, steps=steps, minutes=minutes, device=args.device, bf16=args.bf16, compile=args.compile,
                            progress=not args.quiet, sample_every=args.sample_every)
    except ValueError as e:
        parser.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from fm_data.images import DataError
    from fm_train import CheckpointError, TrainingDivergedError, distributed

    try:
        distributed.start_training(cfg.batch_size, args.out is not None, tcfg.device, "fm-pixel train", parser.error)
        summary = train(cfg, out, tcfg, data_dir=args.data_dir, resume=args.resume, grid_fn=_grid_fn(cfg))
    except TrainingDivergedError as e:
        return _error("train", str(e))
    except (DataError, CheckpointError) as e:
        return _error("train", str(e))
    except KeyboardInterrupt:
        print(f"\nfm-pixel train: interrupted; continue with: fm-pixel train --out {out} --resume", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()
    r = summary.result
    loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "n/a"
    print(f"trained {r.steps} steps ({r.steps_this_call} now, {r.seconds:.0f} s, {summary.images_per_s:.0f} images/s "
          f"on {summary.device}), final loss {loss}; run in {out}")
    return 0


def _load_for_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Validate --run and the sampler options against the run's config before loading weights."""
    from .config import PixelConfig
    from .training import read_run_config

    try:
        data = read_run_config(args.run)
    except ValueError as e:
        parser.error(f"--run {str(args.run)!r}: {e}")
    try:
        cfg = PixelConfig.from_dict(data["pixel"])
    except (ValueError, TypeError) as e:
        parser.error(f"--run {str(args.run)!r}: {args.run / 'config.json'}: bad \"pixel\" section: {e}")
    if not (args.run / "checkpoint").exists() and not (args.run / "checkpoint.old").exists():
        parser.error(f"--run {str(args.run)!r} has no checkpoint yet (training has not saved one)")
    solver = args.solver or cfg.solver
    nfe = args.nfe
    if nfe is None:
        nfe = cfg.nfe if cfg.nfe % EVALS_PER_STEP[solver] == 0 else EVALS_PER_STEP[solver] * max(1, cfg.nfe // EVALS_PER_STEP[solver])
    if nfe % EVALS_PER_STEP[solver]:
        parser.error(f"--nfe {nfe} is not a multiple of {EVALS_PER_STEP[solver]}, the evaluations per step of {solver}")
    guidance = cfg.guidance if args.guidance is None else args.guidance
    if not cfg.conditional:
        if getattr(args, "label", None) is not None:
            parser.error(f"--label {args.label}: the run is unconditional (trained without --conditional)")
        if args.guidance is not None and args.guidance != 1.0:
            parser.error(f"--guidance {args.guidance}: the run is unconditional; guidance needs a conditional run")
    elif guidance != 1.0 and cfg.label_dropout == 0.0:
        parser.error(f"--guidance {guidance}: the run was trained without label dropout, so it has no null label; use --guidance 1")
    label = getattr(args, "label", None)
    if label is not None and label not in cfg.sample_classes:
        parser.error(f"--label {label}: not a trained class; this run's classes are {cfg.sample_classes}")
    return cfg, solver, nfe, guidance


def _load_model(args: argparse.Namespace):
    from fm_train import resolve_device

    from .training import load_run

    device = resolve_device(args.device)
    model, _ = load_run(args.run, device=device)
    return model, device


def _cmd_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    if args.out.suffix != ".npz":
        parser.error(f"--out {str(args.out)!r} must end in .npz")
    if args.grid is not None and args.grid.suffix.lower() != ".png":
        parser.error(f"--grid {str(args.grid)!r} must end in .png")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        parser.error(f"--gif {str(args.gif)!r} must end in .gif")
    cfg, solver, nfe, guidance = _load_for_sampling(parser, args)
    for flag, path in (("--out", args.out), ("--grid", args.grid), ("--gif", args.gif)):
        if path is not None:  # before sampling: a bad output location must not waste the work
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                parser.error(f"{flag} {str(path)!r}: cannot create its folder ({e.strerror or e})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from fm_train import CheckpointError

    from .sampling import generate, write_samples

    try:
        model, device = _load_model(args)
    except (CheckpointError, ValueError) as e:
        return _error("sample", str(e))
    n_grid = min(args.n, 100)
    ncol = len(cfg.sample_classes) if cfg.conditional and args.label is None and len(cfg.sample_classes) >= 5 else None
    res = generate(model, cfg, args.n, solver=solver, nfe=nfe, guidance=guidance, label=args.label, seed=args.seed,
                   batch_size=max(args.batch_size, n_grid if args.gif else 1),
                   trajectory_for=n_grid if args.gif else 0, device=device)
    print(write_samples(res, args.out, grid=args.grid, gif=args.gif, ncol=ncol, n_grid=n_grid))
    return 0


def _cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    _check_data_dir(parser, args.data_dir)
    cfg, solver, nfe, guidance = _load_for_sampling(parser, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from fm_data.images import DataError
    from fm_train import CheckpointError

    from .evaluation import record_eval, score_samples
    from .sampling import generate

    try:
        model, device = _load_model(args)
        res = generate(model, cfg, args.n, solver=solver, nfe=nfe, guidance=guidance, seed=args.seed, device=device)
        scores = score_samples(res, cfg, data_dir=args.data_dir, device=device)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as e:
        return _error("eval", str(e))
    print(record_eval(args.run, res, scores, n=args.n, seed=args.seed))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the sub-command's parser (for its usage line)
    try:
        return {"train": _cmd_train, "sample": _cmd_sample, "eval": _cmd_eval}[args.command](sub, args)
    except OSError as e:  # full disk, unwritable output: one line naming the file, not a traceback
        return _error(args.command, str(e))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
