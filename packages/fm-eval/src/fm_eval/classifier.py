"""A small CNN classifier per image data set, shipped with the package, for image metrics.

Inception weights cannot be downloaded here, and a classifier trained on the data set itself is
the usual practice for MNIST-like data: its penultimate layer (128 features after global average
pooling) gives the features for FID (:mod:`fm_eval.fid`); its predictions give the label accuracy
of class-conditional samples and the per-class coverage.

Weights live in ``fm_eval/weights/<dataset>.safetensors`` (loaded with safetensors only, never
unpickled) next to ``<dataset>.json`` with the measured test accuracy and the exact command that
trained them (``python -m fm_eval.train_classifier --dataset ...``).

Images are uint8 [N, 28, 28] (or [N, 1, 28, 28]), as written by ``fm-pixel sample``; they are
scaled to [-1, 1] with :func:`fm_data.images.to_model` before the network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from fm_data.images import IMAGE_DATASETS, to_model

__all__ = [
    "SmallCNN",
    "WEIGHTS_DIR",
    "weights_path",
    "classifier_info",
    "load_classifier",
    "check_images",
    "classify",
    "label_accuracy",
    "coverage",
    "CoverageResult",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NUM_CLASSES = 10

_CACHE: dict[tuple[str, str], SmallCNN] = {}


class SmallCNN(nn.Module):
    """LeNet-style CNN: per width a Conv3x3-BN-ReLU then a 2x2 max-pool, a linear layer, a linear head.

    Default widths (32, 64, 128) at 28, 14 and 7 pixels, pooled to 3x3, flattened (1,152), then
    Linear-BN-ReLU to ``feature_dim`` = 128 (the penultimate layer: :meth:`features`), dropout and
    Linear to 10 logits. Input [B, 1, 28, 28] in [-1, 1]. 243k parameters (1.0 MB in float32),
    15 MFLOP per image; kept in channels-last memory format (faster convolutions on CPU).
    """

    def __init__(
        self,
        widths: tuple[int, ...] | list[int] = (32, 64, 128),
        feature_dim: int = 128,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or any(w < 1 for w in widths):
            raise ValueError(f"SmallCNN needs 3 positive widths (28 -> 14 -> 7 -> 3 pixels), got {list(widths)}")
        self.widths = widths
        self.feature_dim = int(feature_dim)
        layers: list[nn.Module] = []
        c_in = 1
        for w in widths:
            layers += [
                nn.Conv2d(c_in, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(widths[-1] * 9, self.feature_dim, bias=False),
            nn.BatchNorm1d(self.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.to(memory_format=torch.channels_last)

    def features(self, x: Tensor) -> Tensor:
        """x [B, 1, 28, 28] float in [-1, 1] -> penultimate features [B, feature_dim] (post-ReLU)."""
        return self.fc(self.body(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 1, 28, 28] float in [-1, 1] -> logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def _check_dataset(dataset: str) -> str:
    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"unknown data set {dataset!r} for the classifier; choose one of {', '.join(IMAGE_DATASETS)}")
    return dataset


def weights_path(dataset: str) -> Path:
    """Path of the shipped safetensors weights for ``dataset``."""
    return WEIGHTS_DIR / f"{_check_dataset(dataset)}.safetensors"


def classifier_info(dataset: str) -> dict:
    """The JSON record beside the weights: test accuracy, training command, seed, epochs, ..."""
    p = WEIGHTS_DIR / f"{_check_dataset(dataset)}.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"no classifier record {p}; train it with python -m fm_eval.train_classifier --dataset {dataset}"
        )
    return json.loads(p.read_text())


def load_classifier(dataset: str, device: torch.device | str | None = None) -> SmallCNN:
    """The shipped classifier for ``dataset`` in eval mode on ``device`` (cached per process).

    Weights load with ``safetensors.torch.load_file`` (no pickle). Do not train the returned
    module in place: it is shared by every caller in the process.
    """
    _check_dataset(dataset)
    device = torch.device(device if device is not None else "cpu")
    key = (dataset, str(device))
    if key not in _CACHE:
        p = weights_path(dataset)
        if not p.is_file():
            raise FileNotFoundError(
                f"no classifier weights at {p}; train them with python -m fm_eval.train_classifier --dataset {dataset}"
            )
        info = classifier_info(dataset)
        net = SmallCNN(widths=info["widths"], feature_dim=info["feature_dim"])
        net.load_state_dict(load_file(str(p), device="cpu"))
        net.eval().requires_grad_(False)
        _CACHE[key] = net.to(device).to(memory_format=torch.channels_last)
    return _CACHE[key]


def check_images(images: Tensor, what: str = "images") -> Tensor:
    """Validate uint8 [N, 28, 28] or [N, 1, 28, 28] images; return them as [N, 28, 28]."""
    if not isinstance(images, Tensor):
        images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(
            f"{what} must be uint8 in 0..255 (as saved in the .npz files), got dtype {images.dtype}; "
            "convert model outputs in [-1, 1] with fm_data.images.to_uint8"
        )
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{what} must have shape [N, 28, 28] or [N, 1, 28, 28], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    return images


@dataclass
class ClassifierOutput:
    """logits [N, 10] and penultimate features [N, D], float32 on the classifier's device."""

    logits: Tensor
    features: Tensor


@torch.no_grad()
def classify(
    images: Tensor, dataset: str, *, batch_size: int = 1000, device: torch.device | str | None = None
) -> ClassifierOutput:
    """Run the shipped classifier on uint8 images [N, 28, 28] in batches; returns logits and features."""
    images = check_images(images)
    device = torch.device(device) if device is not None else images.device
    net = load_classifier(dataset, device)
    logits, feats = [], []
    for i in range(0, images.shape[0], batch_size):
        x = to_model(images[i : i + batch_size].to(device))
        f = net.features(x)
        feats.append(f)
        logits.append(net.head(f))
    return ClassifierOutput(logits=torch.cat(logits), features=torch.cat(feats))


def label_accuracy(images: Tensor, labels: Tensor, dataset: str, *, device: torch.device | str | None = None) -> float:
    """Fraction of images the classifier assigns to their intended label (class-conditional samples)."""
    images = check_images(images)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {labels.shape[0]} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES:
        raise ValueError(
            f"labels must lie in 0..{NUM_CLASSES - 1}, got range [{int(labels.min())}, {int(labels.max())}]"
        )
    pred = classify(images, dataset, device=device).logits.argmax(1).cpu()
    return float((pred == labels.cpu()).float().mean())


@dataclass
class CoverageResult:
    """Per-class share of predicted labels, against the uniform share over the expected classes.

    shares: list of 10 fractions (sum 1); min_ratio / max_ratio: min and max share over the expected
    classes divided by 1 / len(classes) (1.0 each for perfectly balanced samples, min_ratio 0 when
    a class never appears);
    classes_present: number of classes predicted at least once; n: number of images.
    """

    shares: list[float]
    min_ratio: float
    max_ratio: float
    classes_present: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def coverage(
    images: Tensor, dataset: str, *, classes: Sequence[int] | None = None, device: torch.device | str | None = None
) -> CoverageResult:
    """Per-class coverage of samples by predicted label.

    ``classes``: the classes the model was trained on (default all 10); the expected share is
    1 / len(classes) and min/max ratios and ``classes_present`` are taken over those classes only.
    """
    images = check_images(images)
    cls = list(range(NUM_CLASSES)) if classes is None else sorted({int(c) for c in classes})
    if not cls or cls[0] < 0 or cls[-1] >= NUM_CLASSES:
        raise ValueError(f"classes must be a non-empty subset of 0..{NUM_CLASSES - 1}, got {classes!r}")
    pred = classify(images, dataset, device=device).logits.argmax(1).cpu()
    counts = torch.bincount(pred, minlength=NUM_CLASSES).double()
    shares = counts / counts.sum()
    sel = shares[cls]
    expected = 1.0 / len(cls)
    return CoverageResult(
        shares=[float(s) for s in shares],
        min_ratio=float(sel.min() / expected),
        max_ratio=float(sel.max() / expected),
        classes_present=int((counts[cls] > 0).sum()),
        n=int(images.shape[0]),
    )
