"""Where the Trainer's log rows go: ``loss.csv`` (:class:`CSVLogger`, the default), TensorBoard
(:class:`TensorBoardLogger`), or any object with ``log(step, metrics)`` and ``close()``.

Every ``log_every`` steps (and for the last, partial interval) rank 0 calls
``logger.log(step, {"loss": ..., "lr": ..., "elapsed_s": ..., "steps_per_s": ...})``: ``loss`` is
the mean over the steps since the previous row (averaged over the DDP ranks), ``lr`` the learning
rate of ``step``, ``elapsed_s`` the run's training seconds across resumes. Two optional methods
are called where a logger has them:

    flush()                 after every checkpoint, at the end of the run, when the run diverges
    restore(step, history)  on resume: the checkpoint's step and its LossHistory (the rows logged
                            up to the checkpoint; later rows were lost and are logged again)

``close()`` is called when ``train()`` returns or raises; it must not lose what was flushed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .history import HISTORY_FILENAME, LossHistory

__all__ = ["CSVLogger", "Logger", "MissingDependencyError", "TensorBoardLogger"]


@runtime_checkable
class Logger(Protocol):
    """Receives the step metrics of each log row (rank 0 only)."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class MissingDependencyError(ImportError, ValueError):
    """An optional package is not installed; the message says how to install it."""


class CSVLogger:
    """``RUN/loss.csv`` with the columns step,loss,lr,elapsed_s (:class:`LossHistory`).

    The file holds every row of the run (across resumes) and is rewritten atomically at each
    :meth:`flush`: after every checkpoint and at the end. After a crash it holds the rows up to
    the last checkpoint, which is what resume continues from, so the loss.csv of a resumed run
    equals an uninterrupted run's.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / HISTORY_FILENAME
        self.history = LossHistory()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append(step, metrics["loss"], metrics["lr"], metrics["elapsed_s"])

    def restore(self, step: int, history: LossHistory) -> None:
        self.history = LossHistory.from_state_dict(history.state_dict())

    def flush(self) -> None:
        self.history.to_csv(self.path)

    def close(self) -> None:
        """Nothing to release: the file is written whole at each flush."""


class TensorBoardLogger:
    """Scalars ``train/loss``, ``train/lr``, ``train/elapsed_s``, ``train/steps_per_s`` in
    ``RUN/tensorboard`` through ``torch.utils.tensorboard.SummaryWriter`` (view with
    ``tensorboard --logdir RUN``).

    Needs the ``tensorboard`` package: without it the constructor raises
    :class:`MissingDependencyError` (an ``ImportError`` and a ``ValueError``). The event file is
    created at the first row, so a logger built on every DDP rank writes only on rank 0. On
    resume the events after the checkpoint's step are purged (``purge_step``).
    """

    def __init__(self, run_dir: str | os.PathLike, subdir: str = "tensorboard", prefix: str = "train/") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingDependencyError(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard"
            ) from None
        self._writer_cls = SummaryWriter
        self.log_dir = Path(run_dir) / subdir
        self.prefix = prefix
        self._writer: Any = None
        self._purge_step: int | None = None

    def _get_writer(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=str(self.log_dir), purge_step=self._purge_step)
            self._purge_step = None
        return self._writer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        writer = self._get_writer()
        for name, value in metrics.items():
            writer.add_scalar(self.prefix + name, value, step)

    def restore(self, step: int, history: LossHistory) -> None:
        self.close()
        self._purge_step = step + 1

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
