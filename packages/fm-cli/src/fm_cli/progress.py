"""A progress bar for sampling, evaluation and pictures: tqdm on stderr, shown only on a terminal,
only when not quiet, and only once the work has taken more than a few seconds."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["progress"]

T = TypeVar("T")


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
    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, delay=delay, leave=False, file=sys.stderr)
