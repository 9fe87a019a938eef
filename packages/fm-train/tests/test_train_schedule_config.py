"""Learning-rate schedule against closed forms; TrainConfig validation."""

import math

import pytest

from fm_train import DEFAULT_STEPS, TrainConfig, decay_progress, lr_at


def test_warmup_is_linear_then_constant():
    vals = [lr_at(s, lr=2.0, warmup_steps=4) for s in range(1, 8)]
    assert vals == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]


def test_no_warmup_constant():
    assert lr_at(1, lr=3e-4) == 3e-4


def test_cosine_closed_form():
    W, T = 4, 14  # decay over steps 4..14
    got = [
        lr_at(s, lr=1.0, warmup_steps=W, schedule="cosine", progress=decay_progress(s, warmup_steps=W, total_steps=T))
        for s in range(1, T + 1)
    ]
    want = [min(1.0, s / W) * 0.5 * (1 + math.cos(math.pi * max(0, s - W) / (T - W))) for s in range(1, T + 1)]
    assert got == pytest.approx(want, abs=1e-15)
    assert got[8] == pytest.approx(0.5)  # step 9: halfway
    assert got[-1] == pytest.approx(0.0, abs=1e-15)


def test_cosine_floor_and_time_progress():
    assert lr_at(10, lr=1.0, schedule="cosine", progress=1.0, min_lr_ratio=0.1) == pytest.approx(0.1)
    p = decay_progress(5, warmup_steps=0, time_fraction=0.25)
    assert lr_at(5, lr=1.0, schedule="cosine", progress=p) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert decay_progress(5, warmup_steps=0, time_fraction=3.0) == 1.0


def test_unknown_schedule():
    with pytest.raises(ValueError, match="'linear'.*constant, cosine"):
        lr_at(1, lr=1.0, schedule="linear")


def test_budget_defaults_and_exclusivity():
    assert TrainConfig().steps == DEFAULT_STEPS and TrainConfig().budget == "steps"
    c = TrainConfig(minutes=0.5)
    assert c.steps is None and c.budget == "minutes"
    with pytest.raises(ValueError, match="exactly one budget"):
        TrainConfig(steps=10, minutes=1.0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0), ("steps", -5), ("steps", 2.5), ("steps", True), ("minutes", 0.0),
        ("minutes", float("nan")), ("batch_size", 0), ("lr", float("inf")), ("lr", -1e-3),
        ("weight_decay", -1.0), ("warmup_steps", -1), ("schedule", "linear"), ("grad_clip", 0.0),
        ("ema_decay", 1.0), ("seed", -1), ("log_every", 0), ("ckpt_every", 0), ("ckpt_minutes", -1.0),
        ("sample_every", 0), ("bf16", "yes"), ("betas", (0.9,)), ("min_lr_ratio", 2.0), ("device", ""),
    ],
)  # fmt: skip
def test_bad_values_name_the_field(field, value):
    kw = {field: value}
    if field == "minutes":
        kw["steps"] = None
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}="):
        TrainConfig(**kw)


def test_dict_round_trip_and_unknown_keys():
    c = TrainConfig(steps=50, lr=2e-4, betas=(0.9, 0.99), schedule="cosine", ckpt_every=10)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown TrainConfig field.*lrate"):
        TrainConfig.from_dict({**c.to_dict(), "lrate": 1.0})


def test_replace_switches_budget():
    c = TrainConfig(steps=10).replace(minutes=2.0)
    assert c.steps is None and c.minutes == 2.0
