"""Device resolution, autocast and compile helpers (CPU-only machine; CUDA/MPS faked by monkeypatching)."""

import pytest
import torch
from torch import nn

from fm_train import autocast, maybe_compile, resolve_device
from fm_train import devices as devices_mod


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices_mod, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_falls_back_to_cpu(no_accelerators):
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch, two_gpus):
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices_mod, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_explicit_devices(two_gpus):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_unavailable_is_a_clear_error(no_accelerators):
    with pytest.raises(ValueError, match=r"'cuda'.*CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:1'.*CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"'mps'.*MPS"):
        resolve_device("mps")


def test_cuda_index_out_of_range(two_gpus):
    with pytest.raises(ValueError, match=r"'cuda:2'.*2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "", "cpu:1", 3])
def test_unknown_device_names_allowed_values(spec):
    with pytest.raises(ValueError, match=r"unknown device|must be a string"):
        resolve_device(spec)


def test_autocast_off_is_a_noop():
    with autocast("cpu", bf16=False):
        assert not torch.is_autocast_enabled("cpu")
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.float32


def test_autocast_bf16_on_cpu_when_asked():
    lin = nn.Linear(4, 4)
    with autocast(torch.device("cpu"), bf16=True):
        y = lin(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32


def test_maybe_compile_disabled_returns_the_same_module():
    m = nn.Linear(2, 2)
    assert maybe_compile(m, False) is m
