"""Sweeps of many training runs: an append-only CSV log that survives a crash and resumes, and a
pool that runs tasks in worker processes under one deadline, with events streamed back.

Nothing here knows what a task trains; a study (e.g. ``fm-toy2d study``) is wiring over these:

* :class:`CsvLog` -- one row per line, flushed as it is written, so a killed sweep keeps every
  row it wrote. Opening a log that exists appends to it (the header must match) after dropping a
  row cut short by a crash; :meth:`CsvLog.keep` rewrites it atomically with the rows to keep
  (e.g. those of finished tasks, before their unfinished neighbours run again).
* :func:`run_pool` -- ``fn(task, ctx)`` for every task, in ``workers`` spawned processes (one torch
  thread each) or in this process when ``workers`` is 1. A task not started by the ``deadline``
  is not run (status ``"skipped"``); a running task sees the deadline in ``ctx`` and decides
  itself when to stop (e.g. through ``Trainer(stop_fn=...)``). ``ctx.emit(event)`` sends events to
  ``on_event`` in the parent, all of a task's events before its ``on_result``.

    with CsvLog("out/evals.csv", ("task", "step", "score")) as log:
        results = run_pool(tasks, train_task, workers=2, deadline=time.time() + 3600,
                           on_event=lambda i, row: log.append(row))
"""

from __future__ import annotations

import csv
import functools
import io
import os
import pickle
import queue as queue_mod
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_file

__all__ = ["CsvLog", "TaskContext", "TaskResult", "read_csv_rows", "run_pool"]

# csv's own line ending; a row is complete when its line ends in "\n"
_LINE_END = "\r\n"


# ----------------------------------------------------------------------------- the CSV log
def _complete_text(path: Path) -> tuple[str, bool]:
    """The file's text up to its last complete line, and whether anything after it was cut off."""
    data = path.read_bytes()
    end = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    return data[:end].decode("utf-8"), end != len(data)


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV with a header line (as written by :class:`CsvLog`), values as strings;
    [] when the file is absent or empty. A last line without its line ending (a row being written
    when the process died) is left out."""
    path = Path(path)
    if not path.exists():
        return []
    text, _ = _complete_text(path)
    return list(csv.DictReader(io.StringIO(text, newline="")))


class CsvLog:
    """An append-only CSV log: ``columns`` fixed, one row per line, each flushed as it is written.

    Opening ``path`` creates it with the header line, or, when it exists, appends to it: its
    header must be ``columns`` (a ``ValueError`` names both otherwise), and a last line without
    its line ending (cut by a crash: the row was never complete) is removed first, so a resumed
    log holds every row that was written in full, once. A process killed between rows loses
    nothing (the file is flushed after each row; it is not fsynced, so a power cut may lose the
    last rows).

    Values: None is written as an empty field, floats with ``float_format`` (e.g. ``".6g"``;
    default ``repr``, the shortest text that reads back exactly), anything else with ``str``.
    A value may not contain a line break (one row is one line: that is what makes the crash
    repair above exact). Read back, every value is a string (:meth:`rows`, :func:`read_csv_rows`).
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], *, float_format: str | None = None):
        self.path = Path(path)
        self.columns = tuple(columns)
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns must be distinct names, at least one, got {list(self.columns)!r}")
        if float_format is not None:
            format(1.5, float_format)  # a bad format is a ValueError now, not at the first row
        self.float_format = float_format
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            text, cut = _complete_text(self.path)
            header = next(csv.reader(io.StringIO(text, newline="")), None)
            if header is not None and tuple(header) != self.columns:
                raise ValueError(
                    f"{self.path}: its columns are {','.join(header)}, this log's are {','.join(self.columns)}"
                )
            if cut:
                with open(self.path, "r+b") as f:
                    f.truncate(len(text.encode("utf-8")))
            new = header is None
        else:
            new = True
        self._open(write_header=new)

    def _open(self, write_header: bool) -> None:
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator=_LINE_END)
        if write_header:
            self._writer.writerow(self.columns)
            self._file.flush()

    def _text(self, key: str, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            text = format(value, self.float_format) if self.float_format else repr(value)
        else:
            text = str(value)
        if "\n" in text or "\r" in text:
            raise ValueError(f"{self.path}: the value of {key!r} contains a line break: {text!r}")
        return text

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row (missing columns are left empty; a key that is not a column is a ValueError)."""
        unknown = [k for k in row if k not in self.columns]
        if unknown:
            raise ValueError(
                f"{self.path}: no column(s) {', '.join(map(str, unknown))} (columns: {', '.join(self.columns)})"
            )
        self._writer.writerow([self._text(k, row.get(k)) for k in self.columns])
        self._file.flush()

    def rows(self) -> list[dict[str, str]]:
        """Every row written so far (by this log and before it was opened), values as strings."""
        if not self._file.closed:
            self._file.flush()
        return read_csv_rows(self.path)

    def keep(self, predicate: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
        """Rewrite the log with the rows for which ``predicate(row)`` is true, atomically (a crash
        leaves the old file or the new one); returns them. Appending continues after them."""
        kept = [r for r in self.rows() if predicate(r)]
        self._file.close()
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator=_LINE_END)
        writer.writerow(self.columns)
        writer.writerows([r.get(c, "") for c in self.columns] for r in kept)
        with atomic_file(self.path, "wb") as f:
            f.write(buf.getvalue().encode("utf-8"))
        self._open(write_header=False)
        return kept

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the pool
@dataclass
class TaskResult:
    """How one task of :func:`run_pool` ended.

    index    its position in ``tasks``;  task: the task itself
    status   "done" (``fn`` returned ``value``), "skipped" (not started: the deadline had passed)
             or "error" (``fn`` raised, or its worker process died: ``error`` says what)
    seconds  wall time of ``fn`` (0 when skipped)
    """

    index: int
    task: Any
    status: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class TaskContext:
    """The second argument of ``fn(task, ctx)``.

    index     the task's position in ``tasks``
    deadline  ``time.time()`` after which the sweep wants its running tasks to stop (None: never);
              stopping is the task's business (:meth:`past_deadline`)
    emit      ``ctx.emit(event)`` hands ``event`` (picklable) to ``on_event(index, event)`` in the
              parent, in order, before the task's result
    """

    index: int
    deadline: float | None
    emit: Callable[[Any], None] = field(repr=False)

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline


def _call(index: int, task: Any, fn: Callable[[Any, TaskContext], Any], deadline: float | None,
          emit: Callable[[Any], None]) -> TaskResult:  # fmt: skip
    """Run one task where it is (this process or a worker): skipped past the deadline, errors caught."""
    if deadline is not None and time.time() > deadline:
        return TaskResult(index, task, "skipped")
    t0 = time.perf_counter()
    try:
        value = fn(task, TaskContext(index=index, deadline=deadline, emit=emit))
    except Exception as e:  # one failed task must not end the sweep; the result says why
        return TaskResult(index, task, "error", error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
    return TaskResult(index, task, "done", value=value, seconds=time.perf_counter() - t0)


_QUEUE: Any = None  # a worker process's queue to the parent (set by _init_worker)


def _init_worker(q: Any, threads: int | None) -> None:
    global _QUEUE
    _QUEUE = q
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _send(message: tuple) -> None:
    # tried here, in the task's thread: an event that cannot be pickled is the task's error, not a
    # message the queue's feeder thread drops silently (the queue pickles it again to send it; the
    # parent never unpickles bytes itself)
    pickle.dumps(message)
    _QUEUE.put(message)


def _worker(index: int, task: Any, fn: Callable[[Any, TaskContext], Any], deadline: float | None) -> None:
    result = _call(index, task, fn, deadline, lambda event: _send(("event", index, event)))
    try:
        _send(("result", index, result))
    except Exception as e:  # e.g. a return value that cannot be pickled
        _send(("result", index, TaskResult(index, task, "error", error=f"{type(e).__name__}: {e}",
                                           seconds=result.seconds)))  # fmt: skip


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` for a block (None: unchanged), restored after it."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_pool(
    tasks: Sequence[Any],
    fn: Callable[[Any, TaskContext], Any],
    *,
    workers: int = 1,
    deadline: float | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    on_event: Callable[[int, Any], None] | None = None,
    threads: int | None = 1,
    lost_after: float = 10.0,
) -> list[TaskResult]:
    """Run ``fn(task, ctx)`` for every task; returns one :class:`TaskResult` per task, in task order.

    workers    processes; 1 (or a single task) runs the tasks one after the other in this process.
               More start that many processes with the ``spawn`` method (``fn``, the tasks, their
               events and return values must then be picklable: ``fn`` a module-level function)
               and run the tasks in the order given as processes become free.
    deadline   ``time.time()`` value: a task that would start after it is not run (status
               "skipped"); running tasks see it as ``ctx.deadline`` (see :class:`TaskContext`).
    on_result  called in this process with each task's result as it ends (in the order they end).
    on_event   ``on_event(index, event)`` for each ``ctx.emit(event)``, in this process, in the
               order the task emitted them, all before that task's ``on_result``.
    threads    torch CPU threads of each task (the worker processes, or this process while the
               tasks run in it, restored after); None leaves torch's choice.
    lost_after seconds to wait for the result of a worker that returned without delivering it
               before reporting the task as an error (a safeguard; it does not happen normally).

    An exception in ``fn`` ends only its task (status "error", ``error`` = "Type: message"); a
    worker process that dies ends the tasks it had not finished the same way. KeyboardInterrupt
    in this process cancels the tasks not yet started and propagates.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    tasks = list(tasks)
    results: dict[int, TaskResult] = {}

    def finish(result: TaskResult) -> None:
        if result.index in results:  # a result already reported (see the worker-death race below)
            return
        results[result.index] = result
        if on_result is not None:
            on_result(result)

    def event(index: int, payload: Any) -> None:
        if on_event is not None:
            on_event(index, payload)

    if workers == 1 or len(tasks) <= 1:
        with _torch_threads(threads):
            for i, task in enumerate(tasks):
                finish(_call(i, task, fn, deadline, functools.partial(event, i)))
    else:
        _run_processes(tasks, fn, workers, deadline, threads, lost_after, finish, event)
    return [results[i] for i in range(len(tasks))]


def _run_processes(tasks: list, fn: Callable, workers: int, deadline: float | None, threads: int | None,
                   lost_after: float, finish: Callable[[TaskResult], None],
                   event: Callable[[int, Any], None]) -> None:  # fmt: skip
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    env_before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:  # read by the spawned interpreters when torch loads
        os.environ.update({k: str(threads) for k in env_before})
    done: set[int] = set()

    def handle(message: tuple) -> None:
        kind, index, payload = message
        if kind == "event":
            event(index, payload)
        else:
            done.add(index)
            finish(payload)

    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(q, threads)) as pool:  # fmt: skip
            futures = {pool.submit(_worker, i, task, fn, deadline): i for i, task in enumerate(tasks)}
            returned_at: dict[int, float] = {}
            try:
                while len(done) < len(tasks):
                    try:
                        handle(q.get(timeout=0.1))
                        continue
                    except queue_mod.Empty:
                        pass
                    # the queue is empty: a task whose process ended without a result message is an error
                    for fut, i in futures.items():
                        if i in done or not fut.done():
                            continue
                        exc = fut.exception()
                        if exc is None:  # returned: its result is on its way, unless it was lost
                            returned_at.setdefault(i, time.monotonic())
                            if time.monotonic() - returned_at[i] < lost_after:
                                continue
                            what = "its worker returned but the result never arrived"
                        else:
                            what = f"its worker process failed ({type(exc).__name__}: {exc})"
                        done.add(i)
                        finish(TaskResult(i, tasks[i], "error", error=what))
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        # events of a task that failed can still be in the queue: hand them over
        while True:
            try:
                message = q.get_nowait()
            except (queue_mod.Empty, OSError, ValueError):
                break
            kind, index, payload = message
            if kind == "event":
                event(index, payload)
