"""Batched sampling from a velocity model: noise (t = 0) -> data (t = 1) with an ODE solver.

One function, :func:`sample`, for every use: noise from a seed or a generator, labels given,
balanced over classes or drawn at random, a fixed-step solver with a step count, an NFE or a
time grid, or an adaptive one, classifier-free guidance, chunking, an optional ``decode`` (a
VAE for latents, a conversion to uint8 images) and an optional trajectory of the first samples.

All noise (and random labels) is drawn up front on the CPU, so the samples do not depend on
``batch_size`` or on the device.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._internal import VelocityField
from .guidance import CFGVelocity
from .meanflow import flow_map_solve
from .solvers import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, solve_ode, steps_for_nfe

__all__ = ["FLOW_MAP", "SampleResult", "balanced_labels", "draw_source", "resolve_labels", "sample"]

#: the ``method`` of :func:`sample` for two-time models (:func:`fm_core.flow_map_solve`).
FLOW_MAP = "flow-map"


@dataclass
class SampleResult:
    """Result of :func:`sample`; every tensor is on the CPU.

    x: the N samples at t = 1 [N, ...], after ``decode`` when one was given (float32, or
        whatever ``decode`` returns, e.g. uint8 images).
    labels: int64 [N] labels the samples were drawn with, or None (unconditional).
    nfe: velocity evaluations per sample (a guided evaluation counts once, though it runs the
        model on 2B inputs); the largest over chunks (only adaptive methods differ by chunk).
    seconds: wall time of sampling (solving and decoding).
    times: the solver's time points [T], from 0 (noise) to 1 (data).
    trajectory: the first G samples at every entry of ``times`` [T, G, ...] (decoded frame by
        frame when ``decode`` is given), or None.
    method, guidance: the solver method and guidance scale used.
    """

    x: Tensor
    labels: Tensor | None
    nfe: int
    seconds: float
    times: Tensor
    trajectory: Tensor | None
    method: str
    guidance: float


def balanced_labels(n: int, classes: Sequence[int]) -> Tensor:
    """[n] int64 cycling through ``classes`` (c0, c1, ..., c_{k-1}, c0, ...): balanced to within one.

    Example:
        >>> balanced_labels(5, [3, 7]).tolist()
        [3, 7, 3, 7, 3]
    """
    c = torch.as_tensor(list(classes), dtype=torch.long)
    if c.ndim != 1 or c.numel() == 0:
        raise ValueError(f"classes must be a non-empty sequence of ints, got {classes!r}")
    return c[torch.arange(n) % len(c)]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for param in model.parameters():
            return param.device
        for buffer in model.buffers():
            return buffer.device
    return torch.device("cpu")


def resolve_labels(
    n: int,
    g: torch.Generator,
    labels: Tensor | None,
    num_classes: int | None,
    classes: Sequence[int] | None,
    random_labels: bool,
) -> Tensor | None:
    """The labels of :func:`sample` (and of fm_discrete's sampler): ``labels`` checked and moved to the
    CPU, else None without ``num_classes``, else ``torch.randint`` draws from ``g`` when
    ``random_labels``, else :func:`balanced_labels` over ``classes`` (default: all)."""
    if num_classes is not None:
        num_classes = _positive_int("num_classes", num_classes)
    if labels is not None:
        if classes is not None or random_labels:
            raise ValueError("give either labels or classes/random_labels, not both")
        if not torch.is_tensor(labels) or labels.shape != (n,):
            shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
            raise ValueError(f"labels must be an integer tensor of shape [n] = [{n}], got {shape}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must hold integer class labels, got dtype {labels.dtype}")
        labels = labels.detach().to(device="cpu", dtype=torch.long)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi > num_classes):
            top = "" if num_classes is None else f", at most num_classes = {num_classes} (the null label)"
            raise ValueError(f"labels must be >= 0{top}; got values in [{lo}, {hi}]")
        return labels
    if num_classes is None:
        if classes is not None or random_labels:
            raise ValueError("classes and random_labels need num_classes (the number of classes the model knows)")
        return None
    if random_labels:
        if classes is not None:
            raise ValueError("give either classes (balanced labels) or random_labels=True, not both")
        return torch.randint(0, num_classes, (n,), generator=g)
    chosen = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if not chosen or bad:
        raise ValueError(f"classes must be a non-empty list of class ids in [0, {num_classes}), got {classes!r}")
    return balanced_labels(n, chosen)


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a sequence of positive ints, got {shape!r}") from None
    if any(s < 1 for s in out):
        raise ValueError(f"shape must be a sequence of positive ints, got {shape!r}")
    return out


def draw_source(
    n: int,
    shape: Sequence[int],
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    classes: Sequence[int] | None = None,
    random_labels: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The start of :func:`sample` (t = 0): noise [n, *shape] and labels [n] (or None), on the CPU.

    The noise is ``torch.randn(n, *shape, generator=g)`` with ``g`` seeded by ``seed`` (or
    ``generator``, a CPU generator); then the labels as :func:`sample` documents them (random
    labels come from the same generator after the noise). Useful for a sampler that is not an ODE
    (a normalizing flow's inverse) but must start from the same draws as :func:`sample`.
    """
    n = _positive_int("n", n)
    shape = _shape(shape)
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (noise is drawn on the CPU), got {generator!r}")
    noise = torch.randn(n, *shape, generator=generator)
    return noise, resolve_labels(n, generator, labels, num_classes, classes, random_labels)


def sample(
    model: VelocityField,
    n: int,
    shape: Sequence[int],
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    classes: Sequence[int] | None = None,
    random_labels: bool = False,
    method: str = "euler",
    nfe: int | None = None,
    steps: int | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    guidance: float = 1.0,
    batch_size: int | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    trajectory: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SampleResult:
    """Draw ``n`` samples of shape ``shape`` by integrating ``model`` from t = 0 (noise) to t = 1 (data).

    Args:
        model: ``model(x [B, *shape], t [B], y [B]) -> v``; called as ``model(x, t)`` when there
            are no labels, so a module whose ``forward(x, t)`` takes none fits.
        n: number of samples.
        shape: shape of one sample, e.g. ``(2,)`` or ``(1, 28, 28)``.
        seed: seeds ``torch.Generator()`` (CPU) when no ``generator`` is given.
        generator: a CPU generator to draw from instead (``seed`` is then ignored).
        labels: int [n] labels to sample with (values in [0, num_classes], num_classes = null).
        num_classes: the number of classes of a conditional model. Without ``labels`` the labels
            are ``balanced_labels(n, classes or range(num_classes))``, or with
            ``random_labels=True`` uniform draws ``torch.randint(0, num_classes, (n,))``.
        classes: the class ids balanced labels cycle through (default: all).
        random_labels: draw labels at random (after the noise, from the same generator).
        method: ``euler``, ``midpoint``, ``heun``, ``rk4`` (fixed steps) or an adaptive method
            such as ``dopri5`` (see :func:`fm_core.solve_ode`); or ``flow-map`` for a two-time model
            ``model(x, r, t, y) -> u`` (average velocity, :func:`fm_core.flow_map_solve`: one
            evaluation per step, ``nfe=1`` is one-step generation). A two-time model goes through the
            ODE methods as ``fm_core.InstantaneousVelocity(model)``.
        nfe, steps, time_grid: at most one, for a fixed-step method: evaluations per sample (a
            multiple of the method's evaluations per step), a number of uniform steps, or explicit
            time points (default: :data:`fm_core.solvers.DEFAULT_STEPS` steps). An adaptive method
            takes neither ``nfe`` nor ``steps``; a ``time_grid`` there only sets the returned times.
        atol, rtol: tolerances of adaptive methods.
        guidance: classifier-free guidance scale w (:class:`fm_core.CFGVelocity`, null label
            ``num_classes``): 1 is the plain conditional model; any other value needs ``num_classes``.
        batch_size: samples per solver call (default: all n at once).
        decode: applied to each chunk of final samples, and to each trajectory frame, on
            ``device`` before the result moves to the CPU (e.g. a VAE decoder, a uint8 conversion).
        trajectory: keep the first ``trajectory`` samples at every time point (0: none).
        device: where the model runs (default: the device of the model's parameters, else CPU).
        progress: show a tqdm progress bar over the chunks (needs tqdm installed).

    Returns:
        :class:`SampleResult`. The noise is ``torch.randn(n, *shape, generator=g)`` drawn up front
        (then random labels), so sample i is the same for every ``batch_size`` and device. Runs
        under ``torch.inference_mode()``; the returned tensors are ordinary tensors.

    Example:
        >>> import torch
        >>> from fm_core import sample
        >>> res = sample(lambda x, t: -x, 8, (2,), method="rk4", nfe=40, seed=0)
        >>> res.x.shape, res.nfe, res.times.shape
        (torch.Size([8, 2]), 40, torch.Size([11]))
        >>> noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(res.x, noise * torch.exp(torch.tensor(-1.0)), atol=1e-5)  # x(1) = x(0) e^-1
        True
    """
    n = _positive_int("n", n)
    shape = _shape(shape)
    given = [k for k, v in (("nfe", nfe), ("steps", steps), ("time_grid", time_grid)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of nfe, steps and time_grid, got {' and '.join(given)}")
    flow_map = method == FLOW_MAP
    if flow_map:
        if nfe is not None:
            steps = _positive_int("nfe", nfe)  # one evaluation per flow-map step
    elif nfe is not None:  # checks the method too: unknown, or adaptive with an nfe, is a ValueError
        steps = steps_for_nfe(method, nfe)
    elif method in ADAPTIVE_METHODS and steps is not None:
        raise ValueError(
            f"steps={steps!r} cannot be used with the adaptive method {method!r} (it picks its own "
            f"steps from atol/rtol); use a fixed-step method ({', '.join(FIXED_METHODS)}) or drop steps"
        )
    elif method not in METHODS:
        steps_for_nfe(method, None)  # raises the solvers' "unknown ODE method" error
    batch_size = n if batch_size is None else _positive_int("batch_size", batch_size)
    if isinstance(trajectory, bool) or not isinstance(trajectory, numbers.Integral) or trajectory < 0:
        raise ValueError(f"trajectory must be a non-negative integer (samples to follow), got {trajectory!r}")
    guidance = float(guidance)
    noise, y_all = draw_source(
        n,
        shape,
        seed=seed,
        generator=generator,
        labels=labels,
        num_classes=num_classes,
        classes=classes,
        random_labels=random_labels,
    )
    velocity: Any = model
    if guidance != 1.0 and not flow_map:  # flow_map_solve guides u itself
        if num_classes is None:
            raise ValueError(
                f"guidance={guidance:g} needs num_classes (the null label of classifier-free "
                "guidance is num_classes); use guidance 1 for an unconditional model"
            )
        velocity = CFGVelocity(model, guidance, num_classes)
    device = _model_device(model) if device is None else torch.device(device)
    keep = min(int(trajectory), n)

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
        bar = tqdm(total=n, desc="sampling", unit="sample", leave=False)
    outs: list[Tensor] = []
    frames: list[Tensor] = []
    used, times = 0, None
    start_time = time.perf_counter()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x0 = noise[start : start + batch_size].to(device)
                y = None if y_all is None else y_all[start : start + batch_size].to(device)
                follow = max(0, min(keep - start, x0.shape[0]))
                if flow_map:
                    sol = flow_map_solve(
                        model,
                        x0,
                        steps=steps,
                        time_grid=time_grid,
                        y=y,
                        guidance=guidance,
                        num_classes=num_classes,
                        return_trajectory=follow > 0,
                    )
                else:
                    sol = solve_ode(
                        velocity,
                        x0,
                        method=method,
                        steps=steps,
                        time_grid=time_grid,
                        y=y,
                        atol=atol,
                        rtol=rtol,
                        return_trajectory=follow > 0,
                    )
                used, times = max(used, sol.nfe), sol.times
                x = sol.x.float()
                outs.append((x if decode is None else decode(x)).cpu())
                if follow:
                    tr = sol.trajectory[:, :follow].float()
                    frames.append(tr.cpu() if decode is None else torch.stack([decode(s).cpu() for s in tr]))
                if bar is not None:
                    bar.update(x0.shape[0])
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start_time
    # outside inference mode, so the results are ordinary tensors (usable with autograd, in place)
    return SampleResult(
        x=torch.cat(outs),
        labels=y_all,
        nfe=used,
        seconds=seconds,
        times=times.cpu().clone(),
        trajectory=torch.cat(frames, dim=1) if frames else None,
        method=method,
        guidance=guidance,
    )
