"""Training wiring of fm-pixel: images (fm-data) + U-Net / MLP (fm-nets) + loss (fm-core) + fm-train.

* The whole training split is one uint8 tensor [N, 28, 28] on the training device; a batch is one
  index draw from the Trainer's generator and one gather (no per-image Python work), scaled to
  [-1, 1] (and padded to 32x32 when the U-Net needs it) on the device.
* The loss is conditional flow matching on the linear (CondOT) path: x_t = (1 - t) x0 + t x1,
  target x1 - x0, t = 0 noise, t = 1 data (Lipman et al. 2023), with label dropout to the null
  class for classifier-free guidance (Ho & Salimans 2022).
* Sample grids are drawn with the EMA weights every ``sample_every`` steps and at the end
  (``RUN/samples/step_NNNNNN.png`` and ``RUN/samples.png``).

Run directory (see fm-train's README for ``checkpoint/`` and ``loss.csv``)::

    RUN/config.json   {"format": "fm-train-run", "train": {...}, "app": "fm-pixel",
                       "pixel": PixelConfig, "net": {"name": ..., "config": net.config}}
    RUN/metrics.json  {"train": summary of the last train call, "eval": [...]}
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fm_core import CoupledBatch, Coupling, ExactOTCoupling, FlowMatchingLoss, IndependentCoupling, get_time_sampler
from fm_data.images import ImageData, load_images, to_model
from fm_nets import build_net
from fm_train import Trainer, TrainConfig, TrainResult, dist_info, load_model_for_sampling, resolve_device
from fm_train.checkpoint import CheckpointError, atomic_write_text, read_json

from .config import PixelConfig

__all__ = [
    "APP_FORMAT",
    "ClassOTCoupling",
    "TrainSummary",
    "build_loss",
    "build_model",
    "load_run",
    "make_batch_fn",
    "read_metrics",
    "read_run_config",
    "train",
    "train_config",
    "update_metrics",
]

APP_FORMAT = "fm-pixel"
METRICS_FILE = "metrics.json"


class ClassOTCoupling(Coupling):
    """Exact minibatch OT (fm_core.ExactOTCoupling) within each class of the batch.

    Coupling across classes would hand each class only the noise that lies near it, while
    conditional sampling starts every class from N(0, I); within a class the noise stays
    N(0, I) in distribution. Without labels the whole batch is one group. Only x0 is permuted.
    """

    def __init__(self) -> None:
        self._ot = ExactOTCoupling()

    def __call__(self, x0: Tensor, x1: Tensor, y: Tensor | None = None, generator=None) -> CoupledBatch:
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        n = x1.shape[0]
        groups = [torch.arange(n, device=x1.device)] if y is None else [torch.nonzero(y == k).flatten() for k in torch.unique(y)]
        index = torch.arange(n, device=x1.device)
        for g in groups:
            if len(g) >= 2:
                sub = self._ot(x0[g].cpu(), x1[g].cpu())
                index[g] = g[sub.x0_index.to(g.device)]
        return CoupledBatch(x0=x0[index], x1=x1, y=y, x0_index=index)


# ----------------------------------------------------------------------------- builders
def build_model(cfg: PixelConfig) -> nn.Module:
    """The velocity network ``model(x [B, 1, H, W], t [B], y [B] | None) -> v [B, 1, H, W]``."""
    kw = dict(cfg.net_config)
    if cfg.net == "mlp":
        kw["dim"] = cfg.model_size**2
    elif cfg.net == "dit":
        kw["input_size"] = cfg.model_size
    return build_net(cfg.net, num_classes=cfg.num_classes, **kw)


def build_loss(cfg: PixelConfig) -> FlowMatchingLoss:
    """Flow-matching loss on the CondOT path with the run's time sampler, coupling and label dropout."""
    coupling = ClassOTCoupling() if cfg.coupling == "ot" else IndependentCoupling()
    return FlowMatchingLoss(
        time_sampler=get_time_sampler(cfg.time), coupling=coupling,
        label_dropout=cfg.label_dropout, num_classes=cfg.num_classes,
    )  # fmt: skip


def train_config(
    cfg: PixelConfig,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    device: str = "auto",
    bf16: bool = False,
    compile: bool = False,
    progress: bool = True,
    sample_every: int | None = None,
    log_every: int = 25,
) -> TrainConfig:
    """fm-train's TrainConfig for the run (AdamW, schedule, EMA, budget, device)."""
    return TrainConfig(
        steps=steps, minutes=minutes, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, grad_clip=cfg.grad_clip,
        ema_decay=cfg.ema_decay, seed=cfg.seed, log_every=log_every, ckpt_every=None, ckpt_minutes=2.0,
        sample_every=sample_every, device=device, bf16=bf16, compile=compile, progress=progress,
    )  # fmt: skip


def extra_config(cfg: PixelConfig, model: nn.Module) -> dict[str, Any]:
    """What fm-train stores beside its own section in config.json (must match on resume)."""
    return {"app": APP_FORMAT, "pixel": cfg.to_dict(), "net": {"name": cfg.net, "config": model.config}}


def make_batch_fn(data: ImageData, cfg: PixelConfig, device: torch.device) -> Callable[[int, torch.Generator], tuple]:
    """``batch_fn(step, generator) -> (x [B, 1, H, W] in [-1, 1], y [B] | None)``.

    The data set is moved to ``device`` once; each batch is one ``torch.randint`` on the
    generator (uniform with replacement) and one gather.
    """
    # the whole uint8 data set lives on the training device (MNIST: 47 MB), so a step copies nothing
    # from the host; on CUDA the one copy goes through pinned memory
    pin = device.type == "cuda"
    images = (data.images.pin_memory() if pin else data.images).to(device, non_blocking=pin)
    labels = data.labels.to(device) if cfg.conditional else None
    n, b, pad = images.shape[0], cfg.batch_size, cfg.pad
    # Under torchrun every rank draws the same global batch (the same indices) and the loss keeps
    # the rank's slice: the gather of B images is cheap next to the network.

    def batch_fn(step: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(0, n, (b,), generator=g, device=g.device).to(device)
        x = to_model(images[idx], pad=pad)
        return x, (labels[idx] if labels is not None else None)

    return batch_fn


def make_loss_fn(cfg: PixelConfig) -> Callable:
    fm = build_loss(cfg)

    shard = dist_info().shard  # several processes (torchrun): every rank trains on its slice of the batch

    def loss_fn(model: nn.Module, batch: tuple, g: torch.Generator) -> Tensor:
        x, y = batch
        return fm(model, x, y, generator=g, shard=shard)

    return loss_fn


# ----------------------------------------------------------------------------- run files
def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """RUN/config.json of an fm-pixel run; ValueError naming the file when it is missing or foreign."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing (not an fm-pixel run directory)")
    try:
        data = read_json(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if not isinstance(data, dict) or data.get("app") != APP_FORMAT or "pixel" not in data:
        raise ValueError(f"{path}: not an fm-pixel run (no \"app\": \"{APP_FORMAT}\" with a \"pixel\" section)")
    return data


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_metrics(run_dir: str | Path, key: str, value: Any, *, append: bool = False) -> Path:
    """Set (or append to the list) ``key`` in RUN/metrics.json, written atomically."""
    data = read_metrics(run_dir)
    if append:
        items = data.get(key)
        data[key] = (items if isinstance(items, list) else []) + [value]
    else:
        data[key] = value
    path = Path(run_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def machine_load() -> dict[str, Any]:
    """CPU count, torch threads and the 1-minute load average (timings depend on them)."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        load = None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_1min": load, "machine": platform.machine()}


# ----------------------------------------------------------------------------- training
@dataclass
class TrainSummary:
    """What ``train`` did: fm-train's result plus throughput."""

    result: TrainResult
    images_per_s: float
    num_params: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "steps": r.steps, "steps_this_call": r.steps_this_call, "seconds": round(r.seconds, 2),
            "final_loss": r.final_loss, "stopped_by": r.stopped_by, "images_per_s": round(self.images_per_s, 2),
            "num_params": self.num_params, "device": self.device,
        }  # fmt: skip


def train(
    cfg: PixelConfig,
    run_dir: str | Path,
    tcfg: TrainConfig,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    grid_fn: Callable[[nn.Module, int, Path], None] | None = None,
    data: ImageData | None = None,
) -> TrainSummary:
    """Train one run into ``run_dir``; ``grid_fn(ema_model, step, run_dir)`` draws sample grids.

    Loads the training split (only ``cfg.classes`` when given) as one uint8 tensor, builds the
    network, the loss and fm-train's Trainer, trains until the budget is used, and records a
    summary under ``"train"`` in RUN/metrics.json. Raises fm_data's DataError for missing or
    corrupt data and fm_train's TrainingDivergedError when the loss turns NaN.
    """
    run_dir = Path(run_dir)
    if data is None:
        data = load_images(cfg.dataset, "train", data_dir, classes=cfg.classes)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    device = resolve_device(tcfg.device)
    trainer = Trainer(model, make_loss_fn(cfg), make_batch_fn(data, cfg, device), tcfg, run_dir,
                      sample_fn=grid_fn, extra_config=extra_config(cfg, model))
    load_before = machine_load()
    result = trainer.train(resume=resume)
    steps = result.steps_this_call
    summary = TrainSummary(
        result=result,
        images_per_s=steps * cfg.batch_size / max(result.seconds, 1e-9),
        num_params=sum(p.numel() for p in model.parameters()),
        device=str(trainer.device),
    )
    record = summary.to_dict()
    record["machine"] = {**machine_load(), "loadavg_1min_at_start": load_before["loadavg_1min"]}
    record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["processes"] = trainer.world_size
    if trainer.is_main:
        update_metrics(run_dir, "train", record)
    return summary


# ----------------------------------------------------------------------------- loading
def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, PixelConfig]:
    """The run's network with its EMA weights (eval mode, on ``device``) and its PixelConfig."""
    data = read_run_config(run_dir)
    try:
        cfg = PixelConfig.from_dict(data["pixel"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: bad \"pixel\" section ({e})") from None

    def build(config: dict[str, Any]) -> nn.Module:
        net = config.get("net", {})
        return build_net(net["name"], **net["config"])

    model, _ = load_model_for_sampling(run_dir, build, device=device)
    return model, cfg

