"""A normalizing-flow run of fm-toy2d (``train --model nf``): its settings, its flow, loading and sampling.

The flow is fm-nflows' ``build_flow`` with :data:`NF_NET`: 10 RealNVP affine couplings with
alternating masks (zuko's layout; ActNorm and LU mixing are off by default, ``net`` turns them
on). Default budget (:data:`NF_DEFAULTS`, :data:`NF_STEPS`; fields the user set on the command
line win): batch 512, AdamW lr 5e-3 with 100 warmup steps then cosine decay to 0, gradient
clipping at 1, EMA 0.99, and 3,000 steps on olympic-rings (>= 90 % of conditional samples on
their own ring: 0.954 measured, worst label 0.946; about 3.5 minutes on one thread of the
project's 2-core CPU, see the app's README).

Direction: the flow's ``forward`` maps data to noise, ``inverse`` noise to data. In the
toolkit's convention (t = 0 noise, t = 1 data) sampling runs ``inverse``, the t = 0 -> 1 way;
a flow has no time variable and no ODE solver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fm_core import draw_source
from fm_data.toy import ToyDistribution
from fm_nflows import Flow, build_flow
from fm_train import RunDir, load_model_for_sampling
from fm_train.checkpoint import CheckpointError

from .config import RunConfig, model_config_dict, with_model_defaults
from .training import SAMPLE_BATCH, build_distribution, label_problem, read_run

__all__ = [
    "FLOW_DIR",
    "NET_NAME",
    "NF_DEFAULTS",
    "NF_NET",
    "NF_STEPS",
    "NFRun",
    "TERMS_FILE",
    "build_nf",
    "load_nf_run",
    "make_nf_config",
    "nll_terms_history",
    "resolve_config",
    "sample",
    "sample_run",
    "source",
]

#: The flow of an nf run: ``fm_nflows.build_flow`` keyword arguments (besides dim, num_classes, seed).
#: zuko's layout (alternating masks, no ActNorm, no LU mixing, conditioners' last layer not zeroed)
#: with a scale bound of 7: unconditional rings at 1,000 steps x 256, test NLL 2.274 (mean of seeds
#: 0-2) against 2.260 for zuko's RealNVP and 2.446 (seed 0) for the former Glow-style settings (LU,
#: ActNorm, bound 2, zero-initialised conditioners); see apps/toy2d/README.md, "Against zuko".
NF_NET: dict[str, Any] = dict(
    n_layers=10,
    hidden=128,
    n_hidden=3,
    embed_dim=16,
    mixing="none",
    actnorm=False,
    scale_bound=7.0,
    activation="relu",
    zero_init=False,
)
#: Optimisation defaults of nf runs (RunConfig fields), applied to the fields the user did not set.
#: lr 5e-3 beat 3e-3 (olympic rings, 3,000 steps: 0.907 against 0.899 on own ring); the lr decays to
#: 0 (cosine), so the last weights are the best and the EMA is short (0.99: the last ~100 steps).
NF_DEFAULTS: dict[str, Any] = dict(
    batch_size=512, lr=5e-3, weight_decay=0.0, schedule="cosine", warmup_steps=100, grad_clip=1.0, ema_decay=0.99
)
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
    data = with_model_defaults(cfg, "nf", NF_DEFAULTS, NF_STEPS)
    data["net"] = _net_from_cli(data.get("net"))
    return RunConfig.from_dict(data)


def make_nf_config(dataset: str = "checkerboard", **overrides: Any) -> RunConfig:
    """An nf RunConfig for ``dataset`` with the nf defaults and ``overrides`` (None ignored).

    ``net`` overrides are build_flow keyword arguments (``hidden``, ``n_layers``, ...).
    """
    data = model_config_dict(dataset, "nf", **overrides)
    return resolve_config(data)


def build_nf(cfg: RunConfig, dist: ToyDistribution | None = None) -> Flow:
    """The run's flow (weights seeded with ``cfg.seed``; the global RNG is not touched)."""
    dist = build_distribution(cfg) if dist is None else dist
    num_classes = dist.num_classes if cfg.conditional else None
    return build_flow(dist.dim, num_classes=num_classes, seed=cfg.seed, **_net_from_cli(cfg.net))


def nll_terms_history(run_dir: str | Path) -> dict[str, list[float]]:
    """RUN/nll_terms.csv as columns (step, nll, base_log_prob, logdet); empty lists when absent."""
    return RunDir(run_dir).read_history(("step", "nll", "base_log_prob", "logdet"), file=TERMS_FILE)


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
    data, cfg = read_run(run_dir)
    if data.get("model", cfg.model) != "nf":
        raise ValueError(
            f"{run_dir} holds a {data.get('model', cfg.model)!r} run; load it with fm_toy2d.training.load_run"
        )

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
    return NFRun(
        run_dir=run_dir, config=cfg, flow=flow, dist=build_distribution(cfg), step=int(ckpt_config.get("step", 0))
    )


# ----------------------------------------------------------------------------- sampling
def source(
    n: int, dim: int, seed: int, num_classes: int | None, label: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The noise z [n, dim] and labels [n] (None: unconditional) that fm_core.sample draws for ``seed``
    (fm_core.draw_source): the same draws as flow-matching runs (noise, then uniform labels unless
    ``label`` is given)."""
    problem = label_problem(label, num_classes)
    if problem:
        raise ValueError(problem)
    labels = None if label is None else torch.full((n,), int(label), dtype=torch.long)
    return draw_source(
        n,
        (dim,),
        seed=seed,
        labels=labels,
        num_classes=num_classes,
        random_labels=label is None and num_classes is not None,
    )


@torch.no_grad()
def sample_run(run: NFRun, n: int, label: int | None, seed: int) -> tuple[Tensor, Tensor | None]:
    """n samples of a loaded run: :func:`source` carried through the flow's ``inverse`` (noise -> data)."""
    z, y = source(n, run.config.data_dim, seed, run.num_classes, label)
    xs = [run.flow.inverse(z[i : i + SAMPLE_BATCH], None if y is None else y[i : i + SAMPLE_BATCH])[0]
          for i in range(0, n, SAMPLE_BATCH)]  # fmt: skip
    return (torch.cat(xs) if xs else z).float(), y


def sample(run_dir: str | Path, n: int, label: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """n samples of the run (noise -> data with the flow's ``inverse``, one exact pass).

    Returns (x [n, D] float32, y [n] int64 or None). ``label``: one class for all n samples
    (conditional runs), or None for uniform labels. Noise from a CPU generator seeded with ``seed``.
    """
    return sample_run(load_nf_run(run_dir), n, label, seed)
