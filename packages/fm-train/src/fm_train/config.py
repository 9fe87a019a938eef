"""``TrainConfig``: every knob of the training loop, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .devices import DEVICE_CHOICES
from .schedule import SCHEDULES

__all__ = ["TrainConfig", "DEFAULT_STEPS", "RESUME_MUST_MATCH"]

DEFAULT_STEPS = 1000

# Fields that define the optimisation trajectory: a resumed run must use the same values.
# The rest (budget, logging, checkpoint cadence, device, bf16, compile, progress) may change.
RESUME_MUST_MATCH = (
    "batch_size", "lr", "betas", "weight_decay", "warmup_steps", "schedule", "min_lr_ratio",
    "grad_clip", "ema_decay", "ema_warmup", "seed",
)  # fmt: skip


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainConfig:
    """Training-loop settings. Budget: exactly one of ``steps`` or ``minutes`` (default: steps=1000).

    steps          total optimizer steps of the run (across resumes)
    minutes        total training time of the run in minutes (across resumes; see Trainer)
    batch_size     global batch size (the app's ``batch_fn`` draws it; recorded for throughput)
    lr, betas, weight_decay   AdamW settings
    warmup_steps   linear warmup length; schedule "constant" or "cosine" (down to min_lr_ratio * lr)
    grad_clip      max global gradient norm (None = no clipping)
    ema_decay      EMA decay in [0, 1); ema_warmup uses min(decay, (1+n)/(10+n))
    seed           seeds the Trainer's generator and the global RNGs at the start of a run
    log_every      steps between loss syncs (host-device sync, NaN check, history row, bar text)
    ckpt_every     checkpoint every N steps (None = off); ckpt_minutes: also every M minutes (None = off)
    sample_every   call sample_fn every N steps (None = only at the end)
    device         "auto" | "cpu" | "cuda" | "cuda:N" | "mps";  bf16: autocast (CUDA); compile: torch.compile
    progress       show a tqdm progress bar
    """

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

    def __post_init__(self) -> None:
        if self.steps is not None and self.minutes is not None:
            raise ValueError(f"give exactly one budget, steps or minutes, not both (steps={self.steps!r}, minutes={self.minutes!r})")
        if self.steps is None and self.minutes is None:
            self.steps = DEFAULT_STEPS
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

    @property
    def budget(self) -> str:
        """``"steps"`` or ``"minutes"``."""
        return "steps" if self.steps is not None else "minutes"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what is allowed."""

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        def pos_int(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not _is_int(v) or v <= 0:
                raise bad(name, "a positive integer" + (" or None" if optional else ""))

        def pos_real(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not _is_real(v) or v <= 0:
                raise bad(name, "a positive finite number" + (" or None" if optional else ""))

        pos_int("steps", optional=True)
        pos_real("minutes", optional=True)
        pos_int("batch_size")
        pos_real("lr")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(_is_real(b) and 0.0 <= b < 1.0 for b in self.betas)):
            raise bad("betas", "two numbers in [0, 1)")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a finite number >= 0")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an integer >= 0")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if not _is_real(self.min_lr_ratio) or not (0.0 <= self.min_lr_ratio <= 1.0):
            raise bad("min_lr_ratio", "a number in [0, 1]")
        pos_real("grad_clip", optional=True)
        if not _is_real(self.ema_decay) or not (0.0 <= self.ema_decay < 1.0):
            raise bad("ema_decay", "a number in [0, 1)")
        for name in ("ema_warmup", "bf16", "compile", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        pos_int("log_every")
        pos_int("ckpt_every", optional=True)
        pos_real("ckpt_minutes", optional=True)
        pos_int("sample_every", optional=True)
        if not isinstance(self.device, str) or not self.device.strip():
            raise bad("device", f"one of {', '.join(DEVICE_CHOICES)} or 'cuda:N'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``betas`` as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict such as ``config.json["train"]``; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"TrainConfig.from_dict needs a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kw = dict(data)
        if isinstance(kw.get("betas"), list):
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (switching budget clears the other one)."""
        if "minutes" in changes and changes["minutes"] is not None and "steps" not in changes:
            changes["steps"] = None
        if "steps" in changes and changes["steps"] is not None and "minutes" not in changes:
            changes["minutes"] = None
        return dataclasses.replace(self, **changes)

