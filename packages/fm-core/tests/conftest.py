"""Fixtures shared by fm-core's tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread avoids contention on a shared CPU (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
