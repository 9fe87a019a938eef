"""Layer tests: round trips, log-determinants against autograd Jacobians, layer specifics.

All in float64 with random, non-identity weights (see conftest.randomize_).
"""

from __future__ import annotations

import pytest
import torch

from fm_nflows import ActNorm, AffineCoupling, InvertibleLinear, Permutation, alternating_mask
from fm_nflows.functional import invert_permutation, soft_bound

DTYPE = torch.float64
CTX = 3


def assert_close(actual, expected, atol=1e-7):
    """Max-abs-difference check (plain torch; torch.testing pulls in slow imports)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


def make_layer(kind: str, dim: int):
    g = torch.Generator().manual_seed(1)
    if kind == "coupling":
        return AffineCoupling(dim, hidden=16)
    if kind == "coupling-mask":
        return AffineCoupling(dim, alternating_mask(dim, 1), hidden=16, activation="tanh")
    if kind == "coupling-context":
        return AffineCoupling(dim, hidden=16, context_dim=CTX, scale_bound=1.5)
    if kind == "perm-random":
        return Permutation(dim, "random", generator=g)
    if kind == "perm-reverse":
        return Permutation(dim, "reverse")
    if kind == "actnorm":
        return ActNorm(dim)
    if kind == "linear":
        return InvertibleLinear(dim, generator=g)
    raise AssertionError(kind)


KINDS = ["coupling", "coupling-mask", "coupling-context", "perm-random", "perm-reverse", "actnorm", "linear"]


def setup(kind: str, dim: int, randomize, batch: int = 64):
    layer = randomize(make_layer(kind, dim)).to(DTYPE)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, dim, generator=g, dtype=DTYPE) * 1.5
    ctx = torch.randn(batch, CTX, generator=g, dtype=DTYPE) if kind == "coupling-context" else None
    return layer, x, ctx


def per_sample_slogdet(fn, x, ctx):
    """log|det J| of ``fn`` at each row of x, from the autograd Jacobian (independent of
    the layer's own log-determinant)."""
    out = []
    for i in range(x.shape[0]):
        c = None if ctx is None else ctx[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, c=c: fn(v[None], c)[0][0], x[i])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        out.append(logabs)
    return torch.stack(out)


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trips(kind, dim, randomize):
    layer, x, ctx = setup(kind, dim, randomize)
    z, _ = layer(x, ctx)
    assert z.shape == x.shape and z.dtype == DTYPE
    assert (z - x).abs().max() > 1e-2, "layer acts as the identity; the test would be void"
    x_back, _ = layer.inverse(z, ctx)
    assert_close(x_back, x, atol=1e-10)
    z2 = torch.randn_like(x)
    x2, _ = layer.inverse(z2, ctx)
    z2_back, _ = layer(x2, ctx)
    assert_close(z2_back, z2, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_logdet_matches_autograd_jacobian(kind, dim, randomize):
    layer, x, ctx = setup(kind, dim, randomize, batch=6)
    z, logdet_fwd = layer(x, ctx)
    assert logdet_fwd.shape == (x.shape[0],)
    assert_close(logdet_fwd, per_sample_slogdet(layer.forward, x, ctx), atol=1e-9)
    _, logdet_inv = layer.inverse(z, ctx)
    assert_close(logdet_inv, per_sample_slogdet(layer.inverse, z, ctx), atol=1e-9)
    assert_close(logdet_fwd + logdet_inv, torch.zeros_like(logdet_fwd), atol=1e-12)
    if kind.startswith("coupling") or kind in ("actnorm", "linear"):
        assert logdet_fwd.abs().max() > 1e-3, "volume-preserving by accident; test would be void"


def test_coupling_keeps_conditioning_coordinates_and_starts_as_identity():
    dim = 5
    mask = torch.tensor([True, False, True, False, False])
    layer = AffineCoupling(dim, mask, hidden=8).to(DTYPE)
    x = torch.randn(10, dim, dtype=DTYPE)
    z, logdet = layer(x)
    assert_close(z, x, atol=0)  # zero-initialised last layer
    assert_close(logdet, torch.zeros(10, dtype=DTYPE), atol=0)
    with torch.no_grad():
        layer.conditioner.out.bias.fill_(0.7)
    z, _ = layer(x)
    assert_close(z[:, mask], x[:, mask], atol=0)
    assert (z[:, ~mask] - x[:, ~mask]).abs().min() > 1e-3


def test_coupling_without_zero_init_is_not_the_identity_and_still_inverts():
    torch.manual_seed(0)
    layer = AffineCoupling(3, hidden=16, zero_init=False).to(DTYPE)
    assert layer.conditioner.out.weight.abs().max() > 0  # PyTorch's default init kept
    x = torch.randn(20, 3, dtype=DTYPE)
    z, logdet = layer(x)
    assert (z - x).abs().max() > 1e-3 and logdet.abs().max() > 1e-4
    back, logdet_inv = layer.inverse(z)
    assert_close(back, x, atol=1e-12)
    assert_close(logdet + logdet_inv, torch.zeros(20, dtype=DTYPE), atol=1e-12)


def test_coupling_scale_is_smoothly_bounded():
    c = 2.0
    layer = AffineCoupling(2, hidden=8, scale_bound=c).to(DTYPE)
    with torch.no_grad():
        layer.conditioner.out.bias.copy_(torch.tensor([0.0, 1e4], dtype=DTYPE))  # raw log-scale huge
    x = torch.randn(4, 2, dtype=DTYPE)
    _, logdet = layer(x)
    assert (logdet <= c).all() and (logdet > c - 1e-6).all()
    # soft bound: identity slope at 0, strictly inside (-c, c), gradient never exactly 0
    s = torch.linspace(-3 * c, 3 * c, 101, dtype=DTYPE, requires_grad=True)
    out = soft_bound(s, c)
    (grad,) = torch.autograd.grad(out.sum(), s)
    assert out.abs().max() < c
    assert (grad > 0).all()
    assert_close(grad[50], torch.tensor(1.0, dtype=DTYPE))
    assert abs(grad[60].item() - 1.0) > 1e-3  # not a plain identity with a clamp
    with pytest.raises(ValueError, match="bound"):
        soft_bound(s, 0.0)


def test_coupling_uses_context_and_checks_it():
    layer = AffineCoupling(2, hidden=8, context_dim=CTX)
    torch.nn.init.normal_(layer.conditioner.out.weight)
    x = torch.randn(5, 2)
    z1, _ = layer(x, torch.zeros(5, CTX))
    z2, _ = layer(x, torch.ones(5, CTX))
    assert (z1 - z2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="context"):
        layer(x)
    with pytest.raises(ValueError, match="context"):
        layer(x, torch.zeros(4, CTX))
    with pytest.raises(ValueError, match="context"):
        AffineCoupling(2)(x, torch.zeros(5, CTX))


def test_coupling_conditioner_has_no_dropout_or_batch_statistics():
    layer = AffineCoupling(4, hidden=8, n_hidden=3, context_dim=2)
    banned = (torch.nn.Dropout, torch.nn.BatchNorm1d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    assert not any(isinstance(m, banned) for m in layer.modules())
    torch.nn.init.normal_(layer.conditioner.out.weight)
    x, ctx = torch.randn(8, 4), torch.randn(8, 2)
    layer.train()
    z_train, _ = layer(x, ctx)
    layer.eval()
    z_eval, _ = layer(x, ctx)
    assert_close(z_train, z_eval, atol=0)


@pytest.mark.parametrize("bad", [[True, True], [False, False], [1, 0, 1], [2, 0]])
def test_coupling_rejects_bad_masks(bad):
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(2, bad)


def test_bad_input_shapes_raise():
    for layer in (AffineCoupling(3), Permutation(3), ActNorm(3), InvertibleLinear(3)):
        with pytest.raises(ValueError, match=r"\[B, 3\]"):
            layer(torch.zeros(4, 2))
        with pytest.raises(ValueError, match=r"\[B, 3\]"):
            layer.inverse(torch.zeros(3))
        with pytest.raises(ValueError, match="floating"):
            layer(torch.zeros(4, 3, dtype=torch.long))


def test_permutation_buffers():
    g = torch.Generator().manual_seed(0)
    layer = Permutation(7, "random", generator=g)
    assert sorted(layer.perm.tolist()) == list(range(7))
    assert [layer.perm.tolist()[i] for i in layer.inv_perm.tolist()] == list(range(7))
    assert {"perm", "inv_perm"} <= set(layer.state_dict())
    x = torch.arange(7.0)[None]
    z, _ = layer(x)
    assert z[0].tolist() == [float(p) for p in layer.perm.tolist()]
    assert Permutation(4).perm.tolist() == [3, 2, 1, 0]
    assert invert_permutation(torch.tensor([2, 0, 1])).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="kind"):
        Permutation(3, "shuffle")
    with pytest.raises(ValueError, match="permutation"):
        Permutation(3, perm=[0, 0, 1])


def test_actnorm_data_dependent_init_once_and_flag_is_a_buffer():
    layer = ActNorm(3).to(DTYPE)
    assert "initialized" in layer.state_dict() and not bool(layer.initialized)
    x = torch.randn(500, 3, dtype=DTYPE) * torch.tensor([0.5, 2.0, 3.0], dtype=DTYPE) + torch.tensor(
        [1.0, -2.0, 0.0], dtype=DTYPE
    )
    layer.eval()
    z, _ = layer(x)  # eval mode: no init
    assert not bool(layer.initialized)
    assert_close(z, x)
    layer.inverse(x)  # the inverse never initialises
    assert not bool(layer.initialized)
    layer.train()
    z, logdet = layer(x)
    assert bool(layer.initialized) and bool(layer.state_dict()["initialized"])
    n = x.shape[0]
    mean = x.sum(0) / n
    std = ((x - mean) ** 2).sum(0).div(n).sqrt()
    assert_close(z.mean(0), torch.zeros(3, dtype=DTYPE), atol=1e-10)
    assert_close(z.std(0, unbiased=False), torch.ones(3, dtype=DTYPE), atol=1e-5)
    assert_close(logdet, -torch.log(std).sum().expand(n), atol=1e-5)
    # a second batch with other statistics must not re-initialise
    loc = layer.loc.detach().clone()
    layer(x * 10 + 5)
    assert_close(layer.loc.detach(), loc, atol=0)
    with pytest.raises(ValueError, match="at least 2"):
        ActNorm(2).train()(torch.zeros(1, 2))


def test_invertible_linear_is_lu_parametrised():
    g = torch.Generator().manual_seed(3)
    layer = InvertibleLinear(4, generator=g).to(DTYPE)
    w = layer.weight().detach()
    assert_close(w @ w.T, torch.eye(4, dtype=DTYPE), atol=1e-6)  # orthogonal init
    assert (w - torch.eye(4, dtype=DTYPE)).abs().max() > 0.1
    param_names = {n for n, _ in layer.named_parameters()}
    buffer_names = {n for n, _ in layer.named_buffers()}
    assert param_names == {"lower", "upper", "log_abs_diag"}
    assert buffer_names == {"perm", "sign"}
    with torch.no_grad():
        layer.log_abs_diag.add_(torch.tensor([0.1, -0.2, 0.3, 0.5], dtype=DTYPE))
        layer.lower.add_(0.3)
    w = layer.weight().detach()
    assert_close(layer.log_abs_diag.sum().detach(), torch.linalg.slogdet(w)[1])
    x = torch.randn(3, 4, dtype=DTYPE)
    assert_close(layer(x)[0], x @ w.T)
