"""Sampling (noise -> data) and encoding (data -> noise) with a trained velocity field.

Time convention: t = 0 is N(0, I) noise, t = 1 is data. :func:`sample_points` integrates from
t = 0 to 1 with fm_core's ``solve_ode``; :func:`encode` integrates from 1 to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from fm_core.solvers import ADAPTIVE_METHODS, nfe_to_steps, solve_ode

__all__ = ["SampleResult", "sample_points", "encode", "draw_labels", "steps_for"]

Velocity = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass
class SampleResult:
    """x [N, D] float32 samples (t = 1), y [N] int64 labels or None, the NFE used, and optionally
    the trajectory [T, N, D] at the solver's ``times`` [T] (times[0] = 0 noise, times[-1] = 1 data)."""

    x: Tensor
    y: Tensor | None
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None


def steps_for(solver: str, nfe: int | None) -> int | None:
    """Steps of a fixed-step ``solver`` for ``nfe`` evaluations (fm_core.nfe_to_steps; ValueError when
    nfe is not a multiple of the evaluations per step). None for adaptive solvers / no nfe."""
    if nfe is None or solver in ADAPTIVE_METHODS:
        if nfe is not None:
            raise ValueError(f"--nfe cannot be used with the adaptive solver {solver!r} (it picks its own steps)")
        return None
    return nfe_to_steps(solver, nfe)


def draw_labels(n: int, num_classes: int | None, label: int | None, generator: torch.Generator) -> Tensor | None:
    """Labels for conditional sampling: ``label`` for all n, or uniform over the classes; None when unconditional."""
    if num_classes is None:
        if label is not None:
            raise ValueError(f"label {label!r} given, but the model is unconditional")
        return None
    if label is not None:
        if not 0 <= int(label) < num_classes:
            raise ValueError(f"label {label!r} is out of range: the model has classes 0..{num_classes - 1}")
        return torch.full((n,), int(label), dtype=torch.long)
    return torch.randint(0, num_classes, (n,), generator=generator)


@torch.no_grad()
def sample_points(
    velocity: Velocity,
    n: int,
    dim: int,
    *,
    solver: str = "midpoint",
    steps: int | None = None,
    num_classes: int | None = None,
    label: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    return_trajectory: bool = False,
    batch: int = 50_000,
) -> SampleResult:
    """Draw n samples: x0 ~ N(0, I) from a CPU generator seeded with ``seed`` (same numbers on any
    device), labels by :func:`draw_labels`, then integrate t = 0 -> 1 in batches of ``batch``."""
    g = torch.Generator().manual_seed(int(seed))
    x0 = torch.randn(n, dim, generator=g)
    y = draw_labels(n, num_classes, label, g)
    xs, trajs, nfe, times = [], [], 0, None
    for start in range(0, n, batch):
        xb = x0[start : start + batch].to(device)
        yb = None if y is None else y[start : start + batch].to(device)
        sol = solve_ode(velocity, xb, method=solver, steps=steps, y=yb, return_trajectory=return_trajectory)
        xs.append(sol.x.float().cpu())
        if return_trajectory:
            trajs.append(sol.trajectory.float().cpu())
        nfe, times = sol.nfe, sol.times.cpu()
    x = torch.cat(xs)
    traj = torch.cat(trajs, dim=1) if return_trajectory else None
    return SampleResult(x=x, y=y, nfe=nfe, times=times, trajectory=traj)


@torch.no_grad()
def encode(
    velocity: Velocity,
    x1: Tensor,
    y: Tensor | None = None,
    *,
    solver: str = "rk4",
    steps: int | None = 50,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, int]:
    """Encode data x1 [N, D] to noise codes z [N, D] by integrating t = 1 -> 0; returns (z, nfe)."""
    sol = solve_ode(velocity, x1.to(device), method=solver, steps=steps, t0=1.0, t1=0.0,
                    y=None if y is None else y.to(device))
    return sol.x.float().cpu(), sol.nfe


@torch.no_grad()
def decode(
    velocity: Velocity,
    z: Tensor,
    y: Tensor | None = None,
    *,
    solver: str = "rk4",
    steps: int | None = 50,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, int]:
    """Decode noise codes z [N, D] to data by integrating t = 0 -> 1; returns (x, nfe)."""
    sol = solve_ode(velocity, z.to(device), method=solver, steps=steps, t0=0.0, t1=1.0,
                    y=None if y is None else y.to(device))
    return sol.x.float().cpu(), sol.nfe
