"""One writer per run directory: an exclusive lock on ``RUN/.lock`` held for the run's life.

The lock is ``fcntl.flock`` on an open file: the operating system releases it when the process
ends, however it ends (SIGKILL and crashes included), so a stale lock never blocks a later run.
A second process that asks for it gets :class:`RunLockedError` at once (one line naming the run
and the pid that holds it), before it has loaded data or written anything.

The file is removed when the lock is released (a process that dies leaves it, unlocked: harmless).
Within one process the lock is re-entrant (a command takes it before loading data, its Trainer
again when it starts): :func:`lock_run` counts, :meth:`RunLock.release` gives one back.

    with lock_run("runs/demo"):      # RunLockedError if another process trains there
        ...

On platforms without ``fcntl`` (Windows) the lock is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILENAME", "RunLock", "RunLockedError", "lock_run"]

LOCK_FILENAME = ".lock"

#: run directory (real path) -> [file descriptor, holders] of the locks this process holds
_HELD: dict[str, list[int]] = {}  # realpath -> [fd, holds, 1 if lock_run created the directory]


class RunLockedError(ValueError):
    """Another process holds the run directory's lock (it is training or writing there)."""


class RunLock:
    """A held lock on ``RUN/.lock`` (see :func:`lock_run`); a context manager that releases it."""

    def __init__(self, key: str, path: Path):
        self._key, self.path = key, path
        self._released = False

    def release(self) -> None:
        """Give this hold back; the lock is freed when the process's last hold is released."""
        if self._released:
            return
        self._released = True
        entry = _HELD.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _HELD[self._key]
            try:
                self.path.unlink()  # before the unlock: a waiter then finds a new file (lock_run checks)
            except OSError:
                pass
            os.close(entry[0])  # closing the descriptor drops the flock
            if entry[2]:  # a directory made only to hold the lock (a usage error came next): leave nothing
                try:
                    Path(self._key).rmdir()  # only when empty
                except OSError:
                    pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_run(run_dir: str | os.PathLike) -> RunLock:
    """Take the exclusive lock of ``run_dir`` (created if missing) for this process, or raise
    :class:`RunLockedError` naming the run and the holder's pid; ``OSError`` if the directory cannot
    be created or the lock file not opened. The pid of the holder is written into ``RUN/.lock``."""
    run = Path(run_dir)
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run)
    lock_path = run / LOCK_FILENAME
    if key in _HELD:
        _HELD[key][1] += 1
        return RunLock(key, lock_path)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            os.close(fd)
            raise RunLockedError(
                f"{run} is in use by another process (pid {holder}) that trains or writes there; "
                "wait for it to end or choose another directory"
            ) from None
        try:  # the holder removes the file when it releases: lock the file that is there now
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message
    _HELD[key] = [fd, 1, int(created)]
    return RunLock(key, lock_path)
