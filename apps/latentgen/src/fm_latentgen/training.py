"""Flow matching on cached VAE latents with a DiT: training, loading and sampling a latent run.

    latent run (train)    config.json {"app": "fm-latentgen", "layout": 2, "latent": LatentConfig without
                          "train", "train": {...}, "net": ..., "vae": identity, "latents_dir": ...},
                          checkpoint/, loss.csv, vae/ (a copy: sample/eval need nothing else),
                          samples/step_NNNNNN.png, samples.png, metrics.json {"train": ..., "eval": [...]}

Flow matching on latents is fm-pixel's (``fm_cli.images.flow_loss``: the CondOT path, t = 0
noise, t = 1 data, with the run's time sampler, coupling and label dropout) in fm-train's loop;
only the data (one float tensor of cached latents on the device) and the network (fm_nets.DiT)
differ. Sampling integrates the latent ODE and decodes with the run's VAE (fm_cli.images.sample_images).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fm_cli.images import (
    CONFIG_LAYOUT,
    TrainSummary,
    config_section,
    flow_loss,
    read_run,
    sample_images,
    train_and_record,
    training_grids,
)
from fm_core import SampleResult
from fm_data.images import to_uint8
from fm_latent import LatentVAE, load_latent_cache
from fm_latent.cache import check_vae_identity
from fm_nets import build_net
from fm_train import Trainer, dist_info, load_model_for_sampling, resolve_device

from .config import LatentConfig
from .vae import APP, CACHE_FILE, VAE_DIR, load_vae

__all__ = ["generate", "grid_fn", "latent_batches", "load_run", "read_run_config", "train_latent"]


def read_run_config(run_dir: str | Path) -> tuple[LatentConfig, dict[str, Any]]:
    """(LatentConfig, the whole config.json) of a latent run; ValueError naming the file otherwise."""
    return read_run(run_dir, APP, "latent", LatentConfig)


def latent_batches(latents: Tensor, labels: Tensor | None, batch_size: int, device: torch.device) -> Callable:
    """``batch_fn(step, generator) -> (z [B, C, h, w], y [B] | None)``: one index draw and one gather."""
    z = latents.to(device)
    y = labels.to(device) if labels is not None else None

    def batch_fn(step: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(0, z.shape[0], (batch_size,), generator=g, device=g.device).to(device)
        return z[idx], (y[idx] if y is not None else None)

    return batch_fn


def generate(model: nn.Module, vae: LatentVAE, cfg: LatentConfig, n: int, **options: Any) -> SampleResult:
    """``n`` images uint8 [n, 28, 28] in ``.x``: the latent ODE from noise, then the VAE's decoder;
    ``options`` as fm_cli.images.sample_images (solver, nfe, guidance, label, seed, batch_size,
    trajectory, device, progress; defaults: the run's sampler, balanced labels)."""

    def decode(z: Tensor) -> Tensor:
        return to_uint8(vae.decode(z))

    return sample_images(model, cfg, n, cfg.latent_shape, decode=decode, **options)


def grid_fn(cfg: LatentConfig, run_dir: str | Path) -> Callable[[nn.Module, int, Path], None]:
    """Sample grids during training: the EMA DiT, decoded by the run's VAE (loaded on first use)."""
    holder: dict[str, LatentVAE] = {}

    def draw(model: nn.Module, n: int, seed: int) -> SampleResult:
        if "vae" not in holder:
            holder["vae"] = load_vae(Path(run_dir) / VAE_DIR, device=next(model.parameters()).device)
        return generate(model, holder["vae"], cfg, n, seed=seed)

    return training_grids(cfg, draw)


def train_latent(
    cfg: LatentConfig,
    run_dir: str | Path,
    *,
    latents_dir: str | Path,
    resume: bool = False,
    sample_fn: Callable | None = None,
    loggers: list[Any] | None = None,
) -> TrainSummary:
    """Flow matching with the DiT on the cache in ``latents_dir`` (checked against its VAE), with
    ``cfg.train``; the VAE is copied into RUN/vae and the summary recorded under "train".
    ``loggers``: fm-train's (default: loss.csv)."""
    run_dir = Path(run_dir)
    vae = load_vae(Path(latents_dir) / VAE_DIR)
    cache = load_latent_cache(Path(latents_dir) / CACHE_FILE, vae)
    if cache.info.get("dataset") != cfg.dataset:
        raise ValueError(
            f"the latents in {latents_dir} are of {cache.info.get('dataset')!r}, the run asks for {cfg.dataset!r}"
        )
    latents, labels = cache.latents, cache.labels
    if cfg.classes is not None:
        keep = torch.isin(labels, torch.tensor(cfg.classes))
        latents, labels = latents[keep], labels[keep]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_net(cfg.net, num_classes=cfg.num_classes, **cfg.net_config)
    if dist_info().is_main and (not resume or not (run_dir / VAE_DIR).is_dir()):  # under torchrun only rank 0 writes
        vae.save_pretrained(run_dir / VAE_DIR)
    extra = {
        "app": APP,
        "layout": CONFIG_LAYOUT,
        "latent": config_section(cfg),
        "net": {"name": cfg.net, "config": model.config},
        "vae": vae.identity(),
        "latents_dir": str(latents_dir),
    }
    batches = latent_batches(latents, labels if cfg.conditional else None, cfg.train.batch_size,
                             resolve_device(cfg.train.device))  # fmt: skip
    trainer = Trainer(model, flow_loss(cfg), batches, cfg.train, run_dir, sample_fn=sample_fn, extra_config=extra,
                      loggers=loggers)  # fmt: skip
    return train_and_record(trainer, resume=resume)


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, LatentConfig, LatentVAE]:
    """The run's DiT with EMA weights (eval mode), its LatentConfig and its VAE (identity checked)."""
    cfg, data = read_run_config(run_dir)

    def build(config: dict[str, Any]) -> nn.Module:
        return build_net(config["net"]["name"], **config["net"]["config"])

    model, _ = load_model_for_sampling(run_dir, build, device=device)
    vae = load_vae(Path(run_dir) / VAE_DIR, device=device)
    check_vae_identity(data["vae"], vae, f"{Path(run_dir)} (its DiT)")
    return model, cfg, vae
