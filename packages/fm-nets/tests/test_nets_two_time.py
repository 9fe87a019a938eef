"""Two-time (average-velocity) networks, ``two_time=True`` on MLPVelocity, UNet and DiT: the call
``model(x, r, t, y=None)``, u(x, r, t) = v(x, r) exactly after load_one_time_weights, the interval
t - r steering u once trained, forward-mode AD (torch.func.jvp, as the MeanFlow target takes it)
against central finite differences, save/load (old one-time configs without the key too), and the
time embeddings under bf16 autocast near t = 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fm_nets import DiT, MLPVelocity, UNet, build_net, interval_embedding_params, load_one_time_weights
from fm_nets.mlp import _RawTimeEmbedding
from fm_nets.two_time import embed_times

torch.set_num_threads(1)

#: (class, build_net name, constructor arguments, input shape); small nets, three classes (label 3 = null)
CASES = [
    (MLPVelocity, "mlp", dict(dim=2, hidden=32, depth=2, num_classes=3), (5, 2)),
    (
        MLPVelocity,
        "mlp",
        dict(
            dim=6,
            hidden=32,
            depth=2,
            time_dim=16,
            activation="relu",
            time_embedding="raw",
            residual=False,
            fourier_features=0,
            num_classes=3,
        ),
        (5, 1, 2, 3),
    ),
    (UNet, "unet", dict(channels=(8, 16), groups=4, num_heads=2, num_classes=3), (5, 1, 8, 8)),
    (
        DiT,
        "dit",
        dict(in_channels=2, input_size=4, patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=3),
        (5, 2, 4, 4),
    ),
]
IDS = ["mlp", "mlp-raw-time", "unet", "dit"]
Y = torch.tensor([0, 1, 2, 3, 1])


def _random_weights(net: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Overwrite every parameter (the zero-initialised output layers too), so outputs depend on all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _times(batch: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 0 <= r <= t <= 1."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(batch, generator=g), torch.rand(batch, generator=g)
    return torch.minimum(a, b), torch.maximum(a, b)


def _embedding_params(net: torch.nn.Module) -> int:
    """Parameters of one time embedding of ``net``'s kind, from its sizes (closed form)."""
    c = net.config
    if isinstance(net, MLPVelocity):
        h, f = c["hidden"], c["time_dim"]
        first = (1 * f + f) if c["time_embedding"] == "raw" else (f * h + h)
        width = f if c["time_embedding"] == "raw" else h
        return first + width * h + h
    if isinstance(net, UNet):
        e = c["emb_dim"]
        return 128 * e + e + e * e + e  # TimeEmbedding's default 128 sinusoidal features
    d, f = c["hidden_size"], c["time_freq_dim"]
    return f * d + d + d * d + d


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_two_time_net_shape_flag_config_and_extra_embedding(cls, name, kwargs, shape):
    one, two = cls(**kwargs), cls(**kwargs, two_time=True)
    assert one.two_time is False and two.two_time is True
    assert "two_time" not in one.config and two.config["two_time"] is True
    assert build_net(name, **two.config).two_time is True
    r, t = _times()
    assert two(torch.randn(shape), r, t, Y).shape == shape
    assert two(torch.randn(shape), r, t).shape == shape  # no labels: the null class
    assert two(torch.randn(shape), 0.25, 1.0).shape == shape  # scalar times are broadcast
    # the state dict is the one-time net's plus interval_embed.*, which has the size of one time embedding
    one_keys, two_keys = set(one.state_dict()), set(two.state_dict())
    assert one_keys < two_keys and all(k.startswith("interval_embed.") for k in two_keys - one_keys)
    extra = sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters())
    assert extra == _embedding_params(two) > 0
    assert interval_embedding_params(name, kwargs) == extra  # the size check's count, from the sizes alone
    assert one.interval_embed is None


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_the_one_time_layers_draw_the_same_initial_weights(cls, name, kwargs, shape):
    """The interval embedding is built last: with the same seed, the shared layers start equal."""
    torch.manual_seed(3)
    one = cls(**kwargs).state_dict()
    torch.manual_seed(3)
    two = cls(**kwargs, two_time=True).state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_after_loading_one_time_weights_u_equals_v_exactly(cls, name, kwargs, shape):
    one = cls(**kwargs)
    _random_weights(one)
    two = cls(**kwargs, two_time=True)
    first_layer = two.interval_embed.mlp[0].weight.detach().clone()
    load_one_time_weights(two, one.state_dict())
    assert torch.equal(two.interval_embed.mlp[0].weight, first_layer)  # its other layers keep their init
    last = two.interval_embed.mlp[-1]
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    x = torch.randn(shape)
    r, t = _times()
    with torch.no_grad():
        v = one(x, r, Y)
        assert v.abs().max() > 1e-3  # a real comparison, not 0 == 0
        for end in (t, r, torch.ones_like(r), r + 0.5 * (1 - r)):
            assert torch.equal(two(x, r, end, Y), v)
        assert torch.equal(two(x, r, t), one(x, r))
        assert torch.equal(two(x, r=r, t=t, y=Y), v)  # keywords as well


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_gradients_reach_the_interval_embedding_and_then_t_matters(cls, name, kwargs, shape):
    one = cls(**kwargs)
    _random_weights(one)
    two = cls(**kwargs, two_time=True)
    load_one_time_weights(two, one.state_dict())
    x = torch.randn(shape)
    r, t = torch.full((5,), 0.2), torch.full((5,), 0.9)
    loss = (two(x, r, t, Y) - torch.randn(shape)).square().mean()
    loss.backward()
    first, last = two.interval_embed.mlp[0], two.interval_embed.mlp[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().max() > 0
    assert torch.count_nonzero(first.weight.grad) == 0  # behind a zero layer, as it must be at step 0
    with torch.no_grad():
        for p in two.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
        u_near, u_far = two(x, r, torch.full((5,), 0.3), Y), two(x, r, t, Y)
        assert (u_near - u_far).abs().max() > 1e-6
        assert not torch.equal(two(x, r, r, Y), u_far)


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_jvp_in_direction_v_1_0_matches_central_differences(cls, name, kwargs, shape):
    """d/dr u(x + s v, r + s, t) at s = 0, as MeanFlowLoss takes it, through every layer (float64; the
    DiT's fused attention has no forward-mode AD on the CPU, so this also checks the math fallback)."""
    net = cls(**kwargs, two_time=True).double()
    _random_weights(net, seed=2)  # the interval embedding too: r enters through both embeddings
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    r = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.7], dtype=torch.float64)
    t = torch.tensor([0.4, 0.9, 0.5, 1.0, 0.8], dtype=torch.float64)

    def u(a, b, c):
        return net(a, b, c, Y)

    _, du = torch.func.jvp(u, (x, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))
    eps = 1e-6
    fd = (u(x + eps * v, r + eps, t) - u(x - eps * v, r - eps, t)) / (2 * eps)
    scale = fd.abs().max()
    assert scale > 1e-2
    assert (du - fd).abs().max() <= 1e-5 * scale
    # the time direction matters: without it (direction (v, 0, 0)) the derivative is far off
    _, du_x = torch.func.jvp(u, (x, r, t), (v, torch.zeros_like(r), torch.zeros_like(t)))
    assert (du_x - fd).abs().max() > 1e-3 * scale


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_save_pretrained_round_trip_of_a_two_time_net(tmp_path, cls, name, kwargs, shape):
    net = cls(**kwargs, two_time=True).eval()
    _random_weights(net)
    net.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["two_time"] is True
    back = cls.from_pretrained(tmp_path)
    assert back.two_time is True
    x, (r, t) = torch.randn(shape), _times()
    with torch.no_grad():
        assert torch.equal(back(x, r, t, Y), net(x, r, t, Y))


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_a_one_time_config_without_the_key_still_loads(tmp_path, cls, name, kwargs, shape):
    """Exports and checkpoints written before two_time existed have no such key: they load as one-time nets."""
    net = cls(**kwargs).eval()
    _random_weights(net)
    net.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert "two_time" not in cfg  # a one-time net writes the config it wrote before the flag existed
    x, t = torch.randn(shape), torch.rand(5)
    for written in (cfg, {**cfg, "two_time": False}):  # without the key, and with an explicit false
        (tmp_path / "config.json").write_text(json.dumps(written))
        back = cls.from_pretrained(tmp_path)
        assert back.two_time is False
        assert build_net(name, **written).two_time is False
        with torch.no_grad():
            assert torch.equal(back(x, t, Y), net(x, t, Y))


def test_load_one_time_weights_refuses_mismatches_in_one_line():
    kwargs = CASES[0][2]
    one, two = MLPVelocity(**kwargs), MLPVelocity(**kwargs, two_time=True)
    state = one.state_dict()

    def refused(model, sd, match):
        with pytest.raises(ValueError, match=match) as info:
            load_one_time_weights(model, sd)
        assert "\n" not in str(info.value)

    refused(two, {k: v for k, v in state.items() if k != "merge.weight"}, r"has no 'merge.weight'")
    refused(two, {**state, "merge.bias": torch.zeros(3)}, r"'merge.bias' has shape \(3,\), expected \(32,\)")
    refused(two, {**state, "merge.bias": state["merge.bias"].double()}, r"'merge.bias' has dtype torch.float64")
    refused(two, MLPVelocity(**{**kwargs, "hidden": 16}).state_dict(), r"shape")
    refused(two, two.state_dict(), r"'interval_embed\..*', which is a two-time network's")
    refused(two, {**state, "extra.weight": torch.zeros(1)}, r"'extra.weight', which is not this network's")
    refused(MLPVelocity(**kwargs), state, r"two_time=False")
    before = {k: v.clone() for k, v in two.state_dict().items()}
    refused(two, {**state, "blocks.1.fc2.bias": torch.zeros(2)}, r"blocks.1.fc2.bias")
    assert all(torch.equal(before[k], v) for k, v in two.state_dict().items())  # checked before anything loads


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES[:1] + CASES[2:], ids=["mlp", "unet", "dit"])
def test_calls_with_the_wrong_number_of_times_are_one_line_type_errors(cls, name, kwargs, shape):
    x, r, t = torch.randn(shape), torch.rand(5), torch.rand(5)
    with pytest.raises(TypeError, match=r"two-time .* called as model\(x, r, t, y=None\)"):
        cls(**kwargs, two_time=True)(x, t)
    with pytest.raises(TypeError, match=r"one-time and is called as model\(x, t, y=None\)"):
        cls(**kwargs)(x, r, t, Y)


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_raw_time_embedding_is_float32_under_bf16_autocast():
    """The blog post's raw-t embedding: Linear(1, .) on t = 1 - 1/512, which bf16 rounds to 1."""
    tt = torch.tensor([1.0 - 1 / 512, 1.0])
    assert tt.to(torch.bfloat16)[0] == tt.to(torch.bfloat16)[1]  # the premise
    torch.manual_seed(0)
    emb = _RawTimeEmbedding(8, 16, torch.nn.ReLU)
    with torch.no_grad():
        ref = emb(tt)
        with _bf16():
            out = emb(tt)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=0, atol=1e-6)
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_bf16_autocast_keeps_t_and_t_minus_r_near_1_apart(cls, name, kwargs, shape):
    """The conditioning of a two-time net at (r, t) = (0, 1) and (0, 1 - 1/512) (the interval near 1),
    and at (1 - 1/512, 1) and (1, 1) (the current time near 1), differs under bf16 autocast as in float32."""
    net = cls(**kwargs, two_time=True)
    _random_weights(net)
    near = 1.0 - 1 / 512
    pairs = [(torch.tensor([0.0, 0.0]), torch.tensor([1.0, near])), (torch.tensor([near, 1.0]), torch.ones(2))]
    time_embed = net.t_embedder if isinstance(net, DiT) else net.time_embed
    for r, t in pairs:
        with torch.no_grad():
            ref = embed_times(time_embed, net.interval_embed, r, t, 2, torch.zeros(2))
            with _bf16():
                out = embed_times(time_embed, net.interval_embed, r, t, 2, torch.zeros(2, dtype=torch.bfloat16))
        assert out.dtype == torch.float32
        d_ref, d_out = (ref[0] - ref[1]).norm(), (out[0] - out[1]).norm()
        assert d_ref > 1e-4 and abs(d_out - d_ref) <= 1e-3 * d_ref


def test_the_readme_two_time_example_runs():
    """The README's two-time section shows working code (u = v after loading, a one-step flow map)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Two-time (average-velocity) networks", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize(("cls", "name", "kwargs", "shape"), CASES, ids=IDS)
def test_jvp_under_cpu_bf16_autocast_runs_and_follows_float32(cls, name, kwargs, shape):
    """The MeanFlow target's jvp as a bf16 training step takes it (CPU autocast): it runs (the U-Net's
    GroupNorm32 keeps value and derivative in one dtype) and agrees with the float32 jvp to bf16 rounding."""
    net = cls(**kwargs, two_time=True)
    _random_weights(net, seed=5, scale=0.1)
    g = torch.Generator().manual_seed(6)
    x, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    r, t = _times()

    def jvp():
        return torch.func.jvp(lambda a, b, c: net(a, b, c, Y), (x, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))

    with torch.no_grad():
        u32, du32 = jvp()
        with _bf16():
            u16, du16 = jvp()
    for ref, got in ((u32, u16), (du32, du16)):
        assert ref.norm() > 1e-3
        assert (got.float() - ref).norm() <= 0.02 * ref.norm()  # measured: at most 0.8%


def test_group_norm32_is_float32_under_autocast_and_plain_group_norm_without():
    from fm_nets.unet import GroupNorm32

    torch.manual_seed(0)
    norm, ref = GroupNorm32(2, 4), torch.nn.GroupNorm(2, 4)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(norm(x), ref(x))
    xb = x.to(torch.bfloat16)
    with _bf16():
        out = norm(xb)
    assert out.dtype == torch.float32 and torch.equal(out, ref(xb.float()))


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("mlp", {"dim": 2}),
        ("mlp", {"dim": 6, "hidden": 24, "time_dim": 10, "time_embedding": "raw"}),
        ("unet", {}),
        ("unet", {"channels": [8, 16], "emb_dim": 20, "groups": 4}),
        ("dit", {}),
        ("dit", {"hidden_size": 32, "time_freq_dim": 64, "depth": 1}),
    ],
)
def test_interval_embedding_params_counts_what_two_time_adds_at_defaults_too(name, config):
    one, two = build_net(name, **config), build_net(name, **config, two_time=True)
    count = sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters())
    assert interval_embedding_params(name, config) == count > 0
    with pytest.raises(ValueError, match="unknown network 'vit'"):
        interval_embedding_params("vit", {})
