"""Tests for fm_data.images: IDX parsing, lookup order, MD5 checks, class subsets, scaling.

Real-data tests read FM_DATA_DIR (CI: ../shared/data from the project root) and skip without it;
error paths use small synthetic IDX files written to tmp_path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fm_data import images as im
from fm_data.images import DataError, find_dataset_dir, load_images, parse_classes, read_idx, to_model, to_uint8

_ROOT = Path(__file__).resolve().parents[3]
_DEFAULT_DATA = (_ROOT / ".." / "shared" / "data").resolve()


def _real_data_dir() -> Path | None:
    env = os.environ.get("FM_DATA_DIR")
    for d in ([Path(env)] if env else []) + [_DEFAULT_DATA]:
        if (d / "mnist" / "t10k-images-idx3-ubyte.gz").is_file() and (d / "fashion-mnist").is_dir():
            return d
    return None


REAL = _real_data_dir()
needs_real = pytest.mark.skipif(
    REAL is None, reason="MNIST/Fashion-MNIST IDX files not found (set FM_DATA_DIR=../shared/data)"
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding written independently of the reader: magic 0,0,8,ndim then big-endian dims."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_gz(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))
    return path


def _fake_dataset(d: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, str]:
    """Write the four files of a tiny data set into d; return {file: md5 of decompressed content}."""
    rng = np.random.default_rng(seed)
    md5 = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img_f, lab_f = im.FILES[split]
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        for f, arr in ((img_f, imgs), (lab_f, labs)):
            raw = _idx_bytes(arr)
            _write_gz(d / (f + ".gz"), raw)
            md5[f] = hashlib.md5(raw).hexdigest()
    return md5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids OpenMP barrier stalls on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No FM_DATA_DIR, no downloads, an empty system dir: lookups only see what a test writes."""
    monkeypatch.delenv("FM_DATA_DIR", raising=False)
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "0")
    monkeypatch.setattr(im, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(im, "_VERIFIED", {})
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    return tmp_path


# ---------------------------------------------------------------- real data


@needs_real
@pytest.mark.parametrize("name", im.IMAGE_DATASETS)
def test_real_test_split_shapes_and_counts(name):
    data = load_images(name, "test", data_dir=REAL)
    assert data.images.shape == (10_000, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (10_000,) and data.labels.dtype == torch.int64
    counts = torch.bincount(data.labels, minlength=10).tolist()
    if name == "fashion-mnist":
        assert counts == [1000] * 10
    else:  # official MNIST test label counts
        assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(data.images.max()) == 255 and int(data.images.min()) == 0


@needs_real
def test_real_mnist_train_counts_and_class_subset(monkeypatch):
    monkeypatch.setenv("FM_DATA_DIR", str(REAL))
    data = load_images("mnist", "train")
    counts = torch.bincount(data.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # the published MNIST training split
    threes = load_images("mnist", "train", classes=[3])
    assert len(threes) == 6131 and bool((threes.labels == 3).all())
    assert torch.equal(threes.images, data.images[data.labels == 3])
    both = load_images("mnist", "train", classes="3,5")
    assert len(both) == 6131 + 5421 and set(both.labels.unique().tolist()) == {3, 5}


@needs_real
def test_real_lookup_forms(monkeypatch):
    monkeypatch.delenv("FM_DATA_DIR", raising=False)
    assert find_dataset_dir("fashion-mnist", REAL) == REAL / "fashion-mnist"
    # the data set's own folder (Debian layout) is accepted too
    assert find_dataset_dir("fashion-mnist", REAL / "fashion-mnist") == REAL / "fashion-mnist"
    monkeypatch.setenv("FM_DATA_DIR", str(REAL))
    assert find_dataset_dir("mnist", download=False) == REAL / "mnist"


@needs_real
def test_real_batch_is_scaled_and_reproducible():
    data = load_images("fashion-mnist", "test", data_dir=REAL)
    x1, y1 = data.batch(16, generator=torch.Generator().manual_seed(0))
    x2, y2 = data.batch(16, generator=torch.Generator().manual_seed(0), pad=True)
    assert x1.shape == (16, 1, 28, 28) and x2.shape == (16, 1, 32, 32)
    assert torch.equal(y1, y2) and torch.equal(x1, x2[:, :, 2:30, 2:30])
    assert float(x1.min()) >= -1.0 and float(x1.max()) <= 1.0


# ---------------------------------------------------------------- IDX parsing


def test_read_idx_roundtrip(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, size=(3, 5, 7), dtype=np.uint8)
    raw = _idx_bytes(arr)
    p = _write_gz(tmp_path / "x-idx3-ubyte.gz", raw)
    out = read_idx(p, expected_md5=hashlib.md5(raw).hexdigest())
    assert out.shape == (3, 5, 7) and np.array_equal(out, arr)


def test_read_idx_wrong_magic(tmp_path):
    raw = bytearray(_idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    raw[2] = 0x0D  # float data, not unsigned bytes
    p = _write_gz(tmp_path / "bad-magic.gz", bytes(raw))
    with pytest.raises(DataError, match="magic"):
        read_idx(p)


def test_read_idx_truncated_data(tmp_path):
    raw = _idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100]
    p = _write_gz(tmp_path / "short.gz", raw)
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_read_idx_truncated_gzip(tmp_path):
    p = _write_gz(tmp_path / "cut.gz", _idx_bytes(np.ones((10, 28, 28), np.uint8)))
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(DataError, match="corrupt or unreadable"):
        read_idx(p)


def test_read_idx_md5_mismatch(tmp_path):
    p = _write_gz(tmp_path / "x.gz", _idx_bytes(np.ones((1, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="MD5") as e:
        read_idx(p, expected_md5="0" * 32)
    assert str(p) in str(e.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(DataError, match="missing file"):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- lookup and errors


def test_missing_dataset_names_every_path_and_the_fix(clean_env, monkeypatch):
    env_dir = clean_env / "envdata"
    monkeypatch.setenv("FM_DATA_DIR", str(env_dir))
    arg_dir = clean_env / "argdata"
    with pytest.raises(DataError) as e:
        load_images("mnist", data_dir=arg_dir)
    msg = str(e.value)
    for p in (arg_dir / "mnist", env_dir / "mnist", clean_env / "system" / "mnist", arg_dir / "MNIST" / "raw"):
        assert str(p) in msg
    assert "FM_DATA_DIR" in msg and "--data-dir" in msg and "FM_DATA_DOWNLOAD=0" in msg
    assert isinstance(e.value, ValueError)


def test_lookup_order(clean_env, monkeypatch):
    arg, env, system = clean_env / "arg", clean_env / "env", clean_env / "system"
    for root in (arg, env, system):
        _fake_dataset(root / "fashion-mnist")
    monkeypatch.setenv("FM_DATA_DIR", str(env))
    assert find_dataset_dir("fashion-mnist", arg) == arg / "fashion-mnist"
    assert find_dataset_dir("fashion-mnist") == env / "fashion-mnist"
    monkeypatch.delenv("FM_DATA_DIR")
    assert find_dataset_dir("fashion-mnist") == system / "fashion-mnist"
    # a folder named for the *other* data set is not mistaken for this one
    with pytest.raises(DataError):
        find_dataset_dir("mnist", arg / "fashion-mnist")


def test_torchvision_layout_found(clean_env):
    _fake_dataset(clean_env / "root" / "FashionMNIST" / "raw")
    assert find_dataset_dir("fashion-mnist", clean_env / "root") == clean_env / "root" / "FashionMNIST" / "raw"


def _fake_torchvision(monkeypatch, cls):
    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = datasets.FashionMNIST = cls
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_download_failure_is_wrapped(clean_env, monkeypatch):
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise OSError("Name or service not known")

    _fake_torchvision(monkeypatch, Offline)
    (clean_env / "dl").mkdir()  # downloads go only into an existing folder
    with pytest.raises(DataError, match="download into .* failed: OSError: Name or service not known"):
        find_dataset_dir("mnist", clean_env / "dl")


def test_download_success_is_used(clean_env, monkeypatch):
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")
    calls = []

    class Fake:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            if not train:
                _fake_dataset(Path(root) / "MNIST" / "raw")

    _fake_torchvision(monkeypatch, Fake)
    (clean_env / "dl").mkdir()  # downloads go only into an existing folder
    assert find_dataset_dir("mnist", clean_env / "dl") == clean_env / "dl" / "MNIST" / "raw"
    assert calls == [(str(clean_env / "dl"), True, True), (str(clean_env / "dl"), False, True)]
    # second lookup finds the downloaded files without downloading again
    assert find_dataset_dir("mnist", clean_env / "dl") == clean_env / "dl" / "MNIST" / "raw"
    assert len(calls) == 2


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class _Forbidden:
    """torchvision's dataset class in a test that must not download: any use fails the test."""

    mirrors = ["https://example.invalid/"]

    def __init__(self, *a, **k):
        raise AssertionError("download attempted")


@pytest.mark.parametrize("how", ["data_dir", "FM_DATA_DIR", "both"])
def test_a_named_data_dir_that_does_not_exist_is_one_line_without_folders_or_network(clean_env, monkeypatch, how):
    """``FM_DATA_DIR=/data/dataa fm-pixel train`` with downloads on: one line naming the typo; nothing is
    created (not under the typo, not in the download cache) and torchvision is never called. (With
    downloads off the typo is listed among the paths tried, as before.)"""
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")
    _fake_torchvision(monkeypatch, _Forbidden)
    typo = clean_env / "dataa"
    before = _tree(clean_env)
    if how != "data_dir":
        monkeypatch.setenv("FM_DATA_DIR", str(typo))
    arg = typo if how != "FM_DATA_DIR" else None
    for call in (lambda: find_dataset_dir("fashion-mnist", arg), lambda: load_images("mnist", "test", arg)):
        with pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        name = "data_dir" if how != "FM_DATA_DIR" else "FM_DATA_DIR"
        assert msg == (
            f"{name} {str(typo)!r} does not exist: give the folder that holds mnist/ and fashion-mnist/ "
            "(nothing was created or downloaded)"
        )
    assert not typo.exists() and _tree(clean_env) == before


def test_a_named_data_dir_that_is_a_file_is_refused(clean_env, monkeypatch):
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")
    _fake_torchvision(monkeypatch, _Forbidden)
    f = clean_env / "data.txt"
    f.write_text("not a folder")
    monkeypatch.setenv("FM_DATA_DIR", str(f))
    with pytest.raises(DataError, match=r"^FM_DATA_DIR '.*data\.txt' is not a directory: "):
        find_dataset_dir("mnist")


def test_no_download_into_a_folder_that_does_not_exist(clean_env, monkeypatch):
    """No data_dir, no FM_DATA_DIR: the download root is ~/.cache/fm-data, which is not created."""
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")
    _fake_torchvision(monkeypatch, _Forbidden)
    with pytest.raises(DataError) as e:
        find_dataset_dir("mnist")
    cache = clean_env / "home" / ".cache" / "fm-data"
    assert f"download not attempted: {cache} does not exist (create it to allow a download there)" in str(e.value)
    assert not (clean_env / "home").exists()


def test_downloads_use_https_mirrors_only(clean_env, monkeypatch):
    """torchvision's MNIST lists an https and a plain-http mirror: only the https one is handed on, the
    class keeps its name (the files land in <root>/MNIST/raw) and the class itself is left unchanged."""
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")
    seen = []

    class MNIST:
        mirrors = ["https://secure.example/mnist/", "http://plain.example/mnist/", "HTTP://shout.example/"]

        def __init__(self, root, train=True, download=False):
            seen.append((type(self).__name__, list(type(self).mirrors)))
            if not train:
                _fake_dataset(Path(root) / type(self).__name__ / "raw")

    _fake_torchvision(monkeypatch, MNIST)
    (clean_env / "dl").mkdir()
    assert find_dataset_dir("mnist", clean_env / "dl") == clean_env / "dl" / "MNIST" / "raw"
    assert seen == [("MNIST", ["https://secure.example/mnist/"])] * 2
    assert MNIST.mirrors == ["https://secure.example/mnist/", "http://plain.example/mnist/", "HTTP://shout.example/"]


def test_no_download_when_every_mirror_is_plain_http(clean_env, monkeypatch):
    """torchvision 0.2x lists Fashion-MNIST on a plain-http mirror only: refused, with the reason."""
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")

    class FashionMNIST(_Forbidden):
        mirrors = ["http://fashion-mnist.example/"]

    _fake_torchvision(monkeypatch, FashionMNIST)
    (clean_env / "dl").mkdir()
    with pytest.raises(DataError) as e:
        find_dataset_dir("fashion-mnist", clean_env / "dl")
    assert (
        "download refused: torchvision knows no https mirror for fashion-mnist (only http://fashion-mnist.example/)"
        in str(e.value)
    )
    assert _tree(clean_env / "dl") == []


def test_corrupt_file_detected_even_after_a_cached_check(clean_env, monkeypatch):
    root = clean_env / "data"
    md5 = _fake_dataset(root / "mnist")
    monkeypatch.setitem(im.MD5, "mnist", md5)
    data = load_images("mnist", "test", data_dir=root)
    assert data.images.shape == (10, 28, 28) and data.labels.tolist() == list(range(10))
    assert len(im._VERIFIED) == 2  # images and labels of the test split, checked once
    # replace the content with same-shaped but different pixels: header fine, MD5 wrong
    f = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    _write_gz(f, _idx_bytes(np.zeros((10, 28, 28), np.uint8)))
    os.utime(f, ns=(1, 1))  # make sure the cache key changes even on coarse-mtime file systems
    with pytest.raises(DataError, match="corrupt file .*t10k-images.*MD5") as e:
        load_images("mnist", "test", data_dir=root)
    assert "FM_DATA_DIR" in str(e.value)


def test_label_count_mismatch(clean_env, monkeypatch):
    root = clean_env / "data"
    md5 = _fake_dataset(root / "mnist")
    raw = _idx_bytes(np.zeros(7, np.uint8))
    _write_gz(root / "mnist" / "t10k-labels-idx1-ubyte.gz", raw)
    md5["t10k-labels-idx1-ubyte"] = hashlib.md5(raw).hexdigest()
    monkeypatch.setitem(im.MD5, "mnist", md5)
    with pytest.raises(DataError, match="unexpected shapes"):
        load_images("mnist", "test", data_dir=root)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cifar10"), "unknown image data set 'cifar10'"),
        (dict(name="mnist", split="val"), "unknown split 'val'"),
        (dict(name="mnist", classes=[10]), r"classes \[10\] out of range"),
        (dict(name="mnist", classes=[-1, 3]), r"classes \[-1\] out of range"),
        (dict(name="mnist", classes="three"), "classes must be integers"),
        (dict(name="mnist", classes=[]), "classes is empty"),
    ],
)
def test_bad_arguments(clean_env, kwargs, match):
    with pytest.raises(DataError, match=match):
        load_images(**kwargs)


# ---------------------------------------------------------------- scaling


def test_to_model_closed_form_and_roundtrip():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    u = torch.nn.functional.pad(u, (6, 6, 6, 6), value=7)  # [1, 28, 28]
    x = to_model(u)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    expected = u.double() * (2.0 / 255.0) - 1.0
    assert torch.allclose(x[:, 0].double(), expected, atol=1e-6)
    assert float(x[0, 0, 6, 6]) == -1.0 and float(x[0, 0, 21, 21]) == 1.0
    assert torch.equal(to_uint8(x), u)
    xp = to_model(u.unsqueeze(1), pad=True)
    assert xp.shape == (1, 1, 32, 32)
    assert bool((xp[..., :2, :] == -1).all()) and bool((xp[..., :, -2:] == -1).all())
    assert torch.equal(to_uint8(xp), u)  # crops the padding back off
    assert to_uint8(xp, crop_to=None).shape == (1, 32, 32)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 5.0]).reshape(1, 1, 1, 6)
    out = to_uint8(x, crop_to=None)
    assert out.tolist() == [[[0, 0, 128, 255, 255, 255]]]  # (0 + 1) * 127.5 = 127.5 rounds to 128 (half to even)


def test_scaling_errors():
    with pytest.raises(DataError, match="uint8"):
        to_model(torch.zeros(2, 28, 28))
    with pytest.raises(DataError, match="shape"):
        to_model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(DataError, match="NaN"):
        to_uint8(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(DataError, match="float"):
        to_uint8(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(DataError, match="crop"):
        to_uint8(torch.zeros(1, 1, 20, 20))


def test_parse_classes_sorts_dedups_and_names_bad_values():
    assert parse_classes("3") == [3]
    assert parse_classes("5,3,5") == [3, 5]
    assert parse_classes([9, 0]) == [0, 9]
    assert parse_classes(None) is None
    for bad in ("10", "-1", "a", "3,", "", "3;5"):
        with pytest.raises(ValueError, match=repr(bad).strip("'") if bad else "classes"):
            parse_classes(bad)
