"""One training loop for flow-matching models: EMA, schedules, atomic checkpoints, resume, NaN guard,
run directories, stop and logging hooks, DDP.

Model- and loss-agnostic: the app passes ``loss_fn(model, batch, ctx)`` (``ctx``: a StepContext with
the generator and the DDP shard) and ``batch_fn(step, generator)``; nothing here imports another
fm_* package.
"""

from . import distributed
from .checkpoint import (
    CHECKPOINT_DIRNAME,
    Checkpoint,
    CheckpointError,
    atomic_file,
    atomic_write_text,
    check_state_dict,
    find_checkpoint,
    load_checkpoint,
    load_model_for_sampling,
    load_weights,
    read_json,
    recover_checkpoint,
    save_checkpoint,
)
from .config import DEFAULT_STEPS, RESUME_MUST_MATCH, StrictConfig, TrainConfig
from .devices import DEVICE_CHOICES, autocast, maybe_compile, resolve_device
from .distributed import DistInfo, dist_info
from .ema import EMA
from .history import HISTORY_FILENAME, LossHistory, read_csv_columns
from .hooks import StepContext, StepInfo, StopFn
from .loggers import CSVLogger, Logger, MissingDependencyError, TensorBoardLogger
from .loop import Trainer, TrainingDivergedError, TrainResult
from .pairs import PairStore
from .precision import PRECISIONS, PrecisionChoice, resolve_precision, sampling_precision
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .rundir import METRICS_FILENAME, RunDir, machine_info
from .runlock import RunLock, RunLockedError, lock_run
from .schedule import SCHEDULES, decay_progress, lr_at
from .signals import Interrupted, TrainingInterrupted, raise_on_signals
from .sweep import CsvLog, TaskContext, TaskResult, read_csv_rows, run_pool

__version__ = "0.3.0"

__all__ = [
    "PRECISIONS",
    "PrecisionChoice",
    "resolve_precision",
    "sampling_precision",
    "CHECKPOINT_DIRNAME",
    "CSVLogger",
    "Checkpoint",
    "CheckpointError",
    "CsvLog",
    "DEFAULT_STEPS",
    "DEVICE_CHOICES",
    "DistInfo",
    "EMA",
    "HISTORY_FILENAME",
    "Interrupted",
    "Logger",
    "LossHistory",
    "METRICS_FILENAME",
    "MissingDependencyError",
    "PairStore",
    "RESUME_MUST_MATCH",
    "RunDir",
    "RunLock",
    "RunLockedError",
    "SCHEDULES",
    "StepContext",
    "StepInfo",
    "StopFn",
    "StrictConfig",
    "TaskContext",
    "TaskResult",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "atomic_file",
    "atomic_write_text",
    "autocast",
    "capture_rng_state",
    "check_state_dict",
    "decay_progress",
    "dist_info",
    "distributed",
    "find_checkpoint",
    "load_checkpoint",
    "load_model_for_sampling",
    "load_weights",
    "lock_run",
    "lr_at",
    "machine_info",
    "maybe_compile",
    "read_csv_columns",
    "read_csv_rows",
    "raise_on_signals",
    "read_json",
    "recover_checkpoint",
    "resolve_device",
    "restore_rng_state",
    "run_pool",
    "save_checkpoint",
    "seed_everything",
]
