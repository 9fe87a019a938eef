"""Training wiring the image apps share: the flow-matching loss of a run, the summary it records
in metrics.json, and the sample grids drawn during training.

The loss is conditional flow matching on the linear (CondOT) path: x_t = (1 - t) x0 + t x1,
target x1 - x0, t = 0 noise, t = 1 data (Lipman et al. 2023), with the run's time sampler,
coupling (``ot``: exact minibatch OT within each class) and label dropout to the null class for
classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fm_core import ExactOTCoupling, FlowMatchingLoss, IndependentCoupling, SampleResult, get_time_sampler
from fm_train import StepContext, Trainer, TrainResult, machine_info

from ..pictures import plot_loss, save_grid
from .config import ImageRunConfig
from .sampling import sampler_caption

__all__ = [
    "TrainSummary",
    "column_labels",
    "flow_loss",
    "grid_layout",
    "loss_picture",
    "train_and_record",
    "training_grids",
]

#: The seed of the noise of the sample grids drawn during training (the same images at every step).
GRID_SEED = 1234


def flow_loss(cfg: ImageRunConfig) -> Callable[[nn.Module, tuple[Tensor, Tensor | None], StepContext], Tensor]:
    """``loss_fn(model, (x1 [B, ...], y [B] | None), ctx)`` for fm-train: flow matching with the run's
    time sampler, coupling and label dropout; noise and times come from ``ctx.generator``, and under
    DDP the loss covers the rank's shard ``ctx.shard`` of the batch. No host-device sync."""
    coupling = ExactOTCoupling(by_label=True) if cfg.coupling == "ot" else IndependentCoupling()
    fm = FlowMatchingLoss(
        time_sampler=get_time_sampler(cfg.time),
        coupling=coupling,
        label_dropout=cfg.label_dropout,
        num_classes=cfg.num_classes,
    )

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor | None], ctx: StepContext) -> Tensor:
        x, y = batch
        return fm(model, x, y, generator=ctx.generator, shard=ctx.shard)

    return loss_fn


@dataclass
class TrainSummary:
    """What a training call did: fm-train's result plus throughput (in metrics.json also the precision
    trained in and, with --compile, ``compile_seconds``: the first step's time, inside ``seconds``)."""

    result: TrainResult
    images_per_s: float
    num_params: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "steps": r.steps, "steps_this_call": r.steps_this_call, "seconds": round(r.seconds, 2),
            "final_loss": r.final_loss, "stopped_by": r.stopped_by, "images_per_s": round(self.images_per_s, 2),
            "num_params": self.num_params, "device": self.device, "precision": r.precision,
            "compile_seconds": None if r.compile_seconds is None else round(r.compile_seconds, 2),
        }  # fmt: skip


def train_and_record(trainer: Trainer, *, resume: bool = False, section: str = "train") -> TrainSummary:
    """``trainer.train(resume=resume)``, then (rank 0) the summary under ``section`` in RUN/metrics.json
    with the machine's load at the start and the end, the time and the number of processes, and
    RUN/loss.png (:func:`loss_picture`)."""
    load_before = machine_info()["loadavg_1min"]
    result = trainer.train(resume=resume)
    summary = TrainSummary(
        result=result,
        images_per_s=result.steps_this_call * trainer.config.batch_size / max(result.seconds, 1e-9),
        num_params=sum(p.numel() for p in trainer.model.parameters()),
        device=str(trainer.device),
    )
    if trainer.is_main:
        record = {
            **summary.to_dict(),
            "machine": {**machine_info(), "loadavg_1min_at_start": load_before},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "processes": trainer.world_size,
        }
        trainer.run.update_metrics(section, record)
        loss_picture(trainer.run.path, ylabel="loss (MSE of the velocity)" if section == "train" else f"{section} loss")
    return summary


def loss_picture(run_dir: str | Path, title: str = "", ylabel: str = "loss (MSE of the velocity)") -> Path | None:
    """RUN/loss.png (:func:`fm_cli.pictures.plot_loss`) from RUN/loss.csv; None when loss.csv has no
    row yet or matplotlib is not installed (the picture is a convenience, never a failed run)."""
    from fm_train import RunDir

    run = RunDir(run_dir)
    history = run.read_history(("step", "loss", "lr"))
    if not history["step"]:
        return None
    try:
        title = title or f"training loss: {run.path.name}"
        return plot_loss(run.path / "loss.png", history, title=title, ylabel=ylabel)
    except ImportError:
        return None


def grid_layout(cfg: ImageRunConfig) -> tuple[int, int]:
    """(number of images, images per row) of the training sample grids: a conditional run with 5
    classes or more gets one column per class and 4 rows; otherwise 32 images, 8 a row."""
    if cfg.conditional and len(cfg.sample_classes) >= 5:
        ncol = len(cfg.sample_classes)
        return 4 * ncol, ncol
    return 32, 8


def column_labels(labels: Tensor | None, ncol: int, names: Sequence[str]) -> list[str] | None:
    """The class names above the columns of a grid of images drawn with ``labels`` [N], ``ncol`` a
    row, when every column holds one class and no two columns the same one; else None."""
    if labels is None or len(labels) == 0:
        return None
    ids = [int(v) for v in labels.tolist()]
    ncol = min(ncol, len(ids))
    per_column = ids[:ncol]
    if len(set(per_column)) != ncol or any(v != per_column[i % ncol] for i, v in enumerate(ids)):
        return None
    return [names[c] for c in per_column]


def training_grids(
    cfg: ImageRunConfig, draw: Callable[[nn.Module, int, int], SampleResult]
) -> Callable[[nn.Module, int, Path], None]:
    """fm-train's ``sample_fn(ema_model, step, run_dir)``: draws :func:`grid_layout`'s images with
    ``draw(model, n, seed)`` (uint8 [n, H, W] in ``.x``) and writes RUN/samples/step_NNNNNN.png and
    RUN/samples.png, the class names (``cfg.names``) above the columns of a conditional grid and the
    step and sampler (guidance, NFE, solver) in a caption below it."""
    n, ncol = grid_layout(cfg)
    names = cfg.names

    def sample_fn(model: nn.Module, step: int, run_dir: Path) -> None:
        was_training = model.training
        model.eval()
        try:
            res = draw(model, n, GRID_SEED)
        finally:
            model.train(was_training)
        labels = column_labels(res.labels, ncol, names)
        caption = sampler_caption(res, f"step {step}")
        save_grid(res.x, Path(run_dir) / "samples" / f"step_{step:06d}.png", ncol, labels=labels, caption=caption)
        save_grid(res.x, Path(run_dir) / "samples.png", ncol, labels=labels, caption=caption)

    return sample_fn
