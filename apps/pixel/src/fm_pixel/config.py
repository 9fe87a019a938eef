"""The configuration of one fm-pixel run: recipes, network defaults, validation, JSON.

A run is described by one :class:`PixelConfig`, stored in ``RUN/config.json`` under the key
``"pixel"`` (beside fm-train's ``"train"`` section and ``"net"``: the network's name and its
``.config``). It is all that ``sample`` and ``eval`` need besides the weights.

Recipes (``--recipe``; the benchmark compares them at equal training time):

* ``default``: this project's recipe, chosen from measurements on the project's 2-core CPU (see
  the app's README for the numbers and the reasons).
* ``mit``: the MIT 6.S184 lab (2025, lab 3): U-Net with channels 32-64-128 and two residual layers
  per level, batch 250, Adam lr 1e-3, uniform t, independent coupling, label dropout 0.1, no EMA,
  Euler sampling, guidance 3. (Our U-Net blocks stand in for the lab's: GroupNorm instead of
  BatchNorm, scale-shift conditioning, no attention, as in the lab.)
* ``post``: the blog post "Flow matching for multi-modal density estimation and image
  generation": the plain 5 x 512 ReLU MLP on flattened pixels (``MLPVelocity.post_recipe``),
  uniform t, independent coupling, AdamW lr 1e-3, batch 256, no EMA, no clipping, Euler, no guidance.

Time convention everywhere: t = 0 is N(0, I) noise, t = 1 is data (images in [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from fm_data.images import IMAGE_DATASETS

__all__ = [
    "COUPLINGS",
    "DEFAULT_STEPS",
    "NETS",
    "NET_DEFAULTS",
    "NUM_CLASSES",
    "RECIPES",
    "SOLVERS",
    "TIMES",
    "PixelConfig",
    "make_config",
    "parse_classes",
]

NUM_CLASSES = 10  # both data sets; labels keep their original ids, also for --classes subsets
IMAGE_SIZE = 28
NETS = ("unet", "mlp", "dit")
COUPLINGS = ("independent", "ot")
TIMES = ("uniform", "logit-normal")
SOLVERS = ("euler", "midpoint", "heun", "rk4")
SCHEDULES = ("constant", "cosine")

#: Network settings of this project's recipe, per ``--net`` (keyword arguments of fm_nets'
#: UNet / MLPVelocity without num_classes and dim). See the README for the measurements.
NET_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": dict(channels=[32, 64, 128], num_res_blocks=1, attention=True, patch_size=2, mid_blocks=1),
    "mlp": dict(hidden=1024, depth=4, time_dim=128, activation="silu", time_embedding="sinusoidal", residual=True),
    # 28x28 pixels in 2x2 patches: 196 tokens (fm-latentgen's tiny DiT, one input channel)
    "dit": dict(in_channels=1, patch_size=2, hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0),
}

#: Training budget in optimizer steps when neither --steps nor --minutes is given.
DEFAULT_STEPS = 3000

#: Every knob of a recipe. ``net`` is the network's name, ``net_config`` its keyword arguments.
RECIPES: dict[str, dict[str, Any]] = {
    "default": dict(
        net="unet",
        net_config=None,  # NET_DEFAULTS[net]
        time="logit-normal",
        coupling="independent",
        label_dropout=0.1,
        batch_size=64,
        lr=2e-3,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=100,
        grad_clip=1.0,
        ema_decay=0.999,
        solver="euler",
        nfe=10,
        guidance=2.0,
    ),
    "mit": dict(
        net="unet",
        net_config=dict(channels=[32, 64, 128], num_res_blocks=2, attention=False, patch_size=1, mid_blocks=2),
        time="uniform",
        coupling="independent",
        label_dropout=0.1,
        batch_size=250,
        lr=1e-3,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=0,
        grad_clip=None,
        ema_decay=0.0,
        solver="euler",
        nfe=50,
        guidance=3.0,
    ),
    "post": dict(
        net="mlp",
        net_config=dict(hidden=512, depth=5, time_dim=128, activation="relu", time_embedding="raw", residual=False),
        time="uniform",
        coupling="independent",
        label_dropout=0.0,
        batch_size=256,
        lr=1e-3,
        weight_decay=0.01,
        schedule="constant",
        warmup_steps=0,
        grad_clip=None,
        ema_decay=0.0,
        solver="euler",
        nfe=50,
        guidance=1.0,
    ),
}


def parse_classes(value: str | int | list[int] | tuple[int, ...] | None) -> list[int] | None:
    """``"3"`` / ``"3,5"`` / ``[3, 5]`` -> sorted unique class ids in 0..9; None -> None (all classes).

    Raises ValueError naming the bad value.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(p == "" for p in parts):
            raise ValueError(f"classes must be class ids like '3' or '3,5', got {value!r}")
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"classes must be integers in 0..{NUM_CLASSES - 1} like '3' or '3,5', got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        ids = [value]
    else:
        ids = list(value)
        if not ids or any(isinstance(c, bool) or not isinstance(c, int) for c in ids):
            raise ValueError(f"classes must be a non-empty list of integers in 0..{NUM_CLASSES - 1}, got {value!r}")
    bad = [c for c in ids if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ValueError(f"classes {bad} out of range: class ids are 0..{NUM_CLASSES - 1} (got {value!r})")
    return sorted(set(ids))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class PixelConfig:
    """Everything that defines an fm-pixel run (JSON-safe).

    dataset: "mnist" or "fashion-mnist"; classes: train on these class ids only (None: all).
    conditional: class-conditional model (labels 0..9, null label 10 for guidance).
    net / net_config: "unet" or "mlp" and its keyword arguments (fm_nets).
    time: training-time sampler; coupling: "independent" or "ot" (exact OT within each class).
    label_dropout: probability of the null label in training (needed for guidance != 1).
    batch_size .. ema_decay: the optimisation (fm-train). steps / minutes: the budget (not part
    of the stored config: it may change on resume).
    solver / nfe / guidance: the run's default sampler (``fm-pixel sample`` without options).
    """

    dataset: str = "fashion-mnist"
    classes: list[int] | None = None
    conditional: bool = False
    recipe: str = "default"
    net: str = "unet"
    net_config: dict[str, Any] = field(default_factory=dict)
    time: str = "logit-normal"
    coupling: str = "independent"
    label_dropout: float = 0.1
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    solver: str = "euler"
    nfe: int = 10
    guidance: float = 2.0

    def __post_init__(self) -> None:
        if self.classes is not None:
            self.classes = parse_classes(self.classes)
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def num_classes(self) -> int | None:
        """Label classes of the network (10, with null label 10) or None when unconditional."""
        return NUM_CLASSES if self.conditional else None

    @property
    def sample_classes(self) -> list[int]:
        """The classes a conditional run samples by default (the trained ones)."""
        return list(self.classes) if self.classes is not None else list(range(NUM_CLASSES))

    @property
    def size_factor(self) -> int:
        """How much the network shrinks the image (H and W must be divisible by it)."""
        if self.net == "dit":
            return int(self.net_config.get("patch_size", 2))
        if self.net != "unet":
            return 1
        levels = len(self.net_config.get("channels", [32, 64, 128]))
        return int(self.net_config.get("patch_size", 1)) * 2 ** (levels - 1)

    @property
    def pad(self) -> bool:
        """Pad 28x28 images to 32x32 (with -1) when the U-Net's downsampling needs it."""
        return IMAGE_SIZE % self.size_factor != 0

    @property
    def model_size(self) -> int:
        """Side of the images the network sees (28, or 32 when padded)."""
        return 32 if self.pad else IMAGE_SIZE

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first bad field, its value and what is allowed."""

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        if self.dataset not in IMAGE_DATASETS:
            raise bad("dataset", f"one of {', '.join(IMAGE_DATASETS)}")
        if self.recipe not in RECIPES:
            raise bad("recipe", f"one of {', '.join(RECIPES)}")
        if self.net not in NETS:
            raise bad("net", f"one of {', '.join(NETS)}")
        if not isinstance(self.net_config, dict):
            raise bad("net_config", "a dict of network keyword arguments")
        if self.time not in TIMES:
            raise bad("time", f"one of {', '.join(TIMES)}")
        if self.coupling not in COUPLINGS:
            raise bad("coupling", f"one of {', '.join(COUPLINGS)}")
        if not _is_real(self.label_dropout) or not 0.0 <= self.label_dropout < 1.0:
            raise bad("label_dropout", "a number in [0, 1)")
        if self.label_dropout > 0 and not self.conditional:
            raise bad("label_dropout", "0 for an unconditional run (label dropout needs labels)")
        if not _is_int(self.batch_size) or self.batch_size < 2:
            raise bad("batch_size", "an integer >= 2")
        if not _is_real(self.lr) or self.lr <= 0:
            raise bad("lr", "a positive number")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a number >= 0")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an integer >= 0")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", "a positive number or None")
        if not _is_real(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "a number in [0, 1)")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if self.solver not in SOLVERS:
            raise bad("solver", f"one of {', '.join(SOLVERS)}")
        per = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[self.solver]
        if not _is_int(self.nfe) or self.nfe < 1 or self.nfe % per:
            raise bad("nfe", f"a positive multiple of {per} for the {self.solver} solver")
        if not _is_real(self.guidance):
            raise bad("guidance", "a finite number")
        if not self.conditional and self.guidance != 1.0:
            raise bad("guidance", "1 for an unconditional run (guidance needs labels)")
        if self.conditional and self.label_dropout == 0.0 and self.guidance != 1.0:
            raise bad("guidance", "1 when label_dropout is 0 (guidance needs a model trained with the null label)")
        if self.pad and 32 % self.size_factor:
            raise bad("net_config", f"a network whose downsampling factor ({self.size_factor}) divides 28 or 32")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PixelConfig":
        """Rebuild from ``to_dict()`` output; unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"a run config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


def make_config(dataset: str = "fashion-mnist", recipe: str = "default", **overrides: Any) -> PixelConfig:
    """The recipe's settings with ``overrides`` (None values are ignored).

    ``net="mlp"`` with the default recipe switches to :data:`NET_DEFAULTS` ["mlp"];
    ``net_config`` overrides are merged into the recipe's network settings.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    base = dict(RECIPES[recipe])
    over = {k: v for k, v in overrides.items() if v is not None}
    net = over.pop("net", base["net"])
    if net not in NETS:
        raise ValueError(f"unknown network {net!r}; choose one of {', '.join(NETS)}")
    if net != base["net"] or base["net_config"] is None:
        net_config = dict(NET_DEFAULTS[net])
    else:
        net_config = dict(base["net_config"])
    net_config.update(over.pop("net_config", {}) or {})
    base.update(net=net, net_config=net_config)
    if not over.get("conditional", False):  # no labels: no label dropout, no guidance
        base.update(label_dropout=0.0, guidance=1.0)
    base.update(over)
    return PixelConfig(dataset=dataset, recipe=recipe, **base)
