"""EMA arithmetic against hand computations."""

import pytest
import torch
from torch import nn

from fm_train import EMA


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2, dtype=torch.float64)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("stat", torch.zeros(2, dtype=torch.float64))


def _set_params(model, values):
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(v)


def test_hand_computed_two_steps_without_warmup():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # 0.5*0 + 0.5*1
    assert ema.module.weight.item() == 0.5
    ema.update(m)  # 0.5*0.5 + 0.5*1
    assert ema.module.weight.item() == 0.75
    with torch.no_grad():
        m.weight.fill_(-1.0)
    ema.update(m)  # 0.5*0.75 - 0.5
    assert ema.module.weight.item() == pytest.approx(-0.125, abs=0)


@pytest.mark.parametrize("warmup", [True, False])
def test_matches_recurrence_with_warmup(warmup):
    torch.manual_seed(0)
    m = WithBuffer()
    decay = 0.95
    ema = EMA(m, decay=decay, warmup=warmup)
    expected = [p.detach().clone() for p in m.parameters()]
    g = torch.Generator().manual_seed(1)
    for n in range(40):
        new = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in m.parameters()]
        _set_params(m, new)
        m.count += 1
        m.stat.copy_(torch.randn(2, generator=g, dtype=torch.float64))
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        assert ema.current_decay() == d
        expected = [d * e + (1 - d) * v for e, v in zip(expected, new)]
        ema.update(m)
    for e, p in zip(expected, ema.module.parameters()):
        # (torch.testing.assert_close is avoided: its first call imports for seconds)
        assert torch.allclose(p, e, rtol=1e-12, atol=1e-12)
    assert ema.module.count.item() == 40  # buffers copied, not averaged
    assert torch.equal(ema.module.stat, m.stat)
    assert ema.num_updates == 40


def test_warmup_decay_values():
    ema = EMA(nn.Linear(1, 1), decay=0.999)
    seen = []
    for _ in range(3):
        seen.append(ema.current_decay())
        ema.update(ema.module)
    assert seen == [1 / 10, 2 / 11, 3 / 12]
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_copy_is_frozen_and_in_eval_mode():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    ema = EMA(m)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in m.parameters())


def test_copy_to_and_average_parameters_restore():
    torch.manual_seed(0)
    m = nn.Linear(3, 3)
    ema = EMA(m, decay=0.0, warmup=False)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.fill_(7.0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with ema.average_parameters(m) as swapped:
        assert swapped is m
        assert all(torch.all(p == 7.0) for p in m.parameters())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    other = nn.Linear(3, 3)
    ema.copy_to(other)
    assert all(torch.all(p == 7.0) for p in other.parameters())


def test_state_dict_round_trip():
    torch.manual_seed(0)
    m = nn.Linear(2, 2)
    ema = EMA(m, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            m.weight.add_(1.0)
        ema.update(m)
    other = EMA(nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 3
    for a, b in zip(ema.module.parameters(), other.module.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan"), True, "0.9"])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=decay)


def test_update_from_a_different_model_is_refused():
    ema = EMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="do not match"):
        ema.update(nn.Linear(3, 2))
