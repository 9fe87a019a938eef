"""SIGINT and SIGTERM: stop training at the end of the current step with a checkpoint, not lose it.

:class:`StopSignals` (used by the Trainer around its loop) records the first SIGINT/SIGTERM instead of
raising; the loop finishes the step, writes a checkpoint and raises :class:`TrainingInterrupted`. A
second signal while that checkpoint is written raises at once: the write is abandoned (its
temporary directory removed; the protocol of fm_train.checkpoint keeps the previous checkpoint
whole) and :class:`TrainingInterrupted` says so with ``aborted=True``. :func:`raise_on_signals`
turns SIGTERM (which Python leaves fatal and silent) into an :class:`Interrupted` exception outside
the loop too, so a command can say one line and exit 143.

Exit statuses follow the shell: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
Handlers are installed only in the main thread (Python's rule); elsewhere these do nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "StopSignals", "TrainingInterrupted", "raise_on_signals", "signal_name"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``"SIGINT"`` for 2, ``"SIGTERM"`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM ended the work; ``exit_code`` is 128 + ``signum`` (130, 143)."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = int(signum)
        super().__init__(message or f"interrupted by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingInterrupted(Interrupted):
    """Training stopped on a signal at ``step``. ``aborted`` False: the checkpoint of ``step`` was written
    to ``checkpoint``; True: a second signal abandoned that write and ``checkpoint`` (None: none)
    holds the previous one, of ``checkpoint_step``."""

    def __init__(
        self, signum: int, step: int, checkpoint: Path | None, checkpoint_step: int | None, *, aborted: bool = False
    ):
        self.step, self.checkpoint, self.checkpoint_step, self.aborted = step, checkpoint, checkpoint_step, aborted
        name = signal_name(signum)
        if not aborted and checkpoint is None:
            msg = f"interrupted by {name} at step {step}, before any step; nothing to save"
        elif not aborted:
            msg = f"interrupted by {name} at step {step}; checkpoint of step {step} written to {checkpoint}"
        elif checkpoint is not None:
            msg = (
                f"interrupted again by {name} before the checkpoint of step {step} was complete; the previous checkpoint "
                f"(step {checkpoint_step}) is kept in {checkpoint}"
            )
        else:
            msg = (
                f"interrupted again by {name} before the checkpoint of step {step} was complete; no checkpoint was kept"
            )
        super().__init__(signum, msg)


class SecondSignal(Interrupted):
    """Raised by :class:`StopSignals` on a signal after the first: stop now."""


class StopSignals:
    """Context manager: the first SIGINT/SIGTERM is recorded in :attr:`signum` (the caller stops at a
    good point); any later one raises :class:`SecondSignal`. Previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise SecondSignal(signum)
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (exit code 130 / 143) inside the block."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            old[s] = signal.signal(s, handle)
    try:
        yield
    finally:
        for signum, h in old.items():
            signal.signal(signum, h)
