"""Fixtures of the fm-toy2d tests (apps/conftest.py adds ``one_thread`` and ``needs_mnist``)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def fast_env():
    """FM_TOY2D_FAST=1 for the module: pictures with fewer points and frames."""
    old = os.environ.get("FM_TOY2D_FAST")
    os.environ["FM_TOY2D_FAST"] = "1"
    yield
    if old is None:
        os.environ.pop("FM_TOY2D_FAST", None)
    else:
        os.environ["FM_TOY2D_FAST"] = old
