"""Save and load flows built by :func:`~fm_nflows.flow.build_flow`.

A checkpoint is a directory with ``config.json`` and ``model.safetensors`` (the ``state_dict``,
buffers included: permutations, LU permutation/sign, ActNorm's ``initialized`` flag). Two
layouts of config.json load alike:

* :func:`save_flow` (run directories): ``{"model": "fm-nflows/flow", "config": <build_flow kwargs>}``;
* ``Flow.save_pretrained`` (the Hub's layout, huggingface_hub's mixin): the build_flow keyword
  arguments themselves.

Both files are written beside their target and renamed into place, so a killed process never
leaves a half-written checkpoint. Nothing is unpickled on load, and config.json is untrusted
input: unknown keys or values of the wrong type are a one-line ValueError.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import torch

from .flow import Flow, build_flow

__all__ = [
    "CONFIG_NAME",
    "MODEL_KIND",
    "WEIGHTS_NAME",
    "HubUnreachableError",
    "flow_config_text",
    "hub_folder",
    "load_flow",
    "read_flow_config",
    "save_flow",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_KIND = "fm-nflows/flow"


class HubUnreachableError(ConnectionError, ValueError):
    """The Hugging Face Hub could not be reached (or HF_HUB_OFFLINE=1) and the files are not cached."""


def hub_folder(repo_id: str, files: tuple[str, ...], *, revision: str | None = None) -> Path:
    """Local folder with ``files`` of Hub repository ``repo_id``: one metadata request, no retries.

    Offline with the files not cached: :class:`HubUnreachableError`; an unknown repository: ValueError.
    (fm-nets has the same function for the networks; the import graph keeps the packages apart.)
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(files)))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubUnreachableError(
                f"cannot load {repo_id!r}: HF_HUB_OFFLINE=1 is set and it is not in the local Hub cache; give a "
                "local folder written by save_pretrained instead, or unset HF_HUB_OFFLINE to download it"
            ) from None
        raise HubUnreachableError(
            f"cannot load {repo_id!r}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached and it is "
            "not in the local cache; give a local folder written by save_pretrained instead "
            "(HF_HUB_OFFLINE=1 uses cached files without asking the Hub)"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"no repository {repo_id!r} on the Hugging Face Hub (or it is private: `hf auth login`)"
        ) from None
    except HFValidationError as exc:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a valid Hub id ('org/name'): {exc}") from None
    return folder


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("saving/loading flows needs the 'safetensors' package (pip install safetensors)") from exc
    return st


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_flow(flow: Flow, directory: str | os.PathLike) -> Path:
    """Write ``flow`` to ``directory/config.json`` and ``directory/model.safetensors``.

    The flow must come from :func:`build_flow` (it needs ``.config``). Returns the directory.
    """
    text = json.dumps({"model": MODEL_KIND, "config": _build_config(flow)}, indent=2)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_flow(flow, directory, text)
    return directory


def _build_config(flow: Flow) -> dict[str, Any]:
    if flow.config is None:
        raise ValueError("this Flow has no .config (it was not made by build_flow); save its state_dict yourself")
    return flow.config


def flow_config_text(flow: Flow) -> str:
    """config.json of the Hub layout: the build_flow keyword arguments (sorted, indented JSON)."""
    return json.dumps(_build_config(flow), indent=2, sort_keys=True)


def write_flow(flow: Flow, directory: Path, config_text: str) -> None:
    """Write model.safetensors and config.json (``config_text``) into ``directory``, each atomically."""
    st = _safetensors()
    state = {k: v.detach().cpu().contiguous() for k, v in flow.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: st.save_file(state, p))
    _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(config_text))


def _type_ok(value: Any, hint: Any) -> bool:
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, bool):
        return bool in allowed
    if value is None:
        return type(None) in allowed
    return type(value) in allowed or (isinstance(value, int) and float in allowed)


def read_flow_config(cfg_path: Path) -> dict[str, Any]:
    """The build_flow keyword arguments in ``cfg_path`` (either layout), checked: names and types.

    Raises a one-line ValueError naming the file and the bad key or value.
    """
    try:
        meta = json.loads(Path(cfg_path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    if isinstance(meta, dict) and "model" in meta:  # save_flow's layout
        if meta.get("model") != MODEL_KIND or "config" not in meta:
            raise ValueError(
                f"{cfg_path} is not a fm-nflows checkpoint (model={meta.get('model')!r}, expected {MODEL_KIND!r})"
            )
        meta = meta["config"]
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object of build_flow arguments, got {type(meta).__name__}")
    params = inspect.signature(build_flow).parameters
    unknown = sorted(set(meta) - set(params))
    if unknown:
        raise ValueError(f"{cfg_path}: unknown keys {unknown}; build_flow takes {', '.join(params)}")
    hints = typing.get_type_hints(build_flow)
    for key, value in meta.items():
        if not _type_ok(value, hints[key]):
            raise ValueError(f"{cfg_path}: {key}={value!r} is not a valid build_flow {key} ({hints[key]})")
    return meta


def load_flow(directory: str | os.PathLike, *, device: str | torch.device | None = None) -> Flow:
    """Rebuild the flow saved in ``directory`` (dtype as saved; on ``device``, default CPU).

    The returned flow is in eval mode; ActNorm layers keep their saved ``initialized``
    flag, so training it further never re-initialises them.
    """
    st = _safetensors()
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    missing = [str(p) for p in (cfg_path, w_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a fm-nflows checkpoint, missing: {', '.join(missing)}")
    config = read_flow_config(cfg_path)
    try:
        with torch.random.fork_rng(devices=[]):  # the weights are overwritten; keep the global RNG
            flow = build_flow(**config)
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
        raise ValueError(f"{cfg_path}: build_flow refuses this config: {exc}") from None
    try:
        state = st.load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged file
        raise ValueError(f"{w_path}: not a readable safetensors file ({exc})") from None
    float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(float_dtypes) == 1:
        flow = flow.to(float_dtypes.pop())
    try:
        flow.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())  # torch's message spans lines
        raise ValueError(f"weights in {w_path} do not match the config in {cfg_path}: {detail[:300]}") from None
    flow.eval()
    return flow.to(device) if device is not None else flow
