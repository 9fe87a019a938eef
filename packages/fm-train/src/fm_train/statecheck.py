"""A checkpoint is untrusted input: every tensor and number of a loaded training state is checked
against what the run expects (shape, dtype, finiteness, range) before anything uses it.

``torch.load(weights_only=True)`` stops pickled code, not bad values: AdamW moments of the wrong
size make the fused CPU kernel read and write out of bounds (heap corruption, SIGSEGV); a NaN
``elapsed`` never ends a minutes budget; a wrong-sized RNG state is a C++ error. Each check here
raises ``ValueError`` with one line naming the entry (``optimizer.state.3.exp_avg``) and the problem;
the Trainer reports it as a :class:`~fm_train.checkpoint.CheckpointError` naming the file.

    check_optimizer_state(saved, optimizer, max_step=step)  # -> a state dict safe to load
    check_rng_state(saved["rng"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "TRAIN_STATE_KEYS",
    "check_counter",
    "check_generator_state",
    "check_history",
    "check_optimizer_state",
    "check_real",
    "check_rng_state",
    "check_tensor",
    "check_train_state",
]

#: Hyperparameters of an optimizer's param group that a checkpoint may not change (the run's config sets
#: them); the implementation switches (fused, foreach, capturable, ...) are the current optimizer's.
_GROUP_MUST_MATCH = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "momentum", "dampening", "nesterov")
#: The entries of a Trainer's train_state.pt (``interval`` is absent in fm-train <= 0.1.0's); others are ignored.
TRAIN_STATE_KEYS = (
    "format_version", "step", "elapsed", "lr", "optimizer", "ema", "generator", "generator_device", "rng", "history",
)  # fmt: skip
#: The largest number a counter may hold (steps, updates): far above any run, far below overflow.
MAX_COUNT = 2**53


def _kind(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {str(v.dtype).removeprefix('torch.')} tensor of shape {list(v.shape)}"
    return f"{type(v).__name__} {v!r}"[:80]


def check_tensor(
    v: Any,
    name: str,
    *,
    shape: Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    finite: bool = True,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """``v`` if it is a tensor of ``shape`` with a dtype in ``dtypes``, finite (floating tensors) and
    within [low, high]; else ValueError naming ``name``."""
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, found {_kind(v)}")
    if v.layout != torch.strided or v.is_quantized:
        raise ValueError(f"{name} must be a dense tensor, found layout {v.layout}")
    if dtypes is not None and v.dtype not in dtypes:
        allowed = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must be a {allowed} tensor, found {_kind(v)}")
    if shape is not None and tuple(v.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, found {_kind(v)}")
    if v.numel() and (v.is_floating_point() or v.is_complex()):
        if finite and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
    if v.numel() and (low is not None or high is not None) and not v.is_complex() and v.dtype != torch.bool:
        lo, hi = v.min().item(), v.max().item()
        if (low is not None and lo < low) or (high is not None and hi > high):
            raise ValueError(f"{name} holds values in [{lo}, {hi}], allowed [{low}, {high}]")
    return v


def check_counter(v: Any, name: str, low: int = 0, high: int = MAX_COUNT) -> int:
    """``v`` if it is an int (not a bool) in [low, high]; else ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or not (low <= v <= high):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], found {_kind(v)}")
    return v


def check_real(v: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``float(v)`` if it is a finite int/float in [low, high]; else ValueError naming ``name``."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float))
    try:
        ok = ok and math.isfinite(v) and low <= v <= high
    except OverflowError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], found {_kind(v)}")
    return float(v)


def _check_keys(d: Any, name: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{name} must be a dict, found {_kind(d)}")
    missing = [k for k in required if k not in d]
    extra = [k for k in d if k not in required and k not in optional]
    if missing or extra:
        parts = ([f"missing {', '.join(map(str, missing))}"] if missing else []) + (
            [f"unexpected {', '.join(map(repr, extra[:5]))}"] if extra else []
        )
        raise ValueError(f"{name}: {'; '.join(parts)}")
    return d


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if not isinstance(a, int | float | str) or not isinstance(b, int | float | str):
        return False
    return a == b


def check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, *, max_step: int) -> dict[str, Any]:
    """The optimizer state dict of a checkpoint, checked against ``optimizer`` (which it will be loaded
    into) and returned ready for ``optimizer.load_state_dict``: the same param groups with the same
    parameters and hyperparameters (``lr`` finite, >= 0; the implementation switches taken from
    ``optimizer``), and per parameter exactly the state tensors ``optimizer`` would hold, each of the
    parameter's shape and dtype, finite, second moments >= 0, ``step`` integral in [0, max_step]."""
    current = optimizer.state_dict()
    sd = _check_keys(saved, "optimizer", ("state", "param_groups"))
    groups = sd["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(current["param_groups"]):
        found = len(groups) if isinstance(groups, list) else _kind(groups)
        raise ValueError(f"optimizer.param_groups must be a list of {len(current['param_groups'])}, found {found}")
    params: dict[int, torch.Tensor] = {}
    new_groups = []
    for i, (g, cur, real) in enumerate(zip(groups, current["param_groups"], optimizer.param_groups)):
        name = f"optimizer.param_groups.{i}"
        g = _check_keys(g, name, tuple(cur), ("initial_lr",))
        if not isinstance(g["params"], list) or not _same(g["params"], cur["params"]):
            raise ValueError(f"{name}.params must be {cur['params']}, found {_kind(g['params'])}")
        new = dict(cur)
        new["lr"] = check_real(g["lr"], f"{name}.lr", 0.0)
        for key in _GROUP_MUST_MATCH:
            if key in cur and not _same(g[key], cur[key]):
                raise ValueError(f"{name}.{key} is {g[key]!r}, the run has {cur[key]!r}")
        new_groups.append(new)
        params.update(zip(cur["params"], real["params"]))
    state = sd["state"]
    if not isinstance(state, Mapping):
        raise ValueError(f"optimizer.state must be a dict, found {_kind(state)}")
    amsgrad = any(bool(g.get("amsgrad", False)) for g in current["param_groups"])
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(f"cannot check the state of a {type(optimizer).__name__} (Adam and AdamW only)")
    needed = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    new_state: dict[int, dict[str, torch.Tensor]] = {}
    for pid, entry in state.items():
        if isinstance(pid, bool) or not isinstance(pid, int) or pid not in params:
            raise ValueError(f"optimizer.state has an entry for parameter {pid!r}, the run has 0..{len(params) - 1}")
        p = params[pid]
        name = f"optimizer.state.{pid}"
        entry = _check_keys(entry, name, needed)
        step = check_tensor(entry["step"], f"{name}.step", shape=(), dtypes=(torch.float32, torch.float64))
        s = float(step)
        if not (0 <= s <= max_step) or not s.is_integer():
            raise ValueError(f"{name}.step must be an integer in [0, {max_step}], found {s!r}")
        out = {"step": step.clone()}
        for key in needed[1:]:
            low = 0.0 if key != "exp_avg" else None
            out[key] = check_tensor(entry[key], f"{name}.{key}", shape=p.shape, dtypes=(p.dtype,), low=low).clone()
        new_state[pid] = out
    return {"state": new_state, "param_groups": new_groups}


def check_generator_state(v: Any, name: str, like: torch.Tensor) -> torch.Tensor:
    """A generator state (uint8 bytes) of the same shape as ``like`` (the state of a generator of this run)."""
    return check_tensor(v, name, shape=like.shape, dtypes=(torch.uint8,))


def check_rng_state(state: Any) -> None:
    """The global generators' state as :func:`fm_train.rng.capture_rng_state` writes it: torch's CPU
    state of this torch's size, CUDA/MPS states as byte tensors, NumPy's MT19937 (624 keys < 2**32,
    pos in [0, 624]), Python's (version 3, 625 words < 2**32 with the index last in [0, 624])."""
    st = _check_keys(state, "rng", ("torch", "cuda", "numpy", "python"), ("mps",))
    check_generator_state(st["torch"], "rng.torch", torch.get_rng_state())
    cuda = st["cuda"]
    if not isinstance(cuda, list) or len(cuda) > 1024:
        raise ValueError(f"rng.cuda must be a list of byte tensors, found {_kind(cuda)}")
    like = torch.cuda.get_rng_state() if cuda and torch.cuda.is_available() else None
    for i, s in enumerate(cuda):
        check_tensor(s, f"rng.cuda.{i}", shape=None if like is None else like.shape, dtypes=(torch.uint8,))
        if s.ndim != 1:
            raise ValueError(f"rng.cuda.{i} must be a 1-d byte tensor, found {_kind(s)}")
    if "mps" in st:
        check_tensor(st["mps"], "rng.mps", dtypes=(torch.uint8,))
        if st["mps"].ndim != 1:
            raise ValueError(f"rng.mps must be a 1-d byte tensor, found {_kind(st['mps'])}")
    npst = _check_keys(st["numpy"], "rng.numpy", ("bit_generator", "keys", "pos", "has_gauss", "cached_gaussian"))
    if npst["bit_generator"] != "MT19937":
        raise ValueError(f"rng.numpy.bit_generator must be 'MT19937', found {_kind(npst['bit_generator'])}")
    check_tensor(npst["keys"], "rng.numpy.keys", shape=(624,), dtypes=(torch.int64,), low=0, high=2**32 - 1)
    check_counter(npst["pos"], "rng.numpy.pos", 0, 624)
    check_counter(npst["has_gauss"], "rng.numpy.has_gauss", 0, 1)
    check_real(npst["cached_gaussian"], "rng.numpy.cached_gaussian")
    pyst = _check_keys(st["python"], "rng.python", ("version", "state", "gauss_next"))
    check_counter(pyst["version"], "rng.python.version", 3, 3)
    words = check_tensor(pyst["state"], "rng.python.state", shape=(625,), dtypes=(torch.int64,), low=0, high=2**32 - 1)
    check_counter(int(words[-1]), "rng.python.state[-1] (the index)", 0, 624)
    if pyst["gauss_next"] is not None:
        check_real(pyst["gauss_next"], "rng.python.gauss_next")


def check_history(state: Any, *, max_step: int) -> None:
    """The loss history (``LossHistory.state_dict()``): equal-length lists of finite numbers, steps
    increasing integers in [1, max_step]."""
    st = _check_keys(state, "history", ("step", "loss", "lr", "elapsed_s"))
    lengths = set()
    for col in ("step", "loss", "lr", "elapsed_s"):
        values = st[col]
        if not isinstance(values, list):
            raise ValueError(f"history.{col} must be a list, found {_kind(values)}")
        lengths.add(len(values))
        for i, v in enumerate(values):
            if col == "step":
                check_counter(v, f"history.step[{i}]", 1, max_step)
                if i and v <= values[i - 1]:
                    raise ValueError(f"history.step must increase, found {values[i - 1]} then {v}")
            else:
                check_real(v, f"history.{col}[{i}]")
    if len(lengths) > 1:
        raise ValueError(f"history columns have different lengths ({sorted(lengths)})")


def check_train_state(
    ts: Mapping[str, Any], *, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict[str, Any]:
    """A Trainer's ``train_state.pt`` checked in full before any of it is used: counters (``step``
    equal to the checkpoint's, ``elapsed`` finite >= 0, ``lr`` finite >= 0, EMA updates in [0, step],
    the log interval), the loss history, the optimizer state (:func:`check_optimizer_state`), the
    batch generator (same size as ``generator``'s own state on the same device type; another device
    type is left to the caller) and the global RNGs. Returns the state with the optimizer state
    replaced by the checked copy; ValueError naming the entry otherwise."""
    missing = [k for k in TRAIN_STATE_KEYS if k not in ts]
    if missing:
        raise ValueError(f"missing entries: {', '.join(missing)}")
    if ts["format_version"] != 1 or isinstance(ts["format_version"], bool):
        raise ValueError(f"unsupported format_version {ts['format_version']!r}")
    check_counter(ts["step"], "step")
    if ts["step"] != step:
        raise ValueError(f"step {ts['step']} differs from config.json's step {step}")
    check_real(ts["elapsed"], "elapsed", 0.0, 1e12)
    check_real(ts["lr"], "lr", 0.0)
    ema = _check_keys(ts["ema"], "ema", ("num_updates",), ("decay", "warmup"))
    check_counter(ema["num_updates"], "ema.num_updates", 0, step)
    interval = ts.get("interval") or {"sum": 0.0, "n": 0}
    interval = _check_keys(interval, "interval", ("sum", "n"))
    check_real(interval["sum"], "interval.sum")
    check_counter(interval["n"], "interval.n", 0, step)
    check_history(ts["history"], max_step=step)
    if not isinstance(ts["generator_device"], str):
        raise ValueError(f"generator_device must be a string, found {_kind(ts['generator_device'])}")
    if ts["generator_device"] == generator.device.type:
        check_generator_state(ts["generator"], "generator", generator.get_state())
    check_rng_state(ts["rng"])
    out = dict(ts)
    out["optimizer"] = check_optimizer_state(ts["optimizer"], optimizer, max_step=step)
    return out
