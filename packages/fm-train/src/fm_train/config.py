"""Strict configurations: :class:`StrictConfig` (a dataclass mixin) and ``TrainConfig``, every knob
of the training loop, validated on construction.

A config class is a ``@dataclass`` that inherits :class:`StrictConfig` and checks its fields in
``validate()`` with the typed helpers (``_check_int``, ``_check_real``, ``_check_choice``,
``_check_bool``); each failure is one ``ValueError("{name}={value!r} is invalid: must be
{allowed}")``. Configs nest: a field typed as a StrictConfig (``train: TrainConfig``) is
written as a dict by ``to_dict()`` and rebuilt from one by ``from_dict()``::

    @dataclass
    class MyConfig(StrictConfig):
        width: int = 64
        train: TrainConfig = field(default_factory=TrainConfig)

        def validate(self) -> None:
            self._check_int("width", 1)

    cfg = MyConfig.from_dict({"width": 32, "train": {"steps": 50}})
    assert MyConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from .devices import DEVICE_CHOICES
from .schedule import SCHEDULES

__all__ = ["StrictConfig", "TrainConfig", "DEFAULT_STEPS", "RESUME_MUST_MATCH"]

DEFAULT_STEPS = 1000

# Fields that define the optimisation trajectory: a resumed run must use the same values.
# The rest (budget, logging, checkpoint cadence, device, precision, compile, progress) may change.
RESUME_MUST_MATCH = (
    "batch_size", "lr", "betas", "weight_decay", "warmup_steps", "schedule", "min_lr_ratio",
    "grad_clip", "ema_decay", "ema_warmup", "seed",
)  # fmt: skip


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _num(v: float) -> str:
    """A bound as people write it: 0 not 0.0, 0.5 as is."""
    return str(int(v)) if float(v).is_integer() else repr(v)


def _plain_type(tp: Any) -> tuple[type | None, bool]:
    """(the non-None type of an annotation, whether None is allowed) for ``X``, ``X | None``, ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else None), True
    return tp, False


def _jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what ``json`` writes anyway)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class StrictConfig:
    """Mixin for ``@dataclass`` configs: JSON round trip, unknown keys refused, typed validation.

    Subclasses are dataclasses and override :meth:`validate`. ``__post_init__`` turns a dict
    given for a nested StrictConfig field into that config (anything else but an instance, or
    None where the annotation allows it, is refused) and a list given for a tuple field into a
    tuple, then calls ``validate()``; a subclass that defines its own ``__post_init__``
    calls ``super().__post_init__()`` at its end.

    Class attributes that shape the messages: ``_field_prefix`` (before a field name, e.g.
    ``"TrainConfig."``), ``_config_label`` (the whole config, e.g. ``"run config"``) and
    ``_key_noun`` (``"key"`` or ``"field"``, in the unknown-keys message).
    """

    _field_prefix: ClassVar[str] = ""
    _config_label: ClassVar[str] = "run config"
    _key_noun: ClassVar[str] = "key"

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        hints = self._field_types()
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            tp, optional = _plain_type(hints.get(f.name))
            if isinstance(tp, type) and issubclass(tp, StrictConfig):
                if not isinstance(value, tp) and not (value is None and optional):
                    setattr(self, f.name, tp.from_dict(value))  # a dict; anything else is refused there
            elif isinstance(value, list) and (tp is tuple or typing.get_origin(tp) is tuple):
                setattr(self, f.name, tuple(value))
        self.validate()

    @classmethod
    def _field_types(cls) -> dict[str, Any]:
        cached = cls.__dict__.get("_strict_hints")
        if cached is None:
            try:
                cached = typing.get_type_hints(cls)
            except (NameError, TypeError, AttributeError):  # an annotation that does not resolve at run time
                cached = {f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)}  # type: ignore[arg-type]
            cls._strict_hints = cached  # type: ignore[attr-defined]
        return cached

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what is allowed (subclasses)."""

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``dataclasses.asdict``: nested configs as dicts; tuples as lists)."""
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Build from a dict such as a ``config.json`` section; a non-dict or unknown keys are a
        ``ValueError`` naming them and the known ones; nested configs are rebuilt from their dicts."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls._label()} must be a JSON object, got {type(data).__name__}")
        cls._refuse_unknown(data)
        return cls(**data)

    @classmethod
    def _label(cls) -> str:
        label = cls._config_label
        return f"a {label}" if label[:1].islower() else label

    @classmethod
    def _refuse_unknown(cls, keys: Iterable[str]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls._config_label} {cls._key_noun}(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed; unknown field names are a ``ValueError``."""
        self._refuse_unknown(changes)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # ------------------------------------------------------------------ validation helpers
    def _invalid(self, name: str, allowed: str) -> ValueError:
        """The one error of a bad field: ``{prefix}{name}={value!r} is invalid: must be {allowed}``."""
        return ValueError(f"{self._field_prefix}{name}={getattr(self, name)!r} is invalid: must be {allowed}")

    def _check_int(
        self, name: str, low: int, high: int | None = None, optional: bool = False, allowed: str | None = None
    ) -> None:
        """An int (not a bool) in [low, high] (``high=None``: no upper bound); None too when ``optional``."""
        v = getattr(self, name)
        if v is None and optional:
            return
        if not _is_int(v) or v < low or (high is not None and v > high):
            if allowed is None:
                if high is not None:
                    allowed = f"an integer in [{low}, {high}]"
                else:
                    allowed = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise self._invalid(name, allowed + (" or None" if optional else ""))

    def _check_real(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        optional: bool = False,
        allowed: str | None = None,
    ) -> None:
        """A finite int or float (not a bool) within the bounds (``*_open``: the bound itself is
        excluded); None too when ``optional``."""
        v = getattr(self, name)
        if v is None and optional:
            return
        ok = _is_real(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
        if not ok:
            if allowed is None:
                if low is not None and high is not None:
                    allowed = (
                        f"a number in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
                    )
                elif low is not None:
                    allowed = (
                        "a positive finite number"
                        if low == 0 and low_open
                        else f"a finite number {'>' if low_open else '>='} {_num(low)}"
                    )
                elif high is not None:
                    allowed = f"a finite number {'<' if high_open else '<='} {_num(high)}"
                else:
                    allowed = "a finite number"
            raise self._invalid(name, allowed + (" or None" if optional else ""))

    def _check_choice(self, name: str, choices: Iterable[Any], allowed: str | None = None) -> None:
        """One of ``choices``."""
        choices = tuple(choices)
        v = getattr(self, name)
        try:  # True is not the choice 1 (nor 1 the choice True)
            ok = any(isinstance(c, bool) == isinstance(v, bool) and bool(c == v) for c in choices)
        except (TypeError, ValueError, RuntimeError):  # a value whose == gives no truth value (arrays)
            ok = False
        if not ok:
            raise self._invalid(name, allowed or f"one of {', '.join(map(str, choices))}")

    def _check_bool(self, name: str) -> None:
        """``True`` or ``False`` (not 0 or 1)."""
        if not isinstance(getattr(self, name), bool):
            raise self._invalid(name, "true or false")


@dataclass
class TrainConfig(StrictConfig):
    """Training-loop settings. Budget: exactly one of ``steps`` or ``minutes`` (default: steps=1000).

    steps          total optimizer steps of the run (across resumes)
    minutes        total training time of the run in minutes (across resumes; see Trainer)
    batch_size     global batch size (the app's ``batch_fn`` draws it; recorded for throughput)
    lr, betas, weight_decay   AdamW settings
    warmup_steps   linear warmup length; schedule "constant" or "cosine" (down to min_lr_ratio * lr)
    grad_clip      max global gradient norm (None = no clipping)
    ema_decay      EMA decay in [0, 1); ema_warmup uses min(decay, (1+n)/(10+n))
    seed           seeds the Trainer's generator and the global RNGs at the start of a run
    log_every      steps between loss syncs (host-device sync, NaN check, history row, loggers, stop_fn)
    ckpt_every     checkpoint every N steps (None = off); ckpt_minutes: also every M minutes (None = off)
    sample_every   call sample_fn every N steps (None = only at the end)
    device         "auto" | "cpu" | "cuda" | "cuda:N" | "mps";  compile: torch.compile (CPU and CUDA)
    precision      "fp32", "bf16" (autocast of the forward pass and loss; weights, optimizer state,
                   EMA, loss value stay float32) or "auto" (measured at the start, fm_train.precision)
    bf16           deprecated: True means precision="bf16" (old run configs); always False once read
    progress       show a tqdm progress bar
    """

    _field_prefix: ClassVar[str] = "TrainConfig."
    _config_label: ClassVar[str] = "TrainConfig"
    _key_noun: ClassVar[str] = "field"

    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    log_every: int = 100
    ckpt_every: int | None = None
    ckpt_minutes: float | None = 5.0
    sample_every: int | None = None
    device: str = "auto"
    bf16: bool = False
    compile: bool = False
    progress: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.bf16 is True:  # the old switch (configs of fm-train <= 0.2): precision bf16
            if self.precision not in ("fp32", "bf16"):
                raise ValueError(f"TrainConfig.bf16=True contradicts precision={self.precision!r}; give precision only")
            self.precision, self.bf16 = "bf16", False
        if self.steps is not None and self.minutes is not None:
            raise ValueError(
                f"give exactly one budget, steps or minutes, not both (steps={self.steps!r}, minutes={self.minutes!r})"
            )
        if self.steps is None and self.minutes is None:
            self.steps = DEFAULT_STEPS
        super().__post_init__()

    @property
    def budget(self) -> str:
        """``"steps"`` or ``"minutes"``."""
        return "steps" if self.steps is not None else "minutes"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what is allowed."""
        self._check_int("steps", 1, optional=True)
        self._check_real("minutes", 0, low_open=True, optional=True)
        self._check_int("batch_size", 1)
        self._check_real("lr", 0, low_open=True)
        if not (
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(_is_real(b) and 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise self._invalid("betas", "two numbers in [0, 1)")
        self._check_real("weight_decay", 0)
        self._check_int("warmup_steps", 0)
        self._check_choice("schedule", SCHEDULES)
        self._check_real("min_lr_ratio", 0, 1)
        self._check_real("grad_clip", 0, low_open=True, optional=True)
        self._check_real("ema_decay", 0, 1, high_open=True)
        for name in ("ema_warmup", "bf16", "compile", "progress"):
            self._check_bool(name)
        self._check_int("seed", 0)
        self._check_int("log_every", 1)
        self._check_int("ckpt_every", 1, optional=True)
        self._check_real("ckpt_minutes", 0, low_open=True, optional=True)
        self._check_int("sample_every", 1, optional=True)
        self._check_choice("precision", ("auto", "fp32", "bf16"))
        if not isinstance(self.device, str) or not self.device.strip():
            raise self._invalid("device", f"one of {', '.join(DEVICE_CHOICES)} or 'cuda:N'")

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed (switching budget clears the other one)."""
        if "minutes" in changes and changes["minutes"] is not None and "steps" not in changes:
            changes["steps"] = None
        if "steps" in changes and changes["steps"] is not None and "minutes" not in changes:
            changes["minutes"] = None
        return super().replace(**changes)
