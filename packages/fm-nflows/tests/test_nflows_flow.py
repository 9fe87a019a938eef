"""Whole-model tests: round trips, Jacobians, normalisation, direction, conditioning,
checkpoints, gradients, large inputs. Random, non-identity weights throughout."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fm_nflows import ActNorm, Flow, InvertibleLinear, build_flow, load_flow, save_flow

DTYPE = torch.float64


def assert_close(actual, expected, atol=1e-7):
    """Max-abs-difference check (plain torch; torch.testing pulls in slow imports)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


def small_flow(randomize, num_classes=None, mixing="lu", dim=2, n_layers=3, seed=0, scale=0.4):
    flow = build_flow(dim, n_layers, 16, num_classes=num_classes, embed_dim=4, mixing=mixing, seed=seed)
    return randomize(flow, seed=seed, scale=scale).to(DTYPE).eval()


@pytest.mark.parametrize("mixing", ["lu", "random", "reverse", "none"])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_flow_round_trips(mixing, num_classes, randomize):
    flow = small_flow(randomize, num_classes, mixing, dim=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=DTYPE) * 2
    y = None if num_classes is None else torch.randint(0, num_classes, (50,), generator=g)
    z, ld_f = flow(x, y)
    assert (z - x).abs().max() > 0.1
    x_back, ld_i = flow.inverse(z, y)
    assert_close(x_back, x, atol=1e-10)
    assert_close(ld_f + ld_i, torch.zeros(50, dtype=DTYPE), atol=1e-10)
    z2 = torch.randn(50, 3, generator=g, dtype=DTYPE)
    x2, _ = flow.inverse(z2, y)
    assert_close(flow(x2, y)[0], z2, atol=1e-10)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_flow_logdet_matches_autograd_jacobian(num_classes, randomize):
    flow = small_flow(randomize, num_classes, dim=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=DTYPE)
    y = None if num_classes is None else torch.tensor([0, 1, 2, 1, 0])
    z, ld_f = flow(x, y)
    _, ld_i = flow.inverse(z, y)
    for i in range(5):
        yi = None if y is None else y[i : i + 1]
        jf = torch.autograd.functional.jacobian(lambda v, yi=yi: flow(v[None], yi)[0][0], x[i])
        ji = torch.autograd.functional.jacobian(lambda v, yi=yi: flow.inverse(v[None], yi)[0][0], z[i])
        assert abs(ld_f[i].item() - torch.linalg.slogdet(jf)[1].item()) < 1e-9
        assert abs(ld_i[i].item() - torch.linalg.slogdet(ji)[1].item()) < 1e-9
    assert ld_f.abs().max() > 1e-2


@pytest.mark.parametrize("label", [None, 2])
def test_density_integrates_to_one(label, randomize):
    flow = small_flow(randomize, None if label is None else 3, n_layers=4, seed=5)
    lim, n = 8.0, 121
    g = torch.linspace(-lim, lim, n, dtype=DTYPE)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    cell = (2 * lim / (n - 1)) ** 2
    with torch.no_grad():
        mass = (flow.log_prob(pts, label).exp() * cell).sum().item()
        # The grid must hold the mass: samples outside it are rare.
        outside = (flow.sample(4000, label, generator=torch.Generator().manual_seed(0)).abs() > lim).any(1)
        # The check is sensitive: a log-determinant with the wrong sign misses by far.
        z, logdet = flow(pts, label)
        wrong = ((-0.5 * (z**2).sum(1) - math.log(2 * math.pi) - logdet).exp() * cell).sum().item()
    assert outside.double().mean() < 1e-3
    assert abs(mass - 1.0) < 0.01, mass
    assert abs(wrong - 1.0) > 0.1, wrong


def test_direction_forward_maps_data_to_noise():
    """A flow of ActNorm + InvertibleLinear is a Gaussian; with forward = data -> noise,
    z = W (x - loc) / exp(log_scale), so x = A z + loc with A = diag(exp(log_scale)) W^{-1}
    and x ~ N(loc, A A^T)."""
    torch.manual_seed(0)
    act, lin = ActNorm(2), InvertibleLinear(2)
    with torch.no_grad():
        act.loc.copy_(torch.tensor([3.0, -1.0]))
        act.log_scale.copy_(torch.tensor([0.5, -0.3]))
        act.initialized.fill_(True)
        lin.lower.add_(0.7)
        lin.log_abs_diag.add_(torch.tensor([0.4, -0.2]))
    flow = Flow([act, lin], 2).to(DTYPE).eval()
    a = torch.diag(act.log_scale.detach().exp()) @ torch.linalg.inv(lin.weight().detach())
    cov = a @ a.T
    x = torch.randn(20, 2, dtype=DTYPE) * 2
    d = x - act.loc.detach()
    maha = (d @ torch.linalg.inv(cov) * d).sum(1)
    expected = -0.5 * maha - 0.5 * torch.logdet(2 * math.pi * cov)
    with torch.no_grad():
        assert_close(flow.log_prob(x), expected, atol=1e-10)
        samples = flow.sample(20_000, generator=torch.Generator().manual_seed(1))
    assert_close(samples.mean(0), act.loc.detach(), atol=0.05)
    assert_close(torch.cov(samples.T), cov, atol=0.1)


def test_conditional_broadcasting_and_label_checks(randomize):
    flow = small_flow(randomize, num_classes=3)
    x = torch.randn(8, 2, dtype=DTYPE)
    with torch.no_grad():
        s_int = flow.sample(8, 2, generator=torch.Generator().manual_seed(0))
        s_vec = flow.sample(8, torch.full((8,), 2), generator=torch.Generator().manual_seed(0))
        s_0d = flow.sample(8, torch.tensor(2), generator=torch.Generator().manual_seed(0))
        assert s_int.shape == (8, 2) and s_int.dtype == DTYPE
        assert_close(s_int, s_vec, atol=0)
        assert_close(s_0d, s_vec, atol=0)
        lp = [flow.log_prob(x, k) for k in range(3)]
        assert lp[0].shape == (8,)
        assert_close(lp[1], flow.log_prob(x, torch.ones(8, dtype=torch.long)), atol=0)
        assert (lp[0] - lp[1]).abs().min() > 1e-4 and (lp[1] - lp[2]).abs().min() > 1e-4
        mixed = flow.log_prob(x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
        assert_close(mixed[2], lp[2][2], atol=1e-12)
        assert flow.sample(0, 1).shape == (0, 2)
    for bad, msg in [
        (None, "class-conditional"),
        (3, r"\[0, 3\)"),
        (-1, r"\[0, 3\)"),
        (torch.zeros(7, dtype=torch.long), r"\[8\]"),
        (torch.zeros(8), "integers"),
        (True, "integers"),
    ]:
        with pytest.raises(ValueError, match=msg):
            flow.log_prob(x, bad)
    with pytest.raises(ValueError, match="unconditional"):
        small_flow(randomize).log_prob(x, 0)
    with pytest.raises(ValueError, match="n must be"):
        flow.sample(-1, 0)


def test_nll_terms_and_sample_log_prob(randomize):
    flow = small_flow(randomize, num_classes=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        x, lp = flow.sample_and_log_prob(64, 1, generator=g)
        assert_close(lp, flow.log_prob(x, 1), atol=1e-10)
        base, logdet = flow.nll_terms(x, 1)
        z, _ = flow(x, 1)
    base_expected = (-0.5 * (z**2).sum(1) - math.log(2 * math.pi)).mean()
    assert_close(base, base_expected, atol=1e-12)
    assert_close(base + logdet, lp.mean(), atol=1e-10)
    assert abs(logdet.item()) > 1e-3
    assert_close(flow.nll_terms(x, 1).nll, -lp.mean(), atol=1e-10)


def test_layerwise_points(randomize):
    flow = small_flow(randomize, num_classes=2, n_layers=2)
    z = torch.randn(9, 2, dtype=DTYPE)
    with torch.no_grad():
        lw = flow.layerwise(z, 1)
        x, ld = flow.inverse(z, 1)
        fw = flow.layerwise(x, 1, direction="forward")
    n_layers = len(flow.layers)
    assert lw.points.shape == (n_layers + 1, 9, 2) and len(lw.names) == n_layers
    assert lw.names[0] == "AffineCoupling" and lw.names[-1] == "ActNorm"  # inverse order
    assert_close(lw.points[0], z, atol=0)
    assert_close(lw.points[-1], x, atol=0)
    assert_close(lw.logdet, ld, atol=0)
    assert_close(fw.points[-1], z, atol=1e-10)
    assert_close(fw.points.flip(0), lw.points, atol=1e-10)
    with pytest.raises(ValueError, match="direction"):
        flow.layerwise(z, 1, direction="backward")


def test_save_load_round_trip_keeps_actnorm_initialised(tmp_path):
    flow = build_flow(2, 3, 16, num_classes=3, embed_dim=4, seed=1)
    flow.train()
    data = torch.randn(256, 2) * 3 + 5
    flow.log_prob(data, torch.randint(0, 3, (256,)))  # ActNorm initialises here
    with torch.no_grad():  # move every weight away from its initial value
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))
    save_flow(flow, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_flow(tmp_path / "ckpt")
    assert loaded.config == flow.config
    sd_a, sd_b = flow.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    # A loaded model must not re-initialise: train mode on data with other statistics.
    loaded.train()
    flow.eval()
    other = torch.randn(64, 2) * 0.1 - 4
    y = torch.randint(0, 3, (64,))
    with torch.no_grad():
        assert_close(loaded.log_prob(other, y), flow.log_prob(other, y), atol=0)
    # Flow.save / Flow.load are the same thing
    flow.save(tmp_path / "again")
    assert torch.equal(Flow.load(tmp_path / "again").state_dict()["layers.0.loc"], sd_a["layers.0.loc"])


def test_save_load_float64_and_errors(tmp_path, randomize):
    flow = small_flow(randomize, num_classes=None)
    save_flow(flow, tmp_path)
    loaded = load_flow(tmp_path)
    x = torch.randn(10, 2, dtype=DTYPE)
    with torch.no_grad():
        assert_close(loaded.log_prob(x), flow.log_prob(x), atol=0)
    (tmp_path / "config.json").write_text(json.dumps({"model": "mlp", "config": {}}))
    with pytest.raises(ValueError, match="not a fm-nflows checkpoint"):
        load_flow(tmp_path)
    cfg = dict(flow.config, hidden=32)
    (tmp_path / "config.json").write_text(json.dumps({"model": "fm-nflows/flow", "config": cfg}))
    with pytest.raises(ValueError, match="do not match"):
        load_flow(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_flow(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config"):
        save_flow(Flow([ActNorm(2)], 2), tmp_path / "x")


def test_every_parameter_receives_a_gradient(randomize):
    flow = small_flow(randomize, num_classes=3, n_layers=2).train()
    x = torch.randn(32, 2, dtype=DTYPE)
    y = torch.arange(32) % 3
    flow.nll_terms(x, y).nll.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_finite_for_large_inputs(randomize):
    flow = randomize(build_flow(2, 6, 32, num_classes=2, seed=0), scale=1.0).float().eval()
    big = torch.randn(256, 2) * 1e3
    with torch.no_grad():
        z, ld = flow(big, 1)
        x, ld_inv = flow.inverse(big, 0)
        lp = flow.log_prob(big, 0)
    for t in (z, ld, x, ld_inv, lp):
        assert torch.isfinite(t).all()


def test_build_flow_seed_and_arguments():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_flow(2, 2, 8, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)  # a seeded build leaves the global RNG alone
    b = build_flow(2, 2, 8, seed=7)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert json.loads(json.dumps(a.config)) == a.config
    c = build_flow(2, 2, 8, mixing="none", actnorm=False, zero_init=False, seed=7)
    assert c.config["zero_init"] is False and len(c.layers) == 2  # couplings only
    assert all(m.conditioner.out.weight.abs().max() > 0 for m in c.layers)
    for kwargs, msg in [
        (dict(dim=1), "dim"),
        (dict(n_layers=0), "n_layers"),
        (dict(mixing="glow"), "mixing"),
        (dict(activation="swish"), "activation"),
        (dict(num_classes=0), "num_classes"),
    ]:
        with pytest.raises(ValueError, match=msg):
            build_flow(**kwargs)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        a.log_prob(torch.zeros(3, 3))
