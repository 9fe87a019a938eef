"""What the scaling study (``fm-toy2d study``) trains: its settings (:class:`StudyConfig`), the
boards of its three sweeps, its runs (:class:`RunSpec`) and the columns of its two CSV files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fm_train import StrictConfig

__all__ = [
    "CELL_TARGET",
    "DEFAULT_BATCH",
    "DEFAULT_MAX_STEPS",
    "EVAL_COLUMNS",
    "FINISHED",
    "IN_SUPPORT_TARGET",
    "RECIPES",
    "RUN_COLUMNS",
    "RunSpec",
    "SCHEDULES",
    "STATUSES",
    "StudyConfig",
    "TARGET",
    "n_filled",
    "quick_config",
    "run_specs",
    "sweep_members",
]

IN_SUPPORT_TARGET = 0.95
CELL_TARGET = 0.8
#: The quality target as fm_eval.stats.steps_to_target reads it: {metric column: threshold}.
TARGET = {"in_support": IN_SUPPORT_TARGET, "min_cell_ratio": CELL_TARGET}
RECIPES = ("default", "post")
#: Step caps per recipe: the post's recipe reaches ~54% in filled cells on 8x8 after its own 2,000
#: steps, so its cap is set low and its runs are mostly censored ("not reached"). The default
#: recipe at a constant lr reached the 4x4 board at 2,500 steps and the 8x8 board at 4,750, and the
#: 3D board (grid 2, 4 cells) was at 94.9% at 6,000 (seed 0).
DEFAULT_MAX_STEPS = {"default": 8000, "post": 1000}
#: Batch sizes of the study: the recipes' own.
DEFAULT_BATCH = {"default": 1024, "post": 256}

EVAL_COLUMNS = (
    "run_id", "recipe", "grid", "dim", "n_filled", "seed", "batch_size", "max_steps", "step", "stage", "n_samples",
    "solver", "nfe", "in_support", "min_cell_ratio", "max_cell_ratio", "target_met", "seconds",
)  # fmt: skip
RUN_COLUMNS = (
    "run_id", "recipe", "grid", "dim", "n_filled", "seed", "batch_size", "max_steps", "status", "steps_to_target",
    "last_step", "seconds", "message",
)  # fmt: skip
#: Run statuses: reached the target; not reached within the cap; hopeless (stopped early, see
#: fm_toy2d.study_run.hopeless); stopped by the time budget; skipped (the budget was spent before
#: it started); error (training failed; message says why).
STATUSES = ("reached", "not-reached", "hopeless", "stopped", "skipped", "error")
FINISHED = ("reached", "not-reached", "hopeless")
#: Study learning-rate schedules: "constant" (after the recipe's warm-up) for every recipe, or
#: "recipe" (each recipe's own; a cosine decay then spans the cap).
SCHEDULES = ("constant", "recipe")
#: At most this many samples in one full evaluation.
MAX_EVAL = 2_000_000


def n_filled(grid: int, dim: int) -> int:
    """Filled cells of fm_data's Checkerboard(grid, dim): ceil(grid^dim / 2)."""
    return (grid**dim + 1) // 2


@dataclass
class StudyConfig(StrictConfig):
    """What the study trains (JSON-safe; stored in ``OUT/study.json``).

    grids: the modes sweep (dimension 2). dims: the dimension sweep (grid 2: 2^(D-1) filled
    cells). both_grids x both_dims: the joint sweep. Settings shared by sweeps train once.
    seeds: seeds 0..seeds-1. max_steps / batch_size: per recipe. budget_minutes: wall-clock
    budget of the whole study (runs not started by then are skipped, running ones stop at their
    next evaluation; the defaults need about 84 minutes of two cores in all, so the 55-minute
    default finishes about 41 of the 54 runs and ``--resume`` the rest). net: MLPVelocity
    overrides for every recipe (tests and --quick only). schedule: "constant" (every recipe's lr
    constant after its warm-up, so that steps to target does not depend on the cap) or "recipe".
    futility_rate: a run past half its cap stops as "hopeless" when even this gain in in-support
    per 1,000 steps would not bring it to the target by its cap (0 turns the rule off); see
    :func:`fm_toy2d.study_run.hopeless`. workers: processes, one torch thread each.
    """

    _config_label: ClassVar[str] = "study config"
    _key_noun: ClassVar[str] = "field"
    #: fields that change the numbers of a run; they must match to resume
    RESUME_MUST_MATCH: ClassVar[tuple[str, ...]] = (
        "max_steps", "batch_size", "eval_every", "per_cell", "min_eval", "screen_n", "net", "device", "schedule",
        "futility_rate",
    )  # fmt: skip

    recipes: tuple[str, ...] = RECIPES
    grids: tuple[int, ...] = (4, 6, 8, 12)
    dims: tuple[int, ...] = (2, 4, 8)
    both_grids: tuple[int, ...] = (2, 4)
    both_dims: tuple[int, ...] = (2, 3)
    seeds: int = 3
    max_steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_STEPS))
    batch_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH))
    eval_every: int = 250
    per_cell: int = 200
    min_eval: int = 4000
    screen_n: int = 500
    budget_minutes: float = 55.0
    workers: int = 2
    net: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    schedule: str = "constant"
    futility_rate: float = 0.05
    quick: bool = False

    def validate(self) -> None:
        """ValueError naming the first bad field, its value and what is allowed."""

        def ints(values: Any, low: int) -> bool:
            return all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values)

        if not self.recipes or any(r not in RECIPES for r in self.recipes):
            raise self._invalid("recipes", f"a non-empty subset of {', '.join(RECIPES)}")
        for name, low in (("grids", 2), ("dims", 1), ("both_grids", 2), ("both_dims", 1)):
            if not ints(getattr(self, name), low):
                raise self._invalid(name, f"integers >= {low}")
        if bool(self.both_grids) != bool(self.both_dims):
            raise ValueError("both_grids and both_dims must be both empty or both non-empty")
        if not (self.grids or self.dims or self.both_grids):
            raise ValueError("the study has no settings: give grids, dims or both_grids/both_dims")
        for name in ("seeds", "eval_every", "per_cell", "min_eval", "workers"):
            self._check_int(name, 1)
        self._check_int("screen_n", 0, allowed="an integer >= 0 (0: no screen)")
        for name, low in (("max_steps", 1), ("batch_size", 2)):
            d = getattr(self, name)
            if not isinstance(d, dict) or not ints(d.values(), low):
                raise self._invalid(name, f"{{recipe: integer >= {low}}}")
            missing = [r for r in self.recipes if r not in d]
            if missing:
                raise ValueError(f"{name} has no value for recipe(s) {', '.join(missing)}")
        self._check_choice("schedule", SCHEDULES)
        self._check_real("futility_rate", 0, allowed="a number >= 0 (0: never stop a run early)")
        self._check_real("budget_minutes", 0, low_open=True, allowed="a positive number")
        if not isinstance(self.net, dict):
            raise self._invalid("net", "a dict of MLPVelocity keyword arguments")
        if not isinstance(self.device, str) or not self.device.strip():
            raise self._invalid("device", "a device name such as cpu, cuda or auto")
        self._check_bool("quick")
        for s in self.settings():
            cells = n_filled(*s)
            if self.n_eval(cells) > MAX_EVAL:
                raise ValueError(
                    f"grid {s[0]} in {s[1]}D has {cells:,} filled cells: {self.per_cell} samples a cell is too many "
                    f"to evaluate (at most {MAX_EVAL:,} samples; keep n_filled <= {MAX_EVAL // self.per_cell:,})"
                )

    def settings(self) -> list[tuple[int, int]]:
        """Unique (grid, dim) settings of the three sweeps, by number of filled cells."""
        s = {(g, 2) for g in self.grids} | {(2, d) for d in self.dims}
        s |= {(g, d) for g in self.both_grids for d in self.both_dims}
        return sorted(s, key=lambda gd: (n_filled(*gd), gd[1], gd[0]))

    def n_eval(self, cells: int) -> int:
        """Samples of a full evaluation: each filled cell expects at least ``per_cell``."""
        return max(self.per_cell * cells, self.min_eval)


def quick_config(**overrides: Any) -> StudyConfig:
    """The reduced study of ``--quick`` (CI: well under a minute): three small boards (grid 4 in 2D,
    grid 2 in 2D and 3D), 3 seeds, caps of 100 / 40 steps, 32-wide nets, one process (spawning
    workers would pay torch's import again). It checks that the pipeline produces the files; its
    numbers mean little."""
    base = dict(
        grids=(4,), dims=(2, 3), both_grids=(), both_dims=(), seeds=3,
        max_steps={"default": 100, "post": 40}, batch_size={"default": 256, "post": 128},
        eval_every=25, per_cell=200, min_eval=1000, screen_n=300, budget_minutes=2.0,
        net={"hidden": 32, "depth": 2}, workers=1, futility_rate=0.0, quick=True,
    )  # fmt: skip
    base.update(overrides)
    return StudyConfig(**base)


@dataclass(frozen=True)
class RunSpec:
    """One run of the study: a recipe on the checkerboard (grid, dim) with one seed."""

    recipe: str
    grid: int
    dim: int
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.recipe}-g{self.grid}-d{self.dim}-s{self.seed}"

    @property
    def n_filled(self) -> int:
        return n_filled(self.grid, self.dim)


def run_specs(cfg: StudyConfig) -> list[RunSpec]:
    """Every run, seed-major (all settings of seed 0 first), so that a budget that runs out costs
    the last seeds rather than whole settings; recipes alternate."""
    return [RunSpec(r, g, d, s) for s in range(cfg.seeds) for (g, d) in cfg.settings() for r in cfg.recipes]


def sweep_members(cfg: StudyConfig) -> dict[str, set[tuple[int, int]]]:
    """(grid, dim) settings shown in each figure: modes = dimension 2 boards of the modes sweep;
    dims = every grid-2 board; both = the joint sweep's boards."""
    settings = set(cfg.settings())
    return {
        "modes": {(g, 2) for g in cfg.grids},
        "dims": {s for s in settings if s[0] == 2},
        "both": {(g, d) for g in cfg.both_grids for d in cfg.both_dims},
    }
