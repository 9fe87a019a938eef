"""Tests for fm_nets.dit.DiT: shapes, patch-size errors, zero init, position embedding, patch order,
time dependence over [0, 1], the null label and classifier-free guidance, config round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fm_nets import DIT_CONFIGS, DiT, build_net
from fm_nets.dit import sincos_pos_embed_2d

torch.set_num_threads(1)  # tiny nets: one thread avoids OpenMP stalls on a busy machine

SMALL = dict(in_channels=4, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, time_freq_dim=32)


def _net(**kw) -> DiT:
    """A small DiT whose adaLN modulations and output layer (zero at init) get random weights,
    so that t, y and every patch influence the output."""
    torch.manual_seed(0)
    net = DiT(**{**SMALL, **kw})
    g = torch.Generator().manual_seed(1)
    zero_init = [b.adaLN_modulation[-1] for b in net.blocks] + [
        net.final_layer.adaLN_modulation[-1],
        net.final_layer.linear,
    ]
    with torch.no_grad():
        for layer in zero_init:
            layer.weight.normal_(0.0, 0.1, generator=g)
            layer.bias.normal_(0.0, 0.1, generator=g)
    return net.eval()


@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(), (3, 4, 8, 8)),
        (dict(patch_size=1), (3, 4, 8, 8)),
        (dict(in_channels=1, input_size=28, patch_size=4), (3, 1, 28, 28)),
        (dict(in_channels=3, input_size=[8, 12], patch_size=2), (3, 3, 8, 12)),
    ],
)
def test_output_has_the_input_shape(kw, shape):
    net = _net(num_classes=10, **kw)
    x = torch.randn(*shape)
    v = net(x, torch.rand(3), torch.tensor([0, 5, 10]))
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert net.x_embedder.num_patches == (shape[2] // net.patch_size) * (shape[3] // net.patch_size)


def test_presets_build_and_start_at_zero():
    for name in ("tiny", "small"):
        net = DiT.from_preset(name, num_classes=10)
        assert net.config["hidden_size"] == DIT_CONFIGS[name]["hidden_size"]
        x = torch.randn(2, 4, 8, 8)
        v = net(x, torch.tensor([0.0, 1.0]), torch.tensor([3, 10]))
        assert v.shape == x.shape
        assert torch.count_nonzero(v) == 0  # zero-initialised output layer: v = 0 exactly
    with pytest.raises(ValueError, match="unknown DiT preset 'huge'"):
        DiT.from_preset("huge")


def test_adaln_zero_blocks_start_as_identity():
    net = DiT(**SMALL, num_classes=10)
    tokens = torch.randn(2, 16, 32)
    c = net.condition(torch.rand(2), torch.tensor([1, 2]), 2, tokens)
    for block in net.blocks:
        assert torch.equal(block(tokens, c), tokens)


def test_patch_size_must_divide_the_input():
    with pytest.raises(ValueError, match=r"patch_size 2 does not divide input_size 7x7"):
        DiT(**{**SMALL, "input_size": 7})
    with pytest.raises(ValueError, match=r"patch_size 3 does not divide input_size 28x28"):
        DiT(**{**SMALL, "in_channels": 1, "input_size": 28, "patch_size": 3})
    net = _net()
    with pytest.raises(ValueError, match=r"patch_size 2 does not divide the input size 7x7"):
        net(torch.randn(1, 4, 7, 7), 0.5)
    with pytest.raises(ValueError, match=r"built for 8x8 inputs.*got 12x12"):
        net(torch.randn(1, 4, 12, 12), 0.5)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        net(torch.randn(1, 3, 8, 8), 0.5)


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_heads"):
        DiT(**{**SMALL, "num_heads": 3})
    with pytest.raises(ValueError, match="divisible by 4"):
        DiT(**{**SMALL, "hidden_size": 6, "num_heads": 2})
    with pytest.raises(ValueError, match="unconditional"):
        _net()(torch.randn(1, 4, 8, 8), 0.5, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        _net(num_classes=10)(torch.randn(1, 4, 8, 8), 0.5, torch.tensor([11]))


def test_position_embedding_matches_the_closed_form():
    dim, gh, gw = 8, 3, 5
    pe = sincos_pos_embed_2d(dim, gh, gw)
    assert pe.shape == (gh * gw, dim)
    q = dim // 4
    for r in range(gh):
        for c in range(gw):
            row = pe[r * gw + c]  # tokens are row-major, as timm's PatchEmbed flattens them
            for k in range(q):
                w = 10000 ** (-k / q)
                assert row[k] == pytest.approx(math.sin(r * w), abs=1e-6)
                assert row[q + k] == pytest.approx(math.cos(r * w), abs=1e-6)
                assert row[2 * q + k] == pytest.approx(math.sin(c * w), abs=1e-6)
                assert row[3 * q + k] == pytest.approx(math.cos(c * w), abs=1e-6)
    net = DiT(**SMALL)
    assert not any(n == "pos_embed" for n, _ in net.named_parameters())  # fixed, not learned


def test_unpatchify_puts_each_patch_back_where_it_came_from():
    """With the blocks' gates at zero, each output patch depends only on the same input patch
    (checked with autograd); a wrong token order in patchify/unpatchify would move it."""
    net = _net(in_channels=2, input_size=[4, 6], patch_size=2)
    with torch.no_grad():
        for block in net.blocks:
            block.adaLN_modulation[-1].weight.zero_()
            block.adaLN_modulation[-1].bias.zero_()
    x = torch.randn(1, 2, 4, 6, requires_grad=True)
    v = net(x, 0.3)
    for i, j in [(0, 0), (0, 2), (1, 1), (1, 2)]:
        (grad,) = torch.autograd.grad(v[0, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].sum(), x, retain_graph=True)
        mask = torch.zeros_like(grad, dtype=torch.bool)
        mask[0, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = True
        assert grad[mask].abs().sum() > 0 and grad[~mask].abs().sum() == 0


def test_output_and_conditioning_vary_over_t_in_unit_interval():
    net = _net(num_classes=10)
    ts = torch.linspace(0.0, 1.0, 11)
    x = torch.randn(1, 4, 8, 8).expand(11, -1, -1, -1)
    y = torch.full((11,), 3)
    with torch.no_grad():
        c = net.condition(ts, y, 11, x)
        v = net(x, ts, y)
    dc = torch.cdist(c, c) + torch.eye(11) * 1e9
    dv = torch.cdist(v.flatten(1), v.flatten(1)) + torch.eye(11) * 1e9
    # neighbouring times 0.1 apart give distinct conditioning and velocity (at this small init
    # the time part of c is about 0.06 of its norm; a constant embedding would give 0 here)
    assert float(dc.min()) > 0.01 * float(c.norm(dim=1).mean())
    assert float(dv.min()) > 1e-3 * float(v.flatten(1).norm(dim=1).mean())
    # the sinusoidal features behind c see 1000 t: most of them move between t = 0 and t = 1
    from fm_nets.embeddings import sinusoidal_embedding

    f = sinusoidal_embedding(ts, net.t_embedder.freq_dim, net.t_embedder.scale)
    assert float(((f.max(0).values - f.min(0).values) > 0.5).float().mean()) > 0.7
    # a scalar t is broadcast to the batch
    assert torch.allclose(net(x[:2], 0.5, y[:2]), net(x[:2], torch.full((2,), 0.5), y[:2]))


def test_null_label_and_guidance():
    net = _net(num_classes=10)
    x, t = torch.randn(4, 4, 8, 8), torch.rand(4)
    y = torch.tensor([0, 3, 7, 9])
    null = torch.full((4,), 10)
    with torch.no_grad():
        v_cond, v_null = net(x, t, y), net(x, t, null)
        assert torch.equal(net(x, t), v_null)  # y=None is the null class
        assert (v_cond - v_null).flatten(1).norm(dim=1).min() > 1e-4  # labels matter
        # guidance as samplers run it (fm_core.CFGVelocity): one batched call of size 2B,
        # conditional rows then null rows; it must equal the two separate calls
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        assert torch.allclose(both[:4], v_cond, atol=1e-5) and torch.allclose(both[4:], v_null, atol=1e-5)
        for w in (0.0, 1.0, 2.5):
            guided = both[4:] + w * (both[:4] - both[4:])
            assert torch.allclose(guided, v_null + w * (v_cond - v_null), atol=1e-5)
        assert torch.allclose(both[4:] + 1.0 * (both[:4] - both[4:]), v_cond, atol=1e-5)
        # every row depends only on its own label: a batch of one gives the same velocity
        assert torch.allclose(net(x[1:2], t[1:2], y[1:2]), v_cond[1:2], atol=1e-5)


def test_config_is_json_and_rebuilds_the_same_net():
    net = _net(num_classes=10, input_size=[8, 12])
    cfg = json.loads(json.dumps(net.config))
    clone = build_net("dit", **cfg)
    clone.load_state_dict(net.state_dict())
    clone.eval()
    x, t, y = torch.randn(2, 4, 8, 12), torch.rand(2), torch.tensor([1, 10])
    assert torch.equal(clone(x, t, y), net(x, t, y))
    assert "pos_embed" not in net.state_dict()  # a fixed buffer, rebuilt from the config


def test_gradients_reach_every_parameter_after_one_step():
    """adaLN-Zero: at init only the output layer gets a gradient (step 1 makes it non-zero, step 2
    the modulations, so step 3 reaches the embeddings); then every parameter learns."""
    torch.manual_seed(0)
    net = DiT(**SMALL, num_classes=10)
    x, t, y = torch.randn(8, 4, 8, 8), torch.rand(8), torch.randint(0, 11, (8,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        ((net(x, t, y) - x) ** 2).mean().backward()
        opt.step()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
