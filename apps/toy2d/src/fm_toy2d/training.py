"""Training wiring of fm-toy2d: toy data (fm-data) + MLP (fm-nets) + loss (fm-core) + fm-train's Trainer.

Everything that connects the packages for a flow-matching run lives here, so other commands
(``sample``, ``eval``, the pictures, a later ``study``) reuse it:

* :func:`train` trains one run into a directory (progress bar, EMA, checkpoints, ``loss.csv``)
  and accepts a ``callback(ema_model, step, run_dir)`` every ``callback_every`` steps (the
  study's periodic evaluation).
* :func:`load_run` rebuilds a trained run (EMA weights) as a :class:`FlowRun`, whose
  ``velocity(x, t, y)`` is what the ODE solvers integrate.

Time convention: t = 0 is N(0, I) noise, t = 1 is data; sampling integrates t from 0 to 1.
The model works in data coordinates (no rescaling), so likelihoods need no correction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fm_core import CoupledBatch, Coupling, ExactOTCoupling, FlowMatchingLoss, IndependentCoupling, get_time_sampler
from fm_data.toy import ToyDistribution, get_toy
from fm_nets.mlp import MLPVelocity
from fm_train import Trainer, TrainConfig, TrainResult, dist_info, load_model_for_sampling, resolve_device
from fm_train.checkpoint import CheckpointError, read_json

from .config import RunConfig

__all__ = [
    "APP_FORMAT",
    "BlockOTCoupling",
    "FlowRun",
    "build_distribution",
    "build_loss",
    "build_model",
    "load_run",
    "read_run_config",
    "run_model_kind",
    "train",
    "train_config",
]

APP_FORMAT = "fm-toy2d"


class BlockOTCoupling(Coupling):
    """Exact minibatch OT (fm_core.ExactOTCoupling) inside blocks of ``block`` points.

    scipy's assignment costs O(B^3): a block of 256 points takes ~40 ms, 1024 points ~1 s on our
    CPU, so a large batch is coupled block by block (the batch is random, so blocks are random
    sub-batches). With ``by_label`` and labels given, points are coupled only within their class:
    the noise paired with class k then stays N(0, I), which conditional sampling assumes (an OT
    across classes would hand each class only the noise region that lies near it).
    Only x0 is permuted; x1 and y come back unchanged.
    """

    def __init__(self, block: int = 256, by_label: bool = True) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ValueError(f"OT block size must be an integer >= 2, got {block!r}")
        self.block = block
        self.by_label = by_label
        self._ot = ExactOTCoupling()

    def __call__(self, x0: Tensor, x1: Tensor, y: Tensor | None = None, generator=None) -> CoupledBatch:
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        n = x1.shape[0]
        if self.by_label and y is not None:
            groups = [torch.nonzero(y == k).flatten() for k in torch.unique(y)]
        else:
            groups = [torch.arange(n, device=x1.device)]
        index = torch.arange(n, device=x1.device)
        for group in groups:
            for chunk in torch.split(group, self.block):
                if len(chunk) < 2:
                    continue
                sub = self._ot(x0[chunk], x1[chunk])
                index[chunk] = chunk[sub.x0_index]
        return CoupledBatch(x0=x0[index], x1=x1, y=y, x0_index=index)


class InputScaled(nn.Module):
    """``v(x, t, y) = net(scale * x, t, y)``: the net sees coordinates multiplied by ``scale``.

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

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(x * self.scale, t, y)


# ----------------------------------------------------------------------------- builders
def build_distribution(cfg: RunConfig) -> ToyDistribution:
    """The toy data set of the run (fm_data.toy)."""
    return get_toy(cfg.dataset, **cfg.data_kwargs)


def build_model(cfg: RunConfig, dist: ToyDistribution | None = None) -> nn.Module:
    """The velocity MLP: ``model(x [B, D], t [B], y [B] | None) -> v [B, D]``."""
    dist = build_distribution(cfg) if dist is None else dist
    num_classes = dist.num_classes if cfg.conditional else None
    return _wrap(MLPVelocity(dist.dim, num_classes=num_classes, **cfg.net), cfg)


def _wrap(net: nn.Module, cfg: RunConfig) -> nn.Module:
    return net if cfg.input_scale == 1.0 else InputScaled(net, cfg.input_scale)


def build_loss(cfg: RunConfig) -> FlowMatchingLoss:
    """Flow-matching loss on the CondOT path with the run's time sampler, coupling and target."""
    coupling = BlockOTCoupling(cfg.ot_block, by_label=cfg.conditional) if cfg.coupling == "ot" else IndependentCoupling()
    return FlowMatchingLoss(time_sampler=get_time_sampler(cfg.time), coupling=coupling, target=cfg.target)


def train_config(cfg: RunConfig, *, progress: bool = True, sample_every: int | None = None) -> TrainConfig:
    """fm-train's TrainConfig for the run (AdamW, schedule, EMA, budget, device)."""
    return TrainConfig(
        steps=cfg.steps, minutes=cfg.minutes, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule,
        grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay, seed=cfg.seed, device=cfg.device,
        log_every=50, ckpt_every=None, ckpt_minutes=2.0, sample_every=sample_every, progress=progress,
    )  # fmt: skip


def _extra_config(cfg: RunConfig, model: nn.Module) -> dict[str, Any]:
    return {"app": APP_FORMAT, "model": cfg.model, "toy2d": cfg.to_dict(), "net": {"name": "mlp", "config": model.config}}


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    callback: Callable[[nn.Module, int, Path], None] | None = None,
    callback_every: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a flow-matching run into ``run_dir`` (config.json, checkpoint/, loss.csv).

    ``callback(ema_model, step, run_dir)`` runs every ``callback_every`` steps and at the end
    (under no_grad, without consuming training randomness: fm-train isolates it).
    Batches come from the Trainer's generator seeded with ``cfg.seed`` (the training stream).
    """
    if cfg.model != "fm":
        raise ValueError(f"fm_toy2d.training trains flow-matching runs (model='fm'), got model={cfg.model!r}")
    torch.manual_seed(cfg.seed)  # the weights' initialisation
    dist = build_distribution(cfg)
    model = build_model(cfg, dist)
    loss = build_loss(cfg)
    tcfg = train_config(cfg, progress=progress, sample_every=callback_every if callback else None)
    device = resolve_device(cfg.device)
    conditional = cfg.conditional

    def batch_fn(step: int, gen: torch.Generator):
        if conditional:
            x, y = dist.sample_labeled(cfg.batch_size, generator=gen)
            return x.to(device), y.to(device)
        return dist.sample(cfg.batch_size, generator=gen).to(device), None

    shard = dist_info().shard  # several processes (torchrun): every rank trains on its slice of the batch

    def loss_fn(net: nn.Module, batch, gen: torch.Generator) -> Tensor:
        x1, y = batch
        return loss(net, x1, y, generator=gen, shard=shard)

    trainer = Trainer(model, loss_fn, batch_fn, tcfg, run_dir, sample_fn=callback, extra_config=_extra_config(cfg, model))
    return trainer.train(resume=resume)


# ----------------------------------------------------------------------------- loading
def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """RUN/config.json as a dict; a clear ValueError when ``run_dir`` is not a fm-toy2d run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist")
    try:
        data = read_json(run_dir / "config.json")
    except CheckpointError as e:
        raise ValueError(f"{run_dir} is not a fm-toy2d run: {e}") from None
    if data.get("app") != APP_FORMAT or "toy2d" not in data:
        raise ValueError(f"{run_dir / 'config.json'} was not written by fm-toy2d (no 'app': 'fm-toy2d' / 'toy2d' keys)")
    return data


def run_model_kind(run_dir: str | Path) -> str:
    """``"fm"`` or ``"nf"``: the model kind recorded in RUN/config.json."""
    kind = read_run_config(run_dir).get("model", "fm")
    if kind not in ("fm", "nf"):
        raise ValueError(f"{Path(run_dir) / 'config.json'}: unknown model kind {kind!r} (allowed: fm, nf)")
    return kind


@dataclass
class FlowRun:
    """A trained flow-matching run, ready to sample: EMA weights, eval mode, on ``device``.

    ``velocity(x [B, D], t [B], y [B] | None) -> v [B, D]`` (t = 0 noise, t = 1 data).
    """

    run_dir: Path
    config: RunConfig
    model: nn.Module
    dist: ToyDistribution
    device: torch.device
    step: int

    @property
    def conditional(self) -> bool:
        return self.config.conditional

    @property
    def num_classes(self) -> int | None:
        return self.dist.num_classes if self.config.conditional else None

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.model(x, t, y)


def load_run(run_dir: str | Path, device: str = "cpu", use_ema: bool = True) -> FlowRun:
    """Rebuild a trained flow-matching run from its directory (checkpoint + config)."""
    run_dir = Path(run_dir)
    cfg = RunConfig.from_dict(read_run_config(run_dir)["toy2d"])
    if cfg.model != "fm":
        raise ValueError(f"{run_dir} holds a {cfg.model!r} run; load it with fm_toy2d.nf")
    dist = build_distribution(cfg)

    def build_fn(config: dict[str, Any]) -> nn.Module:
        net = config.get("net", {})
        if net.get("name") != "mlp":
            raise ValueError(f"unknown net {net.get('name')!r}")
        return _wrap(MLPVelocity(**net["config"]), cfg)

    try:
        model, ckpt_config = load_model_for_sampling(run_dir, build_fn, device=resolve_device(device), use_ema=use_ema)
    except CheckpointError as e:
        raise ValueError(f"cannot load the run {run_dir}: {e}") from None
    return FlowRun(run_dir=run_dir, config=cfg, model=model, dist=dist, device=resolve_device(device), step=int(ckpt_config.get("step", 0)))


def loss_history(run_dir: str | Path) -> dict[str, list[float]]:
    """RUN/loss.csv as columns (step, loss, lr, elapsed_s); empty lists when absent."""
    return read_csv_columns(Path(run_dir) / "loss.csv", ("step", "loss", "lr", "elapsed_s"))


def read_csv_columns(path: str | Path, columns: tuple[str, ...]) -> dict[str, list[float]]:
    """The named columns of a numeric CSV with a header line; empty lists when the file is absent."""
    path = Path(path)
    cols: dict[str, list[float]] = {key: [] for key in columns}
    if not path.exists():
        return cols
    lines = path.read_text().strip().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        for key, value in zip(header, line.split(",")):
            if key in cols:
                cols[key].append(float(value))
    return cols


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as pretty JSON atomically."""
    from fm_train import atomic_write_text

    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
