"""The shared part of a ``train`` command: the run directory, ``--resume``, the budget, the call into
training under torchrun, one-line errors and the final line.

An app's train command reads, in order::

    run = choose_run_dir(parser, args.out, resume=args.resume, prefix="mnist", read_config=read_run_config)
    cfg = (stored config checked with resume_conflicts) if run.stored else (config from args)
    steps, minutes = resume_budget(parser, run, args.steps, args.minutes, default_steps=3000)
    tcfg = ...                                   # the app's TrainConfig
    return run_training("fm-pixel", parser, lambda: train(cfg, run.out, tcfg), out=run.out,
                        out_given=args.out is not None, batch_size=cfg.batch_size, device=tcfg.device,
                        threads=args.threads, errors=(DataError,))

Everything before ``run_training`` is a usage error (exit 2) that names the value; nothing has
been written yet.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

from .app import error, interrupted
from .flags import set_threads

__all__ = [
    "LAUNCH_FLAGS",
    "RunChoice",
    "TrainSummaryLike",
    "choose_run_dir",
    "default_run_dir",
    "nothing_left",
    "resume_budget",
    "release_run_locks",
    "resume_conflicts",
    "run_training",
    "trained_line",
]


#: The run-directory locks taken by choose_run_dir (released when the command ends: release_run_locks).
_HELD: list[Any] = []


def release_run_locks() -> None:
    """Give back the run-directory locks :func:`choose_run_dir` took (the command is over; a process
    that ends releases them anyway). run_training and fm_cli.run_cli call it when the command ends."""
    while _HELD:
        _HELD.pop().release()


#: The flags fm-train's torchrun launch check names in its messages.
LAUNCH_FLAGS = {"run_dir": "--out", "batch_size": "--batch-size"}


def default_run_dir(prefix: str, root: str | Path = "runs") -> Path:
    """``ROOT/PREFIX-YYYYmmdd-HHMMSS-XXXX``: the start time plus four random hex digits, so two runs
    started in the same second get different directories."""
    return Path(root) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass
class RunChoice:
    """The run directory of a train command: ``out``, and ``stored`` (its config.json as a dict) when
    ``--resume`` continues a run that exists, else None."""

    out: Path
    stored: dict[str, Any] | None = None


def choose_run_dir(
    parser: argparse.ArgumentParser,
    out: Path | None,
    *,
    resume: bool,
    prefix: str,
    read_config: Callable[[Path], dict[str, Any]] | None = None,
    require_checkpoint: bool = False,
) -> RunChoice:
    """``--out`` and ``--resume`` checked before any work.

    ``--resume`` needs ``--out``; with ``require_checkpoint`` (the image apps) ``--out`` must hold a
    checkpoint, else a usage error says so (without it, ``--resume`` of nothing starts the run); without
    ``--out`` the run goes to :func:`default_run_dir` (``prefix``).
    ``--out`` must be a directory if it exists; holding a run (a checkpoint or config.json), it needs
    ``--resume`` (checked by rank 0 only under torchrun: the other ranks would see the directory rank
    0 starts writing). With ``--resume`` and a config.json there, ``read_config(out)`` gives
    :attr:`RunChoice.stored` (its ValueError is a usage error naming ``--out``). The run directory's lock
    (fm_train.lock_run) is taken here, before any data loads, and held until the process ends: a second
    process given the same ``--out`` gets a usage error naming the pid that holds it (until the command
    ends: :func:`release_run_locks`).
    """
    from fm_train.distributed import checks_files

    if resume and out is None:
        parser.error("--resume needs --out, the run directory to continue")
    out = Path(out) if out is not None else default_run_dir(prefix)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a directory")
    if resume and require_checkpoint and checks_files() and not out.exists():
        parser.error(f"--out {str(out)!r} does not exist: there is no run to resume (leave out --resume to start one)")
    if checks_files():  # one writer per run directory, from before the data loads to the process's end
        from fm_train import RunLockedError, lock_run

        try:
            lock = lock_run(out)
        except RunLockedError as e:
            parser.error(f"--out: {e}")
        except OSError as e:
            parser.error(f"--out {str(out)!r} cannot be written: {e.strerror or e}")
        _HELD.append(lock)
    if resume and (out / "config.json").is_file():
        choice = RunChoice(out)
        if read_config is not None:
            try:
                choice = RunChoice(out, read_config(out))
            except ValueError as e:
                parser.error(f"--out {str(out)!r}: {e}")
        _require_checkpoint(parser, out, require_checkpoint)
        return choice
    if resume:
        _require_checkpoint(parser, out, require_checkpoint)
    if not resume and checks_files() and ((out / "checkpoint").exists() or (out / "config.json").exists()):
        parser.error(
            f"--out {str(out)!r} already holds a run; pass --resume to continue it or choose another directory"
        )
    return RunChoice(out)


def _require_checkpoint(parser: argparse.ArgumentParser, out: Path, required: bool) -> None:
    from fm_train.distributed import checks_files

    # as sample and eval see it: a checkpoint directory (training says what is wrong with a broken one)
    has = (out / "checkpoint").exists() or (out / "checkpoint.old").exists()
    if required and checks_files() and not has:
        parser.error(
            f"--out {str(out)!r} holds no checkpoint to resume from (the run stopped before its first one); "
            "delete the directory or choose another --out to start over"
        )


def resume_conflicts(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    stored: Any,
    fields: Mapping[str, str],
    fixed: Sequence[str] = (),
) -> None:
    """Usage error when ``--resume`` is given options that disagree with the stored run.

    ``fields`` maps an argparse dest to the attribute of ``stored`` (the run's config) it sets (a
    dotted name such as ``"train.lr"`` reaches into a nested config); a value given (not None) that
    differs is named with both values. ``fixed`` are dests that cannot
    change at all (the network's shape); giving any of them is refused.
    """
    diffs = []
    for dest, field in fields.items():
        given, have = getattr(args, dest, None), attrgetter(field)(stored)
        if given is not None and given != have:
            diffs.append(f"--{dest.replace('_', '-')} {given!r} (the run has {have!r})")
    net_given = [dest for dest in fixed if getattr(args, dest, None) is not None]
    if net_given:
        names = ", ".join(f"--{d.replace('_', '-')}" for d in net_given)
        diffs.append(f"network options {names} (the run's network is fixed)")
    if diffs:
        parser.error(f"--resume keeps the run's settings; these differ: {'; '.join(diffs)}")


def resume_budget(
    parser: argparse.ArgumentParser, run: RunChoice, steps: int | None, minutes: float | None, *, default_steps: int
) -> tuple[int | None, float | None]:
    """(steps, minutes) to train: as given; else, on ``--resume``, the stored run's budget (its
    ``"train"`` section); else ``default_steps``."""
    if steps is not None or minutes is not None:
        return steps, minutes
    if run.stored is None:
        return default_steps, None
    section = run.stored.get("train")
    if not isinstance(section, dict):
        parser.error(f'--out {str(run.out)!r}: {run.out / "config.json"}: bad "train" section: expected a JSON object')
    return section.get("steps"), section.get("minutes")


def nothing_left(run: RunChoice, steps: int | None, minutes: float | None) -> str | None:
    """On ``--resume``: the line to print instead of training when the run's checkpoint has used the
    budget (``steps`` optimizer steps, or ``minutes`` of training time) already; else None (also
    when there is no readable checkpoint: training then says what is wrong with it)."""
    if run.stored is None:
        return None
    from fm_train import CheckpointError, find_checkpoint, load_checkpoint, read_json

    try:
        if steps is not None:
            found = find_checkpoint(run.out)
            step = read_json(found / "config.json").get("step") if found is not None else None
            if isinstance(step, int) and step >= steps:
                return (
                    f"{run.out}: the run has trained {step} of {steps} steps; nothing left to do "
                    "(raise --steps to continue)"
                )
        elif minutes is not None:
            state = load_checkpoint(run.out).train_state or {}
            seconds = state.get("elapsed")
            if isinstance(seconds, float) and seconds >= minutes * 60:
                return (
                    f"{run.out}: the run has trained {seconds / 60:.2f} of {minutes:g} minutes; nothing left to do "
                    "(raise --minutes to continue)"
                )
    except CheckpointError:
        return None
    return None


class _ResultLike(Protocol):
    steps: int
    steps_this_call: int
    seconds: float
    final_loss: float | None


class TrainSummaryLike(Protocol):
    """What an app's training returns: fm-train's ``TrainResult`` as ``result``, throughput, device."""

    @property
    def result(self) -> _ResultLike: ...

    @property
    def images_per_s(self) -> float: ...

    @property
    def device(self) -> str: ...


def trained_line(summary: TrainSummaryLike, out: str | Path) -> str:
    """``trained N steps (M now, S s, R images/s on DEVICE), final loss L; run in OUT``."""
    r = summary.result
    loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "n/a"
    return (
        f"trained {r.steps} steps ({r.steps_this_call} now, {r.seconds:.0f} s, {summary.images_per_s:.0f} images/s "
        f"on {summary.device}), final loss {loss}; run in {out}"
    )


def run_training(
    prog: str,
    parser: argparse.ArgumentParser,
    train: Callable[[], TrainSummaryLike],
    *,
    out: Path,
    out_given: bool,
    batch_size: int,
    device: str,
    threads: int | None = None,
    errors: tuple[type[BaseException], ...] = (),
    command: str = "train",
    report: Callable[[Any], str] | None = None,
) -> int:
    """Run ``train()`` as the end of a train command; returns the exit status.

    Sets ``--threads``; ``fm_train.distributed.start_training`` refuses a bad torchrun launch (a
    usage error naming ``--out`` / ``--batch-size``), joins the process group and silences the
    standard output of ranks other than 0; the process group is left however training ends.
    ``TrainingDivergedError``, ``CheckpointError`` and ``errors`` (e.g. fm-data's ``DataError``)
    become one line ``PROG COMMAND: error: ...`` (status 1); SIGINT (Ctrl-C) and SIGTERM stop training
    after the current step with a checkpoint and one line with the step and how to continue (status
    130 / 143; fm_train.signals). On success prints ``report(summary)``, by default :func:`trained_line`.
    """
    from fm_train import (
        CheckpointError,
        RunLockedError,
        TrainingDivergedError,
        TrainingInterrupted,
        distributed,
        raise_on_signals,
    )

    set_threads(threads)
    caught: tuple[type[BaseException], ...] = (TrainingDivergedError, CheckpointError, RunLockedError, *errors)
    try:
        with raise_on_signals():  # SIGTERM too: one line and 143, not a silent death
            distributed.start_training(
                batch_size, out_given, device, f"{prog} {command}", parser.error, quiet_others=True, names=LAUNCH_FLAGS
            )
            summary = train()
    except caught as e:
        return error(prog, command, str(e))
    except TrainingInterrupted as e:  # a checkpoint was written at the step (or the previous one kept)
        return interrupted(prog, command, out if e.checkpoint is not None else None, code=e.exit_code, what=str(e))
    except KeyboardInterrupt as e:
        return interrupted(prog, command, out, code=getattr(e, "exit_code", 130))
    finally:
        distributed.cleanup()
        release_run_locks()
    print(report(summary) if report is not None else trained_line(summary, out), flush=True)
    return 0
