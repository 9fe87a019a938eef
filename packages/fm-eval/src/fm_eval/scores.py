"""Score reports for image sets, ready for a run's metrics.json: generated samples
(:func:`image_scores`) and an autoencoder's reconstructions (:func:`reconstruction_scores`).

Both combine this package's classifier-feature FID (:mod:`fm_eval.fid`) with the classifier's
predictions (:mod:`fm_eval.classifier`) and state what each number was computed on (sample
counts, reference split and classes). Values are rounded for people: FID and ratios to 4
decimals, MSE to 5, PSNR to 2. FID is biased upwards at small n: compare equal counts only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fm_data.images import find_dataset_dir, load_images, to_model, to_uint8

from .classifier import check_images, coverage, label_accuracy, weights_path
from .fid import fid, image_features, random_subset
from .manifold import manifold_scores

__all__ = ["image_scores", "manifold_image_scores", "reconstruction_scores"]

#: (dataset, classes, n, seed, data folder, weights mtime, device) -> reference features [n, D]
_REF_FEATURES: dict[tuple, Tensor] = {}


def _classes_words(classes: Sequence[int] | None) -> str:
    return "all classes" if classes is None else f"classes {sorted({int(c) for c in classes})}"


def manifold_image_scores(
    images: Tensor,
    dataset: str,
    *,
    classes: Sequence[int] | None = None,
    n_reference: int | None = None,
    seed: int = 0,
    k: int = 3,
    data_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Improved precision and recall, density and coverage (:func:`fm_eval.manifold_scores`) of
    uint8 images [N, 28, 28] in ``dataset``'s classifier features (the 128-dim layer FID uses)
    against a random subset of the test split (of ``classes`` when given).

    The reference is ``n_reference`` test images (default N, equal counts, at most the split's size)
    drawn without replacement with ``seed``: a random subset, not the first images, since MNIST's
    test set is not homogeneous (its two halves differ). Returns {"precision", "recall", "density",
    "coverage", "k", "n_samples", "n_reference", "reference" (words), "features"}, ratios rounded
    to 4 decimals.
    """
    if classes is not None and isinstance(classes, (str, bytes)):
        raise ValueError(f"classes must be a sequence of class ids like [3, 5] or None, got {classes!r}")
    images = check_images(images)
    cls = None if classes is None else sorted({int(c) for c in classes})
    feats = image_features(images, dataset, device=device)
    folder = str(find_dataset_dir(dataset, data_dir))
    w = weights_path(dataset)
    pool_key = (dataset, None if cls is None else tuple(cls), folder)
    want = len(images) if n_reference is None else int(n_reference)
    key = (*pool_key, want, int(seed), w.stat().st_mtime_ns if w.is_file() else None, str(device))
    if key not in _REF_FEATURES:
        pool = load_images(dataset, "test", data_dir, classes=cls).images
        ref = random_subset(pool, min(want, len(pool)), seed)
        _REF_FEATURES.clear()  # one reference at a time (a sweep reuses it)
        _REF_FEATURES[key] = image_features(ref, dataset, device=device)
    ref_feats = _REF_FEATURES[key]
    res = manifold_scores(feats, ref_feats, k)
    return {
        "precision": round(res.precision, 4), "recall": round(res.recall, 4), "density": round(res.density, 4),
        "coverage": round(res.coverage, 4), "k": res.k, "n_samples": res.n_samples,
        "n_reference": res.n_reference,
        "reference": f"random {res.n_reference} of the test split (seed {seed}), {_classes_words(cls)}",
        "features": f"fm_eval {dataset} classifier, {res.feature_dim}-dim penultimate layer",
    }  # fmt: skip


def image_scores(
    images: Tensor,
    dataset: str,
    *,
    labels: Tensor | None = None,
    classes: Sequence[int] | None = None,
    data_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    manifold: bool = False,
    reference_seed: int = 0,
) -> dict[str, Any]:
    """FID, label accuracy and class coverage of generated uint8 images [N, 28, 28] (or [N, 1, 28, 28]).

    dataset: "mnist" or "fashion-mnist" (whose shipped classifier gives features and predictions).
    labels [N]: the classes the images were drawn for (conditional samples), or None.
    classes: the classes the model was trained on; None means all 10 (FID reference: the whole
    test split); a subset restricts the FID reference to the test images of those classes and
    the coverage to those classes.

    Returns {"fid", "fid_n_samples", "fid_n_reference", "fid_reference" (words: "test split, all
    classes" or "test split, classes [3, 5]"), "fid_features" (which classifier and layer),
    "label_accuracy" (only with labels), "coverage": {"min_ratio", "max_ratio", "classes_present",
    "shares" (10 fractions)}, "scoring_seconds"}; with ``manifold`` also "manifold": precision,
    recall, density and coverage against a random test subset of N images drawn with
    ``reference_seed`` (:func:`manifold_image_scores`).
    """
    t0 = time.perf_counter()
    if classes is not None and isinstance(classes, (str, bytes)):
        raise ValueError(f"classes must be a sequence of class ids like [3, 5] or None, got {classes!r}")
    images = check_images(images)
    # the cheap checks first (classes, labels, data set), then the reference and the FID
    cov = coverage(images, dataset, classes=classes, device=device)
    acc = None if labels is None else label_accuracy(images, labels, dataset, device=device)
    if classes is None:
        res = fid(images, dataset, "test", data_dir=data_dir, device=device)
        reference = "test split, all classes"
    else:  # only the trained classes are a fair reference
        cls = sorted({int(c) for c in classes})
        ref = load_images(dataset, "test", data_dir, classes=cls).images
        res = fid(images, dataset, ref, device=device)
        reference = f"test split, classes {cls}"
    out: dict[str, Any] = {
        "fid": round(res.fid, 4),
        "fid_n_samples": res.n_samples,
        "fid_n_reference": res.n_reference,
        "fid_reference": reference,
        "fid_features": f"fm_eval {dataset} classifier, {res.feature_dim}-dim penultimate layer",
    }
    if acc is not None:
        out["label_accuracy"] = round(acc, 4)
    out["coverage"] = {
        "min_ratio": round(cov.min_ratio, 4), "max_ratio": round(cov.max_ratio, 4),
        "classes_present": cov.classes_present, "shares": [round(s, 4) for s in cov.shares],
    }  # fmt: skip
    if manifold:
        out["manifold"] = manifold_image_scores(
            images, dataset, classes=classes, seed=reference_seed, data_dir=data_dir, device=device
        )
    out["scoring_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def reconstruction_scores(
    originals_u8: Tensor,
    reconstructions: Tensor,
    dataset: str,
    *,
    data_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """How close reconstructions are to their originals, and the FID of both against the test split.

    originals_u8: uint8 [N, 28, 28] (or [N, 1, 28, 28]); reconstructions: float [N, 1, 28, 28] (or
    [N, 28, 28]) in [-1, 1], e.g. an autoencoder's decode(encode(x)). The error is measured in
    [-1, 1] (originals scaled by x / 127.5 - 1): MSE = mean squared difference,
    PSNR = 10 log10(2^2 / MSE) dB (peak-to-peak range 2; inf for a perfect reconstruction).
    FIDs: reconstructions rounded to uint8, and the originals themselves (the floor a perfect
    autoencoder would reach at this N), each against the whole test split of ``dataset``.

    Returns {"n", "mse", "psnr_db", "fid_reconstructions", "fid_originals", "fid_reference"}.
    """
    originals = check_images(originals_u8, "originals_u8").cpu()
    x = to_model(originals)
    if not isinstance(reconstructions, Tensor) or not torch.is_floating_point(reconstructions):
        got = getattr(reconstructions, "dtype", type(reconstructions).__name__)
        raise ValueError(f"reconstructions must be a float tensor in [-1, 1], got {got}")
    rec = reconstructions.detach().to("cpu", torch.float32)
    if rec.ndim == 3:
        rec = rec.unsqueeze(1)
    if rec.shape != x.shape:
        raise ValueError(
            f"reconstructions must match the originals: expected shape {tuple(x.shape)} (or {tuple(originals.shape)}), "
            f"got {tuple(reconstructions.shape)}"
        )
    if not torch.isfinite(rec).all():
        raise ValueError("reconstructions contain NaN or inf values")
    mse = ((rec - x) ** 2).mean()
    res = fid(to_uint8(rec), dataset, "test", data_dir=data_dir, device=device)
    real = fid(originals, dataset, "test", data_dir=data_dir, device=device)
    return {
        "n": int(originals.shape[0]), "mse": round(float(mse), 5),
        "psnr_db": round(float(10 * torch.log10(4.0 / mse)), 2),
        "fid_reconstructions": round(res.fid, 4), "fid_originals": round(real.fid, 4),
        "fid_reference": f"{dataset} test split ({res.n_reference} images)",
    }  # fmt: skip
