"""Frechet distance between classifier features of two image sets ("FID" on MNIST-like data).

FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})   (Heusel et al. 2017,
the Frechet / 2-Wasserstein distance between Gaussians, Dowson & Landau 1982), computed in float64.
The trace term uses symmetric eigendecompositions (scipy.linalg.eigh): tr((S_1 S_2)^{1/2}) equals
tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2}), whose argument is symmetric positive semi-definite, so no
complex parts or failed ``sqrtm`` iterations arise for rank-deficient covariances.

Features are the penultimate layer (128 dims) of the data set's shipped classifier
(:mod:`fm_eval.classifier`), not Inception's; numbers are comparable only between runs with the
same classifier, data set, reference split and sample counts, which every result states. FID is
biased upwards at small n: compare only at equal counts (e.g. 1,000 samples against the full
10,000-image test split).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from fm_data.images import find_dataset_dir, load_images

from .classifier import check_images, classify, weights_path

__all__ = [
    "FeatureStats",
    "FIDResult",
    "feature_stats",
    "frechet_distance",
    "image_features",
    "random_subset",
    "reference_stats",
    "fid",
]

REFERENCE_SPLITS = ("test", "train")

# (dataset, split, n_reference, seed, data folder, weights mtime) -> FeatureStats
_REF_CACHE: dict[tuple, FeatureStats] = {}


@dataclass
class FeatureStats:
    """Mean [D] and covariance [D, D] (unbiased, float64) of n feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


@dataclass
class FIDResult:
    """An FID value with what it was computed on.

    fid: the distance; n_samples: images scored; n_reference: reference images; reference: "test",
    "train" or "images" (a given tensor); dataset: whose classifier gave the features;
    feature_dim: feature dimension D.
    """

    fid: float
    n_samples: int
    n_reference: int
    reference: str
    dataset: str
    feature_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def feature_stats(features: Tensor | np.ndarray) -> FeatureStats:
    """features [N, D] -> mean and unbiased covariance in float64 (N >= 2)."""
    f = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return FeatureStats(mu=f.mean(0), sigma=np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), n=f.shape[0])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = scipy.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^{1/2} sigma2 sigma1^{1/2})^{1/2}).
    Covariances must be symmetric positive semi-definite [D, D]; tiny negative round-off is clipped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def image_features(
    images: Tensor, dataset: str, *, batch_size: int = 1000, device: torch.device | str | None = None
) -> Tensor:
    """Penultimate classifier features [N, D] of uint8 images [N, 28, 28] (float32, on ``device``)."""
    return classify(images, dataset, batch_size=batch_size, device=device).features


def random_subset(images: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` of ``images`` [N, ...] drawn without replacement by a generator seeded with ``seed``
    (the first n of ``torch.randperm(N)``): the same subset for the same N, n and seed."""
    if not 1 <= n <= len(images):
        raise ValueError(f"a random subset needs 1 <= n <= {len(images)}, got {n}")
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


def reference_stats(
    dataset: str,
    split: str = "test",
    n_reference: int | None = None,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FeatureStats:
    """Feature statistics of a real split (cached per process).

    n_reference=None uses the whole split; otherwise a fixed random subset (``seed``) of that size.
    """
    if split not in REFERENCE_SPLITS:
        raise ValueError(f"reference split must be one of {', '.join(REFERENCE_SPLITS)}, got {split!r}")
    folder = str(find_dataset_dir(dataset, data_dir))
    w = weights_path(dataset)
    key = (dataset, split, n_reference, seed, folder, w.stat().st_mtime_ns if w.is_file() else None)
    if key not in _REF_CACHE:
        data = load_images(dataset, split, data_dir)
        images = data.images
        if n_reference is not None:
            if not 2 <= n_reference <= len(images):
                raise ValueError(f"n_reference must be in [2, {len(images)}] for the {split} split, got {n_reference}")
            images = random_subset(images, n_reference, seed)
        _REF_CACHE[key] = feature_stats(image_features(images, dataset, device=device))
    return _REF_CACHE[key]


def fid(
    images: Tensor,
    dataset: str,
    reference: str | Tensor = "test",
    n_reference: int | None = None,
    *,
    data_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> FIDResult:
    """FID of uint8 images [N, 28, 28] against a real split ("test" or "train") or given uint8 images.

    Features come from ``dataset``'s shipped classifier. n_reference limits the reference split to
    a fixed random subset (None: the whole split, 10,000 test images). The result states both
    sample counts. Warns when N is below the feature dimension (rank-deficient covariance).
    """
    images = check_images(images)
    feats = image_features(images, dataset, device=device)
    stats = feature_stats(feats)
    if isinstance(reference, str):
        ref = reference_stats(dataset, reference, n_reference, data_dir=data_dir, device=device)
        ref_name = reference
    else:
        ref_images = check_images(reference, "reference")
        if n_reference is not None:
            ref_images = ref_images[:n_reference]
        ref = feature_stats(image_features(ref_images, dataset, device=device))
        ref_name = "images"
    d = feats.shape[1]
    if stats.n < d or ref.n < d:
        warnings.warn(
            f"FID on {stats.n} samples vs {ref.n} reference images with {d}-dim features: covariances are "
            "rank-deficient and the value is strongly biased; use >= 1,000 samples",
            stacklevel=2,
        )
    return FIDResult(
        fid=frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma),
        n_samples=stats.n,
        n_reference=ref.n,
        reference=ref_name,
        dataset=dataset,
        feature_dim=d,
    )
