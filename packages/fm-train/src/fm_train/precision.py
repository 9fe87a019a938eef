"""Which floating-point precision a run trains in: float32, or bf16 autocast where it pays.

``precision`` is ``"fp32"`` (everything float32), ``"bf16"`` (the forward pass and the loss under
``torch.autocast(device, dtype=torch.bfloat16)``; weights, gradients, optimizer state, EMA and the
loss value stay float32) or ``"auto"``: :func:`resolve_precision` times a few forward+backward
passes of the actual network on a copy of it in both precisions and keeps bf16 only when it is at
least ``margin`` (default 10%) faster. Whether bf16 pays depends on the machine: on a CPU with
AVX512-BF16 or AMX a bf16 matrix product runs about 4x faster than a float32 one; on an AVX2-only
CPU it runs 10-20x slower (it is emulated); on a recent GPU it is much faster. Before timing the
network, a 256x256 matrix product in both dtypes screens out the hopeless case (bf16 more than 2x
slower), so that ``auto`` never spends seconds on one emulated bf16 step.

Sampling follows the run's choice (:func:`sampling_precision`): a fixed-step solver's velocity calls
run under the same autocast while the solver state stays float32 (the state is float32 noise and
each update ``x + h * v`` promotes to float32); adaptive solvers always evaluate in float32, since
bf16 rounding of the velocity (about 0.4%) would make their error control shrink the steps.

    choice = resolve_precision("auto", model, lambda m: loss_fn(m, batch), "cpu", items_per_step=64)
    print(choice.line())      # precision auto -> fp32: bf16 ... (fp32 820 items/s, bf16 610 items/s)
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .devices import autocast

__all__ = [
    "BF16_MARGIN",
    "PRECISIONS",
    "PrecisionChoice",
    "check_precision",
    "matmul_gflops",
    "precision_autocast",
    "resolve_precision",
    "sampling_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")
#: ``auto`` keeps bf16 only when its measured rate is at least (1 + BF16_MARGIN) times float32's.
BF16_MARGIN = 0.10
#: The matrix-product screen: bf16 slower than float32 by more than this factor is not timed further.
_SCREEN_FACTOR = 2.0


def check_precision(precision: Any, name: str = "precision") -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`, else a ``ValueError`` naming it."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{name}={precision!r} is invalid: must be one of {', '.join(PRECISIONS)}")
    return precision


@dataclass
class PrecisionChoice:
    """What :func:`resolve_precision` decided.

    requested  "auto", "fp32" or "bf16" (what the run asked for)
    chosen     "fp32" or "bf16" (what it trains in)
    rates      items/s (images or points) of a forward+backward pass per precision timed, e.g.
               {"fp32": 820.0, "bf16": 1050.0}; empty when nothing was timed
    seconds    wall time spent deciding (0 when nothing was measured)
    reason     one sentence: why this precision
    device     the device type it was decided for ("cpu", "cuda", "mps")
    matmul_gflops  the screen's 256x256 matrix-product GFLOP/s per dtype (empty when not run)
    """

    requested: str
    chosen: str
    rates: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""
    device: str = "cpu"
    matmul_gflops: dict[str, float] = field(default_factory=dict)

    @property
    def bf16(self) -> bool:
        """Whether the run trains under bf16 autocast."""
        return self.chosen == "bf16"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (metrics.json's ``"precision"`` section), rates rounded to 0.1 item/s."""
        d = asdict(self)
        d["rates"] = {k: round(v, 1) for k, v in self.rates.items()}
        d["matmul_gflops"] = {k: round(v, 2) for k, v in self.matmul_gflops.items()}
        d["seconds"] = round(self.seconds, 3)
        d["margin"] = BF16_MARGIN
        return d

    def line(self) -> str:
        """The one log line: ``precision auto -> fp32 on cpu: REASON (fp32 820 items/s, bf16 610 items/s; 1.4 s)``."""
        rates = ", ".join(f"{k} {v:.0f} items/s" for k, v in self.rates.items())
        timing = f" ({rates}; {self.seconds:.1f} s)" if rates else ""
        return f"precision {self.requested} -> {self.chosen} on {self.device}: {self.reason}{timing}"


def precision_autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The context the forward pass runs in: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r} is invalid here: must be fp32 or bf16 (resolve 'auto' first)")
    return autocast(device, precision == "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(
    device: torch.device | str, dtype: torch.dtype, n: int = 256, seconds: float = 0.05, max_reps: int = 1000
) -> float:
    """GFLOP/s of an ``n`` x ``n`` matrix product in ``dtype`` on ``device`` (2 n^3 FLOPs each), timed
    for about ``seconds`` after one warm-up product (at least one timed product)."""
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or reps >= max_reps:
            break
    return 2.0 * n**3 * reps / max(elapsed, 1e-12) / 1e9


@contextlib.contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    """The global RNGs (CPU, and the device's) as they were before: measuring consumes no randomness."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type="cuda"):
        yield


def resolve_precision(
    requested: str,
    model: nn.Module,
    loss_of: Callable[[nn.Module], Tensor],
    device: torch.device | str,
    *,
    items_per_step: int = 1,
    margin: float = BF16_MARGIN,
    max_seconds: float = 1.5,
    warmup: int = 1,
    min_steps: int = 2,
    screen: bool = True,
    timer: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """The precision a run trains in (see the module docstring).

    ``"fp32"`` and ``"bf16"`` are returned as asked, nothing measured. ``"auto"`` on a device without
    bf16 autocast gives fp32; otherwise, after the matrix-product screen, it times forward+backward
    passes of ``loss_of(copy)`` (``loss_of(m) -> 0-d loss`` of one fixed batch with network ``m``;
    ``copy`` is a deep copy of ``model``, so ``model``'s weights and gradients are untouched and the
    global RNGs are restored afterwards) in both precisions, alternating, ``warmup`` untimed passes
    each, then at least ``min_steps`` timed ones each until ``max_seconds`` of timed passes are spent.
    The optimizer step is left out (float32 in both). bf16 is chosen when its rate (``items_per_step``
    per pass) is at least ``1 + margin`` times float32's.
    """
    requested = check_precision(requested)
    device = torch.device(device)
    if requested != "auto":
        return PrecisionChoice(requested, requested, reason="as asked", device=device.type)
    if device.type not in ("cuda", "cpu", "mps"):
        return PrecisionChoice("auto", "fp32", reason=f"no bf16 autocast on {device.type}", device=device.type)
    t_start = timer()
    gflops: dict[str, float] = {}
    if screen:
        gflops = {"fp32": matmul_gflops(device, torch.float32), "bf16": matmul_gflops(device, torch.bfloat16)}
        if gflops["bf16"] * _SCREEN_FACTOR < gflops["fp32"]:
            return PrecisionChoice(
                "auto",
                "fp32",
                seconds=timer() - t_start,
                reason=(
                    f"bf16 matrix products run at {gflops['bf16']:.1f} GFLOP/s against {gflops['fp32']:.1f} in "
                    "float32 on this machine, so the network was not timed in bf16"
                ),
                device=device.type,
                matmul_gflops=gflops,
            )
    rates = _time_precisions(model, loss_of, device, items_per_step, max_seconds, warmup, min_steps, timer)
    gain = rates["bf16"] / max(rates["fp32"], 1e-12) - 1.0
    if gain >= margin:
        chosen, reason = "bf16", f"bf16 is {100 * gain:.0f}% faster (at least {100 * margin:.0f}% needed)"
    elif gain >= 0:
        chosen, reason = "fp32", f"bf16 is only {100 * gain:.0f}% faster ({100 * margin:.0f}% needed)"
    else:
        chosen, reason = "fp32", f"bf16 is {100 * -gain:.0f}% slower"
    return PrecisionChoice(
        "auto", chosen, rates=rates, seconds=timer() - t_start, reason=reason, device=device.type, matmul_gflops=gflops
    )


def _time_precisions(
    model: nn.Module,
    loss_of: Callable[[nn.Module], Tensor],
    device: torch.device,
    items_per_step: int,
    max_seconds: float,
    warmup: int,
    min_steps: int,
    timer: Callable[[], float],
) -> dict[str, float]:
    """items/s of a forward+backward pass of ``loss_of`` on a copy of ``model``, per precision."""
    net = copy.deepcopy(model)
    net.train()

    def one(precision: str) -> None:
        with precision_autocast(device, precision):
            loss = loss_of(net)
        loss.float().backward()
        for p in net.parameters():
            p.grad = None

    spent = {"fp32": 0.0, "bf16": 0.0}
    steps = {"fp32": 0, "bf16": 0}
    with _rng_kept(device):
        for _ in range(warmup):
            for prec in spent:
                one(prec)
        while min(steps.values()) < min_steps or sum(spent.values()) < max_seconds:
            for prec in spent:
                _sync(device)
                t0 = timer()
                one(prec)
                _sync(device)
                spent[prec] += timer() - t0
                steps[prec] += 1
            if min(steps.values()) >= 1000:
                break
    return {p: items_per_step * steps[p] / max(spent[p], 1e-12) for p in spent}


def sampling_precision(run_dir: str | Path, device: torch.device | str) -> str:
    """The precision to sample a run with on ``device``: the run's ``train.precision`` (config.json)
    when it is fp32 or bf16; for ``auto`` the choice recorded in metrics.json's ``"precision"``
    section when it was made for this device type, else fp32 (a choice measured on another kind
    of device says nothing about this one). Old runs with ``train.bf16`` true sample in bf16.
    Anything unreadable gives fp32."""
    from .rundir import RunDir

    run = RunDir(run_dir)
    try:
        train = run.read_config().get("train") or {}
        requested = train.get("precision") or ("bf16" if train.get("bf16") is True else "fp32")
        if requested in ("fp32", "bf16"):
            return requested
        rec = run.read_metrics().get("precision") or {}
    except (ValueError, AttributeError):
        return "fp32"
    if isinstance(rec, dict) and rec.get("chosen") == "bf16" and rec.get("device") == torch.device(device).type:
        return "bf16"
    return "fp32"
