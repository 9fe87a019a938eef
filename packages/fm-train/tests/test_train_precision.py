"""Training precision: fp32 / bf16 / auto (fm_train.precision) and the Trainer applying it."""

import json
import logging
import math
import time

import pytest
import torch
from torch import nn

from fm_train import TrainConfig, Trainer
from fm_train import precision as prec
from fm_train.precision import PrecisionChoice, resolve_precision, sampling_precision

torch.set_num_threads(1)

DATA = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 3))


def batch_fn(step, g):
    return DATA[torch.randint(0, len(DATA), (8,), generator=g)]


def loss_fn(model, x, ctx):
    noise = torch.randn(x.shape, generator=ctx.generator)
    return ((model(x + noise) - x) ** 2).mean()


def cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, log_every=2, ckpt_every=None, ckpt_minutes=None,
                progress=False, device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- the config
def test_precision_field_and_old_bf16_switch():
    assert TrainConfig().precision == "fp32"
    old = TrainConfig.from_dict({"steps": 5, "bf16": True})  # a run config of fm-train <= 0.2
    assert old.precision == "bf16" and old.bf16 is False
    assert TrainConfig.from_dict(old.to_dict()) == old
    assert old.replace(precision="fp32").precision == "fp32"  # the old switch does not come back
    assert TrainConfig.from_dict({"steps": 5, "bf16": False}).precision == "fp32"
    with pytest.raises(ValueError, match=r"TrainConfig\.precision='fp16' is invalid: must be one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="bf16=True contradicts precision='auto'"):
        TrainConfig(bf16=True, precision="auto")


# ----------------------------------------------------------------------------- resolve_precision
def test_explicit_precision_measures_nothing():
    def never(m):
        raise AssertionError("not called")

    for p in ("fp32", "bf16"):
        c = resolve_precision(p, make_net(), never, "cpu")
        assert (c.requested, c.chosen, c.rates, c.reason) == (p, p, {}, "as asked")
    with pytest.raises(ValueError, match="precision='half' is invalid: must be one of auto, fp32, bf16"):
        resolve_precision("half", make_net(), never, "cpu")


def _sleepy_loss(fp32_s, bf16_s):
    """A loss whose forward sleeps for a time that depends on the autocast state (a stand-in network)."""
    lin = nn.Linear(3, 3)

    def loss_of(m):
        time.sleep(bf16_s if torch.is_autocast_enabled("cpu") else fp32_s)
        return (m(DATA) ** 2).mean() + 0 * lin.weight.sum()

    return loss_of


@pytest.mark.parametrize("fp32_s,bf16_s,chosen", [(0.002, 0.006, "fp32"), (0.006, 0.002, "bf16")])
def test_auto_times_both_precisions_and_keeps_the_faster(fp32_s, bf16_s, chosen):
    """The real timing loop (no screen), with forward passes that take known times."""
    c = resolve_precision("auto", make_net(), _sleepy_loss(fp32_s, bf16_s), "cpu", items_per_step=8,
                          screen=False, max_seconds=0.1)  # fmt: skip
    assert c.chosen == chosen and set(c.rates) == {"fp32", "bf16"}
    ratio = c.rates["bf16"] / c.rates["fp32"]
    assert (ratio < 0.7) if chosen == "fp32" else (ratio > 1.4)
    assert c.rates[chosen] < 8 / min(fp32_s, bf16_s)  # no faster than the sleep allows
    assert 0.1 <= c.seconds < 2.0


def test_auto_needs_the_margin(monkeypatch):
    monkeypatch.setattr(prec, "matmul_gflops", lambda device, dtype, **kw: 100.0)
    for bf16_rate, chosen, words in [(105.0, "fp32", "only 5% faster"), (90.0, "fp32", "10% slower"),
                                     (111.0, "bf16", "11% faster")]:  # fmt: skip
        monkeypatch.setattr(prec, "_time_precisions", lambda *a, r=bf16_rate: {"fp32": 100.0, "bf16": r})
        c = resolve_precision("auto", make_net(), lambda m: torch.zeros(()), "cpu")
        assert c.chosen == chosen and words in c.reason, c.reason


def test_screen_skips_timing_when_bf16_matmuls_are_slow(monkeypatch):
    monkeypatch.setattr(prec, "matmul_gflops", lambda device, dtype, **kw: 1.0 if dtype == torch.bfloat16 else 50.0)

    def never(m):
        raise AssertionError("the network must not be timed")

    c = resolve_precision("auto", make_net(), never, "cpu")
    assert c.chosen == "fp32" and c.rates == {} and c.matmul_gflops == {"fp32": 50.0, "bf16": 1.0}
    assert "1.0 GFLOP/s against 50.0" in c.reason


def test_measuring_leaves_model_and_rngs_alone():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    resolve_precision("auto", net, lambda m: ((m(torch.randn(4, 3)) - 1) ** 2).mean(), "cpu", screen=False,
                      max_seconds=0.01)  # fmt: skip
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_matmul_gflops_is_positive_and_finite():
    r = prec.matmul_gflops("cpu", torch.float32, n=64, seconds=0.01)
    assert math.isfinite(r) and r > 0


# ----------------------------------------------------------------------------- the Trainer
def test_trainer_auto_chooses_fp32_when_bf16_is_slower_logs_and_records(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(prec, "matmul_gflops", lambda device, dtype, **kw: 100.0)
    monkeypatch.setattr(prec, "_time_precisions", lambda *a: {"fp32": 800.0, "bf16": 600.0})
    seen = []

    def loss(model, x, ctx):
        seen.append(torch.is_autocast_enabled("cpu"))
        return loss_fn(model, x, ctx)

    with caplog.at_level(logging.INFO, logger="fm_train"):
        r = Trainer(make_net(), loss, batch_fn, cfg(precision="auto"), tmp_path).train()
    lines = [m for m in caplog.messages if m.startswith("precision auto")]
    assert lines == ["precision auto -> fp32 on cpu: bf16 is 25% slower (fp32 800 items/s, bf16 600 items/s; "
                     + lines[0].split("; ")[-1]]  # fmt: skip
    assert r.precision == "fp32" and seen == [False] * 6
    rec = json.loads((tmp_path / "metrics.json").read_text())["precision"]
    assert rec["requested"] == "auto" and rec["chosen"] == "fp32" and rec["rates"] == {"fp32": 800.0, "bf16": 600.0}
    assert rec["compile"] is False and rec["compile_seconds"] is None and rec["margin"] == 0.1


def test_trainer_auto_bf16_trains_and_samples_under_autocast(tmp_path, monkeypatch):
    monkeypatch.setattr(prec, "matmul_gflops", lambda device, dtype, **kw: 100.0)
    monkeypatch.setattr(prec, "_time_precisions", lambda *a: {"fp32": 500.0, "bf16": 900.0})
    seen, sampled = [], []

    def loss(model, x, ctx):
        seen.append(torch.is_autocast_enabled("cpu"))
        return loss_fn(model, x, ctx)

    def sample_fn(model, step, run_dir):
        sampled.append(torch.is_autocast_enabled("cpu"))

    r = Trainer(make_net(), loss, batch_fn, cfg(precision="auto"), tmp_path, sample_fn=sample_fn).train()
    assert r.precision == "bf16" and seen == [True] * 6 and sampled == [True]
    assert math.isfinite(r.final_loss)
    assert sampling_precision(tmp_path, "cpu") == "bf16"
    assert sampling_precision(tmp_path, torch.device("cuda")) == "fp32"  # measured on another kind of device


def test_auto_draws_no_training_randomness(tmp_path, monkeypatch):
    """A run with precision auto takes exactly the steps of the same run in fp32 when fp32 is chosen."""
    monkeypatch.setattr(prec, "matmul_gflops", lambda device, dtype, **kw: 100.0)
    a = Trainer(make_net(), loss_fn, batch_fn, cfg(), tmp_path / "a")
    a.train()
    b = Trainer(make_net(), loss_fn, batch_fn, cfg(precision="auto"), tmp_path / "b")
    monkeypatch.setattr(prec, "_time_precisions", lambda *args: {"fp32": 2.0, "bf16": 1.0})
    b.train()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_explicit_fp32_writes_no_precision_section(tmp_path):
    Trainer(make_net(), loss_fn, batch_fn, cfg(), tmp_path).train()
    assert not (tmp_path / "metrics.json").exists()
    assert sampling_precision(tmp_path, "cpu") == "fp32"


def test_sampling_precision_of_old_and_explicit_runs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"train": {"bf16": True}}))
    assert sampling_precision(tmp_path, "cpu") == "bf16"
    (tmp_path / "config.json").write_text(json.dumps({"train": {"precision": "auto"}}))
    assert sampling_precision(tmp_path, "cpu") == "fp32"  # no recorded choice
    assert sampling_precision(tmp_path / "missing", "cpu") == "fp32"
    assert PrecisionChoice("auto", "bf16").bf16


@pytest.mark.slow
def test_compile_on_cpu_reports_compile_seconds(tmp_path):
    """torch.compile on CPU (needs a C compiler): the first step's time is the compile time."""
    r = Trainer(make_net(), loss_fn, batch_fn, cfg(compile=True), tmp_path).train()
    assert r.steps == 6 and math.isfinite(r.final_loss)
    assert r.compile_seconds is not None and 0 < r.compile_seconds <= r.seconds
    rec = json.loads((tmp_path / "metrics.json").read_text())["precision"]
    assert rec["compile"] is True and rec["compile_seconds"] == round(r.compile_seconds, 2)
