"""Wiring of fm-latentgen: train the VAE, encode a data set, train the DiT on its latents.

Three kinds of directories, each self-contained::

    VAE run (train-vae)   config.json, checkpoint/, loss.csv (fm-train), vae/ (diffusers
                          save_pretrained of the EMA weights, scale and shift fitted),
                          reconstructions.png, metrics.json {"vae": ...}
    latents (encode)      vae/ (the VAE with the scale and shift of this data set),
                          latents-train.safetensors (fm_latent cache), reconstructions.png, info.json
    latent run (train)    config.json {"app": "fm-latentgen", "latent": LatentConfig, "net": ..., "vae": identity},
                          checkpoint/, loss.csv, vae/ (a copy: sample/eval need nothing else),
                          samples/step_NNNNNN.png, samples.png, metrics.json {"train": ..., "eval": [...]}

Flow matching on latents is fm-pixel's: the CondOT path (t = 0 noise, t = 1 data), its time
samplers, coupling and label dropout (``fm_pixel.training.make_loss_fn``), fm-train's loop
with fm-pixel's optimisation settings (``fm_pixel.training.train_config``); only the data (one
float tensor of cached latents on the device) and the network (fm_nets.DiT) differ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fm_data.images import ImageData, load_images, to_model
from fm_latent import LatentVAE, load_latent_cache, pad_to_multiple, small_autoencoder_kl, vae_loss
from fm_latent.cache import check_vae_identity
from fm_nets import build_net
from fm_pixel.training import TrainSummary, machine_load, make_loss_fn, update_metrics
from fm_train import Trainer, TrainConfig, dist_info, load_model_for_sampling, resolve_device
from fm_train.checkpoint import CheckpointError, read_json

from .config import IMAGE_SIZE, LatentConfig, VAEConfig

__all__ = [
    "APP_FORMAT", "CACHE_FILE", "VAE_DIR", "encode_dataset", "load_run", "load_vae", "read_run_config", "score_vae_run",
    "train_latent", "train_vae", "vae_train_config",
]  # fmt: skip

APP_FORMAT = "fm-latentgen"
VAE_DIR = "vae"
CACHE_FILE = "latents-train.safetensors"


def read_run_config(run_dir: str | Path, kind: str) -> dict[str, Any]:
    """RUN/config.json of an fm-latentgen run of ``kind`` ("vae" or "latent"); ValueError otherwise."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing (not an fm-latentgen run directory)")
    try:
        data = read_json(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if not isinstance(data, dict) or data.get("app") != APP_FORMAT or kind not in data:
        raise ValueError(f"{path}: not an fm-latentgen {kind} run (no \"app\": \"{APP_FORMAT}\" with a \"{kind}\" section)")
    return data


def load_vae(directory: str | Path, device: torch.device | str = "cpu") -> LatentVAE:
    """The VAE in ``directory`` (diffusers format) for 1-channel 28x28 images."""
    return LatentVAE.from_pretrained(directory, image_channels=1, image_size=IMAGE_SIZE, device=device)


# ----------------------------------------------------------------------------- the VAE
def vae_train_config(cfg: VAEConfig, **kw: Any) -> TrainConfig:
    """fm-train settings of ``train-vae`` (constant lr after warmup, clipping at 1, EMA)."""
    return TrainConfig(batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay,
                       seed=cfg.seed, grad_clip=1.0, log_every=25, ckpt_minutes=2.0, **kw)


def _image_batches(images: Tensor, batch_size: int, factor: int, device: torch.device) -> Callable:
    images = images.to(device)

    def batch_fn(step: int, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g, device=g.device).to(device)
        return pad_to_multiple(to_model(images[idx]), factor)

    return batch_fn


def reconstruction_scores(vae: LatentVAE, images: Tensor, dataset: str, *, data_dir=None) -> tuple[dict[str, Any], Tensor]:
    """MSE (in [-1, 1]) and classifier FID of reconstructions of uint8 images [N, 28, 28] vs the test split."""
    from fm_data.images import to_uint8
    from fm_eval.fid import fid

    x = to_model(images)
    rec = vae.decode(vae.encode(x, batch_size=500), batch_size=500).cpu()
    rec_u8 = to_uint8(rec)
    res = fid(rec_u8, dataset, "test", data_dir=data_dir)
    real = fid(images, dataset, "test", data_dir=data_dir)
    return {
        "n": int(images.shape[0]), "mse": round(float(((rec - x) ** 2).mean()), 5),
        "psnr_db": round(float(10 * torch.log10(4.0 / ((rec - x) ** 2).mean())), 2),
        "fid_reconstructions": round(res.fid, 4), "fid_originals": round(real.fid, 4),
        "fid_reference": f"{dataset} test split ({res.n_reference} images)",
    }, rec_u8  # fmt: skip


def train_vae(cfg: VAEConfig, run_dir: str | Path, tcfg: TrainConfig, *, data_dir=None, resume: bool = False,
              fit_n: int = 10_000, eval_n: int | None = 1_000) -> dict[str, Any]:
    """Train the small AutoencoderKL, save its EMA weights in diffusers format with the data's
    scale and shift (fitted on ``fit_n`` training images), and score ``eval_n`` test
    reconstructions (None: no scoring; see :func:`score_vae_run`)."""
    run_dir = Path(run_dir)
    data = load_images(cfg.dataset, "train", data_dir, classes=cfg.classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = small_autoencoder_kl(**cfg.arch())
    device = resolve_device(tcfg.device)
    factor = 2 ** (len(cfg.block_out_channels) - 1)

    def loss_fn(model: nn.Module, x: Tensor, g: torch.Generator) -> Tensor:
        return vae_loss(model, x, kl_weight=cfg.kl_weight, generator=g).loss

    trainer = Trainer(vae, loss_fn, _image_batches(data.images, cfg.batch_size, factor, device), tcfg, run_dir,
                      extra_config={"app": APP_FORMAT, "vae": cfg.to_dict()})
    result = trainer.train(resume=resume)
    wrapped = LatentVAE(trainer.ema.module, image_channels=1, image_size=IMAGE_SIZE, name_or_path=str(run_dir / VAE_DIR))
    g = torch.Generator().manual_seed(cfg.seed)
    fit = data.images[torch.randperm(data.images.shape[0], generator=g)[:fit_n]]
    scale, shift = wrapped.fit_scale_shift(to_model(fit).to(device), batch_size=500)
    wrapped.save_pretrained(run_dir / VAE_DIR)
    record = {
        "steps": result.steps, "seconds": round(result.seconds, 2), "final_loss": result.final_loss,
        "images_per_s": round(result.steps_this_call * cfg.batch_size / max(result.seconds, 1e-9), 2),
        "num_params": sum(p.numel() for p in vae.parameters()), "latent_shape": list(wrapped.latent_shape()),
        "scale": scale, "shift": shift, "machine": machine_load(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    update_metrics(run_dir, "vae", record)
    if eval_n is not None:
        record = score_vae_run(run_dir, cfg, eval_n, data_dir=data_dir, vae=wrapped)
    return record


def score_vae_run(run_dir: str | Path, cfg: VAEConfig, eval_n: int = 1_000, *, data_dir=None, vae: LatentVAE | None = None) -> dict[str, Any]:
    """Reconstruct ``eval_n`` test images with RUN/vae: scores under "reconstruction" in RUN/metrics.json
    (``"vae"`` record), and the first 50 beside their reconstructions in RUN/reconstructions.png."""
    from fm_pixel.training import read_metrics

    from .pictures import save_reconstructions

    run_dir = Path(run_dir)
    vae = vae or load_vae(run_dir / VAE_DIR)
    test = load_images(cfg.dataset, "test", data_dir, classes=cfg.classes).images[:eval_n]
    scores, rec = reconstruction_scores(vae, test, cfg.dataset, data_dir=data_dir)
    save_reconstructions(test[:50], rec[:50], run_dir / "reconstructions.png")
    record = {**read_metrics(run_dir).get("vae", {}), "reconstruction": scores}
    update_metrics(run_dir, "vae", record)
    return record


# ----------------------------------------------------------------------------- encoding
def encode_dataset(vae: LatentVAE, data: ImageData, out_dir: str | Path, *, dataset: str, fit_scale: bool = True,
                   sample: bool = False, seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
    """Encode every image of ``data`` once into OUT/latents-train.safetensors.

    With ``fit_scale`` the scale and shift are set from these latents (1/std, mean of the raw
    posterior modes) before they are scaled; the VAE is saved to OUT/vae with them, and the
    cache records that VAE's identity.
    """
    from fm_latent import save_latent_cache, scale_shift_from_latents

    from .pictures import save_reconstructions

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
            "posterior": "sample" if sample else "mode", "seed": seed}
    save_latent_cache(out_dir / CACHE_FILE, z, vae, labels=data.labels, info=info)
    rec = vae.decode(z[:50], batch_size=batch_size).cpu()
    from fm_data.images import to_uint8

    save_reconstructions(data.images[:50], to_uint8(rec), out_dir / "reconstructions.png")
    return {**info, "latent_shape": list(z.shape[1:]), "scale": vae.scale, "shift": vae.shift,
            "latent_mean": round(float(z.mean()), 4), "latent_std": round(float(z.std()), 4),
            "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- flow matching on latents
def _latent_batches(latents: Tensor, labels: Tensor | None, batch_size: int, device: torch.device) -> Callable:
    z = latents.to(device)
    y = labels.to(device) if labels is not None else None

    def batch_fn(step: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(0, z.shape[0], (batch_size,), generator=g, device=g.device).to(device)
        return z[idx], (y[idx] if y is not None else None)

    return batch_fn


def train_latent(cfg: LatentConfig, run_dir: str | Path, tcfg: TrainConfig, *, latents_dir: str | Path,
                 resume: bool = False, grid_fn: Callable | None = None) -> TrainSummary:
    """Flow matching with the DiT on the cache in ``latents_dir`` (checked against its VAE)."""
    run_dir = Path(run_dir)
    vae = load_vae(Path(latents_dir) / VAE_DIR)
    cache = load_latent_cache(Path(latents_dir) / CACHE_FILE, vae)
    if cache.info.get("dataset") != cfg.dataset:
        raise ValueError(f"the latents in {latents_dir} are of {cache.info.get('dataset')!r}, the run asks for {cfg.dataset!r}")
    latents, labels = cache.latents, cache.labels
    if cfg.classes is not None:
        keep = torch.isin(labels, torch.tensor(cfg.classes))
        latents, labels = latents[keep], labels[keep]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_net(cfg.net, num_classes=cfg.num_classes, **cfg.net_config)
    identity = vae.identity()
    main = dist_info().is_main  # under torchrun only rank 0 writes
    if main and (not resume or not (run_dir / VAE_DIR).is_dir()):
        vae.save_pretrained(run_dir / VAE_DIR)
    device = resolve_device(tcfg.device)
    extra = {"app": APP_FORMAT, "latent": cfg.to_dict(), "net": {"name": cfg.net, "config": model.config}, "vae": identity,
             "latents_dir": str(latents_dir)}
    trainer = Trainer(model, make_loss_fn(cfg), _latent_batches(latents, labels if cfg.conditional else None, cfg.batch_size, device),
                      tcfg, run_dir, sample_fn=grid_fn, extra_config=extra)
    load_before = machine_load()["loadavg_1min"]
    result = trainer.train(resume=resume)
    summary = TrainSummary(result=result, images_per_s=result.steps_this_call * cfg.batch_size / max(result.seconds, 1e-9),
                           num_params=sum(p.numel() for p in model.parameters()), device=str(trainer.device))
    record = {**summary.to_dict(), "machine": {**machine_load(), "loadavg_1min_at_start": load_before},
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "processes": trainer.world_size}
    if main:
        update_metrics(run_dir, "train", record)
    return summary


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, LatentConfig, LatentVAE]:
    """The run's DiT with EMA weights (eval mode), its LatentConfig and its VAE (identity checked)."""
    data = read_run_config(run_dir, "latent")
    cfg = LatentConfig.from_dict(data["latent"])

    def build(config: dict[str, Any]) -> nn.Module:
        return build_net(config["net"]["name"], **config["net"]["config"])

    model, _ = load_model_for_sampling(run_dir, build, device=device)
    vae = load_vae(Path(run_dir) / VAE_DIR, device=device)
    check_vae_identity(data["vae"], vae, f"{Path(run_dir)} (its DiT)")
    return model, cfg, vae
