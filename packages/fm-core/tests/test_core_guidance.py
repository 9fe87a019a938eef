"""Classifier-free guidance: arithmetic against a toy model whose output depends on y, one
batched call, every channel guided, the null label, argument checks."""

import pytest
import torch

from fm_core import CFGVelocity

K = 4  # real classes 0..3, null label 4


class ToyModel:
    """v = (y + 1) * x + t (per row); the null label gives (K + 1) * x + t. Records calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], y.clone()))
        scale = (y + 1).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return scale * x + t.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.5, -1.0])
def test_guidance_arithmetic_by_hand(scale):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)  # 4 channels: all are guided
    t = torch.rand(6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    model = ToyModel()
    v = CFGVelocity(model, scale=scale, num_classes=K)(x, t, y)
    for b in range(6):
        v_cond = (y[b].item() + 1) * x[b] + t[b]
        v_null = (K + 1) * x[b] + t[b]
        torch.testing.assert_close(v[b], v_null + scale * (v_cond - v_null))
    # exactly one model call, with a batch of 2B: conditional rows then null rows
    assert len(model.calls) == 1
    n, labels = model.calls[0]
    assert n == 12 and torch.equal(labels, torch.cat([y, torch.full((6,), K)]))


def test_scale_one_is_conditional_and_zero_is_unconditional():
    x = torch.randn(5, 2)
    t = torch.rand(5)
    y = torch.tensor([0, 1, 2, 3, 0])
    model = ToyModel()
    torch.testing.assert_close(CFGVelocity(model, 1.0, K)(x, t, y), (y + 1)[:, None] * x + t[:, None])
    assert model.calls[-1][0] == 5  # one call of size B
    torch.testing.assert_close(CFGVelocity(model, 0.0, K)(x, t, y), (K + 1) * x + t[:, None])


def test_y_none_is_unconditional_and_null_rows_stay_null():
    x = torch.randn(3, 2)
    t = torch.rand(3)
    model = ToyModel()
    torch.testing.assert_close(CFGVelocity(model, 3.0, K)(x, t, None), (K + 1) * x + t[:, None])
    assert torch.equal(model.calls[-1][1], torch.full((3,), K))
    # a row whose label is already null: guided == null velocity for that row
    v = CFGVelocity(model, 3.0, K)(x, t, torch.tensor([K, 0, K]))
    torch.testing.assert_close(v[0], (K + 1) * x[0] + t[0])


def test_scalar_time_is_broadcast_to_batch():
    model = ToyModel()
    x = torch.randn(3, 2)
    v = CFGVelocity(model, 2.0, K)(x, 0.5, torch.tensor([0, 1, 2]))
    v_ref = CFGVelocity(model, 2.0, K)(x, torch.full((3,), 0.5), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(v, v_ref)


def test_wraps_nn_module_and_moves_with_it():
    net = torch.nn.Embedding(K + 1, 2)

    def model(x, t, y=None):
        return x * net(y)

    cfg = CFGVelocity(torch.nn.ModuleDict({"net": net}), 2.0, K)
    assert sum(p.numel() for p in cfg.parameters()) == net.weight.numel()
    cfg = CFGVelocity(model, 2.0, K)
    x = torch.randn(3, 2)
    y = torch.tensor([0, 1, 2])
    e = net.weight.detach()
    torch.testing.assert_close(cfg(x, torch.rand(3), y), x * (e[K] + 2.0 * (e[y] - e[K])))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: CFGVelocity(ToyModel(), 2.0, 0), "num_classes"),
        (lambda: CFGVelocity(ToyModel(), float("nan"), 3), "scale"),
        (lambda: CFGVelocity(ToyModel(), 2.0, K)(torch.zeros(2, 2), torch.rand(2), torch.tensor([0, 5])), r"\[0, 4\]"),
        (
            lambda: CFGVelocity(ToyModel(), 2.0, K)(torch.zeros(2, 2), torch.rand(2), torch.tensor([0])),
            r"\[B\] = \[2\]",
        ),
        (lambda: CFGVelocity(ToyModel(), 2.0, K)(torch.zeros(2, 2), torch.rand(3), torch.tensor([0, 1])), "shape"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
