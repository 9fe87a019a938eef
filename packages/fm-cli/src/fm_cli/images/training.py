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

from ..method import (
    FLOW_MAP,
    MethodConfig,
    TeacherError,
    check_teacher,
    is_two_time,
    method_loss,
    read_teacher,
    teacher_pairs,
)
from ..pictures import plot_loss, save_grid, save_titled_rows
from ..reflow import PairBatches
from .config import ImageRunConfig
from .sampling import sampler_caption

__all__ = [
    "TrainSummary",
    "column_labels",
    "flow_loss",
    "grid_layout",
    "loss_picture",
    "reflow_batches",
    "teacher_draw",
    "train_and_record",
    "training_grids",
]

#: The seed of the noise of the sample grids drawn during training (the same images at every step).
GRID_SEED = 1234


def flow_loss(
    cfg: ImageRunConfig, method: MethodConfig | None = None, velocity: Any = None
) -> Callable[[nn.Module, tuple[Tensor, Tensor | None], StepContext], Tensor]:
    """``loss_fn(model, (x1 [B, ...], y [B] | None), ctx)`` for fm-train: flow matching with the run's
    time sampler, coupling and label dropout; noise and times come from ``ctx.generator``, and under
    DDP the loss covers the rank's shard ``ctx.shard`` of the batch. No host-device sync.
    ``method`` (fm_cli.method): meanflow's loss with the same settings, or reflow's pairs as batches
    ``(x1, y, x0)`` (:func:`fm_cli.method.method_loss`); ``velocity``: the frozen teacher of a distilling
    meanflow run (:func:`fm_cli.method.distill_teacher`)."""
    coupling = ExactOTCoupling(by_label=True) if cfg.coupling == "ot" else IndependentCoupling()
    if method is not None and method.name != "fm":
        return method_loss(method, time_sampler=get_time_sampler(cfg.time), coupling=coupling,
                           label_dropout=cfg.label_dropout, num_classes=cfg.num_classes,
                           velocity=velocity)  # fmt: skip
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
    cfg: ImageRunConfig,
    draw: Callable[..., SampleResult],
    *,
    method: MethodConfig | None = None,
    teacher: Callable[[int, int, Any], SampleResult | None] | None = None,
) -> Callable[[nn.Module, int, Path], None]:
    """fm-train's ``sample_fn(ema_model, step, run_dir)``: draws :func:`grid_layout`'s images with
    ``draw(model, n, seed)`` (uint8 [n, H, W] in ``.x``) and writes RUN/samples/step_NNNNNN.png and
    RUN/samples.png, the class names (``cfg.names``) above the columns of a conditional grid and the
    step and sampler (guidance, NFE, solver) in a caption below it.

    A meanflow or reflow run (``method``) shows instead its one- and two-step samples (``draw(model, n,
    seed, solver=..., nfe=...)``: flow map for a two-time model, else Euler) above those of the run it
    learnt from at that run's own sampler, ``teacher(n, seed, device)`` (see :func:`teacher_draw`; None:
    left out), all from the same noise."""
    n, ncol = grid_layout(cfg)
    names = cfg.names

    def sample_fn(model: nn.Module, step: int, run_dir: Path) -> None:
        was_training = model.training
        model.eval()
        try:
            if method is not None and method.name != "fm":
                few_step_grid(model, step, run_dir)
                return
            res = draw(model, n, GRID_SEED)
        finally:
            model.train(was_training)
        labels = column_labels(res.labels, ncol, names)
        caption = sampler_caption(res, f"step {step}")
        save_grid(res.x, Path(run_dir) / "samples" / f"step_{step:06d}.png", ncol, labels=labels, caption=caption)
        save_grid(res.x, Path(run_dir) / "samples.png", ncol, labels=labels, caption=caption)

    def few_step_grid(model: nn.Module, step: int, run_dir: Path) -> None:
        solver = FLOW_MAP if is_two_time(model) else "euler"
        per = 2 * ncol  # two rows per sampler
        groups, first = [], None
        for k in (1, 2):
            res = draw(model, per, GRID_SEED, solver=solver, nfe=k)
            groups.append((f"NFE {k}", res.x))
            first = first or res
        assert first is not None
        device = next(model.parameters(), None)
        other = teacher(per, GRID_SEED, None if device is None else device.device) if teacher is not None else None
        if other is not None:
            groups.append((f"teacher NFE {other.nfe}", other.x))
        who = f"; teacher: {other.method}" if other is not None else ""
        g = "" if first.guidance is None else f"guidance {first.guidance:g}, "
        caption = f"step {step}: {g}{solver} NFE 1 and 2{who}"
        labels = column_labels(first.labels, ncol, names)
        for path in (Path(run_dir) / "samples" / f"step_{step:06d}.png", Path(run_dir) / "samples.png"):
            save_titled_rows(groups, path, ncol, labels=labels, caption=caption)

    return sample_fn


def teacher_draw(
    run: str | Path | None,
    load: Callable[[Path, Any], tuple[nn.Module, ImageRunConfig]],
    draw: Callable[[nn.Module, ImageRunConfig, int, int], SampleResult],
) -> Callable[[int, int, Any], SampleResult | None]:
    """``teacher(n, seed, device)`` for :func:`training_grids`: ``draw(model, cfg, n, seed)`` with the run
    ``run`` (``load(run, device) -> (EMA network, config)``, loaded on first use) at its own sampler; None
    when there is no such run or it cannot be loaded any more (the grid leaves its row out)."""
    held: dict[str, Any] = {}

    def teacher(n: int, seed: int, device: Any) -> SampleResult | None:
        if run is None:
            return None
        if "run" not in held:
            from fm_train import CheckpointError

            try:
                held["run"] = load(Path(run), device if device is not None else "cpu")
            except (ValueError, OSError, CheckpointError):
                held["run"] = None
        if held["run"] is None:
            return None
        model, cfg = held["run"]
        return draw(model, cfg, n, seed)

    return teacher


def reflow_batches(
    model: nn.Module,
    cfg: ImageRunConfig,
    method: MethodConfig,
    run_dir: str | Path,
    device: Any,
    *,
    read: Callable[[Path], tuple[Any, dict[str, Any]]],
    load: Callable[[Path, Any], tuple[nn.Module, ImageRunConfig]],
    shape: tuple[int, ...],
    resume: bool = False,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> PairBatches:
    """Reflow's ``batch_fn`` for an image run: the pairs (noise, solver state at t = 1, shape ``shape``) of
    the ``method.teacher`` run, generated into RUN/reflow or reused (fm_cli.method.teacher_pairs: the
    teacher's EMA network, its classes, guidance and labels, ``method``'s solver and NFE), in shuffled
    minibatches (fm_cli.reflow.PairBatches, seeded with the run's seed). ``model`` starts from the teacher's
    weights unless ``method.from_scratch`` (or ``resume``: the checkpoint holds the student's).

    ``read(run) -> (config, config.json)`` and ``load(run, device) -> (EMA network, config)`` are the app's;
    ``check(teacher config.json)`` raises for what else must agree (e.g. the VAE). fm_cli.method.TeacherError
    for a teacher that does not fit: a two-time run, other conditioning or state shape, another network
    without ``from_scratch``."""
    teacher_dir = Path(method.teacher or "")
    where = f"--teacher {str(teacher_dir)!r}"
    config = read_teacher(read, teacher_dir, "--teacher")
    student = {"name": getattr(cfg, "net", None), "config": model.config}  # the app's config names its network
    check_teacher(config, None if method.from_scratch else student, where)
    if check is not None:
        check(config)
    teacher, tcfg = load(teacher_dir, device)
    if tcfg.conditional != cfg.conditional:
        what = "conditional" if tcfg.conditional else "unconditional"
        raise TeacherError(f"{where} is {what}; the student must be too (--conditional)")
    if not method.from_scratch and not resume:
        model.load_state_dict(teacher.state_dict())
    pairs = teacher_pairs(teacher, method, run_dir, tuple(shape), seed=cfg.train.seed, num_classes=tcfg.num_classes,
                          classes=tcfg.sample_classes, guidance=tcfg.guidance, device=device,
                          progress=cfg.train.progress)  # fmt: skip
    return PairBatches(pairs, cfg.train.batch_size, seed=cfg.train.seed, device=device)
