"""Normalizing-flow runs of fm-toy2d (``train --model nf``): fm-nflows + fm-train's Trainer.

The CLI delegates every ``"model": "nf"`` run to this module (see :mod:`fm_toy2d.cli`):

    train(cfg, run_dir, progress=True) -> TrainResult   # RUN/config.json, checkpoint/, loss.csv, nll_terms.csv, flow/
    sample(run_dir, n, label, seed) -> (x [n, D] float32, y [n] int64 | None)
    evaluate(run_dir, n, seed, n_nll=2000, nll=True) -> dict   # merged into RUN/metrics.json
    pictures(run_dir) -> list[Path]                     # samples, layers, loss terms, density

The flow is fm-nflows' ``build_flow`` with :data:`NF_NET`: 10 RealNVP affine couplings with
alternating masks (zuko's layout; ActNorm and LU mixing are off by default, ``net`` turns them
on). It is trained by exact maximum likelihood with the toolkit's one training loop
(fm_train.Trainer: AdamW, warmup + cosine lr, gradient clipping, EMA of the weights, progress
bar, atomic checkpoints, ``loss.csv``); sampling and evaluation use the EMA weights. The loss
``-log p(x) = -log N(z; 0, I) - log|det dz/dx|`` is also logged split into its two terms
(``RUN/nll_terms.csv``).

Direction: the flow's ``forward`` maps data to noise, ``inverse`` noise to data. In the
toolkit's convention (t = 0 noise, t = 1 data) sampling runs ``inverse``, the t = 0 -> 1 way;
a flow has no time variable and no ODE solver (``--solver``/``--nfe`` are refused).

Default budget (:data:`NF_DEFAULTS`, :data:`NF_STEPS`; fields the user set on the command line
win): batch 512, AdamW lr 5e-3 with 100 warmup steps then cosine decay to 0, gradient clipping
at 1, EMA 0.99, and 3,000 steps on olympic-rings (>= 90 % of conditional samples on their own
ring: 0.954 measured, worst label 0.946; about 3.5 minutes on one thread of the project's 2-core
CPU, see the app's README).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fm_data.toy import ToyDistribution
from fm_nflows import Flow, build_flow, save_flow
from fm_train import Trainer, TrainResult, load_model_for_sampling
from fm_train.checkpoint import CheckpointError

from .config import RunConfig
from .evaluation import SAMPLE_OFFSET  # sampling seeds: the same offsets as flow-matching runs
from .training import APP_FORMAT, build_distribution, read_csv_columns, read_run_config, train_config

__all__ = [
    "NF_DEFAULTS",
    "NF_NET",
    "NF_STEPS",
    "NFRun",
    "TERMS_FILE",
    "build_nf",
    "evaluate",
    "layerwise_points",
    "load_nf_run",
    "make_nf_config",
    "nll_terms_history",
    "pictures",
    "resolve_config",
    "sample",
    "train",
]

#: The flow of an nf run: ``fm_nflows.build_flow`` keyword arguments (besides dim, num_classes, seed).
#: zuko's layout (alternating masks, no ActNorm, no LU mixing, conditioners' last layer not zeroed)
#: with a scale bound of 7: unconditional rings at 1,000 steps x 256, test NLL 2.274 (mean of seeds
#: 0-2) against 2.260 for zuko's RealNVP and 2.446 (seed 0) for the former Glow-style settings (LU,
#: ActNorm, bound 2, zero-initialised conditioners); see apps/toy2d/README.md, "Against zuko".
NF_NET: dict[str, Any] = dict(n_layers=10, hidden=128, n_hidden=3, embed_dim=16, mixing="none", actnorm=False,
                              scale_bound=7.0, activation="relu", zero_init=False)
#: Optimisation defaults of nf runs (RunConfig fields), applied to the fields the user did not set.
#: lr 5e-3 beat 3e-3 (olympic rings, 3,000 steps: 0.907 against 0.899 on own ring); the lr decays to
#: 0 (cosine), so the last weights are the best and the EMA is short (0.99: the last ~100 steps).
NF_DEFAULTS: dict[str, Any] = dict(batch_size=512, lr=5e-3, weight_decay=0.0, schedule="cosine", warmup_steps=100,
                                   grad_clip=1.0, ema_decay=0.99)
#: Default training steps of nf runs per dataset.
NF_STEPS: dict[str, int] = {
    "checkerboard": 3000,
    "olympic-rings": 3000,
    "moons": 2000,
    "8gaussians": 2000,
    "spirals": 3000,
}
#: Per-window means of the two loss terms (written next to fm-train's loss.csv).
TERMS_FILE = "nll_terms.csv"
#: The EMA flow in fm-nflows' own checkpoint format (``fm_nflows.load_flow(RUN / FLOW_DIR)``).
FLOW_DIR = "flow"
NET_NAME = "fm-nflows/flow"


# ----------------------------------------------------------------------------- configuration
def _net_from_cli(net: dict[str, Any] | None) -> dict[str, Any]:
    """NF_NET updated by the run's ``net``: CLI ``--hidden`` is the conditioner width and
    ``--depth`` the number of coupling blocks (``n_layers``); build_flow names pass through."""
    out = dict(NF_NET)
    for key, value in (net or {}).items():
        key = "n_layers" if key == "depth" else key
        if key not in NF_NET:
            raise ValueError(f"unknown flow setting {key!r}; known: depth (= n_layers), {', '.join(NF_NET)}")
        out[key] = value
    if out["n_layers"] < 1:
        raise ValueError(f"a flow needs at least one coupling block, got depth/n_layers={out['n_layers']}")
    return out


def resolve_config(cfg: RunConfig | dict[str, Any]) -> RunConfig:
    """The RunConfig of an nf run, with the nf defaults applied.

    ``cfg`` is a RunConfig (taken as is, except an unset budget gets :data:`NF_STEPS`), or the
    CLI's dict: ``RunConfig.to_dict()`` plus ``"user_set"``, the fields given on the command line;
    the other optimisation fields get :data:`NF_DEFAULTS`. A dict without ``"user_set"`` is taken
    as fully specified. ``net`` always ends up as complete build_flow keyword arguments.
    """
    if isinstance(cfg, RunConfig):
        data = cfg.to_dict()
        user_set = None
    else:
        data = dict(cfg)
        user_set = data.pop("user_set", None)
    data["model"] = "nf"
    if user_set is not None:
        user_set = set(user_set)
        for key, value in NF_DEFAULTS.items():
            if key not in user_set:
                data[key] = value
    if data.get("steps") is None and data.get("minutes") is None:
        data["steps"] = NF_STEPS[data.get("dataset", "checkerboard")]
    data["net"] = _net_from_cli(data.get("net"))
    return RunConfig.from_dict(data)


def make_nf_config(dataset: str = "checkerboard", **overrides: Any) -> RunConfig:
    """An nf RunConfig for ``dataset`` with the nf defaults and ``overrides`` (None ignored).

    ``net`` overrides are build_flow keyword arguments (``hidden``, ``n_layers``, ...).
    """
    over = {k: v for k, v in overrides.items() if v is not None}
    data = RunConfig(dataset=dataset, model="nf", **{k: v for k, v in over.items() if k != "net"}).to_dict()
    data["net"] = over.get("net", {})
    data["user_set"] = sorted(over)
    return resolve_config(data)


def build_nf(cfg: RunConfig, dist: ToyDistribution | None = None) -> Flow:
    """The run's flow (weights seeded with ``cfg.seed``; the global RNG is not touched)."""
    dist = build_distribution(cfg) if dist is None else dist
    num_classes = dist.num_classes if cfg.conditional else None
    return build_flow(dist.dim, num_classes=num_classes, seed=cfg.seed, **_net_from_cli(cfg.net))


# ----------------------------------------------------------------------------- training
def _write_terms(path: Path, rows: list[tuple[int, float, float]]) -> None:
    from fm_train import atomic_write_text

    lines = ["step,nll,base_log_prob,logdet"]
    lines += [f"{s},{-(b + l)!r},{b!r},{l!r}" for s, b, l in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def train(cfg: RunConfig | dict[str, Any], run_dir: str | Path, *, progress: bool = True) -> TrainResult:
    """Train a normalizing flow by maximum likelihood into ``run_dir``.

    Writes RUN/config.json (``"app": "fm-toy2d", "model": "nf", "toy2d": RunConfig dict, "net":
    the flow's build_flow config``), RUN/checkpoint/ (weights, EMA, training state), RUN/loss.csv
    (the NLL, nats), RUN/nll_terms.csv (``-log p = -(base_log_prob + logdet)`` split per 50-step
    window) and RUN/flow/ (the EMA flow as ``fm_nflows.save_flow`` writes it).
    """
    cfg = resolve_config(cfg)
    run_dir = Path(run_dir)
    dist = build_distribution(cfg)
    flow = build_nf(cfg, dist)
    tcfg = train_config(cfg, progress=progress)
    window = tcfg.log_every
    conditional = cfg.conditional
    pending: list[Tensor] = []
    rows: list[tuple[int, float, float]] = []
    state = {"step": 0}

    def batch_fn(step: int, gen: torch.Generator):
        state["step"] = step
        if conditional:
            x, y = dist.sample_labeled(cfg.batch_size, generator=gen)
            return x.to(gen.device), y.to(gen.device)
        return dist.sample(cfg.batch_size, generator=gen).to(gen.device), None

    def loss_fn(model: Flow, batch, gen: torch.Generator) -> Tensor:
        x, y = batch
        terms = model.nll_terms(x, y)
        pending.append(torch.stack([terms.base_log_prob.detach(), terms.logdet.detach()]))
        if len(pending) == window:
            _flush(state["step"])
        return terms.nll

    def _flush(step: int) -> None:
        if pending:
            b, l = torch.stack(pending).double().mean(0).tolist()
            rows.append((step, b, l))
            pending.clear()

    extra = {"app": APP_FORMAT, "model": "nf", "toy2d": cfg.to_dict(), "net": {"name": NET_NAME, "config": flow.config}}
    trainer = Trainer(flow, loss_fn, batch_fn, tcfg, run_dir, extra_config=extra)
    print(f"fm-toy2d: flow {cfg.net['n_layers']} blocks x conditioner {cfg.net['n_hidden']}x{cfg.net['hidden']} "
          f"({sum(p.numel() for p in flow.parameters()):,} parameters), batch {cfg.batch_size}, lr {cfg.lr:g}, "
          f"{f'{cfg.steps} steps' if cfg.steps else f'{cfg.minutes} minutes'}", flush=True)
    try:
        result = trainer.train()
    finally:
        _flush(state["step"])
        if rows:
            _write_terms(run_dir / TERMS_FILE, rows)
    save_flow(trainer.ema.module, run_dir / FLOW_DIR)
    print(f"fm-toy2d: trained {result.steps} steps in {result.seconds:.1f} s "
          f"({result.steps_this_call / max(result.seconds, 1e-9):.1f} steps/s), final NLL {result.final_loss:.4f} nats",
          flush=True)
    return result


def nll_terms_history(run_dir: str | Path) -> dict[str, list[float]]:
    """RUN/nll_terms.csv as columns (step, nll, base_log_prob, logdet); empty lists when absent."""
    return read_csv_columns(Path(run_dir) / TERMS_FILE, ("step", "nll", "base_log_prob", "logdet"))


# ----------------------------------------------------------------------------- loading
@dataclass
class NFRun:
    """A trained nf run: the flow (EMA weights, eval mode, CPU), its config and data set."""

    run_dir: Path
    config: RunConfig
    flow: Flow
    dist: ToyDistribution
    step: int

    @property
    def num_classes(self) -> int | None:
        return self.dist.num_classes if self.config.conditional else None


def load_nf_run(run_dir: str | Path, use_ema: bool = True) -> NFRun:
    """Rebuild a trained nf run from its directory (checkpoint + config); ValueError when it is none."""
    run_dir = Path(run_dir)
    data = read_run_config(run_dir)
    cfg = RunConfig.from_dict(data["toy2d"])
    if data.get("model", cfg.model) != "nf":
        raise ValueError(f"{run_dir} holds a {data.get('model', cfg.model)!r} run; load it with fm_toy2d.training.load_run")

    def build_fn(config: dict[str, Any]) -> Flow:
        net = config.get("net", {})
        if net.get("name") != NET_NAME:
            raise ValueError(f"unknown net {net.get('name')!r} (expected {NET_NAME!r})")
        with torch.random.fork_rng(devices=[]):
            return build_flow(**net["config"])

    try:
        flow, ckpt_config = load_model_for_sampling(run_dir, build_fn, device="cpu", use_ema=use_ema)
    except CheckpointError as e:
        raise ValueError(f"cannot load the run {run_dir}: {e}") from None
    return NFRun(run_dir=run_dir, config=cfg, flow=flow, dist=build_distribution(cfg), step=int(ckpt_config.get("step", 0)))


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def _sample(run: NFRun, n: int, label: int | None, seed: int, batch: int = 50_000) -> tuple[Tensor, Tensor | None]:
    from .sampling import draw_labels

    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, run.config.data_dim, generator=g)  # the same draws as fm runs: noise, then labels
    y = draw_labels(n, run.num_classes, label, g)
    xs = [run.flow.inverse(z[i : i + batch], None if y is None else y[i : i + batch])[0] for i in range(0, n, batch)]
    return (torch.cat(xs) if xs else z).float(), y


def sample(run_dir: str | Path, n: int, label: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """n samples of the run (noise -> data with the flow's ``inverse``, one exact pass).

    Returns (x [n, D] float32, y [n] int64 or None). ``label``: one class for all n samples
    (conditional runs), or None for uniform labels. Noise from a CPU generator seeded with ``seed``.
    """
    return _sample(load_nf_run(run_dir), n, label, seed)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _log_prob(flow: Flow, x: Tensor, y: Tensor | int | None, batch: int = 50_000) -> Tensor:
    """Exact log p(x | y) in float64 (a float64 copy of the flow), batched; x [n, D] -> [n]."""
    f64 = _float64(flow)
    out = []
    for i in range(0, len(x), batch):
        yb = y[i : i + batch] if isinstance(y, Tensor) else y
        out.append(f64.log_prob(x[i : i + batch].double(), yb))
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)


def _float64(flow: Flow) -> Flow:
    import copy

    return flow if next(flow.parameters()).dtype == torch.float64 else copy.deepcopy(flow).double().eval()


@torch.no_grad()
def likelihood(run: NFRun, n: int = 2000) -> dict[str, Any]:
    """Exact NLL (nats per point) of n held-out points by the change of variables,
    ``-log p(x) = -log N(z; 0, I) - log|det dz/dx|``, computed in float64.

    Conditional runs: ``mean`` is the NLL of log p(x | y) with the true labels, compared with the
    conditional entropy H(X | Y) where known; ``marginal`` is log p(x) = log mean_k p(x | k)
    (labels are uniform in every toy set) against H(X).
    """
    from .evaluation import heldout_data, heldout_seed, nll_summary

    cfg, dist = run.config, run.dist
    x, y = heldout_data(cfg, dist, n)
    f64 = _float64(run.flow)
    z, logdet = f64(x.double(), y)
    base = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    nll = -(base + logdet)
    out: dict[str, Any] = {
        **nll_summary(nll, n, cfg, dist),
        "method": "exact",
        "divergence": None,
        "formula": "-log p(x) = -log N(z; 0, I) - log|det dz/dx|, z = flow(x)",
        "dtype": "float64",
        "base_log_prob": float(base.mean()),
        "logdet": float(logdet.mean()),
        "heldout_seed": heldout_seed(cfg.seed),
    }
    if cfg.conditional:
        k = dist.num_classes
        per = torch.stack([f64.log_prob(x.double(), c) for c in range(k)], -1)  # [n, K]
        marg = -(torch.logsumexp(per, -1) - math.log(k))
        try:
            h = float(dist.entropy())
        except NotImplementedError:
            h = None
        m = float(marg.mean())
        out["marginal"] = {"mean": m, "stderr": float(marg.std() / math.sqrt(len(marg))) if len(marg) > 1 else None,
                           "entropy": h, "gap": None if h is None else m - h}
    return out


def evaluate(run_dir: str | Path, n: int = 20000, seed: int | None = None, *, n_nll: int = 2000, nll: bool = True,
             w2_n: int = 2000, ed_n: int = 5000) -> dict[str, Any]:
    """The metrics of an nf run, the same keys as flow-matching runs (fm_toy2d.evaluation.evaluate).

    n samples (seed ``seed``, default the run's seed + SAMPLE_OFFSET) against n held-out points:
    energy distance (``ed_n`` per side), W2 (``w2_n``), the dataset's quality; and the exact NLL
    of ``n_nll`` held-out points (:func:`likelihood`).
    """
    from fm_eval.metrics2d import energy_distance, wasserstein2

    from .evaluation import heldout_data, sample_quality

    run = load_nf_run(run_dir)
    cfg = run.config
    seed = cfg.seed + SAMPLE_OFFSET if seed is None else int(seed)
    x, y = _sample(run, n, None, seed)
    data, _ = heldout_data(cfg, run.dist, n)
    out: dict[str, Any] = {
        "step": run.step,
        "model": "nf",
        "samples": {"n": n, "solver": None, "nfe": 1, "seed": seed, "method": "flow inverse (one exact pass)"},
        "energy_distance": energy_distance(x, data, max_n=ed_n, generator=0),
        "energy_distance_n": min(n, ed_n),
        "w2": wasserstein2(x, data, max_n=w2_n, generator=0),
        "w2_n": min(n, w2_n),
        "quality": sample_quality(cfg, x, y),
    }
    if nll:
        out["nll"] = likelihood(run, n_nll)
    return out


# ----------------------------------------------------------------------------- pictures
@torch.no_grad()
def layerwise_points(run: NFRun, n: int, seed: int) -> tuple[Tensor, tuple[str, ...], Tensor | None]:
    """Noise points carried through the flow layer by layer, noise -> data (the sampling direction).

    Returns (points [L + 1, n, D], layer names [L], labels [n] or None).
    """
    from .sampling import draw_labels

    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, run.config.data_dim, generator=g)
    y = draw_labels(n, run.num_classes, None, g)
    lw = run.flow.layerwise(z, y, direction="inverse")
    return lw.points.float(), lw.names, y


@torch.no_grad()
def _density_grid(run: NFRun, extent, k: int) -> tuple[Any, Any, list[tuple[str, Any]]]:
    """Learned densities on a k x k grid: [("learned p(x)", [k, k])] (+ p(x | y) per label), and the true one."""
    import numpy as np

    xs, ys = np.linspace(extent[0], extent[1], k), np.linspace(extent[2], extent[3], k)
    gx, gy = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], -1)).double()
    panels: list[tuple[str, Any]] = []
    if run.num_classes is None:
        panels.append(("learned p(x) = exp(log_prob)", _log_prob(run.flow, pts, None).exp().reshape(k, k).numpy()))
    else:
        per = torch.stack([_log_prob(run.flow, pts, c) for c in range(run.num_classes)], 0)  # [K, k*k]
        marg = (torch.logsumexp(per, 0) - math.log(run.num_classes)).exp()
        panels.append(("learned p(x) = mean over labels of p(x | y)", marg.reshape(k, k).numpy()))
        for c in range(run.num_classes):
            panels.append((f"learned p(x | y = {c})", per[c].exp().reshape(k, k).numpy()))
    true = run.dist.log_prob(pts).exp().reshape(k, k).numpy()
    return gx, gy, [("true p(x)", true)] + panels


def pictures(run_dir: str | Path, *, n: int = 20000, fast: bool | None = None) -> list[Path]:
    """Draw the pictures of an nf run into its directory; returns the files written.

        samples.png    held-out data and samples side by side (coloured by label when conditional)
        layers.png     noise carried through the flow layer by layer to data, one panel per layer
        loss.png       the NLL over training split into -log p_base(z) and -log|det dz/dx|
        density.png    the learned density exp(log_prob) on a grid beside the true density
                       (conditional runs: also p(x | y) per label); 2D data only

    ``fast`` (default: env FM_TOY2D_FAST=1) uses fewer points and a coarser grid (tests).
    Merges "pictures_samples" into RUN/metrics.json.
    """
    from . import nf_plots, plots
    from .evaluation import headline, heldout_data, sample_quality, update_metrics
    from .pictures import dataset_label, extent_of

    if fast is None:
        fast = os.environ.get("FM_TOY2D_FAST", "") == "1"
    run = load_nf_run(run_dir)
    cfg, d = run.config, run.run_dir
    n = min(n, 4000) if fast else n
    data, _ = heldout_data(cfg, run.dist, n)
    extent = extent_of(cfg, data)
    name = dataset_label(cfg)
    what = f"normalizing flow, {cfg.net['n_layers']} blocks, {run.step} steps"
    seed = cfg.seed + SAMPLE_OFFSET
    written: list[Path] = []

    x, y = _sample(run, n, None, seed)
    q = sample_quality(cfg, x, y)
    written.append(plots.plot_samples(d / "samples.png", data, x, extent, labels=y,
                                      title=f"{name}: {what}", subtitle=headline(q)))

    pts, names, ly = layerwise_points(run, 1500 if fast else 4000, seed + 1)
    written.append(nf_plots.plot_layers(d / "layers.png", pts, names, labels=ly, data_extent=extent,
                                        title=f"{name}: noise (top left) carried through the flow layer by layer to data"))

    hist = nll_terms_history(d)
    if hist["step"]:
        from .evaluation import _entropy

        written.append(nf_plots.plot_nll_terms(d / "loss.png", hist, entropy=_entropy(cfg, run.dist),
                                               conditional=cfg.conditional, title=f"{name}: maximum-likelihood loss ({what})"))

    if cfg.data_dim == 2:
        gx, gy, panels = _density_grid(run, extent, 100 if fast else 220)
        written.append(nf_plots.plot_density(d / "density.png", gx, gy, panels, extent,
                                             title=f"{name}: density of the flow, exp(log_prob) on a grid"))
    update_metrics(d, {"pictures_samples": {"n": n, "model": "nf", "quality": q}})
    return written
