"""Training wiring of fm-toy2d: toy data (fm-data) + MLP (fm-nets) + loss (fm-core) + fm-train's Trainer.

Everything that connects the packages for a flow-matching run lives here, so other commands
(``sample``, ``eval``, the pictures, the ``study``) reuse it:

* :func:`train` trains one run into a directory (progress bar, EMA, checkpoints, ``loss.csv``)
  and accepts a ``callback(ema_model, step, run_dir)`` every ``callback_every`` steps (the
  study's periodic evaluation) and a ``stop_fn(StepInfo) -> bool`` (fm-train's stop hook).
* :func:`load_run` rebuilds a trained run (EMA weights) as a :class:`FlowRun`, whose
  :meth:`FlowRun.sample` draws samples with fm-core's ``sample``.
* :func:`read_run` reads ``RUN/config.json`` of either model kind (fm-train's RunDir).

``method`` (fm_cli.method): ``meanflow`` trains a two-time MLP ``model(x, r, t, y)`` with MeanFlow's loss
(``init_from``: a flow-matching run's EMA weights first); ``reflow`` trains on a teacher run's (noise,
sample) pairs kept in RUN/reflow. A two-time run samples by flow map (``solver="flow-map"``, its
default) or with any ODE solver through u(x, t, t).

Time convention: t = 0 is N(0, I) noise, t = 1 is data; sampling integrates t from 0 to 1.
The model works in data coordinates (no rescaling), so likelihoods need no correction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fm_cli.method import (
    FLOW_MAP,
    MethodConfig,
    distill_teacher,
    flow_map_sampler,
    is_two_time,
    method_entry,
    method_loss,
    read_method,
    sampling_model,
)
from fm_core import ExactOTCoupling, FlowMatchingLoss, IndependentCoupling, SampleResult, get_time_sampler, sample
from fm_data.toy import ToyDistribution, get_toy
from fm_nets.mlp import MLPVelocity
from fm_train import RunDir, StepContext, StopFn, Trainer, TrainResult, load_model_for_sampling, resolve_device
from fm_train.checkpoint import CheckpointError

from .config import MODELS, SOLVERS, RunConfig

__all__ = [
    "APP_FORMAT",
    "SAMPLE_BATCH",
    "FlowRun",
    "batch_fn_for",
    "build_distribution",
    "build_loss",
    "build_model",
    "label_problem",
    "load_run",
    "read_run",
    "run_model_kind",
    "train",
]

APP_FORMAT = "fm-toy2d"
#: Samples per solver call (the noise is drawn up front, so the samples do not depend on it).
SAMPLE_BATCH = 50_000


class InputScaled(nn.Module):
    """``v(x, t, y) = net(scale * x, t, y)``: the net sees coordinates multiplied by ``scale`` (a two-time
    net: ``u(x, r, t, y) = net(scale * x, r, t, y)``).

    Equivalent to a first layer initialised ``scale`` times larger: with data in [-4, 4] and
    cells of side 1 the default init varies too slowly across a cell, and the MLP needs
    thousands of steps to grow the sharp boundaries the checkerboard has (spectral bias).
    """

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net = net
        self.scale = float(scale)

    @property
    def config(self) -> dict:
        return self.net.config

    def forward(self, x: Tensor, *times_and_label: Any) -> Tensor:
        return self.net(x * self.scale, *times_and_label)


# ----------------------------------------------------------------------------- builders
def build_distribution(cfg: RunConfig) -> ToyDistribution:
    """The toy data set of the run (fm_data.toy)."""
    return get_toy(cfg.dataset, **cfg.data_kwargs)


def build_model(cfg: RunConfig, dist: ToyDistribution | None = None, two_time: bool = False) -> nn.Module:
    """The velocity MLP: ``model(x [B, D], t [B], y [B] | None) -> v [B, D]``; with ``two_time`` the
    average-velocity MLP ``model(x, r, t, y) -> u`` (MeanFlow)."""
    dist = build_distribution(cfg) if dist is None else dist
    num_classes = dist.num_classes if cfg.conditional else None
    more = {"two_time": True} if two_time else {}
    return _wrap(MLPVelocity(dist.dim, num_classes=num_classes, **cfg.net, **more), cfg)


def _wrap(net: nn.Module, cfg: RunConfig) -> nn.Module:
    return net if cfg.input_scale == 1.0 else InputScaled(net, cfg.input_scale)


def _coupling(cfg: RunConfig) -> Any:
    if cfg.coupling == "ot":
        return ExactOTCoupling(by_label=cfg.conditional, block=cfg.ot_block)
    return IndependentCoupling()


def build_loss(cfg: RunConfig) -> FlowMatchingLoss:
    """Flow-matching loss on the CondOT path with the run's time sampler, coupling and target.

    ``coupling="ot"``: exact OT in blocks of ``ot_block`` points (scipy's assignment is O(B^3)),
    within each class when conditional, so the noise paired with a class stays N(0, I)."""
    return FlowMatchingLoss(time_sampler=get_time_sampler(cfg.time), coupling=_coupling(cfg), target=cfg.target)


def batch_fn_for(
    cfg: RunConfig, dist: ToyDistribution
) -> Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]]:
    """The Trainer's ``batch_fn(step, generator)``: ``cfg.batch_size`` points [B, D] of the data set
    and their labels [B] (None unless conditional), drawn from the Trainer's generator, on the run's device."""
    device = resolve_device(cfg.device)

    def batch_fn(step: int, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if cfg.conditional:
            x, y = dist.sample_labeled(cfg.batch_size, generator=gen)
            return x.to(device), y.to(device)
        return dist.sample(cfg.batch_size, generator=gen).to(device), None

    return batch_fn


def _extra_config(cfg: RunConfig, model: nn.Module) -> dict[str, Any]:
    return {
        "app": APP_FORMAT,
        "model": cfg.model,
        "toy2d": cfg.to_dict(),
        "net": {"name": "mlp", "config": model.config},
    }


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    callback: Callable[[nn.Module, int, Path], None] | None = None,
    callback_every: int | None = None,
    stop_fn: StopFn | None = None,
    resume: bool = False,
    loggers: list[Any] | None = None,
    method: MethodConfig | None = None,
) -> TrainResult:
    """Train a flow-matching run into ``run_dir`` (config.json, checkpoint/, loss.csv; ``loggers``:
    fm-train's, default loss.csv).

    ``callback(ema_model, step, run_dir)`` runs every ``callback_every`` steps and at the end
    (under no_grad, without consuming training randomness: fm-train isolates it); ``stop_fn``
    ends the run cleanly when it returns True. ``resume`` continues the run from its checkpoint.
    Batches come from the Trainer's generator seeded with ``cfg.seed`` (the training stream).
    ``method`` (fm_cli.method, default flow matching): meanflow or reflow, stored in config.json. Both
    train on the conditional target, so a ``cfg`` with ``target='batch-marginal'`` is recorded (and
    checked on resume) as ``'conditional'``, what the run trains with.
    """
    method = MethodConfig() if method is None else method
    if cfg.model != "fm":
        raise ValueError(f"fm_toy2d.training trains flow-matching runs (model='fm'), got model={cfg.model!r}")
    if method.name != "fm" and cfg.target != "conditional":
        cfg = cfg.replace(target="conditional")
    torch.manual_seed(cfg.seed)  # the weights' initialisation
    dist = build_distribution(cfg)
    model = build_model(cfg, dist, two_time=method.two_time)
    loss = build_loss(cfg)
    tcfg = cfg.train_config(progress=progress, sample_every=callback_every if callback else None)

    def loss_fn(net: nn.Module, batch, ctx: StepContext) -> Tensor:
        x1, y = batch  # several processes (torchrun): every rank trains on its shard of the batch
        return loss(net, x1, y, generator=ctx.generator, shard=ctx.shard)

    batch_fn: Callable = batch_fn_for(cfg, dist)
    if method.name != "fm":  # meanflow's own target; reflow's pairs are coupled, so the conditional target
        teacher = distill_teacher(lambda run, dev: load_run(run, device=dev).model, method, cfg.device)
        loss_fn = method_loss(method, time_sampler=get_time_sampler(cfg.time), coupling=_coupling(cfg),
                              velocity=teacher, **({} if method.two_time else {"target": "conditional"}))  # fmt: skip
    if method.init_from is not None and not resume:
        from .method_runs import init_from

        init_from(model, method.init_from)
    if method.name == "reflow":
        from .method_runs import reflow_batches

        batch_fn = reflow_batches(model, cfg, method, run_dir, resume=resume)
    extra = {**_extra_config(cfg, model), **method_entry(method, run_dir, resume)}
    trainer = Trainer(model, loss_fn, batch_fn, tcfg, run_dir, sample_fn=callback, extra_config=extra,
                      stop_fn=stop_fn, loggers=loggers)  # fmt: skip
    return trainer.train(resume=resume)


# ----------------------------------------------------------------------------- loading
def read_run(run_dir: str | Path) -> tuple[dict[str, Any], RunConfig]:
    """(RUN/config.json, its RunConfig) of a fm-toy2d run of either kind; ValueError naming the file."""
    rd = RunDir(run_dir)
    data = rd.read_config(app=APP_FORMAT, section="toy2d")
    try:
        cfg = RunConfig.from_dict(data["toy2d"])
    except (ValueError, TypeError) as e:
        raise ValueError(f'{rd.config_path}: bad "toy2d" section: {e}') from None
    kind = data.get("model", cfg.model)
    if kind not in MODELS:
        raise ValueError(f"{rd.config_path}: unknown model kind {kind!r} (allowed: {', '.join(MODELS)})")
    return data, cfg


def run_model_kind(run_dir: str | Path) -> str:
    """``"fm"``, ``"nf"`` or ``"discrete"``: the model kind recorded in RUN/config.json."""
    data, cfg = read_run(run_dir)
    return data.get("model", cfg.model)


def label_problem(label: int | None, num_classes: int | None) -> str | None:
    """Why ``label`` cannot be sampled from a run with ``num_classes`` classes (None: unconditional),
    e.g. ``"label 5 is out of range: the run has classes 0..4"``; None when it can."""
    if label is None:
        return None
    if num_classes is None:
        return f"label {label} given, but the run is unconditional (train with --conditional)"
    if not 0 <= label < num_classes:
        return f"label {label} is out of range: the run has classes 0..{num_classes - 1}"
    return None


@dataclass
class FlowRun:
    """A trained flow-matching run, ready to sample: EMA weights, eval mode, on ``device``.

    ``model(x [B, D], t [B], y [B] | None) -> v [B, D]`` (t = 0 noise, t = 1 data).
    """

    run_dir: Path
    config: RunConfig
    model: nn.Module
    dist: ToyDistribution
    device: torch.device
    step: int
    method: MethodConfig = field(default_factory=MethodConfig)  # how it was trained (fm_cli.method)

    @property
    def conditional(self) -> bool:
        return self.config.conditional

    @property
    def num_classes(self) -> int | None:
        return self.dist.num_classes if self.config.conditional else None

    @property
    def two_time(self) -> bool:
        """Whether the run's network is two-time (meanflow): ``model(x, r, t, y) -> u``."""
        return is_two_time(self.model)

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The instantaneous velocity v(x, t) (of a two-time network: u(x, t, t))."""
        return sampling_model(self.model, "euler")(x, t, y)

    def sample(self, n: int, *, seed: int, solver: str | None = None, nfe: int | None = None, steps: int | None = None,
               time_grid: Tensor | None = None, label: int | None = None, trajectory: int = 0,
               progress: bool = False) -> SampleResult:  # fmt: skip
        """n samples with fm_core.sample: noise x0 ~ N(0, I) from a CPU generator seeded with ``seed``
        (the same numbers on any device), then uniform random labels (conditional runs without
        ``label``) or ``label`` for all; ``solver`` (default: the run's) with ``nfe``, ``steps`` or
        ``time_grid`` (none: the run's NFE for a fixed-step solver; for an adaptive one a grid only sets
        the times returned). ``trajectory``: keep the first samples' paths."""
        problem = label_problem(label, self.num_classes)
        if problem:
            raise ValueError(problem)
        if solver == FLOW_MAP or (solver is None and self.two_time):  # one- or few-step: fm_core.flow_map_solve
            fixed = steps is None and time_grid is None  # else the steps or the grid say where to stop
            solver, k = flow_map_sampler(self.model, nfe)
            nfe = k if fixed else nfe
        solver = solver or self.config.solver
        if nfe is None and steps is None and time_grid is None and solver in SOLVERS:  # fixed steps: the run's NFE
            nfe = self.config.nfe
        labels = None if label is None else torch.full((n,), int(label), dtype=torch.long)
        model = sampling_model(self.model, solver)  # a two-time net through u(x, t, t) for an ODE solver
        return sample(model, n, (self.config.data_dim,), seed=seed, labels=labels, num_classes=self.num_classes,
                      random_labels=label is None and self.num_classes is not None, method=solver, nfe=nfe,
                      steps=steps, time_grid=time_grid, batch_size=SAMPLE_BATCH, trajectory=trajectory, device=self.device,
                      progress=progress)  # fmt: skip


def load_run(run_dir: str | Path, device: str = "cpu", use_ema: bool = True) -> FlowRun:
    """Rebuild a trained flow-matching run from its directory (checkpoint + config)."""
    run_dir = Path(run_dir)
    data, cfg = read_run(run_dir)
    method = read_method(data, str(run_dir / "config.json"))
    if cfg.model != "fm":
        raise ValueError(f"{run_dir} holds a {cfg.model!r} run; load it with fm_toy2d.nf")

    def build_fn(config: dict[str, Any]) -> nn.Module:
        net = config.get("net", {})
        if net.get("name") != "mlp":
            raise ValueError(f"unknown net {net.get('name')!r}")
        return _wrap(MLPVelocity(**net["config"]), cfg)

    dev = resolve_device(device)
    try:
        model, ckpt_config = load_model_for_sampling(run_dir, build_fn, device=dev, use_ema=use_ema)
    except CheckpointError as e:
        raise ValueError(f"cannot load the run {run_dir}: {e}") from None
    return FlowRun(
        run_dir=run_dir,
        config=cfg,
        model=model,
        dist=build_distribution(cfg),
        device=dev,
        step=int(ckpt_config.get("step", 0)),
        method=method,
    )
