"""The training loop shared by the apps: AdamW, warmup + constant/cosine lr, gradient clipping,
EMA, a step or minutes budget, progress bar, atomic checkpoints, exact resume and a NaN guard.

The loop is model- and loss-agnostic. The app supplies three callables::

    batch_fn(step, generator) -> batch           # draws batch number `step` (1-based)
    loss_fn(model, batch, ctx) -> loss           # a 0-d tensor; ctx: StepContext (generator, shard,
                                                 # step, rank, world_size); t=0 noise, t=1 data is
                                                 # the app's business (fm_core.FlowMatchingLoss)
    sample_fn(ema_model, step, run_dir) -> None  # pictures; under no_grad, RNG-isolated

and optionally ``stop_fn(StepInfo) -> bool`` (ends the run cleanly when it returns True) and
``loggers`` (where the log rows go; default: ``loss.csv`` through :class:`CSVLogger`).

``generator`` (``ctx.generator``) is a ``torch.Generator`` on the training device owned by the
Trainer: all the randomness of a step should come from it (or from the global RNGs, which are
saved too), so that ``train(resume=True)`` after a crash continues exactly as an uninterrupted run
would (bit-for-bit on CPU; on CUDA only with deterministic kernels, ``torch.use_deterministic_algorithms``).

Host-device syncs happen only every ``log_every`` steps (and before checkpoints/samples):
per-step losses stay on the device and are checked for NaN/inf in one go, so the step
that diverged is still named exactly.

Several processes (``torchrun``, see :mod:`fm_train.distributed`): the model is wrapped in
DistributedDataParallel, every rank runs this loop on the same global batches (the app's loss
trains on the rank's shard, ``ctx.shard``), the logged loss is the mean over ranks, only rank 0
writes and logs, and rank 0's ``stop_fn`` decides for every rank.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    RUN_FORMAT,
    STATE_FILE,
    CheckpointError,
    config_diff,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    recover_checkpoint,
    save_checkpoint,
)
from .config import RESUME_MUST_MATCH, TrainConfig
from .devices import maybe_compile, resolve_device
from .distributed import broadcast_float, dist_info
from .ema import EMA
from .history import LossHistory
from .hooks import StepContext, StepInfo, StopFn
from .loggers import CSVLogger, Logger
from .precision import PrecisionChoice, _rng_kept, precision_autocast, resolve_precision
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .rundir import RunDir
from .runlock import lock_run
from .schedule import decay_progress, lr_at
from .signals import SecondSignal, StopSignals, TrainingInterrupted
from .statecheck import check_train_state

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError"]

log = logging.getLogger("fm_train")
plog = logging.getLogger("fm_train.precision")  # the precision decision and the compile time (apps show it)

BatchFn = Callable[[int, torch.Generator], Any]
LossFn = Callable[[nn.Module, Any, StepContext], torch.Tensor]
SampleFn = Callable[[nn.Module, int, Path], None]

_RESERVED_KEYS = ("format", "version", "step", "train")
_STATE_VERSION = 1


class TrainingDivergedError(RuntimeError):
    """The loss (or the weights) became NaN/inf at ``step``; the last good checkpoint is kept."""

    def __init__(self, step: int, what: str, checkpoint: Path | None, checkpoint_step: int | None):
        self.step = step
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step
        if checkpoint is not None:
            kept = f"the last good checkpoint (step {checkpoint_step}) is kept at {checkpoint}"
        else:
            kept = "no checkpoint had been written yet"
        super().__init__(f"training diverged at step {step}: {what}; {kept}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did.

    steps           optimizer steps of the run so far (across resumes)
    steps_this_call steps taken by this call
    seconds         wall time of this call's loop
    final_loss      mean loss over the last logged interval (None if no step was taken)
    history_path    RUN/loss.csv (written by CSVLogger);  checkpoint_path: RUN/checkpoint (None if none written)
    stopped_by      "steps" or "minutes" (the budget was used up), or "callback" (stop_fn returned True)
    precision       "fp32" or "bf16": what this call trained in (see fm_train.precision)
    compile_seconds with compile: the first step of this call, when torch.compile compiles (inside
                    ``seconds`` and the minutes budget); None without compile
    """

    steps: int
    steps_this_call: int
    seconds: float
    final_loss: float | None
    history_path: Path
    checkpoint_path: Path | None
    stopped_by: str
    precision: str = "fp32"
    compile_seconds: float | None = None


def _json_normalise(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from None


def _diff(a: Any, b: Any) -> list[str]:
    """Dotted keys where two JSON-like values differ, with both values."""
    return config_diff(a, b)


class Trainer:
    """Train ``model`` with ``loss_fn`` on batches from ``batch_fn``; write everything into ``run_dir``.

    Files in ``run_dir`` (written by rank 0 only)::

        config.json    {"format": "fm-train-run", "train": TrainConfig fields, **extra_config}
        checkpoint/    the latest checkpoint (see fm_train.checkpoint), atomically replaced
        loss.csv       step,loss,lr,elapsed_s  (one row per log interval; at checkpoints and at the end;
                       written by the default logger, CSVLogger)

    ``trainer.run`` is the :class:`~fm_train.rundir.RunDir` of ``run_dir``.

    The model is moved to the configured device; the EMA copy lives in ``trainer.ema.module``.
    ``extra_config`` (JSON-safe dict, e.g. the net's ``.config`` and the data set) is stored in
    config.json and in every checkpoint, must match on resume, and is what
    :func:`load_model_for_sampling` hands to your ``build_fn``.

    Budgets: ``steps`` counts optimizer steps of the whole run; ``minutes`` counts training
    time of the whole run, summed across resumes from the time saved in the checkpoint (the
    time between the last checkpoint and a crash is lost and trained again). The minutes
    include periodic checkpoints and sample grids; start-up and the final checkpoint/samples
    are outside it. Resuming a run that has used its budget trains no further step.

    Hooks: ``stop_fn(StepInfo) -> bool`` is called on rank 0 after every log row and right after
    every ``sample_fn`` call of the loop; when it returns True the run ends as at the end of its
    budget (the last partial interval is logged, the final checkpoint written, ``sample_fn`` called
    unless it has just run at this step) with ``stopped_by="callback"``, on every DDP rank
    together; ``train(resume=True)`` continues it to the budget. ``loggers`` receive each log row
    on rank 0 (see fm_train.loggers); the default ``None`` is ``[CSVLogger(run_dir)]`` (loss.csv),
    ``[]`` logs nowhere.

    Precision (``config.precision``, see fm_train.precision): the forward pass and ``loss_fn`` run
    under bf16 autocast when the run trains in bf16; ``"auto"`` decides at the start of every
    ``train()`` call (rank 0 measures an eager copy of the model on one batch of its own generator, so no
    training randomness is consumed; the other ranks follow), logs one line and writes the choice
    to RUN/metrics.json ``"precision"`` (with ``compile_seconds`` once a compiled run has compiled).
    The measurement is start-up time, outside the minutes budget. ``sample_fn`` runs under the
    same precision. With ``compile`` the first step of each call compiles the network; its time
    is ``TrainResult.compile_seconds`` and counts in the minutes budget.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch_fn: BatchFn,
        config: TrainConfig,
        run_dir: str | Path,
        sample_fn: SampleFn | None = None,
        extra_config: dict[str, Any] | None = None,
        *,
        stop_fn: StopFn | None = None,
        loggers: Sequence[Logger] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        required: tuple[tuple[str, object], ...] = (("loss_fn", loss_fn), ("batch_fn", batch_fn))
        for name, fn in required:
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        optional: tuple[tuple[str, object], ...] = (("sample_fn", sample_fn), ("stop_fn", stop_fn))
        for name, fn in optional:
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
        if loggers is None:
            loggers = [CSVLogger(run_dir)]
        elif isinstance(loggers, (str, bytes)) or not isinstance(loggers, Sequence):
            raise TypeError(
                f"loggers must be a sequence of loggers (log(step, metrics), close()), got {type(loggers).__name__}"
            )
        for lg in loggers:
            if not (callable(getattr(lg, "log", None)) and callable(getattr(lg, "close", None))):
                raise TypeError(f"a logger needs log(step, metrics) and close() methods, got {type(lg).__name__}")
        extra = _json_normalise(extra_config or {}, "extra_config")
        if not isinstance(extra, dict):
            raise ValueError(f"extra_config must be a dict, got {type(extra_config).__name__}")
        clash = [k for k in extra if k in _RESERVED_KEYS]
        if clash:
            raise ValueError(
                f"extra_config may not use the reserved key(s) {', '.join(clash)} "
                f"(reserved: {', '.join(_RESERVED_KEYS)})"
            )
        config.validate()

        self.config = config
        self.extra_config: dict[str, Any] = extra
        self.loss_fn, self.batch_fn, self.sample_fn, self.stop_fn = loss_fn, batch_fn, sample_fn, stop_fn
        self.loggers: list[Logger] = list(loggers)
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.checkpoint_dir = self.run.checkpoint_dir
        self.history_path = self.run.history_path

        # Several processes (torchrun): rank 0 writes files, all ranks train (fm_train.distributed).
        info = dist_info()
        self.rank, self.world_size = info.rank, info.world_size
        self.is_main = info.is_main
        self.shard = info.shard

        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.ema = EMA(self.model, decay=config.ema_decay, warmup=config.ema_warmup)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self._params = params
        # torch's fused AdamW kernel exists for CPU and CUDA: one kernel over all parameters instead of
        # a chain of foreach ops (measured on fm-toy2d's 219k-parameter MLP on 2 CPU cores: 45 ms a
        # step instead of 53 ms)
        opt_kw: dict[str, Any] = {"fused": True} if self.device.type in ("cuda", "cpu") else {}
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, **opt_kw
        )
        self.generator = self._make_generator()
        self._train_model = self._wrap_for_training(self.model)

        self.step = 0
        self.elapsed = 0.0  # training seconds of the run, across resumes
        self.history = LossHistory()
        self._ckpt_step: int | None = None  # step of the checkpoint on disk (None: none)
        self._pending: list[torch.Tensor] = []  # per-step losses not yet synced to the host
        self._pending_first = 1
        self._interval_sum = 0.0
        self._interval_n = 0
        self._resume_interval = (0.0, 0)  # (sum, count) of the log interval a checkpoint was cut in
        self._last_loss: float | None = None
        self._lr = config.lr
        self.precision: PrecisionChoice | None = None  # decided at the start of train()

    # ------------------------------------------------------------------ set-up helpers

    def _make_generator(self) -> torch.Generator:
        try:
            return torch.Generator(device=self.device)
        except RuntimeError:  # a backend without device generators
            return torch.Generator()

    def _wrap_for_training(self, model: nn.Module) -> nn.Module:
        """The module handed to ``loss_fn``: DDP-wrapped with several processes, then compiled if asked
        (torch.compile over DDP, as PyTorch recommends). ``self.model`` stays the plain module."""
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # DDP broadcasts rank 0's parameters now, so every rank starts from the same weights;
            # no buffers need syncing (no batch norm), so no broadcast before every forward
            index = (
                (self.device.index if self.device.index is not None else torch.cuda.current_device())
                if self.device.type == "cuda"
                else None
            )
            model = DistributedDataParallel(
                model, device_ids=[index] if index is not None else None, broadcast_buffers=False
            )
        return maybe_compile(model, self.config.compile)

    def _resolve_precision(self, will_train: bool) -> PrecisionChoice:
        """The run's precision (``"auto"`` measured on rank 0, its choice broadcast), logged and, on
        rank 0 with ``"auto"`` or ``compile``, written to RUN/metrics.json ``"precision"``. Nothing is
        measured or written when this call will train no step (``will_train`` false): auto is fp32 then."""
        cfg = self.config
        if not will_train:
            chosen = "fp32" if cfg.precision == "auto" else cfg.precision
            return PrecisionChoice(cfg.precision, chosen, reason="no step to train", device=self.device.type)
        if cfg.precision == "auto" and self.is_main:
            gen = self._make_generator()
            gen.manual_seed(cfg.seed * 1_000_003 + self.step + 7)  # not the training stream
            s = self.step + 1
            ctx = StepContext(generator=gen, shard=self.shard, step=s, rank=self.rank, world_size=self.world_size)
            with _rng_kept(self.device):
                batch = self.batch_fn(s, gen)
            choice = resolve_precision(
                "auto",
                self.model,
                lambda m: self.loss_fn(m, batch, ctx),
                self.device,
                items_per_step=max(1, cfg.batch_size // self.world_size),
            )
        elif cfg.precision == "auto":  # another rank: rank 0 measures, its choice is broadcast below
            choice = PrecisionChoice("auto", "fp32", reason="rank 0's choice", device=self.device.type)
        else:
            choice = PrecisionChoice(cfg.precision, cfg.precision, reason="as asked", device=self.device.type)
        if self.world_size > 1 and cfg.precision == "auto":
            choice.chosen = "bf16" if broadcast_float(1.0 if choice.bf16 else 0.0) > 0.5 else "fp32"
        plog.info("%s", choice.line())
        if self.is_main and (cfg.precision == "auto" or cfg.compile):
            self.run.update_metrics("precision", {**choice.to_dict(), "compile": cfg.compile, "compile_seconds": None})
        return choice

    def _run_config(self, fmt: str, step: int | None = None) -> dict[str, Any]:
        cfg: dict[str, Any] = {"format": fmt, "version": 1}
        if step is not None:
            cfg["step"] = step
        cfg["train"] = self.config.to_dict()
        cfg.update(self.extra_config)
        return cfg

    # ------------------------------------------------------------------ learning rate

    def lr_for(self, step: int, elapsed: float | None = None) -> float:
        """Learning rate of optimizer step ``step`` (1-based); ``elapsed`` seconds for a minutes budget."""
        cfg = self.config
        if cfg.steps is not None:
            p = decay_progress(step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
        else:
            assert cfg.minutes is not None  # a TrainConfig has exactly one budget
            frac = (self.elapsed if elapsed is None else elapsed) / (cfg.minutes * 60.0)
            p = decay_progress(step, warmup_steps=cfg.warmup_steps, time_fraction=frac)
        return lr_at(
            step,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            schedule=cfg.schedule,
            progress=p,
            min_lr_ratio=cfg.min_lr_ratio,
        )

    # ------------------------------------------------------------------ NaN guard

    def _flush(self) -> None:
        """Sync the pending per-step losses to the host (one sync) and check they are finite.
        With several processes they are first averaged over the ranks (every rank calls this at
        the same steps), so every rank sees the same values and stops at the same step."""
        if not self._pending:
            return
        stacked = torch.stack([v.float() for v in self._pending])
        if self.world_size > 1:
            torch.distributed.all_reduce(stacked)
            stacked = stacked / self.world_size
        values = stacked.tolist()
        first = self._pending_first
        self._pending.clear()
        self._pending_first = first + len(values)
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise self._diverged(first + i, f"the loss is {v}")
        self._interval_sum += sum(values)
        self._interval_n += len(values)

    def _check_weights(self) -> None:
        """One sync: are all weights finite? (a finite loss with an inf gradient gives NaN weights)
        With several processes also: do all ranks hold the same weights and EMA?"""
        norms = torch.stack(torch._foreach_norm([p.detach() for p in self._params]))
        if not bool(torch.isfinite(norms).all()):
            raise self._diverged(self.step, "the weights are no longer finite after the update")
        if self.world_size > 1:
            ema = [p.detach() for p in self.ema.module.parameters() if p.is_floating_point()]
            mine = torch.cat([norms, torch.stack(torch._foreach_norm(ema))]).double()
            low, high = mine.clone(), mine.clone()
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
            if not torch.equal(low, high):
                raise RuntimeError(
                    f"step {self.step}: the ranks' weights or EMA differ (max norm gap "
                    f"{float((high - low).max()):.3g}); DDP should keep them identical"
                )

    def _diverged(self, step: int, what: str) -> TrainingDivergedError:
        if len(self.history):
            self._flush_loggers()
        ckpt = self.checkpoint_dir if self._ckpt_step is not None else None
        return TrainingDivergedError(step, what, ckpt, self._ckpt_step)

    # ------------------------------------------------------------------ checkpoints

    def _train_state(self) -> dict[str, Any]:
        return {
            "format_version": _STATE_VERSION,
            "step": self.step,
            "elapsed": float(self.elapsed),
            "lr": float(self._lr),
            "optimizer": self.optimizer.state_dict(),
            "ema": {"num_updates": self.ema.num_updates, "decay": self.ema.decay, "warmup": self.ema.warmup},
            "generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "rng": capture_rng_state(),
            "history": self.history.state_dict(),
            # the loss sum of the current log interval: loss.csv after a resume equals an uninterrupted run's
            "interval": {"sum": float(self._interval_sum), "n": int(self._interval_n)},
            "world_size": self.world_size,
            "torch_version": str(torch.__version__),  # TorchVersion would not load weights_only
        }

    def save_checkpoint(self) -> Path | None:
        """Check the weights are finite, then write RUN/checkpoint atomically (rank 0) and loss.csv."""
        self._flush()
        self._check_weights()
        if not self.is_main:
            self._ckpt_step = self.step  # rank 0 wrote it; every rank knows the step
            return None
        save_checkpoint(
            self.checkpoint_dir,
            model_state=self.model.state_dict(),
            ema_state=self.ema.module.state_dict(),
            train_state=self._train_state(),
            config=self._run_config("fm-train-checkpoint", step=self.step),
        )
        self._ckpt_step = self.step
        self._flush_loggers()
        return self.checkpoint_dir

    def _check_resume_config(self, config: dict[str, Any], file: Path) -> None:
        try:
            saved = TrainConfig.from_dict(config.get("train"))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{file}: bad 'train' section ({e})") from None
        diffs = [
            f"train.{name}={getattr(saved, name)!r} in the checkpoint but {getattr(self.config, name)!r} now"
            for name in RESUME_MUST_MATCH
            if getattr(saved, name) != getattr(self.config, name)
        ]
        saved_extra = {k: v for k, v in config.items() if k not in _RESERVED_KEYS}
        diffs += _diff(saved_extra, self.extra_config)
        if diffs:
            more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise CheckpointError(f"{file}: config mismatch, cannot resume: {'; '.join(diffs[:3])}{more}")

    def _resume(self) -> None:
        if self.is_main:
            recover_checkpoint(self.checkpoint_dir)
        if self.world_size > 1:
            torch.distributed.barrier()  # the other ranks read what rank 0 may just have repaired
        ckpt = load_checkpoint(self.checkpoint_dir, map_location="cpu")
        d = ckpt.path
        self._check_resume_config(ckpt.config, d / CONFIG_FILE)
        if ckpt.ema is None:
            raise CheckpointError(f"{d / EMA_FILE}: missing file (needed to resume)")
        if ckpt.train_state is None:
            raise CheckpointError(f"{d / STATE_FILE}: missing file (needed to resume)")
        load_weights(self.model, ckpt.model, d / MODEL_FILE)
        load_weights(self.ema.module, ckpt.ema, d / EMA_FILE)
        ts, sf = ckpt.train_state, d / STATE_FILE
        try:
            # untrusted input: every tensor and number checked before use (fm_train.statecheck)
            ts = check_train_state(ts, step=ckpt.step, optimizer=self.optimizer, generator=self.generator)
            if ts.get("format_version") != _STATE_VERSION:
                raise ValueError(f"unsupported format_version {ts.get('format_version')!r}")
            step, elapsed = ts["step"], float(ts["elapsed"])
            if step != ckpt.step:
                raise ValueError(f"step {step} differs from config.json's step {ckpt.step}")
            history = LossHistory.from_state_dict(ts["history"])
            self.optimizer.load_state_dict(ts["optimizer"])
            self.ema.num_updates = int(ts["ema"]["num_updates"])
            if ts["generator_device"] == self.generator.device.type:
                self.generator.set_state(ts["generator"])
            else:
                warnings.warn(
                    f"resuming a run trained on {ts['generator_device']} on {self.generator.device.type}: "
                    "the batch/noise generator is re-seeded from (seed, step), so the result is not "
                    "bit-identical to an uninterrupted run",
                    stacklevel=3,
                )
                self.generator.manual_seed(self.config.seed * 1_000_003 + step)
            restore_rng_state(ts["rng"])
            interval = ts.get("interval") or {"sum": 0.0, "n": 0}  # absent in checkpoints of fm-train <= 0.1.0
            resume_interval = (float(interval["sum"]), int(interval["n"]))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{sf}: does not fit this run ({type(e).__name__}: {e})") from None
        self.step, self.elapsed, self.history = int(step), elapsed, history
        self._ckpt_step = self.step
        self._lr = float(ts.get("lr", self.config.lr))
        self._resume_interval = resume_interval
        if self.is_main:
            for lg in self.loggers:
                restore = getattr(lg, "restore", None)
                if callable(restore):
                    restore(self.step, history)

    # ------------------------------------------------------------------ sampling

    def _sample(self) -> bool:
        """Call sample_fn (rank 0, RNG-isolated); False when there is none."""
        if self.sample_fn is None:
            return False
        self._flush()  # on every rank: these are collective with several processes
        self._check_weights()
        if not self.is_main:
            return True
        # Sampling must not consume training randomness: resume exactness then holds
        # whatever sample_every is, and wherever the checkpoints fall.
        rng = capture_rng_state()
        gen_state = self.generator.get_state()
        chosen = self.precision.chosen if self.precision is not None else "fp32"
        try:
            with torch.no_grad(), precision_autocast(self.device, chosen):
                self.sample_fn(self.ema.module, self.step, self.run_dir)
        finally:
            restore_rng_state(rng)
            self.generator.set_state(gen_state)
        return True

    # ------------------------------------------------------------------ hooks

    def _signal_stop(self, guard: StopSignals) -> bool:
        """Whether a SIGINT/SIGTERM asks to stop now: checked before every step; with several processes
        rank 0's verdict at every log step, so that all ranks stop after the same step."""
        if self.world_size == 1:
            return guard.signum is not None
        if self.step % self.config.log_every:
            return False
        signum = int(broadcast_float(float(guard.signum or 0)))
        if signum and guard.signum is None:
            guard.signum = signum
        return signum > 0

    def _should_stop(self) -> bool:
        """rank 0's ``stop_fn`` verdict, the same on every rank (called at the same steps on all)."""
        stop = False
        if self.is_main and self.stop_fn is not None:
            stop = bool(self.stop_fn(StepInfo(step=self.step, loss=self._last_loss, lr=self._lr, elapsed=self.elapsed)))
        if self.world_size > 1:
            stop = broadcast_float(1.0 if stop else 0.0) > 0.5
        return stop

    def _flush_loggers(self) -> None:
        if not self.is_main:
            return
        for lg in self.loggers:
            flush = getattr(lg, "flush", None)
            if callable(flush):
                flush()

    def _close_loggers(self) -> None:
        if not self.is_main:
            return
        for lg in self.loggers:
            lg.close()

    # ------------------------------------------------------------------ the loop

    def train(self, resume: bool = False) -> TrainResult:
        """Run until the budget is used up; see the class docstring. ``resume=True`` continues the
        run in ``run_dir`` from its checkpoint (or starts fresh when it has none yet).

        Holds the run directory's lock meanwhile (:func:`fm_train.runlock.lock_run`: RunLockedError when
        another process trains there). SIGINT/SIGTERM end the run after the current step with a
        checkpoint and raise :class:`~fm_train.signals.TrainingInterrupted`."""
        lock = lock_run(self.run_dir) if self.is_main else None  # one writer per run directory
        try:
            return self._train(resume)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, resume: bool) -> TrainResult:
        cfg = self.config
        existing = find_checkpoint(self.checkpoint_dir)
        if resume and existing is not None:
            self._resume()
            log.info("resumed %s at step %d (%.1f s trained)", self.checkpoint_dir, self.step, self.elapsed)
        else:
            if existing is not None:
                raise ValueError(
                    f"{self.run_dir} already holds a checkpoint ({existing}); pass resume=True to continue it, "
                    "or choose another run directory"
                )
            seed_everything(cfg.seed)
            self.generator.manual_seed(cfg.seed)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run.write_config(self._run_config(RUN_FORMAT))
        budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else None
        total_steps = cfg.steps
        will_train = self.step < total_steps if total_steps is not None else self.elapsed < (budget_s or 0.0)
        choice = self.precision = self._resolve_precision(will_train)
        compile_seconds: float | None = None
        start_step, base_elapsed = self.step, self.elapsed
        log_every, ckpt_every, sample_every = cfg.log_every, cfg.ckpt_every, cfg.sample_every
        ckpt_s = cfg.ckpt_minutes * 60.0 if cfg.ckpt_minutes is not None else None
        model, gen, opt, params = self._train_model, self.generator, self.optimizer, self._params
        grad_clip = cfg.grad_clip
        amp = precision_autocast(self.device, choice.chosen)
        self._pending.clear()
        self._pending_first = self.step + 1
        self._interval_sum, self._interval_n = self._resume_interval
        self._resume_interval = (0.0, 0)

        shard, rank, world = self.shard, self.rank, self.world_size
        stopped_by = cfg.budget
        sampled_at: int | None = None  # step of the loop's last sample_fn call

        bar = self._progress_bar(budget_s, base_elapsed)
        # SIGINT/SIGTERM: finish the step, write a checkpoint, raise TrainingInterrupted (fm_train.signals)
        guard = StopSignals().__enter__()
        t0 = time.perf_counter()
        t_bar = t_log = t0
        e_ckpt = base_elapsed  # run time of the last checkpoint (time-based checkpoints)
        step_log = self.step
        model.train()
        try:
            while True:
                now = time.perf_counter()
                elapsed = base_elapsed + (now - t0)
                if self.world_size > 1:
                    elapsed = broadcast_float(elapsed)  # rank 0's clock: every rank stops/checkpoints at the same step
                if total_steps is not None:
                    if self.step >= total_steps:
                        break
                elif budget_s is not None and elapsed >= budget_s:
                    break
                if self._signal_stop(guard):
                    stopped_by = "signal"
                    break
                s = self.step + 1
                lr = self.lr_for(s, elapsed)
                if lr != self._lr:
                    for group in opt.param_groups:
                        group["lr"] = lr
                    self._lr = lr

                batch = self.batch_fn(s, gen)
                ctx = StepContext(generator=gen, shard=shard, step=s, rank=rank, world_size=world)
                t_compile = time.perf_counter() if cfg.compile and compile_seconds is None else None
                with amp:
                    loss = self.loss_fn(model, batch, ctx)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise ValueError(f"loss_fn must return a 0-d tensor, got {shape}")
                loss = loss.float()  # a no-op in float32; the loss value is float32 under bf16 too
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                self.ema.update(self.model)
                if t_compile is not None:  # the first compiled step: forward and backward graphs compiled
                    compile_seconds = self._compiled(t_compile)
                self._pending.append(loss.detach())  # no sync: checked at the next flush
                self.step = s
                self.elapsed = base_elapsed + (time.perf_counter() - t0)

                stop = False
                if s % log_every == 0:
                    self._flush()
                    t_now = time.perf_counter()
                    self._log_row(bar, steps_per_s=(s - step_log) / max(t_now - t_log, 1e-9))
                    t_log, step_log = t_now, s
                    stop = self._should_stop()
                if stop:  # the end of the run writes the checkpoint of this step
                    stopped_by = "callback"
                    break
                if (ckpt_every is not None and s % ckpt_every == 0) or (
                    ckpt_s is not None and elapsed - e_ckpt >= ckpt_s
                ):
                    self.save_checkpoint()
                    e_ckpt = elapsed
                if sample_every is not None and s % sample_every == 0 and self._sample():
                    sampled_at = s
                    if self._should_stop():
                        stopped_by = "callback"
                        break
                if bar is not None and time.perf_counter() - t_bar >= 0.5:
                    self._advance_bar(bar, budget_s)
                    t_bar = time.perf_counter()

            # End of the budget: last partial interval, final checkpoint, final samples.
            self._flush()
            if self._interval_n and stopped_by != "signal":  # a signal: the interval goes on after --resume
                self._log_row(bar, steps_per_s=(self.step - step_log) / max(time.perf_counter() - t_log, 1e-9))
            if self.step > 0 and self._ckpt_step != self.step:
                self.save_checkpoint()
            elif len(self.history):
                self._flush_loggers()
            if bar is not None:
                self._advance_bar(bar, budget_s)
        except SecondSignal as e:  # a second signal: the checkpoint write was abandoned, the previous one kept
            ckpt = self.checkpoint_dir if self._ckpt_step is not None else None
            raise TrainingInterrupted(e.signum, self.step, ckpt, self._ckpt_step, aborted=True) from None
        finally:
            guard.__exit__(None, None, None)
            if bar is not None:
                bar.close()
            self._close_loggers()
        if stopped_by == "signal":
            assert guard.signum is not None
            ckpt = self.checkpoint_dir if self._ckpt_step is not None else None
            raise TrainingInterrupted(guard.signum, self.step, ckpt, self._ckpt_step)
        seconds = time.perf_counter() - t0
        # the final samples (after a stop right behind the loop's sample_fn call they are there already)
        if self.step > 0 and not (stopped_by == "callback" and sampled_at == self.step):
            self._sample()
        if self.world_size > 1:
            torch.distributed.barrier()  # leave together: rank 0 has written the checkpoint and the last samples
        if self._last_loss is None and self.history.loss:
            self._last_loss = self.history.loss[-1]
        return TrainResult(
            steps=self.step,
            steps_this_call=self.step - start_step,
            seconds=seconds,
            final_loss=self._last_loss,
            history_path=self.history_path,
            checkpoint_path=self.checkpoint_dir if self._ckpt_step is not None else None,
            stopped_by=stopped_by,
            precision=choice.chosen,
            compile_seconds=compile_seconds,
        )

    def _compiled(self, t_start: float) -> float:
        """Seconds since ``t_start`` (the start of the first compiled step), recorded in RUN/metrics.json
        ``"precision"`` (rank 0)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t_start
        plog.info("torch.compile: first step took %.1f s (compilation included)", seconds)
        if self.is_main:
            rec = self.run.read_metrics().get("precision")
            if isinstance(rec, dict):
                self.run.update_metrics("precision", {**rec, "compile_seconds": round(seconds, 2)})
        return seconds

    # ------------------------------------------------------------------ progress and logging

    def _progress_bar(self, budget_s: float | None, base_elapsed: float):
        if not (self.config.progress and self.is_main):
            return None
        if budget_s is None:
            return tqdm(
                total=self.config.steps,
                initial=self.step,
                unit="step",
                desc="train",
                dynamic_ncols=True,
                mininterval=0.5,
            )
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
        return tqdm(
            total=budget_s,
            initial=min(base_elapsed, budget_s),
            desc="train",
            bar_format=fmt,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def _advance_bar(self, bar, budget_s: float | None) -> None:
        target = self.step if budget_s is None else min(self.elapsed, budget_s)
        if target > bar.n:
            bar.update(target - bar.n)

    def _log_row(self, bar, steps_per_s: float) -> None:
        mean = self._interval_sum / max(self._interval_n, 1)
        self._interval_sum, self._interval_n = 0.0, 0
        self._last_loss = mean
        self.history.append(self.step, mean, self._lr, self.elapsed)
        log.info("step %d loss %.5g lr %.3g %.1f steps/s", self.step, mean, self._lr, steps_per_s)
        if self.is_main:
            row = {"loss": mean, "lr": self._lr, "elapsed_s": self.elapsed, "steps_per_s": steps_per_s}
            for lg in self.loggers:
                lg.log(self.step, dict(row))
        if bar is not None:
            post: dict[str, Any] = {"loss": f"{mean:.4g}", "lr": f"{self._lr:.2e}"}
            if self.config.minutes is not None:
                post = {"step": self.step, "it/s": f"{steps_per_s:.1f}", **post}
            bar.set_postfix(post, refresh=False)
