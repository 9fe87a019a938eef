"""Corrupting the IDX files on purpose: flipped bytes, cut files, swapped files, random damage.

Every damaged file must give a one-line :class:`DataError` that names the file (never a
zlib/numpy exception, never a huge allocation from a lying header, never silently wrong data).
The real-file cases copy the small test split of MNIST from FM_DATA_DIR (skipped without it);
the random-damage sweep uses a small synthetic IDX file (seeded, 300 damaged copies).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fm_data import images as im
from fm_data.images import DataError, load_images, read_idx

torch.set_num_threads(1)

_DEFAULT_DATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()


def _real_mnist() -> Path | None:
    for d in ([Path(os.environ["FM_DATA_DIR"])] if os.environ.get("FM_DATA_DIR") else []) + [_DEFAULT_DATA]:
        if (d / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return d / "mnist"
    return None


REAL = _real_mnist()
needs_real = pytest.mark.skipif(REAL is None, reason="MNIST IDX files not found (set FM_DATA_DIR=../shared/data)")


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A copy of the real MNIST folder (test split files copied, train files linked) and no other lookups."""
    monkeypatch.delenv("FM_DATA_DIR", raising=False)
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "0")
    monkeypatch.setattr(im, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(im, "_VERIFIED", {})
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for f in REAL.iterdir():
        if f.name.startswith("t10k"):
            shutil.copyfile(f, d / f.name)
        else:
            os.symlink(f.resolve(), d / f.name)
    return d


def _error(**kw) -> str:
    with pytest.raises(DataError) as e:
        load_images("mnist", "test", **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@needs_real
def test_the_copy_loads(data_copy):
    """Control: the undamaged copy gives the 10,000 test images."""
    assert len(load_images("mnist", "test", data_dir=data_copy.parent)) == 10_000


@needs_real
@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_flipped_byte_in_the_compressed_stream(data_copy, where):
    f = data_copy / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(f.read_bytes())
    i = int(len(raw) * where)
    raw[i] ^= 0xFF
    f.write_bytes(bytes(raw))
    msg = _error(data_dir=data_copy.parent)
    assert str(f) in msg and ("corrupt" in msg or "MD5" in msg), msg


@needs_real
@pytest.mark.parametrize("keep", [0, 5, 100, 0.5])
def test_cut_file(data_copy, keep):
    f = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = f.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    f.write_bytes(raw[:n])
    msg = _error(data_dir=data_copy.parent)
    assert str(f) in msg and "corrupt" in msg, msg  # an empty file is valid gzip of b"": the MD5 catches it


@needs_real
def test_one_pixel_changed_and_recompressed(data_copy):
    """A valid gzip of a valid IDX file whose content differs by one pixel: only the MD5 sees it."""
    f = data_copy / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[16 + 28 * 14 + 14] ^= 0x01
    f.write_bytes(gzip.compress(bytes(raw)))
    msg = _error(data_dir=data_copy.parent)
    assert str(f) in msg and "MD5" in msg and im.MD5["mnist"]["t10k-images-idx3-ubyte"] in msg


@needs_real
def test_images_and_labels_swapped(data_copy):
    a, b = data_copy / "t10k-images-idx3-ubyte.gz", data_copy / "t10k-labels-idx1-ubyte.gz"
    tmp = data_copy / "swap"
    a.rename(tmp), b.rename(a), tmp.rename(b)
    msg = _error(data_dir=data_copy.parent)
    assert str(a) in msg and "MD5" in msg


@needs_real
def test_file_of_the_other_data_set(data_copy, tmp_path):
    """A Fashion-MNIST file dropped into the MNIST folder (same format, other data) is refused."""
    fashion = REAL.parent / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    if not fashion.is_file():
        pytest.skip("Fashion-MNIST files not found")
    shutil.copyfile(fashion, data_copy / "t10k-labels-idx1-ubyte.gz")
    msg = _error(data_dir=data_copy.parent)
    assert str(data_copy / "t10k-labels-idx1-ubyte.gz") in msg and "MD5" in msg


@needs_real
def test_empty_and_unreadable_files(data_copy):
    f = data_copy / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(b"")
    assert str(f) in _error(data_dir=data_copy.parent)
    f.unlink()
    f.mkdir()  # a folder where the file should be: not found, with the paths tried
    with pytest.raises(DataError, match="could not find"):
        load_images("mnist", "test", data_dir=data_copy.parent)


# ----------------------------------------------------------------------------- random damage


def _idx(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def test_lying_headers_are_refused_without_allocating():
    """Headers that promise 2^32-1 images (or 0 dims, 9 dims) are refused from the sizes alone."""
    body = bytes(28 * 28)
    cases = [
        bytes([0, 0, 8, 3]) + struct.pack(">III", 2**32 - 1, 28, 28) + body,
        bytes([0, 0, 8, 0]) + body,
        bytes([0, 0, 8, 9]) + struct.pack(">" + "I" * 9, *[2] * 9),
        bytes([0, 0, 8, 3]) + struct.pack(">II", 1, 28),  # header cut inside the dims
    ]
    for raw in cases:
        with pytest.raises(DataError) as e:
            im._parse_idx(raw, "lying.idx")
        assert "lying.idx" in str(e.value) and "\n" not in str(e.value)


def test_random_damage_is_always_a_data_error(tmp_path):
    """300 randomly damaged copies (bytes flipped, cut, inserted) of a small IDX file: each read
    either raises a one-line DataError naming the file or, without an MD5 to check, returns an
    array whose size agrees with its own header; with the MD5 every damaged copy is refused."""
    rng = random.Random(8)
    arr = np.random.default_rng(8).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    good = _idx(arr)
    md5 = hashlib.md5(good).hexdigest()
    f = tmp_path / "x-idx3-ubyte.gz"
    refused = 0
    for i in range(300):
        raw = bytearray(gzip.compress(good) if i % 2 else good)  # damage the gzip stream or the content
        kind = rng.choice(("flip", "cut", "insert"))
        pos = rng.randrange(len(raw))
        if kind == "flip":
            raw[pos] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        f.write_bytes(bytes(raw) if i % 2 else gzip.compress(bytes(raw)))
        os.utime(f, ns=(i, i))
        for expected in (md5, None):
            try:
                out = read_idx(f, expected_md5=expected)
            except DataError as e:
                assert str(f) in str(e) and "\n" not in str(e), str(e)
                refused += expected is not None
                continue
            assert expected is None, f"damaged copy {i} ({kind} at {pos}) passed the MD5 check"
            assert out.dtype == np.uint8 and out.size == len(gzip.decompress(f.read_bytes())) - 4 - 4 * out.ndim
    assert refused == 300
