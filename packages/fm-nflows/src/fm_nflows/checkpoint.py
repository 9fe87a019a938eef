"""Save and load flows built by :func:`~fm_nflows.flow.build_flow`.

A checkpoint is a directory with ``config.json`` (``{"model": "fm-nflows/flow",
"config": <build_flow kwargs>}``) and ``model.safetensors`` (the ``state_dict``, buffers
included: permutations, LU permutation/sign, ActNorm's ``initialized`` flag). Both
files are written beside their target and renamed into place, so a killed process never
leaves a half-written checkpoint. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .flow import Flow, build_flow

__all__ = ["save_flow", "load_flow", "CONFIG_NAME", "WEIGHTS_NAME", "MODEL_KIND"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_KIND = "fm-nflows/flow"


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
    if flow.config is None:
        raise ValueError("this Flow has no .config (it was not made by build_flow); save its state_dict yourself")
    st = _safetensors()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in flow.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: st.save_file(state, p))
    text = json.dumps({"model": MODEL_KIND, "config": flow.config}, indent=2)
    _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


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
    meta = json.loads(cfg_path.read_text())
    if not isinstance(meta, dict) or meta.get("model") != MODEL_KIND or "config" not in meta:
        kind = meta.get("model") if isinstance(meta, dict) else None
        raise ValueError(f"{cfg_path} is not a fm-nflows checkpoint (model={kind!r}, expected {MODEL_KIND!r})")
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten; keep the global RNG
        flow = build_flow(**meta["config"])
    state = st.load_file(str(w_path))
    float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(float_dtypes) == 1:
        flow = flow.to(float_dtypes.pop())
    try:
        flow.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {w_path} do not match the config in {cfg_path}: {exc}") from exc
    flow.eval()
    return flow.to(device) if device is not None else flow
