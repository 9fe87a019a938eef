"""What ``--method meanflow|reflow`` adds to an fm-toy2d training run (fm_cli.method): starting a two-time
MLP from a flow-matching run (``--init-from``) and the reflow pairs of a teacher run (``--teacher``).

Time convention: t = 0 is N(0, I) noise, t = 1 is data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from fm_cli.method import MethodConfig, TeacherError, check_init_from, check_teacher, teacher_pairs
from fm_cli.reflow import PairBatches
from fm_nets import load_one_time_weights
from fm_train import resolve_device

from .config import RunConfig
from .training import build_distribution, load_run, read_run

__all__ = ["init_from", "reflow_batches"]


def init_from(model: nn.Module, run: str | Path) -> None:
    """The EMA weights of the flow-matching run ``run`` (the same MLP) into the two-time ``model``."""
    where = f"--init-from {str(run)!r}"
    data = _teacher_config(run, "--init-from")
    check_init_from(data, {"name": "mlp", "config": model.config}, where)
    try:
        load_one_time_weights(model, load_run(run).model.state_dict())
    except ValueError as e:  # e.g. another --input-scale: the keys differ
        raise TeacherError(f"{where}: {' '.join(str(e).split())}") from None


def _teacher_config(run: str | Path, flag: str) -> dict[str, Any]:
    try:
        data, cfg = read_run(run)
    except ValueError as e:
        raise TeacherError(f"{flag} {str(run)!r}: {' '.join(str(e).split())}") from None
    if cfg.model != "fm":
        raise TeacherError(f"{flag} {str(run)!r} is a normalizing-flow run; give a flow-matching run")
    return data


def reflow_batches(
    model: nn.Module, cfg: RunConfig, method: MethodConfig, run_dir: str | Path, *, resume: bool = False
) -> PairBatches:
    """Reflow's ``batch_fn``: the ``method.teacher`` run's pairs (its EMA MLP, generated into RUN/reflow or
    reused) in shuffled minibatches; ``model`` starts from the teacher's weights unless
    ``method.from_scratch`` (or ``resume``). fm_cli.method.TeacherError for a teacher that does not fit."""
    where = f"--teacher {str(method.teacher)!r}"
    data = _teacher_config(method.teacher or "", "--teacher")
    check_teacher(data, None if method.from_scratch else {"name": "mlp", "config": model.config}, where)
    device = resolve_device(cfg.device)
    teacher = load_run(method.teacher or "", device=str(device))
    if teacher.config.data_dim != cfg.data_dim or teacher.num_classes != (
        build_distribution(cfg).num_classes if cfg.conditional else None
    ):
        raise TeacherError(f"{where} has other data (dimension or classes); train the student on the same data set")
    if not method.from_scratch and not resume:
        try:
            model.load_state_dict(teacher.model.state_dict())
        except RuntimeError as e:
            raise TeacherError(f"{where}: {str(e).splitlines()[0]}") from None
    pairs = teacher_pairs(teacher.model, method, run_dir, (cfg.data_dim,), seed=cfg.seed,
                          num_classes=teacher.num_classes, device=device, teacher_step=teacher.step)  # fmt: skip
    return PairBatches(pairs, cfg.batch_size, seed=cfg.seed, device=device)
