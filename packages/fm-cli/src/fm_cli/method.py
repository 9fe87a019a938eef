r"""How a run trains (``--method fm|meanflow|reflow``) and what that changes for its command lines.

* ``fm``: flow matching (Lipman et al. 2023), a one-time velocity network ``model(x, t, y)``.
* ``meanflow``: a two-time network ``model(x, r, t, y)`` (the average velocity from r to t >= r,
  the current point x at the smaller time r; Geng et al. 2025, :class:`fm_core.MeanFlowLoss`),
  optionally fine-tuned from a flow-matching run (``--init-from RUN``: fm_nets.load_one_time_weights,
  so u(x, r, t) = v(x, r) at step 0), and with ``--distill`` the target takes that run's velocity in
  place of the conditional one (``MeanFlowLoss(velocity=...)``). It samples in one or a few steps (``--solver flow-map``, its
  default, :data:`DEFAULT_FLOW_MAP_NFE` steps) or with every ODE solver through u(x, t, t)
  (:class:`fm_core.InstantaneousVelocity`).
* ``reflow``: flow matching on (noise, teacher endpoint) pairs of a trained run (``--teacher RUN``;
  Liu et al. 2022, rectified flow), the pairs generated once into ``RUN/reflow/`` (fm_cli.reflow).

Time convention: t = 0 is N(0, I) noise, t = 1 is data.

A run's method is stored in ``RUN/config.json`` as ``"method": {"name": ..., ...}`` (:class:`MethodConfig`);
a config.json without the key (written before 0.3) is a flow-matching run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fm_train import StrictConfig

__all__ = [
    "DEFAULT_FLOW_MAP_NFE",
    "DEFAULT_TEACHER_NFE",
    "DEFAULT_TEACHER_SOLVER",
    "FLOW_MAP",
    "MAX_TRAIN_GUIDANCE",
    "METHODS",
    "METHOD_FLAGS",
    "REFLOW_DIR",
    "REFLOW_TIME",
    "STRAIGHTNESS_N",
    "TEACHER_SOLVERS",
    "MethodConfig",
    "TeacherError",
    "check_init_from",
    "check_teacher",
    "distill_teacher",
    "flow_map_sampler",
    "is_two_time",
    "method_entry",
    "method_flags",
    "method_for_command",
    "method_loss",
    "method_overrides",
    "read_method",
    "read_teacher",
    "resolve_run_sampler",
    "run_is_two_time",
    "sampler_straightness",
    "sampling_model",
    "teacher_pairs",
]

METHODS = ("fm", "meanflow", "reflow")
#: fm_core.sample's method for two-time models (fm_core.sampling.FLOW_MAP; kept here so fm_cli imports no torch).
FLOW_MAP = "flow-map"
#: Flow-map steps a two-time run samples with when no --nfe is given (one-step generation).
DEFAULT_FLOW_MAP_NFE = 1
#: How a reflow teacher integrates its pairs unless --teacher-solver / --teacher-nfe say otherwise.
DEFAULT_TEACHER_SOLVER, DEFAULT_TEACHER_NFE = "midpoint", 16
TEACHER_SOLVERS = ("euler", "midpoint", "heun", "rk4")
#: The largest --train-guidance (a sanity bound: the paper's best scales are 1-3).
MAX_TRAIN_GUIDANCE = 100.0
#: The training-time distribution of a reflow run unless --time says otherwise: U-shaped (Lee, Lin and Fanti
#: 2024), which weights t near 0, where a one-step sample's velocity is learnt (fm_core.UShapedTime).
REFLOW_TIME = "u-shaped"
#: Where a reflow run keeps its teacher's pairs (fm_cli.reflow, a fm_train.pairs.PairStore).
REFLOW_DIR = "reflow"

#: The flags of each method (argparse dest -> the method they belong to); given with another method they
#: are a usage error.
METHOD_FLAGS = {
    "equal_fraction": "meanflow",
    "init_from": "meanflow",
    "distill": "meanflow",
    "teacher": "reflow",
    "pairs": "reflow",
    "teacher_solver": "reflow",
    "teacher_nfe": "reflow",
    "from_scratch": "reflow",
    "train_guidance": "meanflow",
}


@dataclass
class MethodConfig(StrictConfig):
    """The training method of a run, as ``RUN/config.json`` stores it under ``"method"``.

    name: fm, meanflow or reflow. meanflow: ``equal_fraction`` (share of rows with r = t; None: the
    loss's default), ``init_from`` (a flow-matching run whose EMA weights start the network, or None),
    ``train_guidance`` (classifier-free guidance scale built into the target, MeanFlow's guidance in
    training: the run then samples guided at guidance 1, one evaluation a step; None: none), ``distill``
    (the target uses the ``init_from`` run's velocity, guided by its own null label with ``train_guidance``,
    instead of the path's conditional velocity: :class:`fm_core.MeanFlowLoss` ``velocity``).
    reflow: ``teacher`` (the run whose pairs are learnt), ``pairs`` (how many), ``teacher_solver`` and
    ``teacher_nfe`` (how the teacher integrates them), ``from_scratch`` (do not start from the teacher's weights).
    """

    name: str = "fm"
    equal_fraction: float | None = None
    init_from: str | None = None
    teacher: str | None = None
    pairs: int | None = None
    teacher_solver: str | None = None
    teacher_nfe: int | None = None
    from_scratch: bool = False
    train_guidance: float | None = None
    distill: bool = False

    _field_prefix: ClassVar[str] = "method."
    _config_label: ClassVar[str] = "method"

    def validate(self) -> None:
        self._check_choice("name", METHODS)
        self._check_real("equal_fraction", 0, 1, optional=True)
        self._check_real("train_guidance", 1, MAX_TRAIN_GUIDANCE, optional=True)
        self._check_bool("from_scratch")
        self._check_bool("distill")
        self._check_int("pairs", 1, optional=True)
        self._check_int("teacher_nfe", 1, optional=True)
        if self.teacher_solver is not None:
            self._check_choice("teacher_solver", TEACHER_SOLVERS)
        for name in ("init_from", "teacher"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise self._invalid(name, "a run directory (a non-empty string) or None")
        for name, method in METHOD_FLAGS.items():
            v = getattr(self, name)
            if method != self.name and v not in (None, False):
                raise self._invalid(name, f"None unless the method is {method}")
        if self.name == "reflow" and self.teacher is None:
            raise self._invalid("teacher", "a run directory for the reflow method")
        if self.distill and self.init_from is None:
            raise self._invalid("distill", "False unless init_from names the run to distil")

    @property
    def two_time(self) -> bool:
        """Whether the method trains a two-time (average-velocity) network."""
        return self.name == "meanflow"

    @property
    def teacher_run(self) -> str | None:
        """The run this one learns from: --init-from (meanflow) or --teacher (reflow); None for fm."""
        return self.init_from if self.name == "meanflow" else self.teacher if self.name == "reflow" else None

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ...}`` plus the fields that are set (None and False left out)."""
        return {k: v for k, v in super().to_dict().items() if k == "name" or v not in (None, False)}


# ----------------------------------------------------------------------------- config.json
def read_method(config: Mapping[str, Any], where: str = "config.json") -> MethodConfig:
    """The run's :class:`MethodConfig` from its config.json dict (no ``"method"``: flow matching);
    ValueError naming ``where`` for a bad section."""
    section = config.get("method")
    if section is None:
        return MethodConfig()
    try:
        return MethodConfig.from_dict(section)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{where}: bad "method" section: {e}') from None


def method_entry(method: MethodConfig, run_dir: str | Path, resume: bool) -> dict[str, Any]:
    """What a train call adds to fm-train's ``extra_config``: ``{"method": method.to_dict()}``, or nothing
    when ``resume`` continues a run whose config.json has no ``"method"`` (a flow-matching run written
    before the key existed: its checkpoints must keep matching)."""
    path = Path(run_dir) / "config.json"
    if resume and method.name == "fm" and path.is_file():
        try:
            if "method" not in json.loads(path.read_text()):
                return {}
        except (OSError, ValueError):
            pass  # training says what is wrong with the file
    return {"method": method.to_dict()}


def method_flags(config: Mapping[str, Any]) -> dict[str, Any]:
    """The train flags of a run's method (``{"method": "meanflow", "init_from": ...}``; {} for flow
    matching), from its config.json: for fm_cli.export.training_command's ``extra``."""
    method = read_method(config)
    if method.name == "fm":
        return {}
    return {"method": method.name, **{k: v for k, v in method.to_dict().items() if k != "name"}}


def is_two_time(model: Any) -> bool:
    """Whether ``model`` (or the network it wraps as ``.net``/``.module``) is a two-time network (``.two_time``)."""
    for _ in range(4):
        if getattr(model, "two_time", None) is not None:
            return bool(model.two_time)
        model = getattr(model, "net", None) or getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            return False
    return False


def run_is_two_time(config: Mapping[str, Any]) -> bool:
    """Whether a run's config.json describes a two-time network (``net.config.two_time``, or the meanflow method)."""
    net = config.get("net")
    if isinstance(net, dict) and isinstance(net.get("config"), dict) and net["config"].get("two_time"):
        return True
    method = config.get("method")
    return isinstance(method, dict) and method.get("name") == "meanflow"


class TeacherError(ValueError):
    """A ``--init-from`` or ``--teacher`` run that does not fit this run (one line; the train command exits 1)."""


def read_teacher(read: Callable[[Path], tuple[Any, dict[str, Any]]], run: str | Path, flag: str) -> dict[str, Any]:
    """The config.json of the run ``run`` given to ``flag`` through the app's ``read(run) -> (config,
    config.json)``; its ValueError becomes a :class:`TeacherError` naming the flag."""
    try:
        return read(Path(run))[1]
    except ValueError as e:
        raise TeacherError(f"{flag} {str(run)!r}: {' '.join(str(e).split())}") from None


def check_init_from(teacher: Mapping[str, Any], student_net: Mapping[str, Any], where: str) -> None:
    """:class:`TeacherError` (one line naming ``where``) unless ``teacher`` (a run's config.json) holds a
    one-time network with the settings of ``student_net`` (``{"name": ..., "config": ...}``, two_time ignored)."""
    check_teacher(teacher, student_net, where, "--init-from")


def check_teacher(
    teacher: Mapping[str, Any], student_net: Mapping[str, Any] | None, where: str, flag: str = "--teacher"
) -> None:
    """:class:`TeacherError` (one line naming ``where``) unless ``teacher`` (a run's config.json) is a
    one-time (fm or reflow) run and, when ``student_net`` is given (the student starts from its weights),
    its network has those settings (``{"name": ..., "config": ...}``; two_time ignored)."""
    if run_is_two_time(teacher):
        raise TeacherError(f"{where} is a two-time (meanflow) run; {flag} takes a flow-matching or reflow run")
    if student_net is None:
        return
    net = teacher.get("net")
    if not isinstance(net, dict) or not isinstance(net.get("config"), dict):
        raise TeacherError(f'{where}: its config.json has no "net" section')

    def plain(n: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": n.get("name"), "config": {k: v for k, v in n["config"].items() if k != "two_time"}}

    a, b = plain(net), plain(student_net)
    if a != b:
        diff = [k for k in sorted(set(a["config"]) | set(b["config"])) if a["config"].get(k) != b["config"].get(k)]
        what = (
            f"network {a['name']} vs {b['name']}"
            if a["name"] != b["name"]
            else ", ".join(f"{k}={a['config'].get(k)!r} (this run: {b['config'].get(k)!r})" for k in diff[:3])
        )
        hint = "" if flag == "--init-from" else " or --from-scratch"
        raise TeacherError(f"{where} has another network ({what}); give the same network flags{hint}")


# ----------------------------------------------------------------------------- command lines
def _json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it cannot be read (the command reports that file later)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _given(parser: argparse.ArgumentParser, args: argparse.Namespace, dest: str) -> bool:
    value = getattr(args, dest, None)
    return value is not None and value is not False and value != parser.get_default(dest)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, pairs_default: int) -> MethodConfig:
    name = getattr(args, "method", None) or "fm"
    wrong = [d for d, m in METHOD_FLAGS.items() if m != name and _given(parser, args, d)]
    if wrong:
        by: dict[str, list[str]] = {}
        for d in wrong:
            by.setdefault(METHOD_FLAGS[d], []).append(_flag(d))
        parser.error("; ".join(f"{', '.join(f)} only with --method {m}" for m, f in by.items()) + f", not {name}")
    if name == "reflow" and getattr(args, "teacher", None) is None:
        parser.error("--method reflow needs --teacher RUN (a trained flow-matching or reflow run)")
    if getattr(args, "distill", False) and getattr(args, "init_from", None) is None:
        parser.error("--distill needs --init-from RUN (the flow-matching run whose velocity the target uses)")
    for dest in ("init_from", "teacher"):
        run = getattr(args, dest, None)
        if run is not None and not (Path(run) / "config.json").is_file():
            parser.error(f"{_flag(dest)} {str(run)!r} is not a run directory (no config.json)")
        if run is not None and dest == "init_from" and run_is_two_time(_json(Path(run) / "config.json")):
            parser.error(f"--init-from {str(run)!r} is a two-time (meanflow) run; give a flow-matching run")
    solver, nfe = None, None
    if name == "reflow":
        from fm_core import evals_per_step

        solver = getattr(args, "teacher_solver", None) or DEFAULT_TEACHER_SOLVER
        nfe = getattr(args, "teacher_nfe", None) or DEFAULT_TEACHER_NFE
        per = evals_per_step(solver)
        if nfe % per:
            parser.error(f"--teacher-nfe {nfe} is not a multiple of {per}, the evaluations per step of {solver}")
    try:
        return MethodConfig(
            name=name,
            equal_fraction=getattr(args, "equal_fraction", None),
            init_from=None if getattr(args, "init_from", None) is None else str(args.init_from),
            teacher=None if getattr(args, "teacher", None) is None else str(args.teacher),
            pairs=(getattr(args, "pairs", None) or pairs_default) if name == "reflow" else None,
            teacher_solver=solver,
            teacher_nfe=nfe,
            from_scratch=bool(getattr(args, "from_scratch", False)),
            train_guidance=getattr(args, "train_guidance", None),
            distill=bool(getattr(args, "distill", False)),
        )
    except ValueError as e:
        parser.error(str(e))


def method_for_command(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, pairs_default: int
) -> MethodConfig:
    """The method of a train command (flags of fm_cli.flags.add_method), or a usage error (exit 2).

    A new run: ``--method`` (default fm) with its own flags only (``--equal-fraction``/``--init-from``
    with meanflow, ``--teacher``/``--pairs``/``--teacher-solver``/``--teacher-nfe``/``--from-scratch``
    with reflow, which needs ``--teacher``). On ``--resume`` of a run in ``--out``: the stored method
    (none stored: fm); method flags given that differ from it are a usage error.
    """
    out = getattr(args, "out", None)
    config_file = None if out is None else Path(out) / "config.json"
    if getattr(args, "resume", False) and config_file is not None and config_file.is_file():
        try:
            stored = read_method(json.loads(config_file.read_text()), str(config_file))
        except (OSError, ValueError):
            return _from_args(parser, args, pairs_default)  # the train command names what is wrong with the file
        diffs = []
        if _given(parser, args, "method") and args.method != stored.name:
            diffs.append(f"--method {args.method} (the run has {stored.name})")
        for dest in METHOD_FLAGS:
            if _given(parser, args, dest):
                have, given = getattr(stored, dest), getattr(args, dest)
                given = str(given) if isinstance(given, Path) else given
                if given != have:
                    diffs.append(f"{_flag(dest)} {given!r} (the run has {have!r})")
        if diffs:
            parser.error(f"--resume keeps the run's method; these differ: {'; '.join(diffs)}")
        return stored
    return _from_args(parser, args, pairs_default)


def method_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides a new run's ``--method`` implies: a meanflow run with ``--train-guidance`` samples
    at guidance 1 unless ``--guidance`` (and must be conditional, with label dropout); reflow learns pairs
    that carry its teacher's guidance, so its own default guidance is 1 (unless ``--guidance``); it trains
    with :data:`REFLOW_TIME` times unless ``--time``; its coupling must be independent (``--coupling ot``
    is a usage error: the pairs are the coupling)."""
    if getattr(args, "method", None) == "meanflow":
        return _train_guidance_overrides(parser, args)
    if getattr(args, "method", None) != "reflow":
        return {}
    if getattr(args, "coupling", None) not in (None, "independent"):
        parser.error(
            f"--coupling {args.coupling} does not apply to --method reflow (the teacher's pairs are the coupling)"
        )
    over: dict[str, Any] = {} if getattr(args, "guidance", None) is not None else {"guidance": 1.0}
    return over if getattr(args, "time", None) is not None else {**over, "time": REFLOW_TIME}


def _train_guidance_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """``--train-guidance`` (meanflow): a conditional run with label dropout (the null label is trained),
    sampled at guidance 1 unless ``--guidance`` (the guidance is in the network)."""
    if getattr(args, "train_guidance", None) is None:
        return {}
    if not getattr(args, "conditional", False):
        parser.error("--train-guidance needs --conditional (classifier-free guidance of a class-conditional run)")
    if getattr(args, "label_dropout", None) == 0:
        parser.error("--train-guidance needs --label-dropout > 0 (the null label it guides from is learnt by dropout)")
    return {} if getattr(args, "guidance", None) is not None else {"guidance": 1.0}


def resolve_run_sampler(
    parser: argparse.ArgumentParser,
    solver: str | None,
    nfe: int | None,
    *,
    two_time: bool,
    run_solver: str,
    run_nfe: int,
) -> tuple[str, int | None]:
    """(solver, nfe) of a sample/eval command: ``--solver flow-map`` (the default of a two-time run,
    with :data:`DEFAULT_FLOW_MAP_NFE` steps unless ``--nfe``) needs a two-time run (usage error
    otherwise); every other solver goes through fm_cli.flags.resolve_sampler with the run's defaults."""
    from .flags import resolve_sampler

    if solver == FLOW_MAP and not two_time:
        parser.error("--solver flow-map needs a two-time run (trained with --method meanflow); this run is one-time")
    if solver == FLOW_MAP or (solver is None and two_time):
        return FLOW_MAP, nfe if nfe is not None else DEFAULT_FLOW_MAP_NFE
    return resolve_sampler(parser, solver, nfe, run_solver=run_solver, run_nfe=run_nfe)


# ----------------------------------------------------------------------------- training and sampling
def method_loss(method: MethodConfig, *, velocity: Any = None, **loss_kwargs: Any) -> Callable[..., Any]:
    """fm-train's ``loss_fn(model, batch, ctx)`` of a run: ``batch`` is ``(x1, y)`` or, for reflow, a
    :class:`fm_cli.reflow.PairBatch` ``(x0, x1, y)`` (then the coupling must be independent). meanflow:
    :class:`fm_core.MeanFlowLoss` (its ``equal_fraction`` when set; ``velocity``, the frozen teacher of a
    ``distill`` run, from :func:`distill_teacher`, required exactly when the method distils); fm and
    reflow: :class:`fm_core.FlowMatchingLoss`. ``loss_kwargs`` (time_sampler, coupling, label_dropout,
    num_classes, ...) go to the loss. Noise and times come from ``ctx.generator``; under DDP the loss
    covers the rank's shard ``ctx.shard``."""
    from fm_core import FlowMatchingLoss, IndependentCoupling, MeanFlowLoss

    if (velocity is not None) != method.distill:
        raise ValueError("a teacher velocity is given exactly when the method distils (meanflow --distill)")
    if method.two_time:
        extra: dict[str, Any] = {} if method.equal_fraction is None else {"equal_fraction": method.equal_fraction}
        if method.train_guidance is not None:
            extra["guidance"] = method.train_guidance
        if velocity is not None:
            extra["velocity"] = velocity
        loss: Any = MeanFlowLoss(**loss_kwargs, **extra)
    else:
        loss = FlowMatchingLoss(**loss_kwargs)

    if method.name == "reflow" and not isinstance(loss.coupling, IndependentCoupling):
        raise ValueError(
            f"reflow trains on its teacher's pairs: the coupling must be independent, got {loss.coupling!r}"
        )

    def loss_fn(model: Any, batch: Any, ctx: Any) -> Any:
        if hasattr(batch, "x0"):  # fm_cli.reflow.PairBatch (x0, x1, y): the teacher's pairs
            return loss(model, batch.x1, batch.y, x0=batch.x0, generator=ctx.generator, shard=ctx.shard)
        x1, y = batch
        return loss(model, x1, y, generator=ctx.generator, shard=ctx.shard)

    loss_fn.loss = loss  # type: ignore[attr-defined]
    return loss_fn


def distill_teacher(load: Callable[[str, Any], Any], method: MethodConfig, device: Any) -> Any:
    """The frozen teacher of a ``distill`` run: ``load(method.init_from, device)`` (the app's EMA network of
    that run) in eval mode with gradients off, or None when the method does not distil. Loaded on every
    start, resumes included (only a new run copies its weights, see ``--init-from``)."""
    if not method.distill:
        return None
    assert method.init_from is not None  # MethodConfig.validate
    return load(method.init_from, device).eval().requires_grad_(False)


def flow_map_sampler(model: Any, nfe: int | None) -> tuple[str, int]:
    """``("flow-map", nfe)`` for :func:`fm_core.sample` with a two-time ``model`` (``nfe`` None:
    :data:`DEFAULT_FLOW_MAP_NFE` steps); ValueError for a one-time model."""
    if not is_two_time(model):
        raise ValueError("solver flow-map needs a two-time model (a run trained with --method meanflow)")
    return FLOW_MAP, nfe if nfe is not None else DEFAULT_FLOW_MAP_NFE


def sampling_model(model: Any, solver: str) -> Any:
    """What :func:`fm_core.sample` integrates with ``solver``: a two-time model as
    :class:`fm_core.InstantaneousVelocity` (u(x, t, t)) for an ODE solver, else ``model`` itself."""
    if solver != FLOW_MAP and is_two_time(model):
        from fm_core import InstantaneousVelocity

        return InstantaneousVelocity(model)
    return model


def teacher_pairs(
    teacher: Any,
    method: MethodConfig,
    run_dir: str | Path,
    shape: tuple[int, ...],
    *,
    seed: int,
    num_classes: int | None = None,
    classes: list[int] | None = None,
    guidance: float = 1.0,
    device: Any = None,
    progress: bool = False,
    teacher_step: int | None = None,
) -> Any:
    """The reflow run's pairs (:class:`fm_cli.reflow.PairSet`): ``method.pairs`` (noise, endpoint) pairs
    of ``teacher`` (a one-time network, eval mode) by ``method.teacher_solver`` with ``method.teacher_nfe``
    evaluations, balanced labels over ``classes`` for a conditional teacher (``num_classes``) at its
    ``guidance``, kept in ``RUN/reflow`` (:data:`REFLOW_DIR`): generated where missing, reused on resume
    (a store of other settings is refused). Under torchrun rank 0 generates them and the others load them."""
    from fm_train import dist_info

    from .reflow import generate_pairs

    def make() -> Any:
        return generate_pairs(
            teacher, Path(run_dir) / REFLOW_DIR, int(method.pairs or 1), shape, method=method.teacher_solver or
            DEFAULT_TEACHER_SOLVER, nfe=method.teacher_nfe or DEFAULT_TEACHER_NFE, seed=seed, num_classes=num_classes,
            classes=classes if num_classes is not None else None, guidance=guidance, device=device,
            progress=progress, settings={"run": method.teacher, "step": teacher_step},
        )  # fmt: skip

    info = dist_info()
    pairs = make() if info.is_main else None
    if info.world_size > 1:
        import torch.distributed

        torch.distributed.barrier()
        if pairs is None:
            pairs = make()  # complete now: loads and checks the chunks rank 0 wrote
    return pairs


#: Trajectories the eval commands measure the straightness on.
STRAIGHTNESS_N = 256


def sampler_straightness(
    model: Any,
    n: int,
    shape: tuple[int, ...],
    *,
    solver: str,
    nfe: int | None,
    seed: int = 0,
    labels: Any = None,
    num_classes: int | None = None,
    classes: list[int] | None = None,
    random_labels: bool = False,
    guidance: float = 1.0,
    device: Any = None,
) -> dict[str, Any]:
    """The straightness of ``model``'s flow along the sampler's own trajectories (fm_eval.straightness,
    trapezoid rule, Liu et al. 2022): ``n`` samples drawn as :func:`fm_core.sample` draws them (``seed``,
    the labels) with ``solver`` / ``nfe`` (flow-map for a two-time model), every state kept, and the
    instantaneous velocity (u(x, t, t) of a two-time model; guided with ``guidance``) compared with the
    straight displacement x1 - x0. Returns ``{"value", "normalised" (0 = straight), "n", "solver",
    "sampler_nfe", "nfe" (evaluations of the measure), "rule"}`` (JSON-safe)."""
    import torch

    from fm_core import CFGVelocity, sample
    from fm_eval import straightness

    velocity: Any = sampling_model(model, "euler")
    if float(guidance) != 1.0:
        if num_classes is None:
            raise ValueError(f"guidance={guidance:g} needs num_classes")
        velocity = CFGVelocity(velocity, float(guidance), num_classes)
    res = sample(sampling_model(model, solver), n, shape, seed=seed, labels=labels, num_classes=num_classes,
                 classes=classes, random_labels=random_labels, method=solver, nfe=nfe, guidance=guidance,
                 trajectory=n, device=device)  # fmt: skip
    assert res.trajectory is not None
    dev = torch.device(device) if device is not None else next(iter(model.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        s = straightness(velocity, res.trajectory.to(dev), res.times,
                         y=None if res.labels is None else res.labels.to(dev))  # fmt: skip
    return {
        "value": float(s.value), "normalised": float(s.normalised), "n": int(s.n), "solver": solver,
        "sampler_nfe": int(res.nfe), "nfe": int(s.nfe), "rule": s.rule,
    }  # fmt: skip
