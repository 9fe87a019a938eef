"""Atomic, safe checkpoints: a directory of JSON, safetensors and a weights-only torch file.

Layout of a checkpoint directory (``RUN/checkpoint`` for a Trainer)::

    config.json         {"format": "fm-train-checkpoint", "version": 1, "step": N,
                         "train": {TrainConfig fields}, ...the app's extra config}
    model.safetensors   model.state_dict() (the trained weights)
    ema.safetensors     the EMA weights, same keys (what sampling uses)
    train_state.pt      optimizer state, step, RNG states, loss history, elapsed time;
                        only tensors/ints/floats/strings/lists/dicts, loaded with
                        torch.load(weights_only=True): no pickle can run code

Atomic write (a killed process never leaves a broken checkpoint): the files are written
and fsync'ed into ``checkpoint.tmp-XXXX`` beside the target, then ``checkpoint`` is renamed
to ``checkpoint.old``, the temporary directory to ``checkpoint``, and ``checkpoint.old`` is
removed. A reader that finds no ``checkpoint`` but a ``checkpoint.old`` (killed between the
two renames) reads the old one; ``*.tmp-*`` directories (killed while writing) are ignored.
The writer repairs both cases (:func:`recover_checkpoint`) before its next write.

Every problem while loading raises :class:`CheckpointError` (a ``ValueError``) with one line
that names the file and the problem.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import safe_open as _st_safe_open
from safetensors.torch import save_file as _st_save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "CHECKPOINT_DIRNAME",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "recover_checkpoint",
    "check_state_dict",
    "load_weights",
    "read_json",
    "atomic_write_text",
    "load_model_for_sampling",
    "config_diff",
]

CHECKPOINT_DIRNAME = "checkpoint"
CHECKPOINT_FORMAT = "fm-train-checkpoint"
CHECKPOINT_VERSION = 1
RUN_FORMAT = "fm-train-run"  # the "format" of RUN/config.json (not a checkpoint)
CONFIG_FILE, MODEL_FILE, EMA_FILE, STATE_FILE = "config.json", "model.safetensors", "ema.safetensors", "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model``/``ema`` map names to CPU tensors; ``train_state`` may be None."""

    path: Path
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    train_state: dict[str, Any] | None
    generation: str | None = None

    @property
    def step(self) -> int:
        return int(self.config.get("step", 0))


# ----------------------------------------------------------------------------- small IO helpers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """What ``open()`` gives a new file: 0o666 less the umask (0o644 under the usual 022)."""
    return 0o666 & ~_umask()


def _real(path: Path) -> Path:
    """A symlinked checkpoint directory is written where the link points (the link stays a link)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _rename(src: Path, dst: Path) -> None:
    """The one rename primitive of the protocol (tests replace it to simulate a crash)."""
    os.replace(src, dst)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``mode`` "wb" or "w"); on a clean exit it is flushed,
    fsynced and renamed to ``path`` (missing folders are created). The temporary name is unique per
    writer (``tempfile.mkstemp``), so two processes writing the same file leave one of the two
    complete files, never a mix. On an error the temporary file is removed and ``path`` is
    untouched; an ``OSError`` (full disk, no permission) is re-raised with ``path`` as its file
    name, so its message names the file the user knows, not the temporary one.

        with atomic_file("out/samples.npz") as f:
            numpy.savez_compressed(f, images=images)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") if mode == "w" else os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes it 0600; the user's umask decides
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno is None:  # not from the file system (e.g. an encoder's own error): as it is
            raise
        raise type(e)(e.errno, e.strerror or _first_line(e), str(path)) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`: temporary file beside it, fsync,
    ``os.replace``; an ``OSError`` names ``path``; ``path`` is untouched on failure)."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object; any problem is a one-line :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({_first_line(e)})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _cpu_tensors(state: Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{what}: entry {k!r} is a {type(v).__name__}, only tensors can be saved")
        # A fresh contiguous CPU copy: no shared storage (tied weights), safe to write.
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def _read_safetensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], str | None]:
    """(tensors, the checkpoint generation in the file's metadata or None)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file")
    try:
        with _st_safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    gen = meta.get("generation")
    return tensors, gen if isinstance(gen, str) else None


def _read_torch(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "WeightsUnpickler" in ln]
        detail = lines[0][:200] if lines else _first_line(e)
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(torch.load weights_only=True; such a file could run code): {detail}"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable or truncated ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- the protocol


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _resolve(path: str | os.PathLike) -> Path:
    """Accept a run directory (holding ``checkpoint/``) or a checkpoint directory itself."""
    path = Path(path)
    inner = path / CHECKPOINT_DIRNAME
    if inner.is_dir() or _old(inner).is_dir():
        return inner
    return path


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The directory to read: ``checkpoint``, else ``checkpoint.old`` (crash between renames), else None.

    ``path`` is a run directory or a checkpoint directory. Never modifies anything.
    """
    path = _resolve(path)
    if path.is_dir() and ((path / MODEL_FILE).exists() or (path / CONFIG_FILE).exists()):
        return path
    if _old(path).is_dir():
        return _old(path)
    return None


def recover_checkpoint(path: str | os.PathLike) -> Path | None:
    """Repair what a killed writer left (only the writing process should call this).

    killed between the renames -> ``checkpoint.old`` renamed back to ``checkpoint``;
    killed before removing the old one -> ``checkpoint.old`` removed;
    killed while writing -> ``checkpoint.tmp-*`` removed. Returns the checkpoint dir or None.
    """
    path = _real(_resolve(path))
    old = _old(path)
    if not path.exists() and old.is_dir():
        _rename(old, path)
        _fsync_dir(path.parent)
    elif path.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)
    if path.parent.is_dir():
        for tmp in path.parent.glob(path.name + ".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    return path if path.is_dir() else None


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    ema_state: Mapping[str, torch.Tensor] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring) and return its path.

    ``config`` must be JSON-serialisable; ``format``/``version`` keys are added. An ``OSError``
    while writing (full disk, no permission) becomes a :class:`CheckpointError` and leaves
    the previous checkpoint untouched.
    """
    path = _real(Path(path))
    model_cpu = _cpu_tensors(model_state, "model_state")
    ema_cpu = _cpu_tensors(ema_state, "ema_state") if ema_state is not None else None
    # every file of this checkpoint carries the same random generation id: a reader that meets two
    # (a writer replaced the checkpoint while it read) reads again (load_checkpoint)
    generation = secrets.token_hex(8)
    cfg = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **dict(config), "generation": generation}
    try:
        cfg_text = json.dumps(cfg, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint config is not JSON-serialisable: {e}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_checkpoint(path)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write checkpoint ({_first_line(e)})") from None
    meta = {"format": "pt", "generation": generation}
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the user's umask decides
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            f.write(cfg_text + "\n")
            f.flush()
            os.fsync(f.fileno())
        _st_save_file(model_cpu, str(tmp / MODEL_FILE), metadata=meta)
        os.chmod(tmp / MODEL_FILE, _file_mode())  # safetensors writes 0600
        _fsync_file(tmp / MODEL_FILE)
        if ema_cpu is not None:
            _st_save_file(ema_cpu, str(tmp / EMA_FILE), metadata=meta)
            os.chmod(tmp / EMA_FILE, _file_mode())
            _fsync_file(tmp / EMA_FILE)
        if train_state is not None:
            with open(tmp / STATE_FILE, "wb") as f:
                torch.save({**dict(train_state), "generation": generation}, f)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError) and isinstance(e, Exception) and _library_io_error(e):
            # a full disk seen by safetensors (SafetensorError) or torch.save (RuntimeError, with the
            # OSError it met as its context): one line, with the OSError's words where there is one
            cause = _os_error_in(e)
            kept = " (the previous checkpoint is intact)" if path.exists() else ""
            raise CheckpointError(f"{path}: cannot write checkpoint ({_first_line(cause or e)}){kept}") from None
        if isinstance(e, OSError):
            kept = " (the previous checkpoint is intact)" if path.exists() else ""
            raise CheckpointError(f"{path}: cannot write checkpoint ({_first_line(e)}){kept}") from None
        raise
    old = _old(path)
    if path.exists():
        _rename(path, old)
    _rename(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError in ``e``'s chain of causes and contexts, if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _library_io_error(e: BaseException) -> bool:
    """An error of safetensors or torch.save that is a failed write (full disk, I/O error)."""
    text = str(e).lower()
    words = ("no space", "errno", "i/o error", "write", "file", "disk", "quota", "os error")
    return (
        type(e).__name__ == "SafetensorError"
        or _os_error_in(e) is not None
        or (isinstance(e, RuntimeError) and any(w in text for w in words))
    )


#: How often :func:`load_checkpoint` reads again when a writer replaced the checkpoint meanwhile.
READ_ATTEMPTS = 5


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", train_state: bool = True
) -> Checkpoint:
    """Read a checkpoint (a run directory or a checkpoint directory); never runs pickled code.

    ``ema`` is None when ``ema.safetensors`` is absent; ``train_state`` is None when not asked
    for or absent. Raises :class:`CheckpointError` naming the file for anything unreadable.
    Every file of a checkpoint carries its generation id: files of two checkpoints (a writer
    replaced it during the read) or a file gone meanwhile make it read again, up to
    :data:`READ_ATTEMPTS` times.
    """
    for attempt in range(READ_ATTEMPTS):
        last = attempt == READ_ATTEMPTS - 1
        before = _config_generation(find_checkpoint(path))
        try:
            return _load_once(path, map_location=map_location, train_state=train_state)
        except _Replaced as e:
            if last:
                raise CheckpointError(
                    f"{e.file}: the checkpoint changed {READ_ATTEMPTS} times while it was read "
                    "(another process keeps writing it); try again"
                ) from None
        except CheckpointError:  # a file gone because a writer replaced the checkpoint: read the new one
            if last or _config_generation(find_checkpoint(path)) in (before, None):
                raise
        time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class _Replaced(Exception):
    def __init__(self, file: Path):
        self.file = file


def _load_once(path: str | os.PathLike, *, map_location: str | torch.device, train_state: bool) -> Checkpoint:
    found = find_checkpoint(path)
    if found is None:
        p = _resolve(path)
        raise CheckpointError(f"{p}: no checkpoint found (nor {_old(p).name} beside it)")
    config = read_json(found / CONFIG_FILE)
    if config.get("format") == RUN_FORMAT:
        raise CheckpointError(
            f"{found / CONFIG_FILE}: this is a run's config; the run has no checkpoint yet "
            f"({found / CHECKPOINT_DIRNAME} does not exist)"
        )
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{found / CONFIG_FILE}: not an fm-train checkpoint config "
            f"(format={config.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > CHECKPOINT_VERSION or version < 1:
        raise CheckpointError(
            f"{found / CONFIG_FILE}: unsupported checkpoint version {version!r} "
            f"(this fm-train reads 1..{CHECKPOINT_VERSION})"
        )
    step = config.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{found / CONFIG_FILE}: 'step' must be an integer >= 0, found {step!r}")
    config = dict(config)
    generation = config.pop("generation", None)

    def same(file: Path, gen: Any) -> None:
        # a file without an id was not written by this protocol (edited by hand): its contents are checked later
        if generation is not None and gen is not None and gen != generation:
            raise _Replaced(file)

    def current(file: Path) -> bool:
        """Whether ``file`` exists; if not while config.json has changed meanwhile, read again."""
        if file.exists():
            return True
        if generation is not None and _config_generation(found) != generation:
            raise _Replaced(file)
        return False

    current(found / MODEL_FILE)
    model, gen = _read_safetensors(found / MODEL_FILE)
    same(found / MODEL_FILE, gen)
    ema = None
    if current(found / EMA_FILE):
        ema, gen = _read_safetensors(found / EMA_FILE)
        same(found / EMA_FILE, gen)
    state = None
    if train_state and current(found / STATE_FILE):
        state = _read_torch(found / STATE_FILE, map_location=map_location)
        same(found / STATE_FILE, state.pop("generation", None))
    return Checkpoint(path=found, config=config, model=model, ema=ema, train_state=state, generation=generation)


def _config_generation(found: Path | None) -> Any:
    if found is None:
        return None
    try:
        return json.loads((found / CONFIG_FILE).read_text(encoding="utf-8")).get("generation")
    except (OSError, ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------- fitting weights to a model


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], file: str | os.PathLike
) -> None:
    """Raise :class:`CheckpointError` if ``found`` lacks, adds, mis-shapes or mis-types tensors of ``expected``
    or holds NaN/inf (a checkpoint is untrusted input: nothing is loaded that the model would not hold)."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shapes = [
        f"{k} {list(found[k].shape)} in the file vs {list(expected[k].shape)} in the model"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    dtypes = [
        f"{k} {str(found[k].dtype).removeprefix('torch.')} in the file vs "
        f"{str(expected[k].dtype).removeprefix('torch.')} in the model"
        for k in expected
        if k in found and found[k].dtype != expected[k].dtype
    ]
    nonfinite = [
        k
        for k in expected
        if k in found
        and not shapes
        and not dtypes
        and found[k].is_floating_point()
        and found[k].numel()
        and not bool(torch.isfinite(found[k]).all())
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {_names(extra)}")
    if shapes:
        problems.append(f"wrong shapes: {_names(shapes, 3)}")
    if dtypes:
        problems.append(f"wrong dtypes: {_names(dtypes, 3)}")
    if nonfinite:
        problems.append(f"NaN or infinite values in: {_names(nonfinite)}")
    if problems:
        raise CheckpointError(f"{file}: does not fit the model ({'; '.join(problems)})")


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], file: str | os.PathLike) -> None:
    """Check names and shapes (one-line :class:`CheckpointError`), then ``module.load_state_dict``."""
    check_state_dict(module.state_dict(), state, file)
    module.load_state_dict(dict(state))


def config_diff(a: Any, b: Any, prefix: str = "", *, shared_only: bool = False, now: str = "now") -> list[str]:
    """Dotted keys where two JSON-like values differ, with both values (``a``: the checkpoint's,
    ``b``: the one described by ``now``). ``shared_only``: compare only keys both dicts hold."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out += [] if shared_only else [f"{key} absent in the checkpoint but {b[k]!r} {now}"]
            elif k not in b:
                out += [] if shared_only else [f"{key}={a[k]!r} in the checkpoint but absent {now}"]
            else:
                out.extend(config_diff(a[k], b[k], key, shared_only=shared_only, now=now))
        return out
    return [] if a == b else [f"{prefix}={a!r} in the checkpoint but {b!r} {now}"]


def _check_same_run(ckpt: Checkpoint, cfg_file: Path) -> None:
    """A checkpoint inside a run directory must belong to that run (not be copied from another
    model or data set): the settings both config.json files hold must agree (the budget in
    ``train`` may differ: it changes on resume)."""
    run_file = ckpt.path.parent / CONFIG_FILE
    if not run_file.is_file():
        return
    run_cfg = read_json(run_file)
    if run_cfg.get("format") != RUN_FORMAT:
        return
    skip = ("format", "version", "step", "train")
    diffs = config_diff(
        {k: v for k, v in ckpt.config.items() if k not in skip},
        {k: v for k, v in run_cfg.items() if k not in skip},
        shared_only=True,
        now=f"in {run_file.name}",
    )
    if diffs:
        shown = "; ".join(diffs[:3])
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise CheckpointError(f"{cfg_file}: this checkpoint belongs to another run than {run_file}: {shown}{more}")


def load_model_for_sampling(
    run_dir: str | os.PathLike,
    build_fn: Callable[[dict[str, Any]], nn.Module],
    *,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model for sampling: ``(model with EMA weights in eval mode, config)``.

    ``build_fn(config)`` receives the checkpoint's config.json (``config["train"]`` holds the
    TrainConfig, the other keys are the app's ``extra_config``) and returns an ``nn.Module``.
    An error of ``build_fn`` on that config is reported as a :class:`CheckpointError` naming
    config.json. ``device`` is a ``torch.device`` or string (resolve "auto" with resolve_device).
    """
    ckpt = load_checkpoint(run_dir, train_state=False)
    cfg_file = ckpt.path / CONFIG_FILE
    _check_same_run(ckpt, cfg_file)
    try:
        model = build_fn(ckpt.config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"{cfg_file}: cannot build the model from this config ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_fn must return an nn.Module, got {type(model).__name__}")
    if use_ema:
        if ckpt.ema is None:
            raise CheckpointError(
                f"{ckpt.path / EMA_FILE}: missing file (pass use_ema=False to sample with the trained weights)"
            )
        load_weights(model, ckpt.ema, ckpt.path / EMA_FILE)
    else:
        load_weights(model, ckpt.model, ckpt.path / MODEL_FILE)
    return model.to(device).eval(), ckpt.config
