"""The training commands of ``fm-latentgen``: ``train-vae``, ``encode`` and ``train`` (the parser
and ``sample``/``eval`` are in :mod:`fm_latentgen.cli`).

Checks that need no data come first (usage errors, exit 2); the run directory, ``--resume``, the
budget and the torchrun start are fm-cli's (``fm_cli.images.train_command``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fm_cli import flags

__all__ = [
    "CONFIG_ARGS",
    "LATENT_STEPS",
    "NET_ARGS",
    "PROG",
    "REFLOW_PAIRS",
    "VAE_STEPS",
    "cmd_encode",
    "cmd_train",
    "cmd_train_vae",
]

PROG = "fm-latentgen"
VAE_STEPS, LATENT_STEPS = 1500, 3000  # budgets when neither --steps nor --minutes is given
#: --pairs of --method reflow when not given (the teacher's (noise, latent) pairs).
REFLOW_PAIRS = 60_000
#: LatentConfig fields ``train`` sets (argparse dest = flat field name); on --resume they must agree.
CONFIG_ARGS = (
    "classes", "conditional", "time", "coupling", "label_dropout", "batch_size", "lr", "schedule", "warmup_steps",
    "ema_decay", "seed", "solver", "nfe", "guidance",
)  # fmt: skip
#: DiT flags (dest -> fm_nets.DiT keyword); fixed on --resume.
NET_ARGS = {
    "dit": "preset",
    "patch_size": "patch_size",
    "hidden": "hidden_size",
    "depth": "depth",
    "heads": "num_heads",
}
#: VAEConfig fields ``train-vae`` sets (dest = field); the architecture (VAE_ARCH: dest -> field) is fixed on --resume.
VAE_ARGS = ("dataset", "classes", "batch_size", "lr", "kl_weight", "seed")
VAE_ARCH = {"channels": "block_out_channels", "latent_channels": "latent_channels"}


def _vae_line(rec: dict[str, Any], out: Path) -> str:
    r = rec["reconstruction"]
    return (
        f"trained the VAE {rec['steps']} steps ({rec['seconds']:.0f} s, {rec['images_per_s']:.0f} images/s), "
        f"latents {'x'.join(map(str, rec['latent_shape']))}, scale {rec['scale']:.4g} shift {rec['shift']:.4g}; "
        f"test reconstructions: MSE {r['mse']:.4f}, PSNR {r['psnr_db']:.1f} dB, "
        f"FID {r['fid_reconstructions']:.2f} (originals {r['fid_originals']:.2f}) -> {out / 'vae'}"
    )


def cmd_train_vae(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Train the small AutoencoderKL (one process) and save it in diffusers format (RUN/vae)."""
    from fm_cli.images import train_command
    from fm_data.images import DataError
    from fm_train.distributed import launched_by_torchrun

    from .config import make_vae_config
    from .vae import read_vae_run

    if launched_by_torchrun():
        parser.error(
            "train-vae trains in one process (a few CPU minutes; its loss calls encode/decode, not the "
            "forward that DDP wraps); run it without torchrun"
        )
    flags.check_data_dir(parser, args.data_dir)

    def from_args():
        over = {d: getattr(args, d) for d in VAE_ARGS} | {f: getattr(args, d) for d, f in VAE_ARCH.items()}
        try:
            return make_vae_config(**over)
        except ValueError as e:
            parser.error(str(e))

    def train(cfg, run):
        from .vae import train_vae  # heavy imports (diffusers) only now

        return train_vae(cfg, run.out, data_dir=args.data_dir, resume=args.resume, fit_n=args.fit_n, eval_n=args.eval_n)

    return train_command(PROG, parser, args, prefix=f"vae-{args.dataset or 'mnist'}", read=read_vae_run,
                         from_args=from_args, train=train, fields=VAE_ARGS, fixed=tuple(VAE_ARCH),
                         default_steps=VAE_STEPS, errors=(DataError,), command="train-vae",
                         report=_vae_line)  # fmt: skip


def cmd_encode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Encode a data set's training split once into OUT/latents-train.safetensors (and OUT/vae, info.json)."""
    import dataclasses

    from fm_cli import error
    from fm_data.images import load_images
    from fm_train import RunDir, resolve_device

    from .vae import encode_dataset, load_vae

    flags.check_data_dir(parser, args.data_dir)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} exists and is not a directory")
    flags.set_threads(args.threads)
    try:
        vae = load_vae(args.vae, device=resolve_device(args.device))
        data = load_images(args.dataset, "train", args.data_dir)
        if args.limit is not None:
            data = dataclasses.replace(data, images=data.images[: args.limit], labels=data.labels[: args.limit])
        info = encode_dataset(
            vae, data, args.out, dataset=args.dataset, fit_scale=not args.keep_scale, sample=args.sample, seed=args.seed
        )
    except ValueError as e:  # fm-latent's and fm-data's errors
        return error(PROG, "encode", str(e))
    RunDir(args.out).write_json("info.json", {**info, "vae_source": str(args.vae)})
    print(
        f"encoded {info['n']} {args.dataset} images to latents {'x'.join(map(str, info['latent_shape']))} "
        f"(scale {info['scale']:.4g}, shift {info['shift']:.4g}; scaled mean {info['latent_mean']}, "
        f"std {info['latent_std']}) in {info['seconds']:.0f} s -> {args.out}"
    )
    return 0


def _latent_config(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """LatentConfig for a new run: the latent recipe on the cache in --latents, with the flags given."""
    from fm_cli.method import method_overrides
    from fm_latent import LatentCacheError, load_latent_cache
    from fm_nets import DIT_CONFIGS, DiT

    from .config import make_config
    from .vae import CACHE_FILE

    if args.latents is None:
        parser.error(f"--resume: {args.out} holds no run yet; start it with --latents")
    try:
        cache = load_latent_cache(args.latents / CACHE_FILE)
    except LatentCacheError as e:
        parser.error(f"--latents {str(args.latents)!r}: {e}")
    net: dict[str, Any] = dict(DIT_CONFIGS[args.dit]) if args.dit else {}
    net.update({f: getattr(args, d) for d, f in NET_ARGS.items() if d != "dit" and getattr(args, d) is not None})
    over = {k: getattr(args, k) for k in CONFIG_ARGS}
    over.update(conditional=bool(args.conditional), net_config=net)
    over.update(method_overrides(parser, args))  # reflow: guidance 1 by default, independent coupling
    try:
        cfg = make_config(cache.info.get("dataset", "mnist"), list(cache.latents.shape[1:]), **over)
        DiT(**cfg.net_config)  # DiT's own errors (patch size, heads) as usage errors
    except ValueError as e:
        parser.error(str(e))
    return cfg


def cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Flow matching with the DiT on a latent cache (torchrun: DDP)."""
    from fm_cli.images import train_command
    from fm_cli.method import method_for_command

    from . import training

    if args.latents is None and not args.resume:
        parser.error("--latents is required (the directory written by fm-latentgen encode)")
    method = method_for_command(parser, args, pairs_default=REFLOW_PAIRS)

    def train(cfg, run):
        latents = Path(run.stored["latents_dir"]) if run.stored is not None else args.latents
        sample_fn = training.grid_fn(cfg, run.out, method)
        return training.train_latent(cfg, run.out, latents_dir=latents, resume=args.resume, sample_fn=sample_fn,
                                     loggers=flags.make_loggers(args.log, run.out), method=method)  # fmt: skip

    return train_command(
        PROG,
        parser,
        args,
        prefix="latent",
        read=training.read_run_config,
        from_args=lambda: _latent_config(parser, args),
        train=train,
        fields=CONFIG_ARGS,
        fixed=tuple(NET_ARGS),
        default_steps=LATENT_STEPS,
        settings=dict(compile=args.compile, sample_every=args.sample_every),
        errors=(ValueError,),
    )
