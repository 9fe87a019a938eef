"""Discrete flow-matching runs of fm-toy2d (``train --model discrete``): points on a lattice as tokens.

Each coordinate of a point is quantised to one of ``lattice`` bins over [-4, 4] (fm_discrete's
UniformQuantizer; the checkerboard's cells are whole numbers of bins when ``lattice`` is a multiple of
``--cells``), so a point is D tokens (2 in 2D). The model is fm-nets' ``TokenMLP`` (one embedding
table per coordinate, a residual SiLU MLP, logits over the lattice bins per coordinate), trained by
fm-discrete's loss on the mixture path (mask source and linear kappa by default) with the toolkit's
one training loop (fm_train.Trainer: AdamW, warmup + cosine lr, clipping, EMA, checkpoints, resume).
Samples come from fm-discrete's CTMC sampler (``--nfe`` steps, one network call each) and are drawn
back as points: a uniform point inside the sampled lattice cell, so they compare with the continuous
data by the same metrics as the other models.

Time convention: t = 0 is the source (every coordinate masked, or uniform bins), t = 1 the data.

The CLI delegates every ``"model": "discrete"`` run to this module: :func:`train`, :func:`sample`,
:func:`evaluate`, :func:`pictures` (as ``fm_toy2d.nf`` for flows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fm_core import SampleResult
from fm_data.toy import ToyDistribution
from fm_discrete import DiscreteFlowMatchingLoss, MixturePath, UniformQuantizer, ctmc_sample
from fm_nets import build_net
from fm_train import CSVLogger, RunDir, StepContext, Trainer, TrainResult, load_model_for_sampling, resolve_device
from fm_train.checkpoint import CheckpointError

from .config import RunConfig, model_config_dict, with_model_defaults
from .evaluation import SAMPLE_OFFSET, sample_metrics
from .training import APP_FORMAT, SAMPLE_BATCH, build_distribution, label_problem, read_run

__all__ = [
    "DISCRETE_DEFAULTS",
    "DISCRETE_NET",
    "DISCRETE_STEPS",
    "LATTICE_RANGE",
    "DiscreteRun",
    "build_path",
    "build_token_model",
    "evaluate",
    "load_discrete_run",
    "make_discrete_config",
    "pictures",
    "quantizer",
    "resolve_config",
    "sample",
    "sample_run",
    "train",
]

NET_NAME = "token-mlp"
#: The lattice covers [-4, 4] on every axis (the checkerboard's box; other toys' rare outliers are
#: clamped into the edge bins).
LATTICE_RANGE = (-4.0, 4.0)
#: fm_nets.TokenMLP keyword arguments (besides vocab_size, seq_len, num_classes, mask_token); --hidden
#: and --depth set hidden and depth.
DISCRETE_NET: dict[str, Any] = dict(embed_dim=64, hidden=256, depth=4, time_dim=128)
#: Optimisation and sampling defaults of discrete runs (RunConfig fields), for the fields the user did not set.
DISCRETE_DEFAULTS: dict[str, Any] = dict(
    batch_size=1024, lr=2e-3, weight_decay=0.0, schedule="cosine", warmup_steps=100, grad_clip=1.0, ema_decay=0.999,
    solver="euler", nfe=64,
)  # fmt: skip
#: Default training steps of discrete runs per dataset: 2 to 2.6 minutes at the 6.4-8.8 steps/s measured
#: for the 64-point lattice on the project's 2-core CPU (benchmarks/RESULTS.md, "Discrete flow matching").
DISCRETE_STEPS: dict[str, int] = {
    "checkerboard": 1000,
    "olympic-rings": 1000,
    "moons": 1000,
    "8gaussians": 1000,
    "spirals": 1000,
}


# ----------------------------------------------------------------------------- configuration
def resolve_config(cfg: RunConfig | dict[str, Any]) -> RunConfig:
    """The RunConfig of a discrete run with the discrete defaults applied (as fm_toy2d.nf.resolve_config):
    a RunConfig is taken as is (an unset budget gets :data:`DISCRETE_STEPS`); the CLI's dict (``to_dict()``
    plus ``"user_set"``) gets :data:`DISCRETE_DEFAULTS` for the fields the user did not give."""
    data = with_model_defaults(cfg, "discrete", DISCRETE_DEFAULTS, DISCRETE_STEPS)
    net = dict(DISCRETE_NET)
    for key, value in (data.get("net") or {}).items():
        if key not in DISCRETE_NET:
            raise ValueError(f"unknown token-MLP setting {key!r}; known: {', '.join(DISCRETE_NET)}")
        net[key] = value
    data["net"] = net
    return RunConfig.from_dict(data)


def make_discrete_config(dataset: str = "checkerboard", **overrides: Any) -> RunConfig:
    """A discrete RunConfig for ``dataset`` with the discrete defaults and ``overrides`` (None ignored)."""
    data = model_config_dict(dataset, "discrete", **overrides)
    return resolve_config(data)


def quantizer(cfg: RunConfig) -> UniformQuantizer:
    """Coordinates to lattice bins and back (``cfg.lattice`` bins over :data:`LATTICE_RANGE`)."""
    return UniformQuantizer(cfg.lattice, *LATTICE_RANGE)


def build_path(cfg: RunConfig) -> MixturePath:
    return MixturePath(cfg.lattice, source=cfg.source, scheduler=cfg.kappa)


def build_token_model(cfg: RunConfig, dist: ToyDistribution | None = None) -> nn.Module:
    """``model(x [B, D] int64, t [B], y [B] | None) -> logits [B, D, lattice]`` (fm_nets.TokenMLP)."""
    dist = build_distribution(cfg) if dist is None else dist
    num_classes = dist.num_classes if cfg.conditional else None
    return build_net(NET_NAME, vocab_size=cfg.lattice, seq_len=cfg.data_dim, num_classes=num_classes,
                     mask_token=cfg.source == "mask", **cfg.net)  # fmt: skip


# ----------------------------------------------------------------------------- training
def train(
    cfg: RunConfig | dict[str, Any],
    run_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    loggers: list[Any] | None = None,
) -> TrainResult:
    """Train a discrete model into ``run_dir`` (``resume``: continue it): RUN/config.json (``"app":
    "fm-toy2d", "model": "discrete", "toy2d": RunConfig dict, "net": the TokenMLP's config``),
    RUN/checkpoint/ and RUN/loss.csv (``loggers``: fm-train's, default loss.csv)."""
    cfg = resolve_config(cfg)
    run_dir = Path(run_dir)
    dist = build_distribution(cfg)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = build_token_model(cfg, dist)
    loss = DiscreteFlowMatchingLoss(build_path(cfg), loss=cfg.discrete_loss)
    quant = quantizer(cfg)
    device = resolve_device(cfg.device)

    def batch_fn(step: int, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if cfg.conditional:
            x, y = dist.sample_labeled(cfg.batch_size, generator=gen)
            return quant.encode(x).to(device), y.to(device)
        return quant.encode(dist.sample(cfg.batch_size, generator=gen)).to(device), None

    def loss_fn(net: nn.Module, batch: tuple[Tensor, Tensor | None], ctx: StepContext) -> Tensor:
        tokens, y = batch
        return loss(net, tokens, y, generator=ctx.generator)

    extra = {"app": APP_FORMAT, "model": "discrete", "toy2d": cfg.to_dict(),
             "net": {"name": NET_NAME, "config": model.config}}  # fmt: skip
    trainer = Trainer(model, loss_fn, batch_fn, cfg.train_config(progress=progress), run_dir, extra_config=extra,
                      loggers=loggers or [CSVLogger(run_dir)])  # fmt: skip
    print(f"fm-toy2d: discrete flow matching on a {cfg.lattice}-point lattice ({cfg.source} source, {cfg.kappa} "
          f"kappa, {cfg.discrete_loss}), token MLP {cfg.net['depth']}x{cfg.net['hidden']} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters), batch {cfg.batch_size}, lr {cfg.lr:g}, "
          f"{f'{cfg.steps} steps' if cfg.steps else f'{cfg.minutes} minutes'}", flush=True)  # fmt: skip
    result = trainer.train(resume=resume)
    if result.steps_this_call:
        print(f"fm-toy2d: trained {result.steps} steps in {result.seconds:.1f} s "
              f"({result.steps_this_call / max(result.seconds, 1e-9):.1f} steps/s), final loss {result.final_loss:.4f}",
              flush=True)  # fmt: skip
    return result


# ----------------------------------------------------------------------------- loading and sampling
@dataclass
class DiscreteRun:
    """A trained discrete run: the token model (EMA weights, eval mode), its config, path and data set."""

    run_dir: Path
    config: RunConfig
    model: nn.Module
    path: MixturePath
    dist: ToyDistribution
    step: int
    device: torch.device

    @property
    def num_classes(self) -> int | None:
        return self.dist.num_classes if self.config.conditional else None


def load_discrete_run(run_dir: str | Path, device: str = "cpu", use_ema: bool = True) -> DiscreteRun:
    """Rebuild a trained discrete run from its directory; ValueError when it is none."""
    run_dir = Path(run_dir)
    data, cfg = read_run(run_dir)
    if data.get("model", cfg.model) != "discrete":
        raise ValueError(f"{run_dir} holds a {data.get('model', cfg.model)!r} run, not a discrete one")
    dev = resolve_device(device)

    def build_fn(config: dict[str, Any]) -> nn.Module:
        net = config.get("net", {})
        if net.get("name") != NET_NAME or not isinstance(net.get("config"), dict):
            raise ValueError(f"unknown net {net.get('name')!r} (expected {NET_NAME!r})")
        want = dict(vocab_size=cfg.lattice, seq_len=cfg.data_dim, mask_token=cfg.source == "mask")
        bad = {k: net["config"].get(k) for k, v in want.items() if net["config"].get(k) != v}
        if bad:
            raise ValueError(f"the network's settings {bad} do not match the run's lattice and source")
        return build_net(NET_NAME, **net["config"])

    try:
        model, ckpt = load_model_for_sampling(run_dir, build_fn, device=dev, use_ema=use_ema)
    except CheckpointError as e:
        raise ValueError(f"cannot load the run {run_dir}: {e}") from None
    return DiscreteRun(run_dir, cfg, model, build_path(cfg), build_distribution(cfg), int(ckpt.get("step", 0)), dev)


def sample_run(
    run: DiscreteRun, n: int, *, label: int | None = None, seed: int = 0, nfe: int | None = None,
    corrector: float = 0.0, trajectory: int = 0, progress: bool = False,
) -> SampleResult:  # fmt: skip
    """n points of a loaded run: ``nfe`` CTMC steps (default: the run's), labels uniform at random
    unless ``label``; ``.x`` are points [n, D] (a uniform draw inside each sampled lattice cell, from the
    same seed), ``.trajectory`` (when asked) the lattice tokens at every step."""
    problem = label_problem(label, run.num_classes)
    if problem:
        raise ValueError(problem)
    quant = quantizer(run.config)
    g = torch.Generator().manual_seed(int(seed))
    labels = None if label is None else torch.full((n,), int(label), dtype=torch.long)
    res = ctmc_sample(run.model, run.path, n, (run.config.data_dim,), steps=nfe or run.config.nfe, generator=g,
                      labels=labels, num_classes=run.num_classes, random_labels=label is None and run.num_classes is not None,
                      corrector=corrector, batch_size=SAMPLE_BATCH, trajectory=trajectory, device=run.device,
                      progress=progress)  # fmt: skip
    jitter = torch.rand(res.x.shape, generator=g, dtype=torch.float64)
    res.x = quant.decode(res.x, jitter=jitter)
    return res


def sample(
    run_dir: str | Path, n: int, label: int | None = None, seed: int = 0, nfe: int | None = None, device: str = "cpu"
) -> tuple[Tensor, Tensor | None]:
    """n points (x [n, D] float32, y [n] int64 or None) of the run: ``nfe`` CTMC steps (default: the run's)."""
    res = sample_run(load_discrete_run(run_dir, device=device), n, label=label, seed=seed, nfe=nfe)
    return res.x, res.labels


# ----------------------------------------------------------------------------- evaluation and pictures
#: NFEs of the quality-against-NFE sweep of :func:`evaluate` and the pictures.
NFE_SWEEP = (4, 8, 16, 32, 64, 128)


def evaluate(
    run_dir: str | Path, n: int = 20000, seed: int | None = None, *, nfe: int | None = None, device: str = "cpu",
    sweep: bool = True, quiet: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Sample metrics (energy distance, W2, precision / recall, the dataset's quality) of n samples at the
    run's NFE (or ``nfe``) and, with ``sweep``, the quality at each NFE of :data:`NFE_SWEEP` on up to 5,000
    samples; merged into RUN/metrics.json by the CLI. A discrete model has no exact likelihood here."""
    run = load_discrete_run(run_dir, device=device)
    seed = run.config.seed + SAMPLE_OFFSET if seed is None else seed
    res = sample_run(run, n, seed=seed, nfe=nfe, progress=not quiet)
    out: dict[str, Any] = sample_metrics(run.config, run.dist, res.x, res.labels)
    out["samples"] = {"n": n, "solver": res.method, "nfe": res.nfe, "seed": seed, "seconds": round(res.seconds, 2)}
    if sweep:
        rows = []
        for k in NFE_SWEEP:
            r = sample_run(run, min(n, 5000), seed=seed, nfe=k)
            m = sample_metrics(run.config, run.dist, r.x, r.labels)
            rows.append({"solver": "ctmc", "nfe": k, "energy_distance": m["energy_distance"], **m["quality"]})
        out["quality_vs_nfe"] = rows
    return out


def pictures(run_dir: str | Path, *, n: int = 20000, fast: bool | None = None) -> list[Path]:
    """samples.png (samples beside held-out data), nfe_grid.png (the same seed at several NFE) and
    loss.png of a discrete run; returns the files written. ``fast`` (default: FM_TOY2D_FAST=1): fewer points."""
    from . import plots, plots_eval
    from .evaluation import headline, sample_quality
    from .pictures import picture_inputs

    run = load_discrete_run(run_dir)
    cfg, d = run.config, Path(run_dir)
    fast, n, data, extent, label, seed = picture_inputs(cfg, run.dist, n, fast)
    res = sample_run(run, n, seed=seed)
    what = f"discrete, {cfg.lattice}-point lattice, CTMC NFE {res.nfe}, {run.step} steps"
    written = [plots.plot_samples(d / "samples.png", data, res.x, extent, labels=res.labels, title=f"{label}: {what}",
                                  subtitle=headline(sample_quality(cfg, res.x, res.labels)))]  # fmt: skip
    kept, notes = {}, {}
    for k in (4, 16, 64):
        r = sample_run(run, min(n, 3000), seed=seed, nfe=k)
        kept[("ctmc", k)] = r.x
        notes[("ctmc", k)] = headline(sample_quality(cfg, r.x, r.labels)).split(",")[0]
    written.append(plots_eval.plot_nfe_grid(d / "nfe_grid.png", kept, extent, annotate=notes,
                                            title=f"{label}: discrete samples per CTMC NFE (same seed)"))  # fmt: skip
    hist = RunDir(d).read_history(("step", "loss", "lr", "elapsed_s"))
    if hist["step"]:
        written.append(plots_eval.plot_loss(d / "loss.png", hist, title=f"{label}: training loss ({what})"))
    return written
