"""MNIST and Fashion-MNIST from their IDX files, held whole in memory as uint8 tensors.

Files are the original gzip-compressed IDX files (``train-images-idx3-ubyte.gz`` ...), looked up
in this order (first directory holding all four files wins):

1. the ``data_dir`` argument (``--data-dir``): ``data_dir/<name>/`` (or ``data_dir`` itself when
   it is named like the data set, e.g. ``.../fashion-mnist``),
2. the environment variable ``FM_DATA_DIR`` (a folder with ``mnist/`` and ``fashion-mnist/``),
3. the system location ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist``),
4. a download through torchvision, when torchvision is installed and the network allows
   (into ``data_dir``, ``$FM_DATA_DIR`` or ``~/.cache/fm-data``; ``FM_DATA_DOWNLOAD=0`` disables it).
   The download goes only into a folder that exists (none is created) and only over https: mirrors
   that torchvision lists with plain http are dropped, and a data set with no https mirror is
   not downloaded.

When the files are not found and a download is allowed, a ``data_dir`` or ``FM_DATA_DIR`` that is
given but is not a directory (a typo) is a one-line :class:`DataError` naming it: nothing is
created and the network is not tried.

Every file is checked against the MD5 of its *decompressed* content (the ``.gz`` bytes differ
between mirrors); the check runs once per file per process. A missing or corrupt file raises
:class:`DataError` naming the paths tried and how to fix it.

Models see images as float32 [B, 1, H, W] in [-1, 1] (:func:`to_model`); files written for
programs hold uint8 [N, 28, 28] (:func:`to_uint8` is the inverse).

Example::

    from fm_data.images import load_images, to_model
    data = load_images("fashion-mnist", split="test", classes=[3])   # dresses only
    x = to_model(data.images[:8], pad=True)                          # [8, 1, 32, 32] in [-1, 1]
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DataError",
    "IMAGE_DATASETS",
    "NUM_CLASSES",
    "CLASS_NAMES",
    "ImageData",
    "find_dataset_dir",
    "load_images",
    "parse_classes",
    "read_idx",
    "to_model",
    "to_uint8",
]

IMAGE_DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
NUM_CLASSES = 10
SYSTEM_DIR = Path("/usr/share/datasets")

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}

# (images file, labels file) per split, without the .gz suffix.
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 of the decompressed files (identical to the original distributions).
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Where torchvision's MNIST / FashionMNIST classes put the raw files under their root.
_TORCHVISION_RAW = {"mnist": Path("MNIST") / "raw", "fashion-mnist": Path("FashionMNIST") / "raw"}

_FIX_HINT = (
    "Fix: point FM_DATA_DIR (or --data-dir) at a folder holding mnist/ and fashion-mnist/ with the "
    "original *-ubyte.gz files (train-images-idx3-ubyte.gz and the other three of each data set), "
    "or install Debian's dataset-fashion-mnist."
)

# Files whose MD5 was checked in this process: (resolved path, size, mtime_ns) -> md5 hex.
_VERIFIED: dict[tuple[str, int, int], str] = {}


class DataError(ValueError):
    """A data set is missing, corrupt or asked for with bad arguments."""


@dataclass
class ImageData:
    """A whole image data set in memory.

    images: uint8 [N, 28, 28]; labels: int64 [N] with the original class ids (0..9), also for
    class subsets. Batch by indexing, e.g. ``data.images[idx]``; see :meth:`batch`.
    """

    images: Tensor
    labels: Tensor
    name: str
    split: str
    classes: tuple[int, ...] | None = None
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes of the full data set (10), also for subsets: labels keep their ids."""
        return NUM_CLASSES

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.name]

    def batch(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        pad: bool = False,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """A random batch (with replacement across calls): x float32 [B, 1, H, W] in [-1, 1], y int64 [B].

        One index draw and one tensor gather; no per-image Python work. H = W = 32 with ``pad``.
        """
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        x = self.images[idx]
        y = self.labels[idx]
        if device is not None:
            x, y = x.to(device), y.to(device)
        return to_model(x, pad=pad), y


def _check_name(name: str) -> str:
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown image data set {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    return name


def _all_files(name: str) -> list[str]:
    return [f + ".gz" for split in SPLITS for f in FILES[split]]


def _has_files(d: Path, name: str) -> bool:
    return all((d / f).is_file() for f in _all_files(name))


def _norm(s: str) -> str:
    return s.lower().replace("-", "").replace("_", "")


def _download_root(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("FM_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "fm-data"


def _check_named_dirs(data_dir: str | os.PathLike | None) -> None:
    """One-line DataError for a ``data_dir`` or ``$FM_DATA_DIR`` that was given but is not a directory:
    a typo there must not send the lookup on to other places or a download (nothing is created)."""
    named = [("data_dir", data_dir)] if data_dir is not None else []
    env = os.environ.get("FM_DATA_DIR")
    if env:
        named.append(("FM_DATA_DIR", env))
    for what, d in named:
        path = Path(d).expanduser()
        if not path.is_dir():
            state = "is not a directory" if path.exists() else "does not exist"
            raise DataError(
                f"{what} {str(d)!r} {state}: give the folder that holds mnist/ and fashion-mnist/ "
                f"(nothing was created or downloaded)"
            )


def _https_only(cls: type, name: str) -> tuple[type | None, str]:
    """``cls`` (torchvision's MNIST / FashionMNIST) restricted to its https mirrors, same class name (its
    files go to ``<root>/<class name>/raw``); (None, why) when it lists no https mirror."""
    mirrors = getattr(cls, "mirrors", None)
    if mirrors is None:  # no mirror list to restrict (not torchvision's usual class)
        return cls, ""
    https = [m for m in mirrors if str(m).lower().startswith("https://")]
    if not https:
        return None, (
            f"download refused: torchvision knows no https mirror for {name} (only {', '.join(map(str, mirrors))}); "
            "fetch the files over https yourself"
        )
    return type(cls.__name__, (cls,), {"mirrors": https}), ""


def _candidates(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories to look in, in lookup order (torchvision's layout under each root last)."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("FM_DATA_DIR")
    if env:
        roots.append(Path(env).expanduser())
    out: list[Path] = []
    for r in roots:
        out.append(r / name)
        if _norm(r.name) == _norm(name):  # the data set's own folder, e.g. .../fashion-mnist
            out.append(r)
    out.append(SYSTEM_DIR / name)
    dl = _download_root(data_dir).expanduser()
    for r in (*roots, dl):
        out.append(r / _TORCHVISION_RAW[name])
    return list(dict.fromkeys(out))  # drop repeats, keep the first occurrence's position


def _download_disabled() -> bool:
    return os.environ.get("FM_DATA_DOWNLOAD", "1").strip().lower() in ("0", "false", "no", "off")


def _try_download(name: str, root: Path) -> tuple[Path | None, str]:
    """Download through torchvision into ``root``; return (raw dir or None, what happened)."""
    if _download_disabled():
        return None, "download disabled by FM_DATA_DOWNLOAD=0"
    try:
        import torchvision.datasets as tvd  # optional: only for the download
    except Exception as e:  # noqa: BLE001 - any import failure means "no torchvision"
        return None, f"torchvision not importable ({type(e).__name__})"
    import socket

    if not root.is_dir():
        return None, f"download not attempted: {root} does not exist (create it to allow a download there)"
    cls, why = _https_only(tvd.MNIST if name == "mnist" else tvd.FashionMNIST, name)
    if cls is None:
        return None, why
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20.0)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        return None, f"torchvision download into {root} failed: {type(e).__name__}: {e}"
    finally:
        socket.setdefaulttimeout(old)
    raw = root / _TORCHVISION_RAW[name]
    if _has_files(raw, name):
        return raw, f"downloaded into {raw}"
    return None, f"torchvision download into {root} left no *-ubyte.gz files in {raw}"


def find_dataset_dir(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return the directory holding the four ``*-ubyte.gz`` files of ``name``.

    Lookup order: ``data_dir`` (``data_dir/<name>`` or ``data_dir``), ``$FM_DATA_DIR/<name>``,
    ``/usr/share/datasets/<name>``, torchvision's layout (``<root>/MNIST/raw``), then a torchvision
    download (https only, into an existing folder) if ``download`` and the network allow. Raises
    DataError naming every path tried or, where a download would come next, naming ``data_dir`` /
    ``$FM_DATA_DIR`` when one is given but is not a directory (a typo: nothing created, no network).
    Only presence is checked here; :func:`load_images` checks the MD5s.
    """
    _check_name(name)
    tried = _candidates(name, data_dir)
    for d in tried:
        if _has_files(d, name):
            return d
    note = "download not attempted (download=False)"
    if download:
        if not _download_disabled():
            _check_named_dirs(data_dir)
        got, note = _try_download(name, _download_root(data_dir).expanduser())
        if got is not None:
            return got
    lines = "\n".join(f"  - {d}" for d in tried)
    raise DataError(
        f"{name}: could not find {', '.join(_all_files(name))}.\nPaths tried (in order):\n{lines}\n"
        f"  - torchvision: {note}\n{_FIX_HINT}"
    )


#: The most bytes an IDX file may decompress to (MNIST's training images are 47,040,016): a gzip bomb
#: in place of a data file stops here instead of filling the memory.
MAX_IDX_BYTES = 64 * 2**20


def _decompress_bounded(path: Path) -> bytes:
    """The decompressed content of ``path``, read no further than its IDX header allows (header + the
    product of its dims, at most :data:`MAX_IDX_BYTES`): DataError when the stream goes on beyond."""
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        dims = b""
        limit = MAX_IDX_BYTES
        if len(head) == 4 and head[:3] == b"\0\0\x08" and 1 <= head[3] <= 4:
            dims = f.read(4 * head[3])
            if len(dims) == 4 * head[3]:
                size = 4 + len(dims) + int(np.prod([int(d) for d in np.frombuffer(dims, dtype=">i4")], dtype=object))
                limit = min(size, MAX_IDX_BYTES)
        rest = f.read(max(limit - len(head) - len(dims), 0) + 1)
    raw = head + dims + rest
    if len(raw) > limit:
        raise DataError(
            f"corrupt file {path}: it decompresses to more than the {limit:,} bytes its IDX header allows "
            f"(a padded file or a gzip bomb; at most {MAX_IDX_BYTES:,} are read). {_FIX_HINT}"
        )
    return raw


def _read_verified(path: Path, expected_md5: str | None) -> bytes:
    """Decompress ``path`` (bounded: :func:`_decompress_bounded`) and check the MD5 of the content
    (once per file per process)."""
    try:
        raw = _decompress_bounded(path)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"corrupt or unreadable file {path}: {type(e).__name__}: {e}. {_FIX_HINT}") from e
    if expected_md5 is not None:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if _VERIFIED.get(key) != expected_md5:
            got = hashlib.md5(raw).hexdigest()
            if got != expected_md5:
                raise DataError(
                    f"corrupt file {path}: MD5 of the decompressed content is {got}, expected "
                    f"{expected_md5}. Replace it with the original file. {_FIX_HINT}"
                )
            _VERIFIED[key] = got
    return raw


def _parse_idx(raw: bytes, path: Path | str) -> np.ndarray:
    """Parse IDX bytes (magic 0x0000 08 ndim, big-endian int32 dims, then uint8 data)."""
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: bad IDX magic {raw[:4].hex()} (expected 000008NN: unsigned-byte data with NN dims)")
    ndim = raw[3]
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX header says {ndim} dimensions; expected 1 (labels) or 3 (images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    n = int(np.prod(dims))
    if len(raw) != header + n:
        raise DataError(
            f"{path}: IDX header promises dims {dims} = {n} bytes of data, file holds {len(raw) - header} "
            "(truncated or padded file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, expected_md5: str | None = None) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes into a uint8 array of its header's shape.

    ``expected_md5``: MD5 of the decompressed content; a mismatch raises DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}. {_FIX_HINT}")
    return _parse_idx(_read_verified(path, expected_md5), path)


def _parse_classes(classes: int | str | Iterable[int] | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        try:
            classes = [int(c) for c in classes.replace(" ", "").split(",") if c != ""]
        except ValueError as e:
            raise DataError(f"classes must be integers like '3' or '3,5', got {classes!r}") from e
    elif isinstance(classes, (int, np.integer)):
        classes = [int(classes)]
    out = tuple(sorted({int(c) for c in classes}))
    if not out:
        raise DataError("classes is empty; pass None for all classes or e.g. [3] or [3, 5]")
    bad = [c for c in out if not 0 <= c < NUM_CLASSES]
    if bad:
        raise DataError(f"classes {bad} out of range; allowed 0..{NUM_CLASSES - 1}")
    return out


def load_images(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    classes: int | str | Sequence[int] | None = None,
    *,
    download: bool = True,
) -> ImageData:
    """Load a whole split: images uint8 [N, 28, 28], labels int64 [N].

    name: "mnist" or "fashion-mnist"; split: "train" (60,000) or "test" (10,000);
    classes: None (all), an int, a list of ints or a string like "3,5" -> only those classes
    (labels keep their original ids). Files are MD5-checked; errors raise DataError.
    """
    _check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    cls = _parse_classes(classes)
    d = find_dataset_dir(name, data_dir, download=download)
    img_file, lab_file = FILES[split]
    images = read_idx(d / (img_file + ".gz"), MD5[name][img_file])
    labels = read_idx(d / (lab_file + ".gz"), MD5[name][lab_file])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{d}: unexpected shapes images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(images.copy())
    y = torch.from_numpy(labels.astype(np.int64))
    if cls is not None:
        keep = torch.isin(y, torch.tensor(cls, dtype=torch.int64))
        x, y = x[keep], y[keep]
    return ImageData(images=x, labels=y, name=name, split=split, classes=cls, path=d)


def to_model(images: Tensor, pad: bool = False) -> Tensor:
    """uint8 [B, 28, 28] or [B, 1, 28, 28] -> float32 [B, 1, H, W] in [-1, 1] (x / 127.5 - 1).

    ``pad=True`` pads 2 pixels on each side with -1 (black) to 32x32, for nets that halve the
    size three times. Stays on the input's device.
    """
    if images.dtype != torch.uint8:
        raise DataError(f"to_model expects uint8 images (0..255), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataError(f"to_model expects [B, 28, 28] or [B, 1, H, W], got shape {tuple(images.shape)}")
    x = images.to(torch.float32) / 127.5 - 1.0
    if pad:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x


def to_uint8(x: Tensor, crop_to: int | None = 28) -> Tensor:
    """float [B, 1, H, W] (or [B, H, W]) in [-1, 1] -> uint8 [B, crop_to, crop_to] (inverse of :func:`to_model`).

    Values are clamped to [-1, 1] and rounded; a larger image is centre-cropped to ``crop_to``
    (undoing ``pad=True``); ``crop_to=None`` keeps the size.
    """
    if not torch.is_floating_point(x):
        raise DataError(f"to_uint8 expects a float tensor in [-1, 1], got dtype {x.dtype}")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise DataError(f"to_uint8 expects one channel [B, 1, H, W], got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim != 3:
        raise DataError(f"to_uint8 expects [B, 1, H, W] or [B, H, W], got shape {tuple(x.shape)}")
    if crop_to is not None:
        h, w = x.shape[-2:]
        if h < crop_to or w < crop_to:
            raise DataError(f"cannot crop {h}x{w} images to {crop_to}x{crop_to}")
        top, left = (h - crop_to) // 2, (w - crop_to) // 2
        x = x[:, top : top + crop_to, left : left + crop_to]
    x = x.float()
    if torch.isnan(x).any():
        raise DataError(f"to_uint8 got {int(torch.isnan(x).sum())} NaN values; the sampler diverged")
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def parse_classes(value: str | int | list[int] | tuple[int, ...] | None) -> list[int] | None:
    """A class subset as the command lines and run configs give it: ``"3"`` / ``"3,5"`` / ``[3, 5]``
    -> sorted unique class ids in 0..9; None -> None (all classes). ValueError naming the bad value.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(p == "" for p in parts):
            raise ValueError(f"classes must be class ids like '3' or '3,5', got {value!r}")
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"classes must be integers in 0..{NUM_CLASSES - 1} like '3' or '3,5', got {value!r}"
            ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        ids = [value]
    elif isinstance(value, (list, tuple)):
        ids = list(value)
        if not ids or any(isinstance(c, bool) or not isinstance(c, int) for c in ids):
            raise ValueError(f"classes must be a non-empty list of integers in 0..{NUM_CLASSES - 1}, got {value!r}")
    else:
        raise ValueError(f"classes must be class ids like '3' or '3,5' or a list of them, got {value!r}")
    bad = [c for c in ids if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ValueError(f"classes {bad} out of range: class ids are 0..{NUM_CLASSES - 1} (got {value!r})")
    return sorted(set(ids))
