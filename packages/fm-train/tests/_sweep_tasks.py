"""Tasks for test_train_sweep.py's pools. Spawned worker processes import them by this module's
name (pytest's importlib mode gives test modules names that a fresh interpreter cannot import), so
the test puts this folder on sys.path before it starts a pool."""

from __future__ import annotations

import os

from fm_train.sweep import TaskContext


def square(task, ctx: TaskContext):
    """Emits (task, 0), (task, 1), (task, 2); returns the process id and task**2; "boom" raises."""
    for k in range(3):
        ctx.emit((task, k))
    if task == "boom":
        raise RuntimeError("task failed on purpose")
    return {"pid": os.getpid(), "value": task * task}


def die(task, ctx: TaskContext):
    """The worker process exits without a word for the task "die"."""
    if task == "die":
        os._exit(3)
    return task
