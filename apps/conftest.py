"""Fixtures and markers shared by the apps' tests (pytest finds this file above apps/*/tests).

- ``@pytest.mark.needs_mnist``: skip the test, with the reason, when the MNIST IDX files are not found
  (set ``FM_DATA_DIR``, e.g. ``FM_DATA_DIR=../shared/data``).
- ``one_thread``: torch on one thread for the test (tests run beside each other on 2 cores).
"""

from __future__ import annotations

import functools

import pytest


@functools.cache
def why_no_mnist() -> str | None:
    """None when the MNIST files are found, else the reason to skip."""
    from fm_data.images import DataError, find_dataset_dir

    try:
        find_dataset_dir("mnist", download=False)
    except DataError:
        return "MNIST files not found (set FM_DATA_DIR, e.g. FM_DATA_DIR=../shared/data)"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_mnist: skipped (with the reason) when the MNIST files are not found")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("needs_mnist") is not None and why_no_mnist() is not None:
            item.add_marker(pytest.mark.skip(reason=why_no_mnist()))


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
