"""The ``fm-latentgen`` command line: train-vae, encode, train, sample, eval.

    fm-latentgen train-vae --dataset mnist --minutes 4 --out runs/vae
    fm-latentgen encode --vae runs/vae/vae --dataset mnist --out runs/latents
    fm-latentgen train --latents runs/latents --conditional --minutes 10 --out runs/latent
    fm-latentgen sample --run runs/latent --n 1000 --nfe 10 --out samples.npz --grid grid.png --gif flow.gif
    fm-latentgen eval --run runs/latent --n 1000

Conventions, flags and outputs are those of the fm-* apps (fm-cli): bad values are argparse usage
errors (exit 2) naming the value; runtime failures print one ``fm-latentgen <command>: error: ...``
line and exit 1; Ctrl-C exits 130 (``--resume`` continues).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fm_cli import add_version, argtypes, flags, run_cli
from fm_cli.export import add_export_parser
from fm_cli.images import add_eval_parser, add_sample_parser, add_train_parser
from fm_data.images import IMAGE_DATASETS, parse_classes

from . import __version__
from .commands import LATENT_STEPS, PROG, REFLOW_PAIRS, VAE_STEPS
from .config import DEFAULT_GUIDANCE, LATENT_DEFAULTS, VAE_DEFAULTS

__all__ = ["build_parser", "main"]

classes_type = argtypes.value_type(parse_classes, "classes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Latent flow matching on MNIST and Fashion-MNIST: a VAE, a DiT on its latents."
    )
    add_version(p, PROG, __version__)
    sub = p.add_subparsers(dest="command", metavar="{train-vae,encode,train,sample,eval,export}")

    v = sub.add_parser("train-vae", help="train a small AutoencoderKL and save it in diffusers format (RUN/vae)")
    v.add_argument("--dataset", choices=IMAGE_DATASETS, default=None, help="data set (default: mnist)")
    v.add_argument(
        "--classes", type=classes_type, default=None, help="train on these class ids only, e.g. 3 or 3,5 (default: all)"
    )
    flags.add_budget(v, str(VAE_STEPS))
    v.add_argument(
        "--batch-size", type=argtypes.batch_int, default=None, help=f"(default: {VAE_DEFAULTS['batch_size']})"
    )
    v.add_argument(
        "--lr", type=argtypes.positive_float, default=None, help=f"peak learning rate (default: {VAE_DEFAULTS['lr']})"
    )
    # fmt: off
    v.add_argument("--kl-weight", type=argtypes.nonneg_float, default=None,
                   help=f"KL weight per latent element (default: {VAE_DEFAULTS['kl_weight']})")
    v.add_argument("--channels", type=argtypes.channel_list, default=None,
                   help="encoder widths per level, len - 1 downsamplings (default: 8,16,32,32)")
    v.add_argument("--latent-channels", type=argtypes.int_at_least(1, "a positive integer", 256), default=None,
                   help=f"(default: {VAE_DEFAULTS['latent_channels']})")
    # fmt: on
    flags.add_seed(v, None, default_text="0")
    flags.add_data_dir(v)
    flags.add_out(v, default_text="runs/vae-<dataset>-<time>")
    flags.add_resume(v)
    # fmt: off
    v.add_argument("--fit-n", type=argtypes.count_int, default=10_000,
                   help="training images the scale and shift are fitted on (default: 10000)")
    v.add_argument("--eval-n", type=argtypes.count_int, default=1000,
                   help="test images whose reconstructions are scored (default: 1000)")
    # fmt: on
    flags.add_quiet(v)
    flags.add_device(v)
    flags.add_threads(v)

    e = sub.add_parser(
        "encode", help="encode a data set's training split once into a latent cache (OUT/latents-train.safetensors)"
    )
    e.add_argument(
        "--vae",
        type=argtypes.nonempty_str,
        required=True,
        help="a VAE in diffusers format: a directory (e.g. RUN/vae of train-vae) or a hub id",
    )
    e.add_argument("--dataset", choices=IMAGE_DATASETS, default="mnist", help="data set (default: mnist)")
    flags.add_out(e, required=True, help="output directory (gets vae/ and the cache)")
    e.add_argument("--sample", action="store_true", help="store posterior samples instead of the posterior mode")
    e.add_argument(
        "--keep-scale",
        action="store_true",
        help="keep the VAE's scale and shift instead of fitting them to this data set",
    )
    e.add_argument(
        "--limit", type=argtypes.count_int, default=None, help="encode only the first N training images (default: all)"
    )
    flags.add_seed(e, 0, help="seed of the posterior samples (--sample)")
    flags.add_data_dir(e)
    flags.add_device(e)
    flags.add_threads(e)

    from .config import LatentConfig

    t, adv = add_train_parser(
        sub,
        "train the DiT on a latent cache; writes the run directory",
        "Flow matching on cached VAE latents with a DiT. Options left out take the latent recipe's value "
        "(see the README).",
        config=LatentConfig,
        defaults={**LATENT_DEFAULTS, "guidance": ", ".join(f"{d} {g:g}" for d, g in DEFAULT_GUIDANCE.items())},
        recipe="latent",
        default_steps=LATENT_STEPS,
        out_default="runs/latent-<time>",
    )
    t.add_argument("--latents", type=argtypes.nonempty_path, default=None,
                   help="directory written by encode (required unless --resume)")  # fmt: skip
    flags.add_method(t, pairs_default=REFLOW_PAIRS, train_guidance=True)
    adv.add_argument("--dit", choices=("tiny", "small"), default=None, help="DiT size (default: tiny)")
    adv.add_argument("--patch-size", type=argtypes.int_at_least(1, "a positive integer", 64), default=None,
                     help="DiT patch size (default: 2 for 8x8 latents and up, else 1)")  # fmt: skip
    adv.add_argument("--hidden", type=argtypes.width_int, default=None, help="DiT token width (default: the preset's)")
    adv.add_argument("--depth", type=argtypes.int_at_least(1, "a positive integer", 256), default=None,
                     help="DiT blocks (default: the preset's)")  # fmt: skip
    adv.add_argument("--heads", type=argtypes.int_at_least(1, "a positive integer", 256), default=None,
                     help="DiT attention heads (default: the preset's)")  # fmt: skip

    add_sample_parser(
        sub, "draw and decode images into an .npz (images uint8 [N,28,28], labels int64 [N])", what="the decoded images"
    )
    add_eval_parser(
        sub, "sample, decode and score a run (FID vs the test split, label accuracy, coverage) into RUN/metrics.json"
    )
    add_export_parser(sub, "the EMA DiT and the VAE")
    return p


# ----------------------------------------------------------------------------- sample, eval
def _load(args: argparse.Namespace, cfg):
    """(draw(n, **options) -> SampleResult with the run's EMA DiT and VAE, the device)."""
    import functools

    from fm_cli.images import sample_straightness
    from fm_cli.method import STRAIGHTNESS_N
    from fm_train import resolve_device

    from .training import generate, load_run

    device = resolve_device(args.device)
    model, _, vae = load_run(args.run, device=device)
    draw = functools.partial(generate, model, vae, cfg, device=device)
    shape = tuple(cfg.latent_shape)  # eval also measures the straightness of the sampler's (latent) paths
    measure = functools.partial(sample_straightness, model, cfg, STRAIGHTNESS_N, shape, device=device)
    draw.straightness = measure  # type: ignore[attr-defined]
    return draw, device


def _cmd_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_cli.images import sample_command

    from .training import read_run_config

    return sample_command(PROG, parser, args, read=read_run_config, load=_load)


def _cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_cli.images import eval_command

    from .training import read_run_config

    return eval_command(PROG, parser, args, read=read_run_config, load=_load)


def _cmd_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The run's EMA DiT as a save_pretrained folder, its VAE in OUT/vae, a model card (fm_cli.export)."""
    from fm_cli import error, one_line
    from fm_cli.export import export_image_run
    from fm_cli.method import method_flags

    from .commands import CONFIG_ARGS, NET_ARGS
    from .training import load_run, read_run_config

    try:
        _, config = read_run_config(args.run)
        model, cfg, _ = load_run(args.run)
        net_flags = {d: cfg.net_config[k] for d, k in NET_ARGS.items() if k in cfg.net_config}
        net_flags["latents"] = config.get("latents_dir")
        net_flags.update(method_flags(config))  # --method meanflow ... (fm: none)
        res = export_image_run(args.run, args.out, model=model, cfg=cfg, config=config, prog=PROG, section="latent",
                               fields=CONFIG_ARGS, net_flags=net_flags, shape=tuple(cfg.latent_shape),
                               decode="vae/ (LatentVAE.decode, crops to 28x28), then fm_data.images.to_uint8",
                               vae_dir=args.run / "vae", vae_identity=config.get("vae"), push=args.push)  # fmt: skip
    except ValueError as e:
        return error(PROG, "export", one_line(e))
    pushed = f"; pushed: {res.url}" if res.url else ""
    print(f"exported {type(model).__name__} and its VAE ({', '.join(res.files)}) -> {res.folder}{pushed}")
    return 0


def _commands() -> dict[str, Any]:
    from .commands import cmd_encode, cmd_train, cmd_train_vae

    return {
        "train-vae": cmd_train_vae,
        "encode": cmd_encode,
        "train": cmd_train,
        "sample": _cmd_sample,
        "eval": _cmd_eval,
        "export": _cmd_export,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), _commands(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
