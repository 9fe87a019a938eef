"""The configuration the image apps (fm-pixel, fm-latentgen) share, and how they store it.

:class:`ImageTrainConfig` is fm-train's ``TrainConfig`` with the image apps' cadence;
:class:`ImageRunConfig` holds what every image flow-matching run has (data set, classes,
conditioning, time sampler, coupling, label dropout, the default sampler) and embeds the run's
``train: ImageTrainConfig``; an app's config subclasses it and adds its network.
:func:`build_config` builds one from a flat recipe dict (the one place the TrainConfig is built).

``RUN/config.json`` of an image run (layout :data:`CONFIG_LAYOUT`)::

    {"format": "fm-train-run", "train": {TrainConfig}, "app": APP, "layout": 2,
     SECTION: {the app config without "train"}, "net": {...}, ...}

Time convention: t = 0 is N(0, I) noise, t = 1 is data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from fm_core import evals_per_step, fit_nfe
from fm_core.solvers import FIXED_METHODS
from fm_train import RunDir, StrictConfig, TrainConfig

from ..argtypes import MAX_BATCH, MAX_NFE, MAX_SEED, MAX_STEPS, check_config_bounds

__all__ = [
    "CONFIG_LAYOUT",
    "COUPLINGS",
    "SOLVERS",
    "TIMES",
    "ImageRunConfig",
    "ImageTrainConfig",
    "build_config",
    "check_network",
    "config_section",
    "field_path",
    "from_recipe",
    "read_run",
]

#: The layout of config.json that this version writes and reads (fm-pixel and fm-latentgen 0.2.0).
CONFIG_LAYOUT = 2
TIMES = ("uniform", "logit-normal", "u-shaped")
COUPLINGS = ("independent", "ot")  # ot: exact minibatch OT within each class
SOLVERS = FIXED_METHODS  # a run's default solver (sample/eval also take the adaptive dopri5)

C = TypeVar("C", bound=StrictConfig)


@dataclass
class ImageTrainConfig(TrainConfig):
    """fm-train's TrainConfig with the image apps' cadence: a loss row every 25 steps and a
    checkpoint every 2 minutes (none by step count)."""

    log_every: int = 25
    ckpt_minutes: float | None = 2.0

    def validate(self) -> None:
        self._check_real("lr", 0, low_open=True, allowed="a positive number")  # the words of --lr
        super().validate()
        check_config_bounds(self, TRAIN_BOUNDS)


_TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(ImageTrainConfig))

#: The command line's upper bounds (fm_cli.argtypes) for the training fields read back from config.json.
TRAIN_BOUNDS = {"steps": MAX_STEPS, "batch_size": MAX_BATCH, "warmup_steps": MAX_STEPS, "seed": MAX_SEED,
                "log_every": MAX_STEPS, "ckpt_every": MAX_STEPS, "sample_every": MAX_STEPS}  # fmt: skip


@dataclass
class ImageRunConfig(StrictConfig):
    """What every image flow-matching run has (JSON-safe; subclasses add their network).

    An app binds it to its data (fm-data, which fm-cli does not import) with three class
    attributes: ``datasets`` (the names ``dataset`` may take), ``class_names`` (data set -> its
    class names; their number is the number of classes K) and ``parse_classes`` (a staticmethod:
    a class list as given, e.g. "3,5" -> sorted ids; ValueError naming a bad one).

    dataset: one of ``datasets``; classes: train on these class ids only (None: all).
    conditional: class-conditional model (labels 0..K-1, null label K for guidance).
    time: training-time sampler; coupling: "independent" or "ot" (exact OT within each class).
    label_dropout: probability of the null label in training (needed for guidance != 1).
    solver / nfe / guidance: the run's default sampler. train: the optimisation (fm-train).
    """

    dataset: str = "fashion-mnist"
    classes: list[int] | None = None
    conditional: bool = False
    time: str = "logit-normal"
    coupling: str = "independent"
    label_dropout: float = 0.0
    solver: str = "euler"
    nfe: int = 10
    guidance: float = 1.0
    train: ImageTrainConfig = field(default_factory=ImageTrainConfig)

    datasets: ClassVar[tuple[str, ...]] = ()
    class_names: ClassVar[Mapping[str, Sequence[str]]] = {}

    @staticmethod
    def parse_classes(value: Any) -> list[int] | None:
        """The app's class-list parser (bind fm-data's ``parse_classes``); unbound: as given."""
        return value

    def __post_init__(self) -> None:
        if self.classes is not None:
            self.classes = self.parse_classes(self.classes)
        super().__post_init__()

    @property
    def names(self) -> Sequence[str]:
        """The class names of the run's data set (index = class id)."""
        return self.class_names[self.dataset]

    @property
    def num_classes(self) -> int | None:
        """Label classes of the network (K = 10 here, with null label K) or None when unconditional."""
        return len(self.names) if self.conditional else None

    @property
    def sample_classes(self) -> list[int]:
        """The classes a conditional run samples by default (the trained ones)."""
        return list(self.classes) if self.classes is not None else list(range(len(self.names)))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, its value and what is allowed."""
        unbound = "a data set of the app's (none is bound: set datasets on the config class)"
        self._check_choice("dataset", self.datasets, allowed=None if self.datasets else unbound)
        self._check_bool("conditional")
        self._check_choice("time", TIMES)
        self._check_choice("coupling", COUPLINGS)
        self._check_real("label_dropout", 0, 1, high_open=True)
        if self.label_dropout > 0 and not self.conditional:
            raise self._invalid("label_dropout", "0 for an unconditional run (label dropout needs labels)")
        self._check_choice("solver", SOLVERS)
        per = evals_per_step(self.solver)
        self._check_int("nfe", 1, allowed=f"a positive multiple of {per} for the {self.solver} solver")
        if self.nfe % per:
            raise self._invalid("nfe", f"a positive multiple of {per} for the {self.solver} solver")
        check_config_bounds(self, {"nfe": MAX_NFE})
        self._check_real("guidance")
        if not self.conditional and self.guidance != 1.0:
            raise self._invalid("guidance", "1 for an unconditional run (guidance needs labels)")
        if self.conditional and self.label_dropout == 0.0 and self.guidance != 1.0:
            raise self._invalid(
                "guidance", "1 when label_dropout is 0 (guidance needs a model trained with the null label)"
            )


#: The most parameters (estimated from the widths and depths) a network of an image run may have: the
#: command line's bounds, applied to config.json too (1e8 float32 weights and AdamW's moments: ~1.6 GB).
MAX_NET_PARAMS = 100_000_000


@functools.lru_cache(maxsize=64)
def _net_problem(build: Callable[..., Any], name: str, config_json: str) -> str | None:
    try:
        build(name, **json.loads(config_json))
    except (ValueError, TypeError, KeyError, AssertionError, ZeroDivisionError) as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


def check_network(
    cfg: StrictConfig,
    name: str,
    net_config: dict[str, Any],
    estimate: Callable[[], float],
    build: Callable[..., Any],
) -> None:
    """Refuse (``cfg``'s one-line ValueError on ``net_config``), before any data loads, a network larger
    than :data:`MAX_NET_PARAMS` (``estimate()``, an upper bound from the settings) or one that
    ``build(name, **net_config)`` (the app's ``fm_nets.build_net``; fm-cli does not import fm-nets)
    refuses to build (built once per process and setting on the CPU: tenths of a second)."""
    try:
        n = estimate()
    except (TypeError, ValueError, KeyError, OverflowError):
        raise cfg._invalid("net_config", f"keyword arguments of the {name} network") from None
    if n > MAX_NET_PARAMS:
        raise cfg._invalid("net_config", f"a network of at most about {MAX_NET_PARAMS:.0e} parameters (~{n:.1e})")
    try:
        key = json.dumps(net_config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise cfg._invalid("net_config", "JSON values") from None
    problem = _net_problem(build, name, key)
    if problem is not None:
        raise cfg._invalid("net_config", f"settings the {name} network accepts ({problem})")


def build_config(cls: type[C], fields: dict[str, Any]) -> C:
    """``cls`` (a StrictConfig with a ``train: ImageTrainConfig`` field) from one flat dict: the
    TrainConfig fields (batch_size, lr, ...) go to ``train``, the rest to ``cls``. Unknown keys
    are a ValueError naming them; a bad value one naming the field."""
    train = ImageTrainConfig(**{k: v for k, v in fields.items() if k in _TRAIN_FIELDS})
    return cls.from_dict({**{k: v for k, v in fields.items() if k not in _TRAIN_FIELDS}, "train": train})


def from_recipe(cls: type[C], recipe: dict[str, Any], overrides: dict[str, Any]) -> C:
    """``cls`` from a recipe (a flat dict, see :func:`build_config`) and ``overrides`` (None values
    ignored). An unconditional run gets no label dropout and guidance 1; a conditional one with
    ``label_dropout=0`` and no ``guidance`` gets guidance 1 (guidance needs the null label); a
    ``solver`` without ``nfe`` keeps the recipe's NFE rounded down to that solver's steps."""
    fields = dict(recipe)
    over = {k: v for k, v in overrides.items() if v is not None}
    if not over.get("conditional", False):
        fields.update(label_dropout=0.0, guidance=1.0)
    elif over.get("label_dropout") == 0.0 and "guidance" not in over:
        fields["guidance"] = 1.0
    if "solver" in over and "nfe" not in over and over["solver"] in SOLVERS and "nfe" in fields:
        fields["nfe"] = fit_nfe(over["solver"], fields["nfe"])
    return build_config(cls, {**fields, **over})


def field_path(name: str) -> str:
    """Where a flat field name of :func:`build_config` lives in the config: ``"lr"`` -> ``"train.lr"``,
    ``"nfe"`` -> ``"nfe"`` (for fm_cli.train.resume_conflicts)."""
    return f"train.{name}" if name in _TRAIN_FIELDS else name


def config_section(cfg: StrictConfig) -> dict[str, Any]:
    """The app's section of config.json: ``cfg.to_dict()`` without ``train`` (fm-train stores that)."""
    out = cfg.to_dict()
    out.pop("train", None)
    return out


def read_run(run_dir: str | Path, app: str, section: str, cls: type[C]) -> tuple[C, dict[str, Any]]:
    """(the config of ``section`` with the run's ``train`` embedded, the whole config.json) of an
    ``app`` run; ValueError with one line naming config.json for a missing, foreign, older or
    broken one."""
    run = RunDir(run_dir)
    data = run.read_config(app=app, section=section)
    path = run.config_path
    if data.get("layout") != CONFIG_LAYOUT:
        raise ValueError(
            f"{path}: written by {app} before 0.2.0 (config layout {data.get('layout', 1)}, this version "
            f"reads layout {CONFIG_LAYOUT}); train the run again with this version"
        )
    try:
        train = ImageTrainConfig.from_dict(data.get("train"))
    except (ValueError, TypeError) as e:
        raise ValueError(f'{path}: bad "train" section: {e}') from None
    part = data[section]
    try:
        cfg = cls.from_dict({**part, "train": train} if isinstance(part, dict) else part)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{path}: bad "{section}" section: {e}') from None
    return cfg, data
