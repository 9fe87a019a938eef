"""Normalizing-flow runs of fm-toy2d (``train --model nf``): fm-nflows trained by fm-train's Trainer.

The CLI delegates every ``"model": "nf"`` run to this module (see :mod:`fm_toy2d.cli`):

    train(cfg, run_dir, progress=True, resume=False) -> TrainResult   # config.json, checkpoint/,
                                                        # loss.csv, nll_terms.csv, flow/
    sample(run_dir, n, label, seed) -> (x [n, D] float32, y [n] int64 | None)
    evaluate(run_dir, n, seed, n_nll=2000, nll=True) -> dict   # merged into RUN/metrics.json
    pictures(run_dir) -> list[Path]                     # samples, layers, loss terms, density

The run's settings, flow, loading and sampling live in :mod:`fm_toy2d.nf_run`, its evaluation and
pictures in :mod:`fm_toy2d.nf_eval`; this module trains and re-exports them. The flow is trained
by exact maximum likelihood with the toolkit's one training loop (fm_train.Trainer: AdamW, warmup
+ cosine lr, gradient clipping, EMA of the weights, progress bar, atomic checkpoints, ``loss.csv``,
resume); sampling and evaluation use the EMA weights. The loss
``-log p(x) = -log N(z; 0, I) - log|det dz/dx|`` is also logged split into its two terms
(``RUN/nll_terms.csv``). Direction: ``forward`` maps data to noise; sampling runs ``inverse``
(t = 0 noise -> t = 1 data); a flow has no ODE solver (``--solver``/``--nfe`` are refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fm_nflows import Flow, save_flow
from fm_train import CSVLogger, LossHistory, RunDir, StepContext, Trainer, TrainResult, atomic_write_text

from .config import RunConfig
from .nf_eval import evaluate, layerwise_points, likelihood, pictures
from .nf_run import (
    FLOW_DIR,
    NET_NAME,
    NF_DEFAULTS,
    NF_NET,
    NF_STEPS,
    TERMS_FILE,
    NFRun,
    build_nf,
    load_nf_run,
    make_nf_config,
    nll_terms_history,
    resolve_config,
    sample,
)
from .training import APP_FORMAT, batch_fn_for, build_distribution

__all__ = [
    "FLOW_DIR",
    "NF_DEFAULTS",
    "NF_NET",
    "NF_STEPS",
    "NFRun",
    "TERMS_FILE",
    "build_nf",
    "evaluate",
    "layerwise_points",
    "likelihood",
    "load_nf_run",
    "make_nf_config",
    "nll_terms_history",
    "pictures",
    "resolve_config",
    "sample",
    "train",
]


class NLLTermsLogger:
    """fm-train logger of ``RUN/nll_terms.csv`` (step, nll, base_log_prob, logdet): the loss split
    into its two terms, averaged over the steps of each of the Trainer's log rows.

    The loss records each step's terms (:meth:`record`); the file is rewritten at every
    checkpoint and at the end, and a resumed run keeps the rows up to its checkpoint.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run = RunDir(run_dir)
        self.pending: list[Tensor] = []
        self.rows: list[tuple[int, float, float]] = []

    def record(self, base_log_prob: Tensor, logdet: Tensor) -> None:
        self.pending.append(torch.stack([base_log_prob.detach(), logdet.detach()]))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.pending:
            base, logdet = torch.stack(self.pending).double().mean(0).tolist()
            self.rows.append((step, base, logdet))
            self.pending.clear()

    def restore(self, step: int, history: LossHistory) -> None:
        old = self.run.read_history(("step", "base_log_prob", "logdet"), file=TERMS_FILE)
        rows = zip(old["step"], old["base_log_prob"], old["logdet"])
        self.rows = [(int(s), base, logdet) for s, base, logdet in rows if s <= step]
        self.pending.clear()

    def flush(self) -> None:
        lines = ["step,nll,base_log_prob,logdet"] + [f"{s},{-(b + d)!r},{b!r},{d!r}" for s, b, d in self.rows]
        atomic_write_text(self.run.path / TERMS_FILE, "\n".join(lines) + "\n")

    def close(self) -> None:
        """Nothing to release: the file is written whole at each flush."""


def train(
    cfg: RunConfig | dict[str, Any],
    run_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    loggers: list[Any] | None = None,
) -> TrainResult:
    """Train a normalizing flow by maximum likelihood into ``run_dir`` (``resume``: continue it).

    Writes RUN/config.json (``"app": "fm-toy2d", "model": "nf", "toy2d": RunConfig dict, "net":
    the flow's build_flow config``), RUN/checkpoint/ (weights, EMA, training state), RUN/loss.csv
    (the NLL, nats), RUN/nll_terms.csv (``-log p = -(base_log_prob + logdet)`` split per 50-step
    window) and RUN/flow/ (the EMA flow as ``fm_nflows.save_flow`` writes it). ``loggers``: fm-train's
    for the loss rows (default: loss.csv); the NLL terms are logged beside them.
    """
    cfg = resolve_config(cfg)
    run_dir = Path(run_dir)
    dist = build_distribution(cfg)
    flow = build_nf(cfg, dist)
    terms = NLLTermsLogger(run_dir)

    def loss_fn(model: Flow, batch, ctx: StepContext) -> Tensor:
        x, y = batch
        t = model.nll_terms(x, y)
        terms.record(t.base_log_prob, t.logdet)
        return t.nll

    extra = {"app": APP_FORMAT, "model": "nf", "toy2d": cfg.to_dict(), "net": {"name": NET_NAME, "config": flow.config}}
    trainer = Trainer(flow, loss_fn, batch_fn_for(cfg, dist), cfg.train_config(progress=progress), run_dir,
                      extra_config=extra, loggers=[*(loggers or [CSVLogger(run_dir)]), terms])  # fmt: skip
    print(
        f"fm-toy2d: flow {cfg.net['n_layers']} blocks x conditioner {cfg.net['n_hidden']}x{cfg.net['hidden']} "
        f"({sum(p.numel() for p in flow.parameters()):,} parameters), batch {cfg.batch_size}, lr {cfg.lr:g}, "
        f"{f'{cfg.steps} steps' if cfg.steps else f'{cfg.minutes} minutes'}",
        flush=True,
    )
    result = trainer.train(resume=resume)
    if result.steps_this_call:  # (a resumed run with its budget used trains nothing and writes nothing)
        save_flow(trainer.ema.module, run_dir / FLOW_DIR)
        print(f"fm-toy2d: trained {result.steps} steps in {result.seconds:.1f} s "
              f"({result.steps_this_call / max(result.seconds, 1e-9):.1f} steps/s), final NLL {result.final_loss:.4f} "
              "nats", flush=True)  # fmt: skip
    return result
