"""The run directory: one object for the files a training run keeps together.

Layout (the Trainer writes ``config.json``, ``checkpoint/`` and ``loss.csv``; the app adds the rest)::

    RUN/config.json    {"format": "fm-train-run", "version": 1, "train": {TrainConfig}, **extra_config}
    RUN/metrics.json   {section: value, ...}  results of training and evaluation, by section
    RUN/loss.csv       step,loss,lr,elapsed_s  one row per log interval
    RUN/checkpoint/    the latest checkpoint (fm_train.checkpoint)

``metrics.json`` has one meaning per method: :meth:`RunDir.update_metrics` sets a section
(the old value is replaced), :meth:`RunDir.append_metrics` adds an item to a section that is a
list (a record per evaluation), :meth:`RunDir.merge_metrics` sets several sections at once.
Every write is atomic (a temporary file beside the target, then a rename), so a killed process
never leaves half a file::

    run = RunDir("runs/demo")
    run.update_metrics("train", {"steps": 300})
    run.append_metrics("eval", {"fid": 12.5})
    run.read_metrics()      # {"train": {"steps": 300}, "eval": [{"fid": 12.5}]}
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path, PurePath
from typing import Any

import torch

from .checkpoint import CHECKPOINT_DIRNAME, CONFIG_FILE, CheckpointError, atomic_write_text, find_checkpoint, read_json
from .history import HISTORY_FILENAME, read_csv_columns

__all__ = ["METRICS_FILENAME", "RunDir", "machine_info"]

METRICS_FILENAME = "metrics.json"


def _an(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" or name.lower().startswith("fm") else "a ") + name


class RunDir:
    """The files of one run under ``path`` (nothing is created until something is written).

    ``.path``, ``.config_path`` (config.json), ``.metrics_path`` (metrics.json),
    ``.checkpoint_dir`` (checkpoint/), ``.history_path`` (loss.csv). Errors are ``ValueError``
    with one line naming the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.metrics_path = self.path / METRICS_FILENAME
        self.checkpoint_dir = self.path / CHECKPOINT_DIRNAME
        self.history_path = self.path / HISTORY_FILENAME

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ state
    def exists(self) -> bool:
        """Whether the run has been started: ``config.json`` is there."""
        return self.config_path.is_file()

    def has_checkpoint(self) -> bool:
        """Whether there is a checkpoint to resume from (``checkpoint/``, or ``checkpoint.old/`` left
        by a writer killed between its two renames)."""
        return find_checkpoint(self.checkpoint_dir) is not None

    # ------------------------------------------------------------------ config.json
    def read_config(self, app: str | None = None, section: str | None = None) -> dict[str, Any]:
        """``config.json`` as a dict. With ``app``: its ``"app"`` key must equal it; with ``section``:
        that key must be present. Anything else is a ``ValueError`` naming the file."""
        path = self.config_path
        what = f"{_an(app)} run directory" if app else "a run directory"
        if not self.path.is_dir():
            raise ValueError(f"run directory {str(self.path)!r} does not exist")
        if not path.exists():
            raise ValueError(f"{path}: missing (not {what})")
        try:
            data = read_json(path)
        except CheckpointError as e:
            raise ValueError(str(e)) from None
        if app is not None and data.get("app") != app:
            found = f'"app" is {data["app"]!r}' if "app" in data else 'no "app" key'
            raise ValueError(f"{path}: not {_an(app)} run ({found}, expected {app!r})")
        if section is not None and section not in data:
            run = f"{_an(app)} {section} run" if app else f"a run with a {section!r} section"
            raise ValueError(f"{path}: not {run} (no {section!r} section; keys: {', '.join(sorted(data)) or 'none'})")
        return data

    def write_config(self, data: dict[str, Any]) -> Path:
        """Write ``config.json`` atomically (strict JSON: NaN or infinity is a ``ValueError``)."""
        if not isinstance(data, dict):
            raise ValueError(f"{self.config_path}: a run config must be a dict, got {type(data).__name__}")
        try:
            text = json.dumps(data, indent=2, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.config_path}: the config is not JSON-serialisable ({e})") from None
        return atomic_write_text(self.config_path, text + "\n")

    # ------------------------------------------------------------------ metrics.json
    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict: ``{}`` when it does not exist; a file that cannot be read, is
        not JSON or not a JSON object is a ``ValueError`` naming it (it is never overwritten)."""
        if not self.metrics_path.exists():
            return {}
        try:
            return read_json(self.metrics_path)
        except CheckpointError as e:
            raise ValueError(str(e)) from None

    def update_metrics(self, section: str, value: Any) -> Path:
        """Set ``metrics[section] = value`` (the old value of that section is replaced)."""
        data = self.read_metrics()
        data[self._section(section)] = value
        return self._write_metrics(data)

    def append_metrics(self, section: str, value: Any) -> Path:
        """Add ``value`` at the end of the list ``metrics[section]`` (a new list when the section is
        absent). A section that holds something other than a list is a ``ValueError``: it is never
        overwritten or wrapped."""
        data = self.read_metrics()
        items = data.get(self._section(section), [])
        if not isinstance(items, list):
            raise ValueError(
                f"{self.metrics_path}: section {section!r} holds a {type(items).__name__}, "
                "not a list: cannot append to it"
            )
        data[section] = items + [value]
        return self._write_metrics(data)

    def merge_metrics(self, values: dict[str, Any]) -> Path:
        """Set several sections at once (``metrics.update(values)``); the other sections are kept."""
        if not isinstance(values, dict):
            raise ValueError(
                f"{self.metrics_path}: merge_metrics needs a dict of sections, got {type(values).__name__}"
            )
        data = self.read_metrics()
        data.update({self._section(k): v for k, v in values.items()})
        return self._write_metrics(data)

    def _section(self, section: Any) -> str:
        if not isinstance(section, str) or not section:
            raise ValueError(f"{self.metrics_path}: a metrics section must be a non-empty string, got {section!r}")
        return section

    def _write_metrics(self, data: dict[str, Any]) -> Path:
        return self.write_json(METRICS_FILENAME, data)

    # ------------------------------------------------------------------ other files
    def read_history(
        self, columns: tuple[str, ...] = ("step", "loss"), file: str = HISTORY_FILENAME
    ) -> dict[str, list[float]]:
        """Columns of ``loss.csv`` (or of another numeric CSV of the run, ``file``) as lists of floats;
        empty lists when the file is absent. loss.csv has the columns step, loss, lr, elapsed_s."""
        return read_csv_columns(self._file(file), tuple(columns))

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``RUN/name`` as indented JSON, atomically (NaN and infinity are written as JSON's
        extensions ``NaN``/``Infinity``, which Python's json reads back)."""
        path = self._file(name)
        try:
            text = json.dumps(data, indent=2, allow_nan=True)
        except TypeError as e:
            raise ValueError(f"{path}: not JSON-serialisable ({e})") from None
        return atomic_write_text(path, text + "\n")

    def _file(self, name: str | os.PathLike) -> Path:
        """``RUN/name`` for a relative name that stays inside the run directory."""
        rel = PurePath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"{str(name)!r}: a file of the run must be a relative path inside {self.path}")
        return self.path / rel


def machine_info() -> dict[str, Any]:
    """Where a timing was taken: CPU count, torch threads, the 1-minute load average (None where the
    platform has none) and the machine type (``platform.machine()``)."""
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not available on this platform
        load = None
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min": load,
        "machine": platform.machine(),
    }
