"""The ``fm-latentgen`` command line: train-vae, encode, train, sample, eval.

    fm-latentgen train-vae --dataset mnist --minutes 4 --out runs/vae
    fm-latentgen encode --vae runs/vae/vae --dataset mnist --out runs/latents
    fm-latentgen train --latents runs/latents --conditional --minutes 10 --out runs/latent
    fm-latentgen sample --run runs/latent --n 1000 --nfe 10 --out samples.npz --grid grid.png --gif flow.gif
    fm-latentgen eval --run runs/latent --n 1000

Conventions, argument types and outputs are fm-pixel's (imported from ``fm_pixel.cli``): bad
values are argparse usage errors (exit 2) naming the value; runtime failures print one
``fm-latentgen <command>: error: ...`` line and exit 1; Ctrl-C exits 130 (``--resume`` continues).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from fm_pixel.cli import (
    EVALS_PER_STEP,
    SOLVERS,
    _classes,
    _channels,
    _device,
    _float_in,
    _grid_layout,
    _path,
    batch_int,
    count_int,
    finite_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    threads_int,
    unit_float,
)

__all__ = ["build_parser", "main"]

DATASETS = ("mnist", "fashion-mnist")
nonneg_float = _float_in(0.0, float("inf"), "a number >= 0")
SAMPLE_EVERY = 500
#: LatentConfig fields ``train`` can set (argparse dest -> field); on --resume they must agree.
CONFIG_ARGS = ("classes", "conditional", "time", "coupling", "label_dropout", "batch_size", "lr", "schedule",
               "warmup_steps", "ema_decay", "seed", "solver", "nfe", "guidance")
NET_ARGS = {"dit": "preset", "patch_size": "patch_size", "hidden": "hidden_size", "depth": "depth", "heads": "num_heads"}


def _budget(p: argparse.ArgumentParser, default_steps: str) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default: {default_steps} unless --minutes)")
    budget.add_argument("--minutes", type=positive_float, default=None, help="training-time budget in minutes")


def _common_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-latentgen", description="Latent flow matching on MNIST and Fashion-MNIST: a VAE, a DiT on its latents.")
    sub = p.add_subparsers(dest="command", metavar="{train-vae,encode,train,sample,eval}")

    v = sub.add_parser("train-vae", help="train a small AutoencoderKL and save it in diffusers format (RUN/vae)")
    v.add_argument("--dataset", choices=DATASETS, default="mnist")
    v.add_argument("--classes", type=_classes, default=None, help="train on these class ids only, e.g. 3 or 3,5")
    _budget(v, "1500")
    v.add_argument("--batch-size", type=batch_int, default=None)
    v.add_argument("--lr", type=positive_float, default=None)
    v.add_argument("--kl-weight", type=nonneg_float, default=None, help="KL weight per latent element (default 1e-4)")
    v.add_argument("--channels", type=_channels, default=None, help="encoder widths per level, e.g. 8,16,32,32 (len - 1 downsamplings)")
    v.add_argument("--latent-channels", type=positive_int, default=None)
    v.add_argument("--seed", type=seed_int, default=0)
    v.add_argument("--data-dir", type=_path, default=None, help="folder with mnist/ and fashion-mnist/ (default: $FM_DATA_DIR, ...)")
    v.add_argument("--out", type=_path, default=None, help="run directory (default runs/vae-<dataset>-<time>)")
    v.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    v.add_argument("--fit-n", type=count_int, default=10_000, help="training images the scale and shift are fitted on (default 10000)")
    v.add_argument("--eval-n", type=count_int, default=1000, help="test images whose reconstructions are scored (default 1000)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    _common_run(v)

    e = sub.add_parser("encode", help="encode a data set's training split once into a latent cache (OUT/latents-train.safetensors)")
    e.add_argument("--vae", required=True, help="a VAE in diffusers format: a directory (e.g. RUN/vae of train-vae) or a hub id")
    e.add_argument("--dataset", choices=DATASETS, default="mnist")
    e.add_argument("--out", type=_path, required=True, help="output directory (gets vae/ and the cache)")
    e.add_argument("--sample", action="store_true", help="store posterior samples instead of the posterior mode")
    e.add_argument("--keep-scale", action="store_true", help="keep the VAE's scale and shift instead of fitting them to this data set")
    e.add_argument("--limit", type=count_int, default=None, help="encode only the first N training images (quick checks)")
    e.add_argument("--seed", type=seed_int, default=0)
    e.add_argument("--data-dir", type=_path, default=None)
    _common_run(e)

    t = sub.add_parser("train", help="train the DiT on a latent cache; writes the run directory",
                       description="Flow matching on cached VAE latents with a DiT. Options left out take the "
                       "latent recipe's value (see the README).")
    t.add_argument("--latents", type=_path, default=None, help="directory written by encode (required unless --resume)")
    t.add_argument("--classes", type=_classes, default=None)
    t.add_argument("--conditional", action="store_true", default=None, help="class-conditional model (guidance possible)")
    _budget(t, "3000")
    t.add_argument("--batch-size", type=batch_int, default=None)
    t.add_argument("--lr", type=positive_float, default=None)
    t.add_argument("--seed", type=seed_int, default=None)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    t.add_argument("--compile", action="store_true", help="torch.compile the network")
    t.add_argument("--out", type=_path, default=None, help="run directory (default runs/latent-<time>)")
    t.add_argument("--resume", action="store_true")
    adv = t.add_argument_group("advanced (default: the latent recipe's)")
    adv.add_argument("--time", choices=("uniform", "logit-normal"), default=None)
    adv.add_argument("--coupling", choices=("independent", "ot"), default=None)
    adv.add_argument("--label-dropout", type=unit_float, default=None)
    adv.add_argument("--schedule", choices=("constant", "cosine"), default=None)
    adv.add_argument("--warmup-steps", type=nonneg_int, default=None)
    adv.add_argument("--ema-decay", type=unit_float, default=None)
    adv.add_argument("--dit", choices=("tiny", "small"), default=None, help="DiT size (default tiny)")
    adv.add_argument("--patch-size", type=positive_int, default=None, help="DiT patch size (default 2 for 8x8 latents and up, else 1)")
    adv.add_argument("--hidden", type=positive_int, default=None, help="DiT token width")
    adv.add_argument("--depth", type=positive_int, default=None, help="DiT blocks")
    adv.add_argument("--heads", type=positive_int, default=None, help="DiT attention heads")
    adv.add_argument("--solver", choices=SOLVERS, default=None)
    adv.add_argument("--nfe", type=count_int, default=None)
    adv.add_argument("--guidance", type=finite_float, default=None)
    adv.add_argument("--sample-every", type=positive_int, default=SAMPLE_EVERY)
    adv.add_argument("--quiet", action="store_true")
    _common_run(t)

    s = sub.add_parser("sample", help="draw and decode images into an .npz (images uint8 [N,28,28], labels int64 [N])")
    s.add_argument("--run", type=_path, required=True)
    s.add_argument("--n", type=count_int, required=True)
    s.add_argument("--solver", choices=SOLVERS, default=None)
    s.add_argument("--nfe", type=count_int, default=None)
    s.add_argument("--guidance", type=finite_float, default=None)
    s.add_argument("--label", type=nonneg_int, default=None, help="class of every image (default: balanced)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--out", type=_path, required=True, help="output file, FILE.npz")
    s.add_argument("--grid", type=_path, default=None, help="also write a PNG grid of (up to 100 of) the images")
    s.add_argument("--gif", type=_path, default=None, help="also write a GIF of the decoded latents moving from noise to images")
    s.add_argument("--batch-size", type=positive_int, default=500)
    _common_run(s)

    ev = sub.add_parser("eval", help="sample, decode and score a run (FID vs the test split, label accuracy, coverage) into RUN/metrics.json")
    ev.add_argument("--run", type=_path, required=True)
    ev.add_argument("--n", type=count_int, default=1000)
    ev.add_argument("--solver", choices=SOLVERS, default=None)
    ev.add_argument("--nfe", type=count_int, default=None)
    ev.add_argument("--guidance", type=finite_float, default=None)
    ev.add_argument("--seed", type=seed_int, default=0)
    ev.add_argument("--data-dir", type=_path, default=None)
    _common_run(ev)
    return p


# ----------------------------------------------------------------------------- helpers
def _error(command: str, message: str, code: int = 1) -> int:
    print(f"fm-latentgen {command}: error: {message}", file=sys.stderr)
    return code


def _setup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import torch

    if getattr(args, "data_dir", None) is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir {str(args.data_dir)!r} is not a directory (it should hold mnist/ and fashion-mnist/)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def _run_dir(parser: argparse.ArgumentParser, args: argparse.Namespace, prefix: str) -> Path:
    if args.resume and args.out is None:
        parser.error("--resume needs --out, the run directory to continue")
    out: Path = args.out or Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a directory")
    from fm_train.distributed import checks_files

    if not args.resume and checks_files() and ((out / "checkpoint").exists() or (out / "config.json").exists()):
        parser.error(f"--out {str(out)!r} already holds a run; pass --resume to continue it or choose another directory")
    return out


def _interrupted(command: str, out: Path) -> int:
    print(f"\nfm-latentgen {command}: interrupted; continue with: fm-latentgen {command} --out {out} --resume", file=sys.stderr)
    return 130


# ----------------------------------------------------------------------------- commands
def _cmd_train_vae(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fm_train.distributed import launched_by_torchrun

    from .config import VAEConfig

    if launched_by_torchrun():
        parser.error("train-vae trains in one process (a few CPU minutes; its loss calls encode/decode, not the "
                     "forward that DDP wraps); run it without torchrun")
    _setup(parser, args)
    out = _run_dir(parser, args, f"vae-{args.dataset}")
    if args.resume and (out / "config.json").is_file():
        from .training import read_run_config

        try:
            cfg = VAEConfig.from_dict(read_run_config(out, "vae")["vae"])
        except ValueError as e:
            parser.error(f"--out {str(out)!r}: {e}")
    else:
        over = {"dataset": args.dataset, "classes": args.classes, "batch_size": args.batch_size, "lr": args.lr,
                "kl_weight": args.kl_weight, "block_out_channels": args.channels, "latent_channels": args.latent_channels,
                "seed": args.seed}
        try:
            cfg = VAEConfig(**{k: v for k, v in over.items() if v is not None})
        except ValueError as e:
            parser.error(str(e))
    steps = args.steps if args.steps is not None or args.minutes is not None else 1500
    from .training import train_vae, vae_train_config  # heavy imports (diffusers, timm) only now
    from fm_data.images import DataError
    from fm_train import CheckpointError, TrainingDivergedError

    try:
        tcfg = vae_train_config(cfg, steps=steps, minutes=args.minutes, device=args.device, progress=not args.quiet)
        rec = train_vae(cfg, out, tcfg, data_dir=args.data_dir, resume=args.resume, fit_n=args.fit_n, eval_n=args.eval_n)
    except (TrainingDivergedError, DataError, CheckpointError) as e:
        return _error("train-vae", str(e))
    except KeyboardInterrupt:
        return _interrupted("train-vae", out)
    r = rec["reconstruction"]
    print(f"trained the VAE {rec['steps']} steps ({rec['seconds']:.0f} s, {rec['images_per_s']:.0f} images/s), latents "
          f"{'x'.join(map(str, rec['latent_shape']))}, scale {rec['scale']:.4g} shift {rec['shift']:.4g}; test reconstructions: "
          f"MSE {r['mse']:.4f}, PSNR {r['psnr_db']:.1f} dB, FID {r['fid_reconstructions']:.2f} (originals {r['fid_originals']:.2f}) "
          f"-> {out / 'vae'}")
    return 0


def _cmd_encode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from fm_data.images import DataError, load_images
    from fm_latent import LatentCacheError, LatentVAEError
    from fm_train import resolve_device

    from .training import encode_dataset, load_vae

    _setup(parser, args)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} exists and is not a directory")
    try:
        vae = load_vae(args.vae, device=resolve_device(args.device))
        data = load_images(args.dataset, "train", args.data_dir)
        if args.limit is not None:
            data = dataclasses.replace(data, images=data.images[: args.limit], labels=data.labels[: args.limit])
        info = encode_dataset(vae, data, args.out, dataset=args.dataset, fit_scale=not args.keep_scale, sample=args.sample, seed=args.seed)
    except (LatentVAEError, LatentCacheError, DataError) as e:
        return _error("encode", str(e))
    (args.out / "info.json").write_text(json.dumps({**info, "vae_source": str(args.vae)}, indent=2) + "\n")
    print(f"encoded {info['n']} {args.dataset} images to latents {'x'.join(map(str, info['latent_shape']))} "
          f"(scale {info['scale']:.4g}, shift {info['shift']:.4g}; scaled mean {info['latent_mean']}, std {info['latent_std']}) "
          f"in {info['seconds']:.0f} s -> {args.out}")
    return 0


def _latent_config(parser: argparse.ArgumentParser, args: argparse.Namespace):
    from fm_latent import LatentCacheError, load_latent_cache
    from fm_nets import DIT_CONFIGS

    from .config import make_config
    from .training import CACHE_FILE

    if args.latents is None:
        parser.error(f"--resume: {args.out} holds no run yet; start it with --latents")
    try:
        cache = load_latent_cache(args.latents / CACHE_FILE)
    except LatentCacheError as e:
        parser.error(f"--latents {str(args.latents)!r}: {e}")
    net: dict[str, Any] = dict(DIT_CONFIGS[args.dit]) if args.dit else {}
    net.update({field: getattr(args, dest) for dest, field in NET_ARGS.items() if dest != "dit" and getattr(args, dest) is not None})
    over = {k: getattr(args, k) for k in CONFIG_ARGS}
    over["conditional"] = bool(args.conditional)
    over["net_config"] = net
    if args.guidance is None and args.conditional and args.label_dropout == 0.0:
        over["guidance"] = 1.0
    try:
        from fm_nets import DiT

        cfg = make_config(cache.info.get("dataset", "mnist"), list(cache.latents.shape[1:]), **over)
        DiT(**cfg.net_config)  # DiT's own errors (patch size, heads) as usage errors
    except ValueError as e:
        parser.error(str(e))
    return cfg


def _cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .config import LatentConfig

    _setup(parser, args)
    if args.latents is None and not args.resume:
        parser.error("--latents is required (the directory written by fm-latentgen encode)")
    from fm_pixel.training import train_config

    from .training import read_run_config, train_latent

    from fm_train import resolve_device

    if args.bf16 and resolve_device(args.device).type != "cuda":
        parser.error(f"--bf16 needs a CUDA device (bf16 autocast gains nothing on {resolve_device(args.device).type})")
    out = _run_dir(parser, args, "latent")
    stored = None
    if args.resume and (out / "config.json").is_file():
        try:
            stored = read_run_config(out, "latent")
        except ValueError as e:
            parser.error(f"--out {str(out)!r}: {e}")
        cfg = LatentConfig.from_dict(stored["latent"])
        diffs = [f"--{k.replace('_', '-')}" for k in CONFIG_ARGS if getattr(args, k) is not None and getattr(args, k) != getattr(cfg, k)]
        diffs += [f"--{k.replace('_', '-')}" for k in NET_ARGS if getattr(args, k) is not None]
        if diffs:
            parser.error(f"--resume keeps the run's settings; these differ: {', '.join(diffs)}")
        latents = Path(stored["latents_dir"])
    else:
        cfg = _latent_config(parser, args)
        latents = args.latents
    steps, minutes = args.steps, args.minutes
    if steps is None and minutes is None:
        steps, minutes = (stored["train"].get("steps"), stored["train"].get("minutes")) if stored else (3000, None)
    try:
        tcfg = train_config(cfg, steps=steps, minutes=minutes, device=args.device, bf16=args.bf16, compile=args.compile,
                            progress=not args.quiet, sample_every=args.sample_every)
    except ValueError as e:
        parser.error(str(e))

    from fm_latent import LatentCacheError, LatentVAEError
    from fm_train import CheckpointError, TrainingDivergedError, distributed

    try:
        distributed.start_training(cfg.batch_size, args.out is not None, tcfg.device, "fm-latentgen train", parser.error)
        summary = train_latent(cfg, out, tcfg, latents_dir=latents, resume=args.resume, grid_fn=_grid_fn(cfg, out))
    except (TrainingDivergedError, CheckpointError, LatentCacheError, LatentVAEError, ValueError) as e:
        return _error("train", str(e))
    except KeyboardInterrupt:
        return _interrupted("train", out)
    finally:
        distributed.cleanup()
    r = summary.result
    loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "n/a"
    print(f"trained {r.steps} steps ({r.steps_this_call} now, {r.seconds:.0f} s, {summary.images_per_s:.0f} images/s "
          f"on {summary.device}), final loss {loss}; run in {out}")
    return 0


def _grid_fn(cfg, run_dir: Path):
    """Sample grids during training: the EMA DiT, decoded by the run's VAE (loaded on first use)."""
    from .pictures import save_grid
    from .sampling import generate
    from .training import VAE_DIR, load_vae

    n, ncol = _grid_layout(cfg)
    holder: dict[str, Any] = {}

    def grid(model, step: int, run: Path) -> None:
        device = next(model.parameters()).device
        if "vae" not in holder:
            holder["vae"] = load_vae(run_dir / VAE_DIR, device=device)
        was_training = model.training
        model.eval()
        try:
            res = generate(model, holder["vae"], cfg, n, seed=1234, device=device)
        finally:
            model.train(was_training)
        save_grid(res.images, run / "samples" / f"step_{step:06d}.png", ncol)
        save_grid(res.images, run / "samples.png", ncol)

    return grid


def _load_for_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace):
    from .config import LatentConfig
    from .training import read_run_config

    try:
        cfg = LatentConfig.from_dict(read_run_config(args.run, "latent")["latent"])
    except (ValueError, TypeError) as e:
        parser.error(f"--run {str(args.run)!r}: {e}")
    if not (args.run / "checkpoint").exists() and not (args.run / "checkpoint.old").exists():
        parser.error(f"--run {str(args.run)!r} has no checkpoint yet (training has not saved one)")
    solver = args.solver or cfg.solver
    per = EVALS_PER_STEP[solver]
    nfe = args.nfe if args.nfe is not None else (cfg.nfe if cfg.nfe % per == 0 else per * max(1, cfg.nfe // per))
    if nfe % per:
        parser.error(f"--nfe {nfe} is not a multiple of {per}, the evaluations per step of {solver}")
    guidance = cfg.guidance if args.guidance is None else args.guidance
    from .sampling import sample_labels

    try:
        sample_labels(cfg, 1, getattr(args, "label", None), guidance)
    except ValueError as e:
        parser.error(str(e))
    return cfg, solver, nfe, guidance


def _load(args: argparse.Namespace):
    from fm_train import resolve_device

    from .training import load_run

    device = resolve_device(args.device)
    model, _, vae = load_run(args.run, device=device)
    return model, vae, device


def _cmd_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:

    for flag, path, suffix in (("--out", args.out, ".npz"), ("--grid", args.grid, ".png"), ("--gif", args.gif, ".gif")):
        if path is not None and path.suffix.lower() != suffix:
            parser.error(f"{flag} {str(path)!r} must end in {suffix}")
    _setup(parser, args)
    cfg, solver, nfe, guidance = _load_for_sampling(parser, args)

    from fm_latent import LatentCacheError, LatentVAEError
    from fm_train import CheckpointError

    from fm_pixel.sampling import write_samples

    from .sampling import generate

    try:
        model, vae, device = _load(args)
    except (CheckpointError, LatentCacheError, LatentVAEError, ValueError) as e:
        return _error("sample", str(e))
    n_grid = min(args.n, 100)
    ncol = len(cfg.sample_classes) if cfg.conditional and args.label is None and len(cfg.sample_classes) >= 5 else None
    res = generate(model, vae, cfg, args.n, solver=solver, nfe=nfe, guidance=guidance, label=args.label, seed=args.seed,
                   batch_size=max(args.batch_size, n_grid if args.gif else 1), trajectory_for=n_grid if args.gif else 0,
                   device=device)
    print(write_samples(res, args.out, grid=args.grid, gif=args.gif, ncol=ncol, n_grid=n_grid))
    return 0


def _cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _setup(parser, args)
    cfg, solver, nfe, guidance = _load_for_sampling(parser, args)

    from fm_data.images import DataError
    from fm_latent import LatentCacheError, LatentVAEError
    from fm_pixel.evaluation import record_eval, score_samples
    from fm_train import CheckpointError

    from .sampling import generate

    try:
        model, vae, device = _load(args)
        res = generate(model, vae, cfg, args.n, solver=solver, nfe=nfe, guidance=guidance, seed=args.seed, device=device)
        scores = score_samples(res, cfg, data_dir=args.data_dir, device=device)
    except (CheckpointError, DataError, LatentCacheError, LatentVAEError, FileNotFoundError, ValueError) as e:
        return _error("eval", str(e))
    print(record_eval(args.run, res, scores, n=args.n, seed=args.seed))
    return 0


COMMANDS = {"train-vae": _cmd_train_vae, "encode": _cmd_encode, "train": _cmd_train, "sample": _cmd_sample, "eval": _cmd_eval}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    sub = parser._subparsers._group_actions[0].choices[args.command]
    return COMMANDS[args.command](sub, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
