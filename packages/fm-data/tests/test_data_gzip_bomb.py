"""A gzip bomb in place of an IDX file: decompression stops at the size the IDX header allows (at
most MAX_IDX_BYTES), with a one-line DataError, before the MD5 check and without filling the memory."""

from __future__ import annotations

import gzip
import resource
import struct

import numpy as np
import pytest

import fm_data.images as images
from fm_data.images import DataError, read_idx


def _idx(dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + payload


def test_a_bomb_behind_an_honest_header_stops_at_the_header_size(tmp_path):
    """A 10-label header followed by 200 MB of zeros (a ~200 kB file)."""
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(_idx((10,), bytes(range(10))))
        chunk = bytes(2**20)
        for _ in range(200):
            f.write(chunk)
    assert path.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"decompresses to more than the 18 bytes its IDX header allows") as e:
        read_idx(path)
    assert "\n" not in str(e.value)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # ru_maxrss: KiB on Linux
    assert grown_mb < 50, grown_mb


def test_a_bomb_with_a_lying_header_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IDX_BYTES", 1000)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx((2**31 - 1, 28, 28), bytes(5000))))
    with pytest.raises(DataError, match=r"more than the 1,000 bytes"):
        read_idx(path)


def test_an_exact_file_still_reads(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "ok.gz"
    path.write_bytes(gzip.compress(_idx(data.shape, data.tobytes())))
    assert np.array_equal(read_idx(path), data)
