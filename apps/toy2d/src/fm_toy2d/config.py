"""The configuration of one fm-toy2d run: recipes, per-dataset budgets, validation, JSON.

A run is described by one :class:`RunConfig`; it is stored in ``RUN/config.json`` (under the
key ``"toy2d"``, beside ``"model"``: ``"fm"`` or ``"nf"``) and is all that ``sample`` and
``eval`` need besides the weights.

Two recipes (``--recipe``):

* ``default``: this project's recipe, chosen to meet the issue's targets in a 3-minute CPU
  budget: the residual SiLU MLP of fm-nets (128 wide, 3 blocks) with Fourier features of the
  input and sinusoidal time features; the batch-marginal ("stable target field") regression
  target of fm_core.FlowMatchingLoss, which removes most of the conditional target's variance
  for one [B, B] matrix product a step; uniform t (the checkerboard's sharp cell edges are made
  near t = 1, which logit-normal t rarely visits); AdamW with warmup and cosine decay, gradient
  clipping, EMA of the weights, batch 1,024; midpoint sampling. ``--coupling ot`` switches to
  exact minibatch OT with the conditional target.
* ``post``: the blog post "Flow matching for multi-modal density estimation and image
  generation": ``MLPVelocity.post_recipe`` (5 x 512 ReLU, raw-t time MLP), uniform t,
  independent coupling, batch 256, AdamW(lr 1e-3, torch's default weight decay 0.01), constant
  lr, no EMA (decay 0 makes the "EMA" the trained weights), no clipping, 2,000 steps, Euler.

Budgets are in optimizer steps (so that a run does the same work on any machine) and depend on
the dataset (:data:`DEFAULT_STEPS`); the numbers were measured on the project's 2-core CPU
(see the app's README).

Time convention everywhere: t = 0 is N(0, I) noise, t = 1 is data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fm_cli.argtypes import MAX_BATCH, MAX_NFE, MAX_SEED, MAX_STEPS, check_config_bounds
from fm_data.toy import TOY_DATASETS
from fm_train import StrictConfig, TrainConfig

__all__ = [
    "COUPLINGS",
    "DEFAULT_STEPS",
    "MODELS",
    "RECIPES",
    "RunConfig",
    "SOLVERS",
    "TARGETS",
    "TIMES",
    "make_config",
    "model_config_dict",
    "with_model_defaults",
]

MODELS = ("fm", "nf", "discrete")
#: Discrete runs (``--model discrete``, fm_toy2d.discrete): the mixture path's sources, kappa schedulers and
#: losses (== fm_discrete.SOURCES, KAPPA_SCHEDULERS, LOSSES; fm_cli.flags lists them for the command line).
SOURCES = ("mask", "uniform")
KAPPAS = ("linear", "polynomial", "cosine")
LOSSES = ("cross-entropy", "generalized-kl")
#: Lattice points per axis of a discrete run, at most.
MAX_LATTICE = 4096
RECIPE_NAMES = ("default", "post")
COUPLINGS = ("independent", "ot")
TARGETS = ("conditional", "batch-marginal")
TIMES = ("uniform", "logit-normal", "u-shaped")
SOLVERS = ("euler", "midpoint", "heun", "rk4")
#: Checkerboard cells per axis and dimensions at most (--cells, --dim and config.json alike).
MAX_GRID = 1000
MAX_DIM = 64
#: The command line's upper bounds (fm_cli.argtypes) for the same values read back from config.json.
BOUNDS = {"grid": MAX_GRID, "dim": MAX_DIM, "lattice": MAX_LATTICE, "steps": MAX_STEPS, "batch_size": MAX_BATCH, "ot_block": MAX_BATCH,
          "warmup_steps": MAX_STEPS, "seed": MAX_SEED, "nfe": MAX_NFE}  # fmt: skip

#: Training steps of the default recipe per dataset (the "default budget"): at most about
#: 3 minutes on an unloaded 2-core CPU (measured steps/s in the README).
DEFAULT_STEPS: dict[str, int] = {
    "checkerboard": 3800,
    "olympic-rings": 3000,
    "moons": 2000,
    "8gaussians": 2000,
    "spirals": 3000,
}

#: Every knob of a recipe; the CLI overrides some of them (coupling, time, steps, batch size).
RECIPES: dict[str, dict[str, Any]] = {
    "default": dict(
        net=dict(
            hidden=128,
            depth=3,
            time_dim=128,
            activation="silu",
            time_embedding="sinusoidal",
            residual=True,
            fourier_features=6,
        ),
        coupling="independent",
        target="batch-marginal",
        ot_block=256,
        time="uniform",
        batch_size=1024,
        lr=2e-3,
        weight_decay=0.0,
        schedule="cosine",
        warmup_steps=100,
        grad_clip=1.0,
        ema_decay=0.999,
        solver="midpoint",
        nfe=8,
    ),
    "post": dict(
        net=dict(
            hidden=512,
            depth=5,
            time_dim=128,
            activation="relu",
            time_embedding="raw",
            residual=False,
            fourier_features=0,
        ),
        coupling="independent",
        target="conditional",
        ot_block=256,
        time="uniform",
        batch_size=256,
        lr=1e-3,
        weight_decay=0.01,
        schedule="constant",
        warmup_steps=0,
        grad_clip=None,
        ema_decay=0.0,
        solver="euler",
        nfe=100,
        steps=2000,
    ),
}


@dataclass
class RunConfig(StrictConfig):
    """Everything that defines a fm-toy2d run (JSON-safe; see the module docstring).

    dataset/grid/dim: the toy data (grid and dim only for ``checkerboard``).
    conditional: train a class-conditional model (labels from ``sample_labeled``).
    model: ``"fm"`` (flow matching, :mod:`fm_toy2d.training`), ``"nf"`` (normalizing flow, ``fm_toy2d.nf``)
        or ``"discrete"`` (discrete flow matching on a lattice, ``fm_toy2d.discrete``).
    lattice, source, kappa, discrete_loss: discrete runs only: points per axis of the lattice over [-4, 4]^D,
        the mixture path's source ("mask" or "uniform") and kappa scheduler, the loss.
    net: keyword arguments of ``fm_nets.MLPVelocity`` besides dim and num_classes (nf: of ``build_flow``).
    coupling: ``"independent"`` or ``"ot"`` (exact OT inside blocks of ``ot_block`` points,
        within each class when conditional). time: the training-time sampler.
    steps or minutes, batch_size, lr, weight_decay, schedule, warmup_steps, grad_clip, ema_decay,
        seed, device: the training loop's settings, handed to fm-train by :meth:`train_config`
        (which also checks them). solver/nfe: the default sampler of the run.
    precision ("fp32", "bf16" or "auto", fm_train.precision) and compile (torch.compile): how the
        network runs; they may change on --resume.
    """

    dataset: str = "checkerboard"
    grid: int = 8
    dim: int = 2
    conditional: bool = False
    model: str = "fm"
    recipe: str = "default"
    net: dict[str, Any] = field(default_factory=dict)
    input_scale: float = 1.0
    coupling: str = "independent"
    target: str = "batch-marginal"
    ot_block: int = 256
    time: str = "uniform"
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    solver: str = "midpoint"
    nfe: int = 8
    precision: str = "fp32"
    compile: bool = False
    lattice: int = 64
    source: str = "mask"
    kappa: str = "linear"
    discrete_loss: str = "cross-entropy"

    # ------------------------------------------------------------------ derived
    @property
    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``fm_data.toy.get_toy`` for this dataset."""
        return {"grid": self.grid, "dim": self.dim} if self.dataset == "checkerboard" else {}

    @property
    def data_dim(self) -> int:
        return self.dim if self.dataset == "checkerboard" else 2

    def train_config(self, **overrides: Any) -> TrainConfig:
        """fm-train's TrainConfig of the run (AdamW, schedule, EMA, budget, device; a loss row every
        50 steps, a checkpoint every 2 minutes): the one place the training fields meet fm-train.
        ``overrides`` (``progress``, ``sample_every``, ...) are TrainConfig fields."""
        fields: dict[str, Any] = dict(
            steps=self.steps, minutes=self.minutes, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, schedule=self.schedule,
            grad_clip=self.grad_clip, ema_decay=self.ema_decay, seed=self.seed, device=self.device,
            precision=self.precision, compile=self.compile, log_every=50, ckpt_every=None, ckpt_minutes=2.0,
        )  # fmt: skip
        fields.update(overrides)
        try:
            return TrainConfig(**fields)
        except ValueError as e:  # name the field as this config does
            raise ValueError(str(e).replace(TrainConfig._field_prefix, "")) from None

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first bad field, its value and what is allowed."""
        self._check_choice("dataset", TOY_DATASETS)
        self._check_choice("model", MODELS)
        self._check_choice("recipe", RECIPE_NAMES)
        self._check_int("grid", 1)
        self._check_int("dim", 1)
        self._check_int("lattice", 2)
        self._check_choice("source", SOURCES)
        self._check_choice("kappa", KAPPAS)
        self._check_choice("discrete_loss", LOSSES)
        if self.dataset != "checkerboard" and self.dim != 2:
            raise self._invalid("dim", f"2 for {self.dataset} (only checkerboard has a --dim)")
        self._check_bool("conditional")
        self._check_choice("coupling", COUPLINGS)
        self._check_choice("target", TARGETS)
        if self.target == "batch-marginal" and self.coupling != "independent":
            raise ValueError(
                f"target='batch-marginal' needs coupling='independent' (got coupling={self.coupling!r}); "
                "with OT coupling use target='conditional'"
            )
        self._check_choice("time", TIMES)
        self._check_int("ot_block", 2)
        self._check_int("batch_size", 2)  # fm-train allows 1; a batch-marginal target needs a batch
        self._check_choice("solver", SOLVERS)
        self._check_int("nfe", 1)
        self._check_real("input_scale", 0, low_open=True, allowed="a positive number")
        if not isinstance(self.net, dict):
            raise self._invalid("net", "a dict of MLPVelocity keyword arguments")
        self.train_config()  # steps/minutes, lr, schedule, EMA, seed, device: fm-train's checks
        check_config_bounds(self, BOUNDS)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Rebuild from ``to_dict()`` output; unknown keys are an error naming them. Runs written
        before ``target`` existed used the conditional target."""
        if isinstance(data, dict) and "target" not in data:
            data = {**data, "target": "conditional"}
        return super().from_dict(data)


def make_config(dataset: str = "checkerboard", recipe: str = "default", **overrides: Any) -> RunConfig:
    """The recipe's settings for ``dataset``, with ``overrides`` (None values are ignored).

    ``net`` overrides are merged into the recipe's net (e.g. ``net={"hidden": 16}``). Without a
    ``steps``/``minutes`` override the budget is the recipe's (post: 2,000 steps) or
    :data:`DEFAULT_STEPS` of the dataset.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if dataset not in TOY_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(TOY_DATASETS)}")
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in RECIPES[recipe].items()}
    over = {k: v for k, v in overrides.items() if v is not None}
    net = base.pop("net")
    net.update(over.pop("net", {}) or {})
    if "steps" not in over and "minutes" not in over:
        base.setdefault("steps", DEFAULT_STEPS[dataset])
    else:
        base.pop("steps", None)
    if over.get("coupling") == "ot" and "target" not in over:
        over["target"] = "conditional"  # the batch-marginal target assumes independent coupling
    base.update(over)
    return RunConfig(dataset=dataset, recipe=recipe, net=net, **base)


def with_model_defaults(
    cfg: RunConfig | dict[str, Any], model: str, defaults: dict[str, Any], steps: dict[str, int]
) -> dict[str, Any]:
    """The config dict of a run of kind ``model`` ("nf", "discrete") with that kind's defaults applied.

    ``cfg`` is a RunConfig (taken as is, except an unset budget gets ``steps[dataset]``), or the CLI's
    dict: ``RunConfig.to_dict()`` plus ``"user_set"``, the fields given on the command line; the other
    fields of ``defaults`` get their default. A dict without ``"user_set"`` is taken as fully specified.
    The caller completes ``net`` and builds the RunConfig.
    """
    if isinstance(cfg, RunConfig):
        data, user_set = cfg.to_dict(), None
    else:
        data = dict(cfg)
        user_set = data.pop("user_set", None)
    data["model"] = model
    if user_set is not None:
        given = set(user_set)
        data.update({key: value for key, value in defaults.items() if key not in given})
    if data.get("steps") is None and data.get("minutes") is None:
        data["steps"] = steps[data.get("dataset", "checkerboard")]
    return data


def model_config_dict(dataset: str, model: str, **overrides: Any) -> dict[str, Any]:
    """The CLI-style dict of a ``model`` run for ``dataset`` (``to_dict()`` plus ``"user_set"``, the names
    of ``overrides`` that are not None; ``net`` as given) for :func:`with_model_defaults`."""
    over = {k: v for k, v in overrides.items() if v is not None}
    data = RunConfig(dataset=dataset, model=model, **{k: v for k, v in over.items() if k != "net"}).to_dict()
    data["net"] = over.get("net", {})
    data["user_set"] = sorted(over)
    return data
