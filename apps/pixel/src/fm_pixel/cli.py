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
from collections.abc import Sequence
from typing import Any

from fm_cli import add_version, argtypes, flags, run_cli
from fm_cli.export import add_export_parser
from fm_cli.images import add_eval_parser, add_sample_parser, add_train_parser
from fm_data.images import IMAGE_DATASETS

from . import __version__
from .config import DEFAULT_GUIDANCE, DEFAULT_STEPS, MODELS, NETS, RECIPES

__all__ = ["build_parser", "main"]

PROG = "fm-pixel"
#: PixelConfig fields the train command sets (argparse dest -> flat field); on --resume they must agree.
CONFIG_ARGS = (
    "dataset", "classes", "conditional", "recipe", "net", "time", "coupling", "label_dropout", "batch_size", "lr",
    "schedule", "warmup_steps", "ema_decay", "seed", "solver", "nfe", "guidance", "model", "levels", "source", "kappa",
    "discrete_loss",
)  # fmt: skip
#: train options that do not apply to discrete runs (flow-matching only), and the ones only discrete runs take.
DISCRETE_REFUSED = ("--net", "--coupling", "--method", "--equal-fraction", "--init-from", "--teacher", "--pairs",
                    "--teacher-solver", "--teacher-nfe", "--from-scratch", "--distill", "--train-guidance")  # fmt: skip
DISCRETE_ONLY = ("--levels", *flags.DISCRETE_FLAGS)
#: Which network flags apply to which --net (argparse dest -> the network's keyword argument).
NET_FLAGS = {
    "unet": {"channels": "channels", "res_blocks": "num_res_blocks", "patch_size": "patch_size"},
    "mlp": {"hidden": "hidden", "depth": "depth"},
    "dit": {"patch_size": "patch_size", "hidden": "hidden_size", "depth": "depth"},
    "token-dit": {"patch_size": "patch_size", "hidden": "hidden_size", "depth": "depth"},
}
NET_ARGS = ("channels", "res_blocks", "patch_size", "hidden", "depth")
#: --pairs of --method reflow when not given (the teacher's (noise, image) pairs).
REFLOW_PAIRS = 60_000


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .config import PixelConfig

    p = argparse.ArgumentParser(prog=PROG, description="Flow matching in pixel space on MNIST and Fashion-MNIST.")
    add_version(p, PROG, __version__)
    sub = p.add_subparsers(dest="command", metavar="{train,sample,eval,export}")
    t, adv = add_train_parser(
        sub,
        "train a model; writes the run directory (checkpoint, loss.csv, sample grids)",
        "Train a flow-matching model on MNIST or Fashion-MNIST. Options left out take the recipe's value "
        "(see the README for the defaults and why).",
        config=PixelConfig,
        defaults={**RECIPES["default"], "guidance": ", ".join(f"{d} {g:g}" for d, g in DEFAULT_GUIDANCE.items())},
        recipe="default",
        default_steps=DEFAULT_STEPS,
        out_default="runs/<dataset>-<time>",
    )
    t.add_argument("--dataset", choices=IMAGE_DATASETS, default=None, help="data set (default: fashion-mnist)")
    t.add_argument(
        "--net",
        choices=NETS,
        default=None,
        help="velocity network: unet, mlp or dit (fm_nets.DiT, 2x2 patches); --model discrete uses token-dit "
        "(default: the recipe's, unet)",
    )
    t.add_argument("--model", choices=MODELS, default=None,
                   help="fm: flow matching on pixel values; discrete: discrete flow matching on grey levels "
                        "(fm-discrete, a token DiT) (default: fm)")  # fmt: skip
    flags.add_data_dir(t)
    flags.add_method(t, pairs_default=REFLOW_PAIRS, train_guidance=True)
    g = flags.add_discrete(t)
    g.add_argument(
        "--levels",
        type=argtypes.int_at_least(2, "an integer in [2, 256]", 256),
        default=None,
        help="grey levels per pixel, the tokens' vocabulary: 2 (binary), 16 or 256 (default: 16)",
    )
    # fmt: off
    adv.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                     help="default | mit (MIT 6.S184 lab) | post (blog post MLP) (default: default)")
    adv.add_argument("--channels", type=argtypes.channel_list, default=None,
                     help="U-Net widths per level, e.g. 32,64,128 (default: the recipe's)")
    adv.add_argument("--res-blocks", type=argtypes.int_at_least(1, "a positive integer", 16), default=None,
                     help="U-Net residual blocks per level (default: the recipe's)")
    adv.add_argument("--patch-size", type=argtypes.int_at_least(1, "a positive integer", 28), default=None,
                     help="U-Net pixel-unshuffle patch (1, 2, 4); DiT patch side (2, 4, 7) (default: the recipe's)")
    adv.add_argument("--hidden", type=argtypes.width_int, default=None, help="MLP width; DiT token width (default: the recipe's)")
    adv.add_argument("--depth", type=argtypes.int_at_least(0, "an integer >= 0", 256), default=None,
                     help="MLP blocks; DiT blocks (default: the recipe's)")
    # fmt: on
    add_sample_parser(sub, "draw images from a trained run into an .npz (images uint8 [N,28,28], labels int64 [N])")
    add_eval_parser(
        sub, "sample and score a run (FID vs the test split, label accuracy, coverage) into RUN/metrics.json"
    )
    add_export_parser(sub)
    return p


# ----------------------------------------------------------------------------- train
def _config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """PixelConfig from the command line (a usage error for impossible combinations)."""
    from fm_cli.method import method_overrides
    from fm_train import distributed

    from .config import DISCRETE_RECIPE, make_config

    recipe = args.recipe or "default"
    model = args.model or "fm"
    if model == "discrete":
        flags.refuse_inapplicable(parser, args, dict.fromkeys(DISCRETE_REFUSED, "--model discrete"))
        if distributed.launched_by_torchrun():
            parser.error("--model discrete trains in one process; run it without torchrun")
    else:
        flags.refuse_inapplicable(parser, args, dict.fromkeys(DISCRETE_ONLY, "--model fm"))
    net = DISCRETE_RECIPE["net"] if model == "discrete" else args.net or RECIPES[recipe]["net"]
    mine = NET_FLAGS[net]
    flags.refuse_inapplicable(
        parser, args, {f"--{d.replace('_', '-')}": f"--net {net}" for d in NET_ARGS if d not in mine}
    )
    over: dict[str, Any] = {k: getattr(args, k) for k in CONFIG_ARGS if k not in ("dataset", "recipe", "net")}
    over["model"] = model
    over.update(
        net=net,
        conditional=bool(args.conditional),
        net_config={kw: getattr(args, dest) for dest, kw in mine.items() if getattr(args, dest) is not None},
    )
    over.update(method_overrides(parser, args))  # reflow: guidance 1 by default, independent coupling
    try:
        return make_config(args.dataset or "fashion-mnist", recipe, **over)
    except ValueError as e:
        parser.error(str(e))


def _cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_cli.images import train_command
    from fm_cli.method import TeacherError, method_for_command
    from fm_data.images import DataError

    from . import training
    from .sampling import read_run_config

    flags.check_data_dir(parser, args.data_dir)
    method = method_for_command(parser, args, pairs_default=REFLOW_PAIRS)

    def train(cfg, run):
        return training.train(cfg, run.out, data_dir=args.data_dir, resume=args.resume, method=method,
                              sample_fn=training.grid_fn(cfg, method),
                              loggers=flags.make_loggers(args.log, run.out))  # fmt: skip

    return train_command(
        PROG,
        parser,
        args,
        prefix=args.dataset or "fashion-mnist",
        read=read_run_config,
        from_args=lambda: _config_from_args(parser, args),
        train=train,
        fields=CONFIG_ARGS,
        fixed=NET_ARGS,
        default_steps=DEFAULT_STEPS,
        settings=dict(compile=args.compile, sample_every=args.sample_every),
        errors=(DataError, TeacherError),
    )


# ----------------------------------------------------------------------------- sample, eval
def _load_model(args: argparse.Namespace, cfg):
    """(draw(n, **options) -> SampleResult with the run's EMA network, the device)."""
    import functools

    from fm_cli.images import sample_straightness
    from fm_cli.method import STRAIGHTNESS_N
    from fm_train import resolve_device

    from .sampling import generate, load_run

    device = resolve_device(args.device)
    model, _ = load_run(args.run, device=device)
    draw = functools.partial(generate, model, cfg, device=device)
    size = (1, cfg.model_size, cfg.model_size)  # eval also measures the straightness of the sampler's paths
    measure = functools.partial(sample_straightness, model, cfg, STRAIGHTNESS_N, size, device=device)
    draw.straightness = None if cfg.model == "discrete" else measure  # type: ignore[attr-defined]
    return draw, device


def _cmd_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_cli.images import sample_command

    from .sampling import read_run_config

    return sample_command(PROG, parser, args, read=read_run_config, load=lambda a, c: _load_model(a, c))


def _cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_cli.images import eval_command

    from .sampling import read_run_config

    return eval_command(PROG, parser, args, read=read_run_config, load=lambda a, c: _load_model(a, c))


def _cmd_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The run's EMA network as a save_pretrained folder with a model card (fm_cli.export)."""
    from fm_cli import error, one_line
    from fm_cli.export import export_image_run
    from fm_cli.method import method_flags

    from .sampling import load_run, read_run_config

    try:
        _, config = read_run_config(args.run)
        model, cfg = load_run(args.run)
        net_flags = {d: cfg.net_config[k] for d, k in NET_FLAGS[cfg.net].items() if k in cfg.net_config}
        net_flags.update(method_flags(config))  # --method meanflow ... (fm: none)
        if cfg.model == "discrete":
            from .discrete import export_discrete

            res = export_discrete(args.run, args.out, model=model, cfg=cfg, config=config, prog=PROG,
                                  fields=[f for f in CONFIG_ARGS if f"--{f}" not in DISCRETE_REFUSED],
                                  net_flags=net_flags, push=args.push)  # fmt: skip
        else:
            fields = [f for f in CONFIG_ARGS if f"--{f.replace('_', '-')}" not in DISCRETE_ONLY and f != "model"]
            res = export_image_run(args.run, args.out, model=model, cfg=cfg, config=config, prog=PROG, section="pixel",
                                   fields=fields, shape=(1, cfg.model_size, cfg.model_size), net_flags=net_flags,
                                   decode="fm_data.images.to_uint8 (crops to 28x28)", push=args.push)  # fmt: skip
    except ValueError as e:
        return error(PROG, "export", one_line(e))
    pushed = f"; pushed: {res.url}" if res.url else ""
    print(f"exported {type(model).__name__} ({', '.join(res.files)}) -> {res.folder}{pushed}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    commands = {"train": _cmd_train, "sample": _cmd_sample, "eval": _cmd_eval, "export": _cmd_export}
    return run_cli(PROG, build_parser(), commands, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
