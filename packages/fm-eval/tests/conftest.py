"""Shared fixtures of fm-eval's tests: one torch thread, and the MNIST / Fashion-MNIST folder
(FM_DATA_DIR; in CI ../shared/data beside the checkout; tests that need it skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[3]


def _find_data_dir() -> Path | None:
    env = os.environ.get("FM_DATA_DIR")
    for d in ([Path(env)] if env else []) + [(_ROOT / ".." / "shared" / "data").resolve()]:
        if (d / "mnist" / "t10k-images-idx3-ubyte.gz").is_file() and (d / "fashion-mnist").is_dir():
            return d
    return None


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small batches: one thread avoids OpenMP barrier stalls on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding mnist/ and fashion-mnist/ IDX files; skips the test when there is none."""
    d = _find_data_dir()
    if d is None:
        pytest.skip("MNIST/Fashion-MNIST not found (set FM_DATA_DIR to the folder holding mnist/ and fashion-mnist/)")
    return d
