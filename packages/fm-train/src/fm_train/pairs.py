"""Chunked, checksummed, resumable storage of a large set of tensors in a run directory.

Made for reflow (k-rectified flow), where the (noise, teacher endpoint) pairs cost many ODE
solves: they are generated once, chunk by chunk, and kept beside the run (e.g. ``RUN/reflow/``).
A killed generation resumes from the chunks already written; a store begun with other settings
is refused, never mixed.

Layout of the folder::

    manifest.json            format, n, chunk size, per-row shape and dtype of every field, the
                             generation settings (a JSON object the caller gives), the sha256 of
                             every chunk written so far
    chunk-00000.safetensors  rows [0, chunk) of every field
    chunk-00001.safetensors  rows [chunk, 2 chunk) ...

A chunk file is written atomically (temporary file beside it, fsync, rename) before its checksum
enters the manifest (rewritten atomically too), so a crash leaves at worst a chunk that is
written again. The folder is untrusted input: :meth:`PairStore.load` checks the manifest's every
entry, every chunk's checksum (before parsing it), tensor names, shapes, dtypes and finiteness,
and raises a one-line ``ValueError`` naming the file otherwise. One process writes a store at a
time (hold the run's lock, :func:`fm_train.lock_run`).

    store = PairStore("runs/student/reflow")
    store.begin(n=1000, chunk=256, fields={"x0": ((2,), torch.float32), "x1": ((2,), torch.float32)},
                settings={"teacher": "runs/teacher", "seed": 0})
    for k in store.missing_chunks():
        rows = store.chunk_rows(k)                     # range(k * 256, min(1000, (k + 1) * 256))
        store.write_chunk(k, x0=..., x1=...)           # [len(rows), 2] each
    data = store.load()                                # {"x0": [1000, 2], "x1": [1000, 2]}
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .checkpoint import atomic_file, atomic_write_text, read_json

__all__ = ["MANIFEST_FILENAME", "PAIRS_FORMAT_VERSION", "PairStore"]

MANIFEST_FILENAME = "manifest.json"
PAIRS_FORMAT = "fm-train pairs"
PAIRS_FORMAT_VERSION = 1
#: dtypes a store may hold (by their names in the manifest).
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MANIFEST_KEYS = ("format", "format_version", "n", "chunk", "fields", "settings", "chunks")
#: bounds on what a manifest may claim (far above any real store, far below overflow).
_MAX_ROWS = 2**40
_MAX_DIMS = 8
_MAX_ELEMENTS = 2**40


def _json_value(settings: Any, what: str) -> Any:
    """``settings`` after a JSON round trip (what the manifest will compare against); ValueError if it
    is not a JSON object of plain values (NaN and infinities refused: they do not compare equal)."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"{what} must be a dict of JSON values, got {type(settings).__name__}")
    try:
        return json.loads(json.dumps(dict(settings), allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{what} must hold JSON values only (str, int, finite float, bool, None, lists, dicts): {e}"
        ) from None


def _fields(fields: Any, what: str) -> dict[str, dict[str, Any]]:
    """Normalise ``{name: (shape, dtype)}`` (or the manifest's ``{name: {"shape": [...], "dtype": "..."}}``)."""
    if not isinstance(fields, Mapping) or not fields:
        raise ValueError(f"{what} must be a non-empty dict of name -> (shape, dtype), got {fields!r:.80}")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in fields.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{what}: field names must be identifiers, got {name!r:.40}")
        if isinstance(spec, Mapping):
            if set(spec) != {"shape", "dtype"}:
                raise ValueError(f"{what}.{name} must hold exactly shape and dtype, got {sorted(map(str, spec))}")
            shape, dtype = spec["shape"], spec["dtype"]
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            shape, dtype = spec
        else:
            raise ValueError(f"{what}.{name} must be (shape, dtype), got {spec!r:.80}")
        if isinstance(dtype, torch.dtype):
            dtype = _DTYPE_NAMES.get(dtype, str(dtype))
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"{what}.{name}: dtype {dtype!r:.40} is not one of {', '.join(DTYPES)}")
        ok = isinstance(shape, (list, tuple)) and len(shape) <= _MAX_DIMS
        ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_ELEMENTS for s in shape)
        if not ok or math.prod(shape) > _MAX_ELEMENTS:
            raise ValueError(
                f"{what}.{name}: shape must be a list of at most {_MAX_DIMS} positive ints, got {shape!r:.80}"
            )
        out[name] = {"shape": [int(s) for s in shape], "dtype": dtype}
    return out


def _count(v: Any, what: str, high: int = _MAX_ROWS) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
        raise ValueError(f"{what} must be an integer in [1, {high}], got {v!r:.40}")
    return v


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _diff(a: Any, b: Any) -> str:
    """The first top-level entry where two settings dicts differ, for the refusal message."""
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            return f"{k}: {a.get(k, '<absent>')!r:.60} vs {b.get(k, '<absent>')!r:.60}"
    return "?"


class PairStore:
    """A folder of chunked tensors with a checksummed manifest (see the module docstring).

    ``PairStore(path)`` only names the folder; :meth:`begin` creates it or checks that the one there
    was begun with the same layout and settings; then :meth:`missing_chunks`, :meth:`write_chunk`
    and :meth:`load`. Every problem with the folder is a ``ValueError`` whose message starts with
    the file's path.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"PairStore({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILENAME

    def chunk_path(self, k: int) -> Path:
        """The file of chunk ``k``."""
        return self.path / f"chunk-{k:05d}.safetensors"

    # ------------------------------------------------------------------ manifest

    def exists(self) -> bool:
        """Whether the folder holds a manifest (a store was begun there)."""
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, checked entry by entry (one-line ValueError naming the file otherwise)."""
        p = self.manifest_path
        if not p.exists():
            raise ValueError(f"{p}: missing file (no pair store was begun in {self.path})")
        m = read_json(p)  # unreadable, not JSON, not an object: a one-line CheckpointError (a ValueError)
        try:
            return self._check_manifest(m)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    @staticmethod
    def _check_manifest(m: Any) -> dict[str, Any]:
        if not isinstance(m, dict):
            raise ValueError(f"expected a JSON object, found {type(m).__name__}")
        missing = [k for k in _MANIFEST_KEYS if k not in m]
        extra = [k for k in m if k not in _MANIFEST_KEYS]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unexpected {', '.join(map(repr, extra[:5]))}"] if extra else []
            )
            raise ValueError(f"not a pair-store manifest ({'; '.join(parts)})")
        if m["format"] != PAIRS_FORMAT:
            raise ValueError(f"format must be {PAIRS_FORMAT!r}, found {m['format']!r:.60}")
        if m["format_version"] != PAIRS_FORMAT_VERSION or isinstance(m["format_version"], bool):
            raise ValueError(f"unsupported format_version {m['format_version']!r:.40} (this fm-train reads 1)")
        n = _count(m["n"], "n")
        chunk = _count(m["chunk"], "chunk")
        fields = _fields(m["fields"], "fields")
        if not isinstance(m["settings"], dict):
            raise ValueError(f"settings must be a JSON object, found {type(m['settings']).__name__}")
        chunks = m["chunks"]
        if not isinstance(chunks, dict):
            raise ValueError(f"chunks must be a JSON object, found {type(chunks).__name__}")
        count = -(-n // chunk)
        for k, sha in chunks.items():
            if not (isinstance(k, str) and k.isdigit() and int(k) < count and str(int(k)) == k):
                raise ValueError(f"chunks has an entry {k!r:.20}; the store has chunks 0..{count - 1}")
            if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
                raise ValueError(f"chunks.{k} must be a sha256 hex digest, found {sha!r:.80}")
        return {**m, "n": n, "chunk": chunk, "fields": fields}

    def begin(
        self,
        *,
        n: int,
        chunk: int,
        fields: Mapping[str, tuple[Sequence[int], torch.dtype]],
        settings: Mapping[str, Any],
    ) -> None:
        """Create the store (``n`` rows in chunks of ``chunk``; ``fields``: name -> (per-row shape,
        dtype); ``settings``: a JSON object describing how the rows are made), or open the one already
        in the folder when it was begun with exactly the same n, chunk, fields and settings. A store
        begun differently is refused (ValueError naming the manifest and the first difference)."""
        want = {
            "format": PAIRS_FORMAT,
            "format_version": PAIRS_FORMAT_VERSION,
            "n": _count(n, "n"),
            "chunk": _count(chunk, "chunk"),
            "fields": _fields(fields, "fields"),
            "settings": _json_value(settings, "settings"),
        }
        if self.exists():
            have = self.read_manifest()
            for key in ("n", "chunk", "fields", "settings"):
                if have[key] != want[key]:
                    diff = (
                        _diff(have[key], want[key]) if key == "settings" else f"{have[key]!r:.80} vs {want[key]!r:.80}"
                    )
                    raise ValueError(
                        f"{self.manifest_path}: this store was begun with other {key} ({diff}: stored vs asked); "
                        "remove the folder to start again, or use another one"
                    )
            self._manifest = have
            return
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path}: exists and is not a folder")
        self._manifest = {**want, "chunks": {}}
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self._manifest, indent=1, sort_keys=True) + "\n")

    def _m(self) -> dict[str, Any]:
        if self._manifest is None:
            raise ValueError(f"{self.path}: call begin(...) first (it sets the layout and settings to check)")
        return self._manifest

    # ------------------------------------------------------------------ chunks

    @property
    def n(self) -> int:
        return int(self._m()["n"])

    @property
    def num_chunks(self) -> int:
        m = self._m()
        return -(-m["n"] // m["chunk"])

    def chunk_rows(self, k: int) -> range:
        """The rows chunk ``k`` holds: ``range(k * chunk, min(n, (k + 1) * chunk))``."""
        m = self._m()
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_chunks:
            raise ValueError(f"chunk index must be an integer in [0, {self.num_chunks}), got {k!r:.40}")
        return range(k * m["chunk"], min(m["n"], (k + 1) * m["chunk"]))

    def missing_chunks(self) -> list[int]:
        """Chunks still to write: no checksum in the manifest, no file, or a file whose sha256 differs
        (a damaged chunk is written again rather than trusted)."""
        chunks = self._m()["chunks"]
        out = []
        for k in range(self.num_chunks):
            sha = chunks.get(str(k))
            try:
                ok = sha is not None and _sha256(self.chunk_path(k).read_bytes()) == sha
            except OSError:
                ok = False
            if not ok:
                out.append(k)
        return out

    def write_chunk(self, k: int, **tensors: torch.Tensor) -> None:
        """Write chunk ``k`` (every field, each [len(chunk_rows(k)), *shape] of its dtype, finite) atomically,
        then record its checksum in the manifest."""
        m = self._m()
        rows = len(self.chunk_rows(k))
        if set(tensors) != set(m["fields"]):
            raise ValueError(f"write_chunk needs exactly the fields {sorted(m['fields'])}, got {sorted(tensors)}")
        out = {}
        for name, spec in m["fields"].items():
            v = tensors[name]
            self._check(v, name, rows, spec, f"chunk {k}")
            out[name] = v.detach().to("cpu").contiguous()
        data = _st_save(out)
        with atomic_file(self.chunk_path(k)) as f:
            f.write(data)
        m["chunks"][str(k)] = _sha256(data)
        self._write_manifest()

    @staticmethod
    def _check(v: Any, name: str, rows: int, spec: Mapping[str, Any], where: str) -> None:
        shape = (rows, *spec["shape"])
        dtype = DTYPES[spec["dtype"]]
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{where}: {name} must be a tensor, found {type(v).__name__}")
        if v.dtype != dtype or tuple(v.shape) != shape:
            raise ValueError(
                f"{where}: {name} must be a {spec['dtype']} tensor of shape {list(shape)}, "
                f"found {str(v.dtype).removeprefix('torch.')} {list(v.shape)}"
            )
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{where}: {name} holds NaN or infinite values")

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Every field, all n rows concatenated, on ``map_location``. Checks the manifest again (the
        folder may have changed since :meth:`begin`: it must still match what begin asked for), then
        per chunk: present, sha256 as recorded (checked before parsing), exactly the fields, their
        shapes, dtypes and finiteness. ValueError naming the file otherwise (also when chunks are
        missing: generate them first)."""
        want = self._m()
        have = self.read_manifest()
        for key in ("n", "chunk", "fields", "settings"):
            if have[key] != want[key]:
                raise ValueError(f"{self.manifest_path}: {key} changed since the store was opened")
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in have["fields"]}
        absent = [k for k in range(self.num_chunks) if str(k) not in have["chunks"]]
        if absent:
            shown = ", ".join(map(str, absent[:5])) + (", ..." if len(absent) > 5 else "")
            raise ValueError(f"{self.manifest_path}: {len(absent)} of {self.num_chunks} chunks not written ({shown})")
        for k in range(self.num_chunks):
            p = self.chunk_path(k)
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                raise ValueError(f"{p}: missing file (listed in {MANIFEST_FILENAME})") from None
            except OSError as e:
                raise ValueError(f"{p}: cannot read ({e.strerror or type(e).__name__})") from None
            if _sha256(data) != have["chunks"][str(k)]:
                raise ValueError(f"{p}: checksum differs from {MANIFEST_FILENAME} (damaged or replaced file)")
            try:
                tensors = _st_load(data)
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"{p}: not a readable safetensors file ({msg})") from None
            if set(tensors) != set(have["fields"]):
                raise ValueError(f"{p}: holds {sorted(tensors)}, the manifest lists {sorted(have['fields'])}")
            rows = len(self.chunk_rows(k))
            for name, spec in have["fields"].items():
                try:
                    self._check(tensors[name], name, rows, spec, "chunk")
                except ValueError as e:
                    raise ValueError(f"{p}: {str(e).removeprefix('chunk: ')}") from None
                parts[name].append(tensors[name])
        return {name: torch.cat(ts).to(map_location) for name, ts in parts.items()}
