"""The flow-matching loss: against a hand computation, what the model receives, label dropout
(rate and null label), labels staying with their points under OT, argument checks."""

import pytest
import torch
from torch import nn

from fm_core import (
    AffinePath,
    CondOTPath,
    CosineScheduler,
    ExactOTCoupling,
    FlowMatchingLoss,
    StratifiedTime,
)


class Recorder:
    """A velocity model that records its inputs; v = W x_t + t * c + y-dependent offset."""

    def __init__(self, dim, dtype=torch.float64):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(dim, dim, generator=g, dtype=dtype)
        self.c = torch.randn(dim, generator=g, dtype=dtype)
        self.calls = []

    def __call__(self, x, t, y=None):
        self.calls.append((x, t, y))
        out = x @ self.w.T + t[:, None] * self.c
        if y is not None:
            out = out + y[:, None].to(x.dtype)
        return out


@pytest.mark.parametrize("sigma_min", [0.0, 0.05])
def test_loss_equals_hand_computed_mse(sigma_min):
    g = torch.Generator().manual_seed(1)
    b, d = 9, 3
    x1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    x0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (b,), generator=g)
    model = Recorder(d)
    loss = FlowMatchingLoss(path=CondOTPath(sigma_min), num_classes=4)(model, x1, y, x0=x0, t=t)
    total = 0.0
    for i in range(b):
        ti = t[i].item()
        for j in range(d):
            xt = [(1 - (1 - sigma_min) * ti) * x0[i, k].item() + ti * x1[i, k].item() for k in range(d)]
            v = sum(model.w[j, k].item() * xt[k] for k in range(d)) + ti * model.c[j].item() + y[i].item()
            u = x1[i, j].item() - (1 - sigma_min) * x0[i, j].item()
            total += (v - u) ** 2
    assert loss.item() == pytest.approx(total / (b * d), rel=1e-12)
    assert loss.ndim == 0


def test_model_receives_x_t_time_batch_and_labels():
    b = 5
    x1 = torch.randn(b, 1, 4, 4)
    y = torch.arange(b)
    seen = {}

    def model(x, t, yy):
        seen.update(x=x, t=t, y=yy)
        return torch.zeros_like(x)

    FlowMatchingLoss(num_classes=10)(model, x1, y, generator=torch.Generator().manual_seed(0))
    assert seen["x"].shape == x1.shape
    assert seen["t"].shape == (b,) and seen["t"].dtype == torch.float32
    assert ((seen["t"] >= 0) & (seen["t"] <= 1)).all()
    assert torch.equal(seen["y"], y)


def test_loss_with_zero_model_is_mean_squared_target():
    """A zero model on the cosine path: loss = mean |d_alpha x1 + d_sigma x0|^2 (by hand)."""
    x1 = torch.randn(4, 2, dtype=torch.float64)
    x0 = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    h = torch.pi / 2
    u = h * torch.cos(h * t)[:, None] * x1 - h * torch.sin(h * t)[:, None] * x0
    loss = FlowMatchingLoss(path=AffinePath(CosineScheduler()))(
        lambda x, tt, y=None: torch.zeros_like(x), x1, x0=x0, t=t
    )
    assert loss.item() == pytest.approx(u.pow(2).mean().item(), rel=1e-12)


def test_label_dropout_rate_and_null_label():
    b, k, p = 20000, 7, 0.3
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, k, (b,), generator=g)
    seen = {}

    def model(x, t, yy):
        seen["y"] = yy
        return torch.zeros_like(x)

    FlowMatchingLoss(label_dropout=p, num_classes=k)(model, torch.randn(b, 2), y, generator=g)
    dropped = seen["y"] != y
    assert (seen["y"][dropped] == k).all()  # every changed label is the null class
    rate = dropped.float().mean().item()
    assert rate == pytest.approx(p, abs=5 * (p * (1 - p) / b) ** 0.5)
    # the original labels are not modified in place
    assert y.max() < k


def test_no_dropout_without_probability():
    y = torch.randint(0, 3, (100,))
    seen = {}

    def model(x, t, yy):
        seen["y"] = yy
        return torch.zeros_like(x)

    FlowMatchingLoss(num_classes=3)(model, torch.randn(100, 2), y)
    assert torch.equal(seen["y"], y)


def test_generator_makes_loss_reproducible():
    net = nn.Linear(3, 2)
    model = lambda x, t, y=None: net(torch.cat([x, t[:, None]], 1))  # noqa: E731
    x1 = torch.randn(16, 2)
    fm = FlowMatchingLoss(time_sampler=StratifiedTime())
    a = fm(model, x1, generator=torch.Generator().manual_seed(5))
    b = fm(model, x1, generator=torch.Generator().manual_seed(5))
    c = fm(model, x1, generator=torch.Generator().manual_seed(6))
    assert a.item() == b.item() and a.item() != c.item()
    a.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


def test_labels_follow_data_under_ot_coupling():
    """At t = 1, x_t is the data itself, so the model can check that y belongs to x_t."""
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    y = torch.randint(0, 3, (128,), generator=g)
    x1 = centres[y] + 0.1 * torch.randn(128, 2, generator=g)

    def model(x, t, yy):
        nearest = torch.cdist(x, centres).argmin(1)
        assert torch.equal(nearest, yy)
        return torch.zeros_like(x)

    fm = FlowMatchingLoss(coupling=ExactOTCoupling(), num_classes=3)
    fm(model, x1, y, t=torch.ones(128), generator=g)


@pytest.mark.parametrize(
    "kwargs, call_kwargs, match",
    [
        (dict(label_dropout=0.1), {}, "num_classes"),
        (dict(label_dropout=1.5, num_classes=3), {}, "label_dropout"),
        (dict(num_classes=0), {}, "num_classes"),
        (dict(num_classes=3), dict(y=torch.tensor([0, 1, 3, 2])), r"\[0, 3\)"),
        (dict(num_classes=3), dict(y=torch.tensor([0, -1, 1, 2])), r"\[0, 3\)"),
        (dict(num_classes=3), dict(y=torch.tensor([0.0, 1.0, 1.0, 2.0])), "integer"),
        (dict(num_classes=3), dict(y=torch.tensor([0, 1])), r"\[B\] = \[4\]"),
        ({}, dict(x0=torch.zeros(4, 3)), "shape of x1"),
        ({}, dict(t=torch.rand(4, 1)), r"\[B\] = \[4\]"),
    ],
)
def test_bad_arguments_raise(kwargs, call_kwargs, match):
    with pytest.raises(ValueError, match=match):
        fm = FlowMatchingLoss(**kwargs)
        fm(lambda x, t, y=None: torch.zeros_like(x), torch.zeros(4, 2), **call_kwargs)


def test_model_output_shape_checked():
    with pytest.raises(ValueError, match="model output"):
        FlowMatchingLoss()(lambda x, t, y=None: x[:, :1], torch.zeros(4, 2))


def test_unknown_keyword_is_an_error():
    """No **kwargs passthrough: a misspelled conditioning argument cannot vanish silently."""
    with pytest.raises(TypeError):
        FlowMatchingLoss()(lambda x, t, y=None: x, torch.zeros(4, 2), labels=torch.zeros(4))
