"""A progress bar for sampling, evaluation and pictures: tqdm on stderr, shown only on a terminal,
only when not quiet, and only once the work has taken more than a few seconds."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(quiet: bool = False) -> bool:
    """Whether a progress bar shows: not when ``quiet``, and only when stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    quiet: bool = False,
    delay: float = 3.0,
) -> Any:
    """``tqdm(iterable, ...)``, disabled when ``quiet`` or stderr is not a terminal (logs and pipes
    get no bar), and appearing only after ``delay`` seconds (quick work shows nothing).

        for batch in progress(batches, desc="sampling", unit="batch", quiet=args.quiet):
            ...
    """
    disable = not progress_enabled(quiet)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, delay=delay, leave=False, file=sys.stderr)
