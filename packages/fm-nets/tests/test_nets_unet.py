"""Tests for fm_nets.unet.UNet: shapes, conditioning, null class, time dependence, config round trip, errors."""

from __future__ import annotations

import json

import pytest
import torch

from fm_nets import build_net
from fm_nets.unet import UNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets: one thread avoids OpenMP barrier stalls on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = dict(channels=(8, 16, 16), groups=4, num_heads=2, emb_dim=32, patch_size=1, mid_blocks=2)


def _randomize_zero_params(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers (output conv, attention projection) random weights, so
    that every input path can influence the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def _net(**kw) -> UNet:
    torch.manual_seed(0)
    return _randomize_zero_params(UNet(**{**SMALL, **kw})).eval()


@pytest.mark.parametrize("size, channels", [(28, (8, 16, 16)), (32, (8, 16, 16)), (32, (8, 8, 16, 16)), (28, (8,))])
def test_output_shape_matches_input(size, channels):
    net = _net(channels=channels, num_classes=10)
    x = torch.randn(3, 1, size, size)
    assert net(x, torch.rand(3), torch.tensor([0, 5, 10])).shape == x.shape


def test_default_config_shapes_and_zero_init():
    net = UNet(num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    v = net(x, torch.rand(2))
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0  # zero-initialised output conv: v = 0 at start
    assert net(torch.randn(2, 1, 32, 32), 0.5).shape == (2, 1, 32, 32)


def test_patch_size_folds_pixels():
    net = _net(channels=(8, 16), patch_size=2, num_classes=10)  # runs at 14 -> 7 for 28x28 inputs
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.rand(2), torch.tensor([1, 10])).shape == x.shape
    assert net.stem.in_channels == 4 and net.out_conv.out_channels == 4
    # the output pixel (i, j) depends on the input through the folded patches: a change at one
    # pixel changes the velocity at that pixel (checked with autograd)
    x.requires_grad_(True)
    net(x, torch.full((2,), 0.5))[0, 0, 5, 6].backward()
    assert x.grad[0, 0, 5, 6] != 0 and x.grad[1].abs().sum() == 0  # and never across samples
    with pytest.raises(ValueError, match="divisible by 8"):
        _net(channels=(8, 16, 16), patch_size=2)(torch.randn(1, 1, 28, 28), 0.5)
    assert _net(channels=(8, 16, 16), patch_size=2)(torch.randn(1, 1, 32, 32), 0.5).shape == (1, 1, 32, 32)


def test_multichannel_rectangular():
    net = _net(in_channels=3, channels=(8, 16))
    x = torch.randn(2, 3, 12, 20)
    assert net(x, torch.rand(2)).shape == x.shape


def test_size_the_depth_cannot_handle_raises():
    net = _net(channels=(8, 8, 16, 16))  # three halvings: needs multiples of 8
    with pytest.raises(ValueError, match=r"divisible by 8; got 28x28.*pad"):
        net(torch.randn(1, 1, 28, 28), torch.rand(1))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        net(torch.randn(1, 2, 32, 32), torch.rand(1))


def test_label_changes_output_and_null_equals_none():
    net = _net(num_classes=10)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    with torch.no_grad():
        v0 = net(x, t, torch.zeros(4, dtype=torch.long))
        v1 = net(x, t, torch.ones(4, dtype=torch.long))
        v_null = net(x, t, torch.full((4,), 10))
        v_none = net(x, t, None)
    assert (v0 - v1).abs().mean() > 1e-3 * v0.abs().mean()
    assert torch.equal(v_null, v_none)
    assert not torch.allclose(v_null, v0)


def test_time_changes_output_and_scalar_t_broadcasts():
    net = _net()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        va, vb = net(x, torch.full((2,), 0.1)), net(x, torch.full((2,), 0.9))
        vc = net(x, torch.full((2,), 0.1001))
        assert (va - vb).abs().mean() > 1e-3 * va.abs().mean()
        assert not torch.equal(va, vc)  # t*1000 sinusoids resolve small differences in t
        assert torch.allclose(net(x, 0.1), va, atol=1e-6)
        assert torch.allclose(net(x, torch.tensor(0.1)), va, atol=1e-6)


@pytest.mark.parametrize("conditioning", ["scale-shift", "additive"])
def test_samples_are_independent_and_all_params_get_gradients(conditioning):
    """GroupNorm (not BatchNorm): a sample's output must not depend on the rest of the batch."""
    net = _net(num_classes=10, conditioning=conditioning)
    x, t, y = torch.randn(5, 1, 28, 28), torch.rand(5), torch.tensor([1, 2, 3, 10, 4])
    full = net(x, t, y)
    part = net(x[1:3], t[1:3], y[1:3])
    assert torch.allclose(full[1:3], part, atol=1e-5)
    full.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the embedding rows of labels absent from y get no gradient; everything else must
    assert all(n == "label_embed.embedding.weight" for n in missing), missing


def test_build_net_round_trip():
    net = _net(num_classes=10, attention=False, dropout=0.1, conditioning="additive", mid_blocks=1)
    cfg = json.loads(json.dumps(net.config))  # config.json-safe
    twin = build_net("unet", **cfg)
    twin.load_state_dict(net.state_dict())
    twin.eval()
    x, t, y = torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([3, 10])
    assert torch.equal(net(x, t, y), twin(x, t, y))
    assert twin.config == cfg
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in net.parameters())


def test_without_attention_and_middle():
    net = _net(attention=False, mid_blocks=0)
    assert net.attn is None and len(net.mid) == 0
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.rand(2)).shape == x.shape


def test_dropout_only_in_training():
    net = _net(dropout=0.5)
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=(30, 60), groups=8), r"divisible by groups=8.*\[30, 60\]"),
        (dict(channels=(32, 64), groups=0), "groups must be >= 1"),
        (dict(channels=(), groups=8), "non-empty"),
        (dict(channels=(32, 48), num_heads=5), "num_heads=5"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(conditioning="concat"), "unknown conditioning 'concat'"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_classes=0), "num_classes"),
        (dict(emb_dim=33), "emb_dim"),
        (dict(patch_size=0), "patch_size"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_bad_labels_raise():
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with pytest.raises(ValueError, match="unconditional"):
        _net()(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        _net(num_classes=10)(x, t, torch.tensor([1, 11]))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        _net()(x, torch.rand(3))
