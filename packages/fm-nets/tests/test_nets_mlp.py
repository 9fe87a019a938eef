"""MLPVelocity: shapes, time handling, conditioning with a null class, configs, the post's recipe."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fm_nets import MLPVelocity, build_net


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    # (torch.testing.assert_close imports torch.distributed on first use: tens of seconds on a busy CPU)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol), float((a - b).abs().max())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("kw", [{}, {"residual": False}, {"time_embedding": "raw", "activation": "relu"}])
def test_shapes_on_vectors_and_images(kw):
    net = MLPVelocity(2, hidden=32, depth=2, **kw)
    x, t = torch.randn(5, 2), torch.rand(5)
    v = net(x, t)
    assert v.shape == (5, 2) and v.dtype == torch.float32
    img_net = MLPVelocity(1 * 4 * 4, hidden=32, depth=2, **kw)
    img = torch.randn(3, 1, 4, 4)
    out = img_net(img, torch.rand(3))
    assert out.shape == img.shape
    # flattening is per sample: the image result equals the net applied to flat rows
    t3 = torch.rand(3)
    assert_close(img_net(img, t3).reshape(3, 16), img_net(img.reshape(3, 16), t3))
    with pytest.raises(ValueError, match="16 features"):
        img_net(torch.randn(3, 1, 4, 5), t3)


def test_output_depends_on_t_and_scalar_t_broadcasts():
    net = MLPVelocity(2, hidden=32, depth=2)
    x = torch.randn(4, 2)
    full = net(x, torch.full((4,), 0.3))
    assert_close(net(x, 0.3), full)
    assert_close(net(x, torch.tensor(0.3)), full)
    assert not torch.allclose(net(x, 0.0), net(x, 1.0), atol=1e-3)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        net(x, torch.rand(3))


def test_each_sample_sees_its_own_t_and_y():
    net = MLPVelocity(2, hidden=32, depth=2, num_classes=3)
    x, t, y = torch.randn(6, 2), torch.rand(6), torch.tensor([0, 1, 2, 3, 0, 1])
    batched = net(x, t, y)
    one_by_one = torch.cat([net(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(6)])
    assert_close(batched, one_by_one)


def test_conditioning_null_class_and_bad_labels():
    net = MLPVelocity(2, hidden=32, depth=2, num_classes=5)
    x, t = torch.randn(8, 2), torch.rand(8)
    v0 = net(x, t, torch.zeros(8, dtype=torch.long))
    v1 = net(x, t, torch.ones(8, dtype=torch.long))
    assert (v0 - v1).abs().max() > 1e-3, "labels must change the output"
    assert_close(net(x, t, None), net(x, t, torch.full((8,), 5)))  # None == null class 5
    for bad in (6, -1):
        with pytest.raises(ValueError, match=r"\[0, 5\]"):
            net(x, t, torch.full((8,), bad))
    with pytest.raises(ValueError, match="unconditional"):
        MLPVelocity(2, hidden=16, depth=1)(x, t, torch.zeros(8, dtype=torch.long))


def test_config_round_trips_through_build_net_and_json():
    for net in (MLPVelocity(3, hidden=48, depth=3, num_classes=4), MLPVelocity.post_recipe(2, num_classes=5)):
        cfg = json.loads(json.dumps(net.config))
        clone = build_net("mlp", **cfg)
        clone.load_state_dict(net.state_dict())  # same architecture: every key and shape matches
        x, t = torch.randn(4, net.dim), torch.rand(4)
        y = torch.tensor([0, 1, 2, 3])
        assert_close(clone(x, t, y), net(x, t, y))
        assert clone.config == net.config


def test_post_recipe_layout_and_parameter_count():
    d = 2
    net = MLPVelocity.post_recipe(d)
    assert net.config == dict(
        dim=2,
        hidden=512,
        depth=5,
        time_dim=128,
        num_classes=None,
        activation="relu",
        time_embedding="raw",
        residual=False,
        fourier_features=0,
    )
    expected = (
        (d * 512 + 512)  # input projection
        + (1 * 128 + 128)
        + (128 * 512 + 512)  # time MLP 1 -> 128 -> 512
        + (1024 * 512 + 512)  # concat + projection
        + 5 * (512 * 512 + 512)  # five Linear(512) + ReLU
        + (512 * d + d)  # output projection
    )
    assert sum(p.numel() for p in net.parameters()) == expected
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 6 and not any(
        isinstance(m, (nn.SiLU, nn.LayerNorm)) for m in net.modules()
    )
    # the time MLP sees raw t: relu(t * w1 + b1) @ W2^T + b2, computed by hand
    lin1, lin2 = net.time_embed.mlp[0], net.time_embed.mlp[2]
    t = torch.tensor([0.0, 0.37, 1.0])
    by_hand = torch.relu(t[:, None] * lin1.weight[:, 0] + lin1.bias) @ lin2.weight.T + lin2.bias
    assert_close(net.time_embed(t), by_hand)


def test_default_time_embedding_varies_over_unit_interval():
    net = MLPVelocity(2)
    with torch.no_grad():
        emb = net.time_embed(torch.linspace(0, 1, 101))
    ranges = emb.max(0).values - emb.min(0).values
    assert float((ranges > 0.5 * emb.std()).float().mean()) > 0.8


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="silu, relu, gelu"):
        MLPVelocity(2, activation="tanh")
    with pytest.raises(ValueError, match="sinusoidal, raw"):
        MLPVelocity(2, time_embedding="fourier")
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        MLPVelocity(2, hidden=0)
    with pytest.raises(ValueError, match="num_classes"):
        MLPVelocity(2, num_classes=0)
    with pytest.raises(ValueError, match="unknown network 'mpl'"):
        build_net("mpl", dim=2)


def test_gradients_reach_every_parameter():
    net = MLPVelocity(2, hidden=32, depth=2, num_classes=3)
    net(torch.randn(16, 2), torch.rand(16), torch.randint(0, 4, (16,))).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_fourier_features_of_the_input_by_hand():
    net = MLPVelocity(2, hidden=16, depth=1, fourier_features=3)
    seen = {}
    net.in_proj.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    net(x, torch.rand(2))
    w = torch.tensor([torch.pi / 4, torch.pi / 2, torch.pi])  # periods 8, 4, 2
    args = torch.stack(
        [x[:, 0] * w[0], x[:, 0] * w[1], x[:, 0] * w[2], x[:, 1] * w[0], x[:, 1] * w[1], x[:, 1] * w[2]], 1
    )
    assert_close(seen["x"], torch.cat([x, torch.sin(args), torch.cos(args)], 1))
    assert "x_freqs" not in net.state_dict()  # rebuilt from the config, not saved
    clone = build_net("mlp", **net.config)
    clone.load_state_dict(net.state_dict())
    assert_close(clone(x, 0.3), net(x, 0.3))
