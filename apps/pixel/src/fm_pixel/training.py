"""Training wiring of fm-pixel: images (fm-data) + U-Net / MLP / DiT (fm-nets) + fm-cli's image
flow-matching loss (fm-core) + fm-train's loop.

* The whole training split is one uint8 tensor [N, 28, 28] on the training device; a batch is one
  index draw from the Trainer's generator and one gather (no per-image Python work), scaled to
  [-1, 1] (and padded to 32x32 when the network needs it) on the device.
* The loss is conditional flow matching on the linear (CondOT) path, t = 0 noise, t = 1 data
  (``fm_cli.images.flow_loss``: the run's time sampler, coupling, label dropout).
* ``method`` (fm_cli.method): ``meanflow`` trains a two-time network with MeanFlow's loss
  (``--init-from RUN``: starting from a flow-matching run's EMA weights); ``reflow`` trains on a
  teacher's (noise, sample) pairs.
* Sample grids are drawn with the EMA weights every ``sample_every`` steps and at the end
  (``RUN/samples/step_NNNNNN.png`` and ``RUN/samples.png``).

Run directory (see fm-train's README for ``checkpoint/`` and ``loss.csv``)::

    RUN/config.json   {"format": "fm-train-run", "train": {...}, "app": "fm-pixel", "layout": 2,
                       "pixel": PixelConfig without "train", "net": {"name": ..., "config": net.config}}
    RUN/metrics.json  {"train": summary of the last train call, "eval": [...]}
"""

from __future__ import annotations

import functools
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
    teacher_draw,
    train_and_record,
    training_grids,
)
from fm_cli.images import reflow_batches as image_reflow_batches
from fm_cli.method import (
    MethodConfig,
    TeacherError,
    check_init_from,
    distill_teacher,
    method_entry,
    read_teacher,
)
from fm_cli.reflow import PairBatches
from fm_data.images import ImageData, load_images, to_model
from fm_nets import build_net, load_one_time_weights
from fm_train import StepContext, Trainer

from .config import PixelConfig

__all__ = ["APP", "build_model", "grid_fn", "init_from", "make_batch_fn", "make_loss_fn", "run_config", "train"]

APP = "fm-pixel"


def make_loss_fn(
    cfg: PixelConfig, method: MethodConfig | None = None, velocity: Any = None
) -> Callable[[nn.Module, tuple[Tensor, Tensor | None], StepContext], Tensor]:
    """``loss_fn(model, (x [B, 1, H, W], y [B] | None), ctx)`` of the run: fm_cli.images.flow_loss, or for a
    discrete run fm_pixel.discrete.discrete_loss_fn on tokens [B, 28, 28]."""
    if cfg.model == "discrete":
        from .discrete import discrete_loss_fn

        return discrete_loss_fn(cfg)
    return flow_loss(cfg, method, velocity)


def build_model(cfg: PixelConfig, two_time: bool = False) -> nn.Module:
    """The velocity network ``model(x [B, 1, H, W], t [B], y [B] | None) -> v [B, 1, H, W]``; with
    ``two_time`` the average-velocity network ``model(x, r, t, y) -> u`` (MeanFlow)."""
    return build_net(cfg.net, **cfg.net_kwargs, **({"two_time": True} if two_time else {}))


def init_from(model: nn.Module, cfg: PixelConfig, run: str | Path) -> None:
    """Load the EMA weights of the flow-matching run ``run`` (the same network) into the two-time
    ``model`` (fm_nets.load_one_time_weights: u(x, r, t) = v(x, r) at step 0); fm_cli.method.TeacherError
    for a run that does not fit."""
    from .sampling import load_run, read_run_config

    where = f"--init-from {str(run)!r}"
    check_init_from(read_teacher(read_run_config, run, "--init-from"), {"name": cfg.net, "config": model.config}, where)
    teacher, _ = load_run(run)
    load_one_time_weights(model, teacher.state_dict())


def run_config(cfg: PixelConfig, net_config: dict[str, Any]) -> dict[str, Any]:
    """What fm-train stores beside its ``"train"`` section in config.json (must match on resume)."""
    return {"app": APP, "layout": CONFIG_LAYOUT, "pixel": config_section(cfg),
            "net": {"name": cfg.net, "config": net_config}}  # fmt: skip


def make_batch_fn(data: ImageData, cfg: PixelConfig, device: torch.device) -> Callable[[int, torch.Generator], tuple]:
    """``batch_fn(step, generator) -> (x [B, 1, H, W] in [-1, 1], y [B] | None)``; for a discrete run the
    images' grey-level tokens [B, 28, 28] instead of x.

    The data set is moved to ``device`` once; each batch is one ``torch.randint`` on the
    generator (uniform with replacement) and one gather. Under torchrun every rank draws the same
    global batch and the loss keeps the rank's slice (the gather of B images is cheap next to the network).
    """
    # the whole uint8 data set lives on the training device (MNIST: 47 MB), so a step copies nothing
    # from the host; on CUDA the one copy goes through pinned memory
    pin = device.type == "cuda"
    images = (data.images.pin_memory() if pin else data.images).to(device, non_blocking=pin)
    labels = data.labels.to(device) if cfg.conditional else None
    n, b, pad = images.shape[0], cfg.train.batch_size, cfg.pad
    if cfg.model == "discrete":
        from .discrete import to_tokens

        convert = to_tokens(cfg)
    else:
        convert = functools.partial(to_model, pad=pad)

    def batch_fn(step: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(0, n, (b,), generator=g, device=g.device).to(device)
        x = convert(images[idx])
        return x, (labels[idx] if labels is not None else None)

    return batch_fn


def grid_fn(cfg: PixelConfig, method: MethodConfig | None = None) -> Callable[[nn.Module, int, Path], None]:
    """fm-train's ``sample_fn``: sample grids of the EMA model with the run's sampler (fm_cli.images); for a
    meanflow or reflow ``method`` its one- and two-step samples above its teacher's."""
    from .sampling import generate, load_run

    def draw(model: nn.Module, n: int, seed: int, **options: Any):
        return generate(model, cfg, n, seed=seed, **options)

    run = None if method is None else method.teacher_run
    teacher = teacher_draw(run, lambda r, dev: load_run(r, device=dev), lambda m, c, n, s: generate(m, c, n, seed=s))
    return training_grids(cfg, draw, method=method, teacher=teacher)


def reflow_batches(
    model: nn.Module,
    cfg: PixelConfig,
    method: MethodConfig,
    run_dir: str | Path,
    device: torch.device,
    *,
    resume: bool = False,
) -> PairBatches:
    """Reflow's ``batch_fn``: the ``method.teacher`` fm-pixel run's pairs (fm_cli.images.reflow_batches),
    the teacher's images at the same size as this run's."""
    from .sampling import load_run, read_run_config

    def check(config: dict[str, Any]) -> None:
        teacher, _ = read_run_config(method.teacher or "")
        if teacher.model_size != cfg.model_size:
            raise TeacherError(f"--teacher {method.teacher!r} samples {teacher.model_size}px states, this run "
                               f"{cfg.model_size}px; use the same network")  # fmt: skip

    return image_reflow_batches(model, cfg, method, run_dir, device, read=read_run_config,
                                load=lambda run, dev: load_run(run, device=dev), resume=resume, check=check,
                                shape=(1, cfg.model_size, cfg.model_size))  # fmt: skip


def train(
    cfg: PixelConfig,
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    sample_fn: Callable[[nn.Module, int, Path], None] | None = None,
    data: ImageData | None = None,
    loggers: list[Any] | None = None,
    method: MethodConfig | None = None,
) -> TrainSummary:
    """Train one run into ``run_dir`` with ``cfg.train`` (budget, device, ...); ``sample_fn(ema_model,
    step, run_dir)`` draws sample grids (e.g. :func:`grid_fn`); ``loggers``: fm-train's (default: loss.csv).

    Loads the training split (only ``cfg.classes`` when given) as one uint8 tensor, builds the
    network, the loss and fm-train's Trainer, trains until the budget is used, and records a
    summary under ``"train"`` in RUN/metrics.json. Raises fm_data's DataError for missing or
    corrupt data and fm_train's TrainingDivergedError when the loss turns NaN. ``method``: how to
    train (default flow matching; fm_cli.method), stored in config.json.
    """
    method = MethodConfig() if method is None else method
    if data is None and method.name != "reflow":  # reflow learns its teacher's pairs, not the data set
        data = load_images(cfg.dataset, "train", data_dir, classes=cfg.classes)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, two_time=method.two_time)
    if method.init_from is not None and not resume:
        init_from(model, cfg, method.init_from)
    from fm_train import resolve_device

    device = resolve_device(cfg.train.device)
    if method.name == "reflow":
        batch_fn: Callable = reflow_batches(model, cfg, method, run_dir, device, resume=resume)
    else:
        assert data is not None
        batch_fn = make_batch_fn(data, cfg, device)
    extra = {**run_config(cfg, model.config), **method_entry(method, run_dir, resume)}
    from .sampling import load_run

    teacher = distill_teacher(lambda run, dev: load_run(run, device=dev)[0], method, device)
    trainer = Trainer(model, make_loss_fn(cfg, method, teacher), batch_fn, cfg.train, run_dir, sample_fn=sample_fn,
                      extra_config=extra, loggers=loggers)  # fmt: skip
    return train_and_record(trainer, resume=resume)
