"""Reflow (k-rectified flow, Liu et al. 2022, arXiv 2209.03003): the teacher's (noise, endpoint) pairs,
generated once into the run directory, and shuffled minibatches of them for training.

Time convention: t = 0 is the source (Gaussian noise x0), t = 1 is data. A pair is (x0, x1) with
x1 the teacher's ODE solution at t = 1 started from x0 (:func:`fm_core.sample`). Training a
student with plain flow matching on these fixed pairs (``FlowMatchingLoss()(model, x1, y, x0=x0)``
with the independent coupling) straightens the flow; repeating with the student as the next
teacher is k-rectified flow.

    pairs = generate_pairs(teacher, "runs/student/reflow", 200_000, (2,), method="midpoint", nfe=16, seed=0)
    batches = PairBatches(pairs, 256, seed=0)
    x0, x1, y = batches.batch(step)            # or: for x0, x1, y in batches: ...

Pairs are generated chunk by chunk into a :class:`fm_train.pairs.PairStore` (checksummed, atomic
chunk files); chunk k's noise comes from :func:`chunk_seed` (seed, k) alone, so a generation that
was interrupted resumes where it stopped and gives bit-identical pairs to one that was not (on the
same device and software).
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fm_core import ADAPTIVE_METHODS, FLOW_MAP, balanced_labels, draw_source, sample, steps_for_nfe
from fm_train.pairs import PairStore

from .progress import progress as _progress

__all__ = ["DEFAULT_CHUNK", "PairBatch", "PairBatches", "PairSet", "chunk_seed", "generate_pairs", "pair_settings"]

#: pairs per chunk file (and per call of fm_core.sample) unless told otherwise.
DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class PairSet:
    """The teacher's pairs: x0 [N, ...] source noise (t = 0), x1 [N, ...] the teacher's ODE endpoint
    (t = 1) from x0, y int64 [N] the labels they were sampled with (None: unconditional). CPU tensors."""

    x0: Tensor
    x1: Tensor
    y: Tensor | None = None

    def __post_init__(self) -> None:
        if not (torch.is_tensor(self.x0) and torch.is_tensor(self.x1)) or self.x0.shape != self.x1.shape:
            raise ValueError("x0 and x1 must be tensors of the same shape [N, ...]")
        if self.x0.ndim < 1 or self.x0.shape[0] == 0:
            raise ValueError(f"a pair set needs at least one pair [N, ...], got shape {list(self.x0.shape)}")
        if self.y is not None and (not torch.is_tensor(self.y) or tuple(self.y.shape) != (self.x0.shape[0],)):
            shape = list(self.y.shape) if torch.is_tensor(self.y) else type(self.y).__name__
            raise ValueError(f"y must be None or a label tensor of shape [N] = [{self.x0.shape[0]}], got {shape}")

    def __len__(self) -> int:
        return int(self.x0.shape[0])


def chunk_seed(seed: int, k: int) -> int:
    """The seed of chunk ``k``'s noise: the first 63 bits of sha256("fm-reflow:{seed}:{k}"). Depends
    on (seed, k) only, so any chunk can be (re)generated alone; distinct chunks get unrelated streams."""
    digest = hashlib.sha256(f"fm-reflow:{int(seed)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def pair_settings(
    *,
    shape: Sequence[int],
    method: str,
    nfe: int | None,
    seed: int,
    guidance: float,
    num_classes: int | None,
    classes: Sequence[int] | None,
    random_labels: bool,
    labels: Tensor | None,
    atol: float,
    rtol: float,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The settings a pair store records and checks on resume (everything the pairs depend on; the
    caller's ``extra``, e.g. the teacher's run and checkpoint step, under ``"teacher"``)."""
    out: dict[str, Any] = {
        "kind": "reflow pairs (x0 noise at t=0, x1 teacher endpoint at t=1)",
        "shape": [int(s) for s in shape],
        "method": str(method),
        "nfe": None if nfe is None else int(nfe),
        "seed": int(seed),
        "seed_rule": "chunk k: torch.Generator().manual_seed(chunk_seed(seed, k)); fm_core.draw_source order",
        "guidance": float(guidance),
        "num_classes": num_classes,
        "classes": None if classes is None else [int(c) for c in classes],
        "random_labels": bool(random_labels),
        "labels_sha256": None,
        "teacher": dict(extra) if extra is not None else None,
    }
    if labels is not None:
        lab = labels.detach().to("cpu", torch.int64).contiguous()
        out["labels_sha256"] = hashlib.sha256(lab.numpy().tobytes()).hexdigest()
    if method in ADAPTIVE_METHODS:
        out["atol"], out["rtol"] = float(atol), float(rtol)
    return out


def generate_pairs(
    model: Any,
    store_dir: str | Path,
    n: int,
    shape: Sequence[int],
    *,
    method: str = "midpoint",
    nfe: int | None = None,
    seed: int = 0,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    classes: Sequence[int] | None = None,
    random_labels: bool = False,
    guidance: float = 1.0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    chunk: int = DEFAULT_CHUNK,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> PairSet:
    """The teacher's ``n`` pairs (x0 noise at t = 0, x1 its ODE endpoint at t = 1), generated into
    ``store_dir`` (a :class:`fm_train.pairs.PairStore`) where missing, then loaded and checked.

    Args:
        model: the teacher, ``model(x, t, y=None) -> v`` (or a two-time model with
            ``method="flow-map"``), as :func:`fm_core.sample` takes it; put it in eval mode first.
        store_dir: the store's folder, e.g. ``RUN/reflow``. A store there begun with other settings
            (n, shape, method, nfe, seed, labels, guidance, tolerances, chunk or the caller's
            ``settings``) is refused with a ValueError naming its manifest; ``batch_size``,
            ``device`` and ``progress`` may differ between runs (keep them to resume bit-identically).
        n, shape: number of pairs and the shape of one sample, e.g. ``(2,)`` or ``(1, 28, 28)``.
        method, nfe, atol, rtol, guidance: the solver and classifier-free guidance scale
            (:func:`fm_core.sample`).
        seed: chunk k's noise (then random labels) is drawn from ``chunk_seed(seed, k)``.
        labels: int [n] labels to use; or ``num_classes`` with balanced labels over ``classes``
            (default all) across the whole set, or ``random_labels=True`` (drawn per chunk).
        chunk: pairs per chunk file and per sampling call; ``batch_size`` splits a chunk further.
        device: where the teacher runs (default: its parameters' device).
        progress: a tqdm bar over the pairs (on a terminal, after a few seconds).
        settings: what identifies the teacher (its run, checkpoint step, ...): stored under
            ``"teacher"`` and checked on resume like the rest.

    Returns:
        :class:`PairSet` on the CPU (x0, x1 float32 [n, *shape]; y int64 [n] or None).
    """
    n = _int("n", n, 1)
    chunk = _int("chunk", chunk, 1)
    seed = _int("seed", seed, 0)
    try:
        shape = tuple(_int("shape", s, 1) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a sequence of positive ints, got {shape!r}") from None
    if method != FLOW_MAP:
        steps_for_nfe(method, nfe)  # an unknown method, or an nfe it cannot take: fm_core's one-line error
    if num_classes is not None:
        num_classes = _int("num_classes", num_classes, 1)
    elif random_labels or float(guidance) != 1.0:
        what = "random_labels" if random_labels else f"guidance={float(guidance):g}"
        raise ValueError(f"{what} needs num_classes (the number of classes the teacher knows; the null label)")
    if labels is not None and (classes is not None or random_labels):
        raise ValueError("give either labels or classes/random_labels, not both")
    if classes is not None:
        if num_classes is None:
            raise ValueError("classes needs num_classes (the number of classes the model knows)")
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if not len(classes) or bad:
            raise ValueError(f"classes must be a non-empty list of class ids in [0, {num_classes}), got {classes!r}")
    if labels is not None and (
        not torch.is_tensor(labels)
        or tuple(labels.shape) != (n,)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        got = f"{labels.dtype} {list(labels.shape)}" if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape [n] = [{n}], got {got}")
    all_labels = labels
    if labels is None and num_classes is not None and not random_labels:
        all_labels = balanced_labels(n, range(num_classes) if classes is None else classes)
    conditional = all_labels is not None or random_labels
    fields: dict[str, tuple[Sequence[int], torch.dtype]] = {"x0": (shape, torch.float32), "x1": (shape, torch.float32)}
    if conditional:
        fields["y"] = ((), torch.int64)
    store = PairStore(store_dir)
    store.begin(
        n=n,
        chunk=chunk,
        fields=fields,
        settings=pair_settings(
            shape=shape,
            method=method,
            nfe=nfe,
            seed=seed,
            guidance=guidance,
            num_classes=num_classes,
            classes=classes,
            random_labels=random_labels,
            labels=labels,
            atol=atol,
            rtol=rtol,
            extra=settings,
        ),
    )
    todo = store.missing_chunks()
    bar = _progress(
        total=sum(len(store.chunk_rows(k)) for k in todo), desc="reflow pairs", unit="pair", quiet=not progress
    )
    try:
        for k in todo:
            rows = store.chunk_rows(k)
            g = torch.Generator().manual_seed(chunk_seed(seed, k))
            y_k = None if all_labels is None else all_labels[rows.start : rows.stop]
            x0, y_k = draw_source(
                len(rows), shape, generator=g, labels=y_k, num_classes=num_classes, random_labels=random_labels
            )
            res = sample(
                model,
                len(rows),
                shape,
                seed=chunk_seed(seed, k),
                labels=y_k,
                num_classes=num_classes,
                method=method,
                nfe=nfe,
                atol=atol,
                rtol=rtol,
                guidance=guidance,
                batch_size=batch_size,
                device=device,
            )
            tensors = {"x0": x0, "x1": res.x.float()}
            if y_k is not None:  # conditional: the labels the pairs were sampled with
                tensors["y"] = y_k
            store.write_chunk(k, **tensors)
            bar.update(len(rows))
    finally:
        bar.close()
    data = store.load()
    return PairSet(data["x0"], data["x1"], data.get("y"))


class PairBatch(NamedTuple):
    """One minibatch of pairs: x0 [B, ...] (t = 0), x1 [B, ...] (t = 1), y [B] or None."""

    x0: Tensor
    x1: Tensor
    y: Tensor | None


class PairBatches:
    """Shuffled minibatches of a :class:`PairSet`, epoch by epoch: every pair once per epoch (the
    last ``N mod batch_size`` of each epoch's order are left out), a new order each epoch.

    ``batch(step)`` (1-based) is a pure function of (seed, step): epoch e = (step - 1) // (N // B)
    uses the permutation ``torch.randperm(N, generator=torch.Generator().manual_seed(chunk_seed(seed, e)))``,
    so training resumes at any step with exactly the batches it would have had, and under DDP
    every process draws the same global batch (the loss picks its shard). Iterating yields
    ``batch(1), batch(2), ...`` without end; calling ``batches(step, generator)`` is
    ``batch(step)`` (the Trainer's ``batch_fn`` form; its generator is not used).

    Args:
        pairs: the pairs.
        batch_size: pairs per batch, at most N.
        seed: the seed of the epochs' orders.
        device: where the batches go (the pairs are moved there once).
    """

    def __init__(
        self, pairs: PairSet, batch_size: int, *, seed: int = 0, device: torch.device | str | None = None
    ) -> None:
        if not isinstance(pairs, PairSet):
            raise ValueError(f"pairs must be a PairSet, got {type(pairs).__name__}")
        self.batch_size = _int("batch_size", batch_size, 1)
        if self.batch_size > len(pairs):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(pairs)} pairs")
        self.seed = int(seed)
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.x0, self.x1 = pairs.x0.to(dev), pairs.x1.to(dev)
        self.y = None if pairs.y is None else pairs.y.to(dev)
        self.n = len(pairs)
        self.per_epoch = self.n // self.batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __repr__(self) -> str:
        return f"PairBatches(n={self.n}, batch_size={self.batch_size}, seed={self.seed})"

    def order(self, epoch: int) -> Tensor:
        """The permutation [N] of epoch ``epoch`` (0-based)."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(chunk_seed(self.seed, epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def batch(self, step: int) -> PairBatch:
        """Batch number ``step`` (1-based, as the Trainer counts)."""
        step = _int("step", step, 1)
        epoch, i = divmod(step - 1, self.per_epoch)
        idx = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size].to(self.x0.device)
        return PairBatch(self.x0[idx], self.x1[idx], None if self.y is None else self.y[idx])

    def __call__(self, step: int, generator: torch.Generator | None = None) -> PairBatch:
        return self.batch(step)

    def __iter__(self) -> Iterator[PairBatch]:
        step = 1
        while True:
            yield self.batch(step)
            step += 1
