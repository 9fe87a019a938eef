"""Flow matching on cached VAE latents with a DiT: training, loading and sampling a latent run.

    latent run (train)    config.json {"app": "fm-latentgen", "layout": 2, "latent": LatentConfig without
                          "train", "train": {...}, "net": ..., "vae": identity, "latents_dir": ...},
                          checkpoint/, loss.csv, vae/ (a copy: sample/eval need nothing else),
                          samples/step_NNNNNN.png, samples.png, metrics.json {"train": ..., "eval": [...]}

Flow matching on latents is fm-pixel's (``fm_cli.images.flow_loss``: the CondOT path, t = 0
noise, t = 1 data, with the run's time sampler, coupling and label dropout) in fm-train's loop;
only the data (one float tensor of cached latents on the device) and the network (fm_nets.DiT)
differ. Sampling integrates the latent ODE and decodes with the run's VAE (fm_cli.images.sample_images).
``method`` (fm_cli.method): ``meanflow`` trains a two-time DiT with MeanFlow's loss (``--init-from``
a flow-matching latent run); ``reflow`` trains on a teacher's (noise, latent) pairs.
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
    teacher_draw,
    train_and_record,
    training_grids,
)
from fm_cli.images import reflow_batches as image_reflow_batches
from fm_cli.method import MethodConfig, TeacherError, check_init_from, distill_teacher, method_entry, read_teacher
from fm_core import SampleResult
from fm_data.images import to_uint8
from fm_latent import LatentVAE, load_latent_cache
from fm_latent.cache import check_vae_identity
from fm_nets import build_net, load_one_time_weights
from fm_train import Trainer, dist_info, load_model_for_sampling, resolve_device

from .config import LatentConfig
from .vae import APP, CACHE_FILE, VAE_DIR, load_vae

__all__ = ["generate", "grid_fn", "init_from", "latent_batches", "load_run", "read_run_config", "train_latent"]


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


def grid_fn(
    cfg: LatentConfig, run_dir: str | Path, method: MethodConfig | None = None
) -> Callable[[nn.Module, int, Path], None]:
    """Sample grids during training: the EMA DiT, decoded by the run's VAE (loaded on first use); for a
    meanflow or reflow ``method`` its one- and two-step samples above its teacher's (fm_cli.images)."""
    holder: dict[str, LatentVAE] = {}

    def draw(model: nn.Module, n: int, seed: int, **options: Any) -> SampleResult:
        if "vae" not in holder:
            holder["vae"] = load_vae(Path(run_dir) / VAE_DIR, device=next(model.parameters()).device)
        return generate(model, holder["vae"], cfg, n, seed=seed, **options)

    def load_teacher(run: Path, device: Any) -> tuple[nn.Module, Any]:
        model, tcfg, vae = load_run(run, device=device)
        return model, (tcfg, vae)  # type: ignore[return-value]

    def draw_teacher(model: nn.Module, held: Any, n: int, seed: int) -> SampleResult:
        tcfg, vae = held
        return generate(model, vae, tcfg, n, seed=seed)

    teacher = teacher_draw(None if method is None else method.teacher_run, load_teacher, draw_teacher)
    return training_grids(cfg, draw, method=method, teacher=teacher)


def train_latent(
    cfg: LatentConfig,
    run_dir: str | Path,
    *,
    latents_dir: str | Path,
    resume: bool = False,
    sample_fn: Callable | None = None,
    loggers: list[Any] | None = None,
    method: MethodConfig | None = None,
) -> TrainSummary:
    """Flow matching with the DiT on the cache in ``latents_dir`` (checked against its VAE), with
    ``cfg.train``; the VAE is copied into RUN/vae and the summary recorded under "train".
    ``loggers``: fm-train's (default: loss.csv). ``method``: how to train (default flow matching;
    fm_cli.method), stored in config.json."""
    method = MethodConfig() if method is None else method
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
        model = build_net(cfg.net, num_classes=cfg.num_classes, **cfg.net_config, **two_time_kw(method))
    if method.init_from is not None and not resume:
        init_from(model, cfg, method.init_from)
    if dist_info().is_main and (not resume or not (run_dir / VAE_DIR).is_dir()):  # under torchrun only rank 0 writes
        vae.save_pretrained(run_dir / VAE_DIR)
    extra = {
        "app": APP,
        "layout": CONFIG_LAYOUT,
        "latent": config_section(cfg),
        "net": {"name": cfg.net, "config": model.config},
        "vae": vae.identity(),
        "latents_dir": str(latents_dir),
        **method_entry(method, run_dir, resume),
    }
    device = resolve_device(cfg.train.device)
    if method.name == "reflow":
        batches: Callable = reflow_batches(model, cfg, method, run_dir, device, vae=vae, resume=resume)
    else:
        batches = latent_batches(latents, labels if cfg.conditional else None, cfg.train.batch_size, device)
    loss = flow_loss(cfg, method, distill_teacher(lambda run, dev: load_run(run, device=dev)[0], method, device))
    trainer = Trainer(model, loss, batches, cfg.train, run_dir, sample_fn=sample_fn, extra_config=extra,
                      loggers=loggers)  # fmt: skip
    return train_and_record(trainer, resume=resume)


def two_time_kw(method: MethodConfig) -> dict[str, Any]:
    """``{"two_time": True}`` for a method that trains a two-time network (meanflow), else {}."""
    return {"two_time": True} if method.two_time else {}


def init_from(model: nn.Module, cfg: LatentConfig, run: str | Path) -> None:
    """Load the EMA weights of the flow-matching latent run ``run`` (the same DiT) into the two-time
    ``model`` (fm_nets.load_one_time_weights); fm_cli.method.TeacherError for a run that does not fit."""
    config = read_teacher(read_run_config, run, "--init-from")
    check_init_from(config, {"name": cfg.net, "config": model.config}, f"--init-from {str(run)!r}")
    teacher, _, _ = load_run(run)
    load_one_time_weights(model, teacher.state_dict())


def reflow_batches(
    model: nn.Module,
    cfg: LatentConfig,
    method: MethodConfig,
    run_dir: str | Path,
    device: torch.device,
    *,
    vae: LatentVAE,
    resume: bool = False,
) -> Callable:
    """Reflow's ``batch_fn``: the ``method.teacher`` latent run's (noise, latent) pairs
    (fm_cli.images.reflow_batches); the teacher must use this run's VAE and latent shape."""

    def check(config: dict[str, Any]) -> None:
        where = f"--teacher {str(method.teacher)!r}"
        try:
            check_vae_identity(config.get("vae") or {}, vae, where)
        except ValueError as e:
            raise TeacherError(" ".join(str(e).split())) from None
        teacher, _ = read_run_config(method.teacher or "")
        if list(teacher.latent_shape) != list(cfg.latent_shape):
            raise TeacherError(f"{where} has latents {teacher.latent_shape}, this run {cfg.latent_shape}")

    return image_reflow_batches(model, cfg, method, run_dir, device, read=read_run_config,
                                load=lambda run, dev: load_run(run, device=dev)[:2], resume=resume, check=check,
                                shape=tuple(cfg.latent_shape))  # fmt: skip


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, LatentConfig, LatentVAE]:
    """The run's DiT with EMA weights (eval mode), its LatentConfig and its VAE (identity checked)."""
    cfg, data = read_run_config(run_dir)

    def build(config: dict[str, Any]) -> nn.Module:
        return build_net(config["net"]["name"], **config["net"]["config"])

    model, _ = load_model_for_sampling(run_dir, build, device=device)
    vae = load_vae(Path(run_dir) / VAE_DIR, device=device)
    check_vae_identity(data["vae"], vae, f"{Path(run_dir)} (its DiT)")
    return model, cfg, vae
