"""Tests for the token models fm_nets.TokenDiT and fm_nets.TokenMLP: shapes, zero initial logits,
refused inputs, the mask token, dependence on t and y, the patch layout (against a loop written out
by hand), save/load round trips, and a few optimiser steps that lower the cross-entropy."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fm_nets import NETS, TokenDiT, TokenMLP, build_net, interval_embedding_params

torch.set_num_threads(1)  # tiny nets: one thread avoids OpenMP stalls on a busy machine

SMALL_DIT = dict(embed_dim=8, hidden_size=32, depth=2, num_heads=4)
SMALL_MLP = dict(embed_dim=8, hidden=32, depth=2, time_dim=16)


def _zero_init_layers(net: torch.nn.Module) -> list[torch.nn.Linear]:
    """The layers that start at zero: adaLN modulations and the output layer (TokenDiT), the output layer (TokenMLP)."""
    if isinstance(net, TokenDiT):
        blocks = [*net.blocks, net.final_layer]
        return [b.adaLN_modulation[-1] for b in blocks] + [net.final_layer.linear]
    return [net.out[-1]]


def _randomize(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights for the zero-initialised layers, so t, y and every token can move the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _zero_init_layers(net):
            layer.weight.normal_(0.0, 0.3, generator=g)
            layer.bias.normal_(0.0, 0.3, generator=g)
    return net.eval()


def _dit(**kw) -> TokenDiT:
    torch.manual_seed(0)
    return TokenDiT(**{"vocab_size": 5, "grid": (4, 6), "patch_size": 2, **SMALL_DIT, **kw})


def _mlp(**kw) -> TokenMLP:
    torch.manual_seed(0)
    return TokenMLP(**{"vocab_size": 7, "seq_len": 2, **SMALL_MLP, **kw})


def _tokens(shape, high: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("grid", "patch", "x_shape"),
    [((28, 28), 2, (3, 28, 28)), ((28, 28), 4, (3, 28, 28)), ((1, 2), 1, (3, 1, 2)), ((5,), 1, (3, 5)), (5, 1, (3, 5))],
)
@pytest.mark.parametrize("num_classes", [None, 10])
def test_token_dit_logits_have_shape_batch_grid_vocab(grid, patch, x_shape, num_classes):
    net = _randomize(TokenDiT(vocab_size=16, grid=grid, patch_size=patch, num_classes=num_classes, **SMALL_DIT))
    x = _tokens(x_shape, 17)  # 16 = the mask token
    y = torch.tensor([0, 9, 10]) if num_classes else None
    logits = net(x, torch.rand(3), y)
    assert logits.shape == (*x_shape, 16)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert net.config["grid"] == ([grid] if isinstance(grid, int) else list(grid))


@pytest.mark.parametrize("seq_len", [1, 2, 5])
@pytest.mark.parametrize("num_classes", [None, 4])
def test_token_mlp_logits_have_shape_batch_seq_vocab(seq_len, num_classes):
    net = _randomize(TokenMLP(vocab_size=64, seq_len=seq_len, num_classes=num_classes, **SMALL_MLP))
    x = _tokens((3, seq_len), 65)
    logits = net(x, 0.5, torch.tensor([0, 3, 4]) if num_classes else None)
    assert logits.shape == (3, seq_len, 64)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_token_dit_presets_and_parameter_count():
    net = TokenDiT.from_preset("tiny", vocab_size=16, grid=(28, 28), patch_size=2, num_classes=10)
    assert (net.config["hidden_size"], net.config["depth"], len(net.blocks)) == (128, 6, 6)
    assert net.pos_embed.shape == (1, 196, 128)
    with pytest.raises(ValueError, match="unknown DiT preset 'huge'"):
        TokenDiT.from_preset("huge", vocab_size=2, grid=2)
    # count by hand: token table, patch projection, time MLP, labels, 6 blocks, final layer
    d, e, p, v = 128, 32, 2, 16
    block = 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d + d * 6 * d + 6 * d
    expected = (
        (v + 1) * e
        + (p * p * e * d + d)
        + (256 * d + d + d * d + d)
        + 11 * d
        + 6 * block
        + (d * 2 * d + 2 * d)
        + (d * p * p * v + p * p * v)
    )
    assert sum(q.numel() for q in net.parameters()) == expected


# ---------------------------------------------------------------------------------------------- initial state


@pytest.mark.parametrize("make", [_dit, _mlp], ids=["dit", "mlp"])
def test_initial_logits_are_zero_and_random_output_weights_vary_by_position(make):
    net = make(num_classes=3).eval()
    shape = (4, *net.grid) if isinstance(net, TokenDiT) else (4, net.seq_len)
    x = _tokens(shape, net.vocab_size + 1)
    logits = net(x, torch.rand(4), torch.tensor([0, 1, 2, 3]))
    assert torch.count_nonzero(logits) == 0  # uniform posterior
    _randomize(net)
    logits = net(x, torch.rand(4), torch.tensor([0, 1, 2, 3]))
    per_position = logits[0].reshape(-1, net.vocab_size)
    n = per_position.shape[0]
    gaps = torch.cdist(per_position, per_position) + torch.eye(n)
    assert gaps.min() > 1e-3  # every position has its own logits


def test_cross_entropy_starts_at_log_vocab():
    net = _dit(mask_token=True)
    x1 = _tokens((8, 4, 6), 5)
    logits = net(torch.full_like(x1, 5), torch.zeros(8))  # all masked at t = 0
    ce = F.cross_entropy(logits.reshape(-1, 5), x1.reshape(-1))
    assert ce.item() == pytest.approx(math.log(5), rel=1e-6)


# ---------------------------------------------------------------------------------------------- refusals


def test_patch_size_must_divide_the_grid():
    with pytest.raises(ValueError, match=r"patch_size 2 does not divide grid 7x7"):
        TokenDiT(vocab_size=4, grid=(7, 7), patch_size=2)
    with pytest.raises(ValueError, match=r"patch_size 3 does not divide grid 28x28"):
        TokenDiT(vocab_size=4, grid=(28, 28), patch_size=3)
    with pytest.raises(ValueError, match=r"patch_size 2 does not divide grid 1x6 \(a 1D grid is 1 x L"):
        TokenDiT(vocab_size=4, grid=(6,), patch_size=2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(grid=(2, 3, 4)), r"grid must be an int L, \(L,\) or \(H, W\)"),
        (dict(grid=(0, 4)), "grid must be"),
        (dict(grid=True), "grid must be"),
        (dict(vocab_size=0), "vocab_size must be an int >= 1, got 0"),
        (dict(hidden_size=30, num_heads=3), "divisible by 4"),
        (dict(hidden_size=32, num_heads=3), "divisible by num_heads 3"),
        (dict(depth=-1), "depth must be an int >= 0"),
        (dict(num_classes=0), "num_classes must be an int >= 1"),
        (dict(mask_token=1), "mask_token must be True or False"),
        (dict(mlp_ratio=0.0), "mlp_ratio must be positive"),
    ],
)
def test_token_dit_refuses_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _dit(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(seq_len=0), "seq_len must be an int >= 1, got 0"),
        (dict(time_dim=15), "time_dim must be even"),
        (dict(num_classes=2.0), "num_classes must be None or an int"),
        (dict(mask_token="yes"), "mask_token must be True or False"),
    ],
)
def test_token_mlp_refuses_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _mlp(**kw)


@pytest.mark.parametrize("make", [_dit, _mlp], ids=["dit", "mlp"])
def test_token_ids_out_of_range_are_value_errors_naming_the_value_and_range(make):
    with_mask, without = make(), make(mask_token=False)
    shape = (2, *with_mask.grid) if isinstance(with_mask, TokenDiT) else (2, with_mask.seq_len)
    v = with_mask.vocab_size
    x = torch.zeros(shape, dtype=torch.long)
    name = type(with_mask).__name__

    bad = x.clone()
    bad.view(-1)[3] = v
    with pytest.raises(ValueError, match=rf"{name}: token id {v} is out of range; ids must lie in \[0, {v - 1}\]"):
        without(bad, 0.5)
    assert with_mask(bad, 0.5).shape == (*shape, v)  # the mask id is fine with a mask token

    bad.view(-1)[3] = v + 1
    with pytest.raises(
        ValueError, match=rf"token id {v + 1} is out of range; ids must lie in \[0, {v}\] \({v} = the mask"
    ):
        with_mask(bad, 0.5)
    bad.view(-1)[3] = -2
    with pytest.raises(ValueError, match=rf"token id -2 is out of range; ids must lie in \[0, {v}\]"):
        with_mask(bad, 0.5)


def test_wrong_shapes_dtypes_and_labels_are_refused():
    dit, mlp = _dit(num_classes=3), _mlp()
    with pytest.raises(ValueError, match=r"TokenDiT expects token ids x of shape \[B, 4, 6\], got \(2, 6, 4\)"):
        dit(torch.zeros(2, 6, 4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"shape \[B, 4, 6\], got \(24,\)"):
        dit(torch.zeros(24, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"TokenMLP expects token ids x of shape \[B, 2\], got \(2, 3\)"):
        mlp(torch.zeros(2, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="integer token ids .* got dtype torch.float32"):
        mlp(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        dit(torch.zeros(2, 4, 6, dtype=torch.long), 0.5, torch.tensor([1, 4]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        dit(torch.zeros(2, 4, 6, dtype=torch.long), 0.5, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="unconditional"):
        mlp(torch.zeros(2, 2, dtype=torch.long), 0.5, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \[2\]"):
        mlp(torch.zeros(2, 2, dtype=torch.long), torch.rand(3))
    # other integer dtypes are token ids too
    x = _tokens((2, 2), 8)
    assert torch.equal(mlp(x.to(torch.int32), 0.5), mlp(x, 0.5))


# ---------------------------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("make", [_dit, _mlp], ids=["dit", "mlp"])
def test_mask_token_has_its_own_embedding(make):
    net = _randomize(make())
    shape = (1, *net.grid) if isinstance(net, TokenDiT) else (1, net.seq_len)
    masked = torch.full(shape, net.vocab_size)
    logits = net(masked, 0.0)
    assert torch.isfinite(logits).all()
    for token in range(net.vocab_size):
        assert not torch.allclose(net(torch.full(shape, token), 0.0), logits)


@pytest.mark.parametrize("make", [_dit, _mlp], ids=["dit", "mlp"])
def test_t_and_y_change_the_logits_and_none_is_the_null_label(make):
    net = _randomize(make(num_classes=3))
    shape = (4, *net.grid) if isinstance(net, TokenDiT) else (4, net.seq_len)
    x, y = _tokens(shape, net.vocab_size + 1), torch.tensor([0, 1, 2, 0])
    early, late = net(x, torch.full((4,), 0.1), y), net(x, torch.full((4,), 0.9), y)
    assert (early - late).abs().amax(dim=tuple(range(1, early.ndim))).min() > 1e-3  # every sample moves
    other = net(x, 0.1, torch.tensor([1, 2, 0, 2]))
    assert (early - other).abs().amax(dim=tuple(range(1, early.ndim))).min() > 1e-3
    assert torch.equal(net(x, 0.1), net(x, 0.1, torch.full((4,), 3)))  # y=None = the null class 3
    assert not torch.allclose(net(x, 0.1), early)
    assert torch.equal(net(x, 0.1, y), early)  # a python float t is broadcast
    assert torch.equal(net(x, torch.tensor(0.1), y), early)


# ---------------------------------------------------------------------------------------------- patch layout


def test_with_depth_0_a_patch_sees_only_its_own_tokens():
    p, (h, w) = 2, (4, 6)
    net = _randomize(_dit(grid=(h, w), patch_size=p, depth=0))
    x = _tokens((1, h, w), 5)
    base = net(x, 0.3)
    for i, j in [(0, 0), (1, 4), (3, 5), (2, 1)]:
        changed = x.clone()
        changed[0, i, j] = (changed[0, i, j] + 1) % 6
        moved = (net(changed, 0.3) - base).abs().amax(-1)[0] > 0  # [H, W]: positions whose logits changed
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[i // p * p : i // p * p + p, j // p * p : j // p * p + p] = True
        assert torch.equal(moved, expected), (i, j)


def test_depth_0_matches_a_patch_by_patch_loop():
    """The patchify / unpatchify layout against an explicit loop: patch (I, J) is token I * (W/p) + J
    (row-major), its input is the embeddings of its tokens in row-major order, and sub-position (a, b)
    of its output vector lands at (I p + a, J p + b)."""
    p, (h, w), v = 2, (4, 6), 5
    net = _randomize(_dit(grid=(h, w), patch_size=p, depth=0, num_classes=3))
    x = _tokens((2, h, w), v + 1, seed=3)
    t, y = torch.tensor([0.2, 0.7]), torch.tensor([1, 3])
    with torch.no_grad():
        got = net(x, t, y)
        c = net.t_embedder(t) + net.y_embedder.embedding(y)
        shift, scale = net.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        expected = torch.empty(2, h, w, v)
        for n in range(2):
            for big_i in range(h // p):
                for big_j in range(w // p):
                    rows = [x[n, big_i * p + a, big_j * p + b] for a in range(p) for b in range(p)]
                    vec = torch.cat([net.token_embed.weight[r] for r in rows])
                    token = net.patch_proj(vec) + net.pos_embed[0, big_i * (w // p) + big_j]
                    normed = F.layer_norm(token, (token.shape[-1],), eps=1e-6) * (1 + scale[n]) + shift[n]
                    out = net.final_layer.linear(normed)
                    for a in range(p):
                        for b in range(p):
                            k = a * p + b
                            expected[n, big_i * p + a, big_j * p + b] = out[k * v : (k + 1) * v]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_hand_set_output_layer_puts_sub_position_a_b_at_row_a_column_b_of_its_patch():
    p, (h, w), v = 4, (8, 12), 3
    net = _dit(vocab_size=v, grid=(h, w), patch_size=p, depth=0)
    with torch.no_grad():
        net.final_layer.linear.weight.zero_()
        # bias entry of (sub-position k = a * p + b, token u) = 100 k + u
        code = torch.arange(p * p)[:, None] * 100.0 + torch.arange(v)[None, :]
        net.final_layer.linear.bias.copy_(code.reshape(-1))
    logits = net(_tokens((1, h, w), v + 1), 0.5)[0]
    for i in range(h):
        for j in range(w):
            assert logits[i, j].tolist() == [100.0 * ((i % p) * p + j % p) + u for u in range(v)]


def test_one_dimensional_grid_keeps_positions_apart():
    net = _randomize(_dit(grid=(5,), patch_size=1, depth=0))
    x = _tokens((1, 5), 5)
    base = net(x, 0.5)
    changed = x.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 6
    moved = (net(changed, 0.5) - base).abs().amax(-1)[0] > 0
    assert moved.tolist() == [False, False, True, False, False]


# ---------------------------------------------------------------------------------------------- sharing


@pytest.mark.parametrize(
    ("name", "cls", "kw", "shape"),
    [
        ("token-dit", TokenDiT, dict(vocab_size=5, grid=(4, 6), patch_size=2, num_classes=3, **SMALL_DIT), (3, 4, 6)),
        ("token-dit", TokenDiT, dict(vocab_size=64, grid=(2,), mask_token=False, **SMALL_DIT), (3, 2)),
        ("token-mlp", TokenMLP, dict(vocab_size=64, seq_len=2, num_classes=3, **SMALL_MLP), (3, 2)),
    ],
)
def test_save_pretrained_round_trip_and_build_net(tmp_path, name, cls, kw, shape):
    assert name in NETS
    net = _randomize(cls(**kw))
    net.save_pretrained(tmp_path)
    back = cls.from_pretrained(tmp_path)
    assert type(back) is cls and not back.training
    x = _tokens(shape, kw["vocab_size"] + kw.get("mask_token", True))
    y = torch.tensor([0, 3, 2]) if kw.get("num_classes") else None
    t = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        assert torch.equal(back(x, t, y), net(x, t, y))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == net.config
    rebuilt = build_net(name, **saved)
    assert type(rebuilt) is cls and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x, t, y), net(x, t, y))


def test_token_nets_have_no_two_time_variant():
    with pytest.raises(ValueError, match="no two-time variant"):
        interval_embedding_params("token-dit", {"vocab_size": 4, "grid": 2})
    with pytest.raises(TypeError):
        TokenMLP(vocab_size=4, seq_len=2, two_time=True)


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("make", [_dit, _mlp], ids=["dit", "mlp"])
def test_adam_steps_lower_the_cross_entropy(make):
    """50 Adam steps on one fixed batch: masked-token denoising of random data, which the net can fit."""
    net = make(num_classes=3).train()
    shape = (16, *net.grid) if isinstance(net, TokenDiT) else (16, net.seq_len)
    v = net.vocab_size
    x1 = _tokens(shape, v, seed=5)
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(6)) < 0.5
    xt = torch.where(keep, x1, torch.full_like(x1, v))
    t, y = torch.rand(16, generator=torch.Generator().manual_seed(7)), _tokens((16,), 4, seed=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return F.cross_entropy(net(xt, t, y).reshape(-1, v), x1.reshape(-1))

    first = loss().item()
    assert first == pytest.approx(math.log(v), rel=1e-6)
    for _ in range(50):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.5 * first
