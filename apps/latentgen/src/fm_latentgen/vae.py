"""The VAE of fm-latentgen: train it, score its reconstructions, encode a data set with it.

Two kinds of directories, each self-contained::

    VAE run (train-vae)   config.json {"app": "fm-latentgen", "layout": 2, "vae": VAEConfig without "train",
                          "train": {...}}, checkpoint/, loss.csv (fm-train), vae/ (diffusers save_pretrained
                          of the EMA weights, scale and shift fitted), reconstructions.png, metrics.json {"vae": ...}
    latents (encode)      vae/ (the VAE with the scale and shift of this data set),
                          latents-train.safetensors (fm_latent cache), reconstructions.png, info.json
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fm_cli import save_reconstructions
from fm_cli.images import CONFIG_LAYOUT, config_section, read_run, train_and_record
from fm_data.images import ImageData, load_images, to_model, to_uint8
from fm_latent import LatentVAE, pad_to_multiple, small_autoencoder_kl, vae_loss
from fm_train import RunDir, StepContext, Trainer, resolve_device

from .config import IMAGE_SIZE, VAEConfig

__all__ = ["APP", "CACHE_FILE", "VAE_DIR", "encode_dataset", "load_vae", "read_vae_run", "score_vae_run", "train_vae"]

APP = "fm-latentgen"
VAE_DIR = "vae"
CACHE_FILE = "latents-train.safetensors"


def read_vae_run(run_dir: str | Path) -> tuple[VAEConfig, dict[str, Any]]:
    """(VAEConfig, the whole config.json) of a train-vae run; ValueError naming the file otherwise."""
    return read_run(run_dir, APP, "vae", VAEConfig)


def load_vae(directory: str | Path, device: torch.device | str = "cpu") -> LatentVAE:
    """The VAE in ``directory`` (diffusers format) for 1-channel 28x28 images."""
    return LatentVAE.from_pretrained(directory, image_channels=1, image_size=IMAGE_SIZE, device=device)


def _image_batches(images: Tensor, batch_size: int, factor: int, device: torch.device) -> Callable:
    images = images.to(device)

    def batch_fn(step: int, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g, device=g.device).to(device)
        return pad_to_multiple(to_model(images[idx]), factor)

    return batch_fn


def train_vae(
    cfg: VAEConfig,
    run_dir: str | Path,
    *,
    data_dir=None,
    resume: bool = False,
    fit_n: int = 10_000,
    eval_n: int | None = 1_000,
) -> dict[str, Any]:
    """Train the small AutoencoderKL with ``cfg.train``, save its EMA weights in diffusers format with
    the data's scale and shift (fitted on ``fit_n`` training images), and score ``eval_n`` test
    reconstructions (None: no scoring; see :func:`score_vae_run`). Returns RUN/metrics.json's "vae"."""
    run = RunDir(run_dir)
    data = load_images(cfg.dataset, "train", data_dir, classes=cfg.classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        vae = small_autoencoder_kl(**cfg.arch())
    device = resolve_device(cfg.train.device)
    factor = 2 ** (len(cfg.block_out_channels) - 1)

    def loss_fn(model: nn.Module, x: Tensor, ctx: StepContext) -> Tensor:
        return vae_loss(model, x, kl_weight=cfg.kl_weight, generator=ctx.generator).loss

    batches = _image_batches(data.images, cfg.train.batch_size, factor, device)
    trainer = Trainer(vae, loss_fn, batches, cfg.train, run.path,
                      extra_config={"app": APP, "layout": CONFIG_LAYOUT, "vae": config_section(cfg)})  # fmt: skip
    train_and_record(trainer, resume=resume, section="vae")
    wrapped = LatentVAE(
        trainer.ema.module, image_channels=1, image_size=IMAGE_SIZE, name_or_path=str(run.path / VAE_DIR)
    )
    g = torch.Generator().manual_seed(cfg.train.seed)
    fit = data.images[torch.randperm(data.images.shape[0], generator=g)[:fit_n]]
    scale, shift = wrapped.fit_scale_shift(to_model(fit).to(device), batch_size=500)
    wrapped.save_pretrained(run.path / VAE_DIR)
    record = {**run.read_metrics()["vae"], "latent_shape": list(wrapped.latent_shape()), "scale": scale, "shift": shift}
    run.update_metrics("vae", record)
    if eval_n is not None:
        record = score_vae_run(run.path, cfg, eval_n, data_dir=data_dir, vae=wrapped)
    return record


def score_vae_run(
    run_dir: str | Path, cfg: VAEConfig, eval_n: int = 1_000, *, data_dir=None, vae: LatentVAE | None = None
) -> dict[str, Any]:
    """Reconstruct ``eval_n`` test images with RUN/vae: fm-eval's reconstruction scores under
    "reconstruction" in RUN/metrics.json's "vae" record, and the first 50 beside their
    reconstructions in RUN/reconstructions.png. Returns the record."""
    from fm_eval import reconstruction_scores

    run = RunDir(run_dir)
    vae = vae or load_vae(run.path / VAE_DIR)
    test = load_images(cfg.dataset, "test", data_dir, classes=cfg.classes).images[:eval_n]
    rec = vae.decode(vae.encode(to_model(test), batch_size=500), batch_size=500).cpu()
    scores = reconstruction_scores(test, rec, cfg.dataset, data_dir=data_dir)
    save_reconstructions(test[:50], to_uint8(rec[:50]), run.path / "reconstructions.png")
    record = {**run.read_metrics().get("vae", {}), "reconstruction": scores}
    run.update_metrics("vae", record)
    return record


def encode_dataset(
    vae: LatentVAE,
    data: ImageData,
    out_dir: str | Path,
    *,
    dataset: str,
    fit_scale: bool = True,
    sample: bool = False,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Encode every image of ``data`` once into OUT/latents-train.safetensors.

    With ``fit_scale`` the scale and shift are set from these latents (1/std, mean of the raw
    posterior modes) before they are scaled; the VAE is saved to OUT/vae with them, and the
    cache records that VAE's identity.
    """
    from fm_latent import save_latent_cache, scale_shift_from_latents

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    x = to_model(data.images)
    g = torch.Generator(device=vae.device).manual_seed(seed) if sample else None
    raw = vae.encode_raw(x, sample=sample, generator=g, batch_size=batch_size).cpu()
    if fit_scale:
        vae.set_scale_shift(*scale_shift_from_latents(raw))
    z = (raw - vae.shift) * vae.scale
    vae.name_or_path = str(out_dir / VAE_DIR)
    vae.save_pretrained(out_dir / VAE_DIR)
    info = {"dataset": dataset, "split": "train", "n": int(z.shape[0]), "image_size": IMAGE_SIZE,
            "posterior": "sample" if sample else "mode", "seed": seed}  # fmt: skip
    save_latent_cache(out_dir / CACHE_FILE, z, vae, labels=data.labels, info=info)
    rec = vae.decode(z[:50], batch_size=batch_size).cpu()
    save_reconstructions(data.images[:50], to_uint8(rec), out_dir / "reconstructions.png")
    return {**info, "latent_shape": list(z.shape[1:]), "scale": vae.scale, "shift": vae.shift,
            "latent_mean": round(float(z.mean()), 4), "latent_std": round(float(z.std()), 4),
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
