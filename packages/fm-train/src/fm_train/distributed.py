"""Multi-process training with PyTorch's DistributedDataParallel, launched by ``torchrun``.

How a run is split (the contract every app follows)::

    torchrun --standalone --nproc-per-node 2 -m your_app.cli train ...   # any train command built on the Trainer

- Every rank draws the same *global* batch and the same noise from the Trainer's generator
  (identical seeds and identical consumption on every rank), and trains on its own contiguous
  slice of it (``ctx.shard`` of the loss's StepContext, applied with ``fm_core.shard_slice`` after
  the noise is drawn): rank r of W takes rows [r B/W, (r+1) B/W). DDP averages the gradients,
  so a step of W processes is the step of one process on the whole batch, up to the order of
  floating-point sums. The global batch, the learning rate and the number of steps do
  not depend on W; a checkpoint written with W processes resumes with any other number.
- Only rank 0 writes files (checkpoints, loss.csv, pictures, metrics) and logs; all ranks
  train. Whether the other ranks' standard output is silenced is the command line's choice
  (``setup(quiet_others=True)``). Parameters and EMA stay identical on every rank (same gradients, same updates); the
  Trainer checks that at every checkpoint.
- Time-based decisions (a minutes budget, the cosine schedule over minutes, checkpoints every
  few minutes) use rank 0's clock, sent to every rank each step over a small CPU (gloo) group,
  so that all ranks stop and checkpoint at the same step.

Backends: NCCL when the device is CUDA, gloo on CPU. :func:`setup` reads torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without it,
training runs in one process as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "LAUNCH_NAMES",
    "barrier",
    "broadcast_float",
    "cleanup",
    "checks_files",
    "dist_info",
    "env_rank",
    "env_world_size",
    "launch_problem",
    "is_main_process",
    "launched_by_torchrun",
    "setup",
    "start_training",
]


@dataclass(frozen=True)
class DistInfo:
    """rank, world_size and local_rank of this process ((0, 1, 0) without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, world_size) when there is more than one process, else None."""
        return (self.rank, self.world_size) if self.world_size > 1 else None


_CONTROL_GROUP = None  # a gloo group for CPU scalars (rank 0's clock) whatever the training backend


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 for this process."""
    return env_world_size() > 1


def env_rank() -> int:
    """This process's global rank as the launcher set it (RANK; 0 without a launcher), usable
    before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def env_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 without a launcher)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


LAUNCH_NAMES = {"run_dir": "the run directory", "batch_size": "the batch size"}


def launch_problem(batch_size: int, run_dir_given: bool, names: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with this torchrun launch of a training command, before any work (None: nothing).

    Under torchrun the run directory must be given explicitly (each process would invent its own
    default name) and the global batch must split evenly over the processes. The message calls
    them "the run directory" and "the batch size"; a command line passes its own words in
    ``names`` (keys of :data:`LAUNCH_NAMES`), e.g. the flags that set them."""
    words = dict(LAUNCH_NAMES)
    if names:
        unknown = sorted(set(names) - set(LAUNCH_NAMES))
        if unknown:
            raise ValueError(f"unknown launch name(s) {', '.join(unknown)}; known: {', '.join(LAUNCH_NAMES)}")
        words.update(names)
    world = env_world_size()
    if world <= 1:
        return None
    if not run_dir_given:
        return (
            f"under torchrun give {words['run_dir']}: every process must write to, and read from, "
            "the same run directory"
        )
    if batch_size % world:
        return (
            f"{words['batch_size']} {batch_size} does not split evenly over {world} processes; the batch is global "
            f"(each process trains on batch/{world} of it): choose a multiple of {world}"
        )
    return None


def checks_files() -> bool:
    """Whether this process should check (and later write) the run directory: rank 0, or the only process."""
    return env_rank() == 0


def dist_info() -> DistInfo:
    """This process's place in the default process group (DistInfo() without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def is_main_process() -> bool:
    return dist_info().is_main


def setup(
    device: str | torch.device = "auto", timeout_minutes: float = 30.0, quiet_others: bool = False
) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun prepared (if any) and pick this rank's device.

    Returns (info, device). Without torchrun's environment this is ``(DistInfo(), resolve_device(device))``
    and nothing else happens. Under torchrun: CUDA ranks use ``cuda:LOCAL_RANK`` and NCCL (a
    ``device`` of "cuda:N" is refused: the launcher assigns GPUs); CPU ranks use gloo; with
    ``quiet_others`` (a command line's choice; off by default) the standard output of ranks other
    than 0 goes to /dev/null (one progress bar and one summary, not W; errors still reach
    stderr). Calling it twice is harmless.
    """
    from .devices import resolve_device

    if not launched_by_torchrun():
        return DistInfo(), resolve_device(device)
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run in one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is not None and str(device) not in ("auto", "cuda"):
            raise ValueError(
                f"device {str(device)!r}: under torchrun each rank uses cuda:LOCAL_RANK; "
                "use the device 'cuda' or 'auto'"
            )
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                "start at most that many processes per machine (torchrun's --nproc-per-node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"multi-process training runs on CUDA (NCCL) or CPU (gloo), not on {dev.type!r}")
    global _CONTROL_GROUP
    if not dist.is_initialized():
        extra: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes), **extra)
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    info = dist_info()
    if quiet_others and not info.is_main:
        import sys

        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    return info, dev


def start_training(
    batch_size: int,
    run_dir_given: bool,
    device: str | torch.device,
    prog: str,
    usage_error: Callable[[str], object],
    quiet_others: bool = False,
    names: Mapping[str, str] | None = None,
) -> DistInfo:
    """What a train command does before training: refuse a bad torchrun launch through
    ``usage_error`` (e.g. argparse's ``parser.error``, which exits 2) with :func:`launch_problem`'s
    message (``names`` passed on), join the process group (:func:`setup`, ``quiet_others`` passed
    on), and say how the batch is split. Returns this process's DistInfo (one process: DistInfo())."""
    problem = launch_problem(batch_size, run_dir_given, names)
    if problem:
        usage_error(problem)
        raise SystemExit(2)  # usage_error should not return
    info, _ = setup(device, quiet_others=quiet_others)
    if info.world_size > 1:
        print(
            f"{prog}: {info.world_size} processes (DDP), {batch_size // info.world_size} of the batch of "
            f"{batch_size} each",
            flush=True,
        )
    return info


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (end of a torchrun training command)."""
    global _CONTROL_GROUP
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()  # DDP wrappers left in reference cycles go now, while their process group still exists
        dist.destroy_process_group()
    _CONTROL_GROUP = None


def broadcast_float(value: float, src: int = 0) -> float:
    """``value`` of rank ``src`` on every rank (a CPU float64 over the gloo control group; no GPU sync)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    group = _CONTROL_GROUP
    if group is None and dist.get_backend() != "gloo":
        raise RuntimeError("broadcast_float needs fm_train.distributed.setup() (a gloo control group next to NCCL)")
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=src, group=group)  # type: ignore[arg-type]  # group.WORLD is a ProcessGroup here
    return float(t[0])
