"""Loss history of a run: one row per log interval, written as ``RUN/loss.csv``; and the reader of
numeric CSV columns (``read_csv_columns``) that loss.csv and other per-step logs of a run share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

__all__ = ["LossHistory", "HISTORY_FILENAME", "read_csv_columns"]

HISTORY_FILENAME = "loss.csv"
_COLUMNS = ("step", "loss", "lr", "elapsed_s")


@dataclass
class LossHistory:
    """Rows ``(step, loss, lr, elapsed_s)``: ``loss`` is the mean over the steps since the previous
    row, ``lr`` the learning rate of ``step``, ``elapsed_s`` the run's training seconds (across resumes)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)

    def append(self, step: int, loss: float, lr: float, elapsed_s: float) -> None:
        self.step.append(int(step))
        self.loss.append(float(loss))
        self.lr.append(float(lr))
        self.elapsed_s.append(float(elapsed_s))

    def __len__(self) -> int:
        return len(self.step)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write atomically; floats keep full precision (``repr``)."""
        lines = [",".join(_COLUMNS)]
        for row in zip(self.step, self.loss, self.lr, self.elapsed_s):
            lines.append(",".join(repr(v) for v in row))
        return atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> LossHistory:
        """Read a file written by :meth:`to_csv` (for plotting the loss curve)."""
        text = Path(path).read_text(encoding="utf-8").strip().splitlines()
        if not text or tuple(text[0].split(",")) != _COLUMNS:
            raise ValueError(f"{path}: not a loss history (expected the header {','.join(_COLUMNS)})")
        cols = read_csv_columns(path, _COLUMNS)
        out = cls()
        for step, loss, lr, elapsed in zip(*(cols[c] for c in _COLUMNS)):
            out.append(int(step), loss, lr, elapsed)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": list(self.step),
            "loss": list(self.loss),
            "lr": list(self.lr),
            "elapsed_s": list(self.elapsed_s),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LossHistory:
        cols = [list(state[c]) for c in _COLUMNS]
        if len({len(c) for c in cols}) != 1:
            raise ValueError("loss history columns have different lengths")
        return cls(*cols)


def read_csv_columns(path: str | os.PathLike, columns: tuple[str, ...]) -> dict[str, list[float]]:
    """The named columns of a numeric CSV with a header line, as floats; empty lists when the file is
    absent or empty. A column missing from the header, a row of the wrong length or a value that is
    not a number is a ``ValueError`` naming the file (and the line)."""
    path = Path(path)
    cols: dict[str, list[float]] = {c: [] for c in columns}
    if not path.exists():
        return cols
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if not lines:
        return cols
    header = lines[0].split(",")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(missing)} (the header is {lines[0]})")
    where = [header.index(c) for c in columns]
    for lineno, line in enumerate(lines[1:], start=2):
        values = line.split(",")
        if len(values) != len(header):
            raise ValueError(f"{path}: line {lineno} has {len(values)} values, the header {len(header)}")
        try:
            for c, i in zip(columns, where):
                cols[c].append(float(values[i]))
        except ValueError:
            raise ValueError(f"{path}: line {lineno} holds a value that is not a number: {line!r}") from None
    return cols
