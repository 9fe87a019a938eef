"""The Trainer: exact resume, NaN guard, schedules as applied, budgets, run-directory contents."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from fm_train import (
    CheckpointError,
    LossHistory,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    load_checkpoint,
    load_model_for_sampling,
    lr_at,
)

torch.set_num_threads(1)

DATA = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))


class Net(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, hidden), nn.Dropout(0.1), nn.SiLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.body(x)


def make_net(init_seed=123, hidden=16):
    torch.manual_seed(init_seed)
    return Net(hidden)


def batch_fn(step, g):
    return DATA[torch.randint(0, len(DATA), (8,), generator=g)]


def loss_fn(model, x, ctx):
    # Randomness from the Trainer's generator, and from torch's global RNG (dropout),
    # NumPy's and Python's: all four must be restored for an exact resume.
    noise = torch.randn(x.shape, generator=ctx.generator)
    w = 1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
    return w * ((model(x + noise) - x) ** 2).mean()


def cfg(**kw):
    base = dict(steps=20, batch_size=8, lr=1e-2, warmup_steps=3, schedule="cosine", ema_decay=0.9,
                log_every=4, ckpt_every=5, ckpt_minutes=None, progress=False, device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Crash(Exception):
    pass


def crashing_batch_fn(at_step):
    def fn(step, g):
        if step == at_step:
            raise Crash(step)
        return batch_fn(step, g)

    return fn


def sample_fn_factory(calls):
    def sample_fn(ema_model, step, run_dir):
        calls.append(step)
        assert not ema_model.training and not torch.is_grad_enabled()
        torch.randn(5)  # consumes global randomness: must not disturb training
        np.random.rand()

    return sample_fn


def test_resume_after_crash_is_exact(tmp_path):
    straight_samples, resumed_samples = [], []
    t1 = Trainer(
        make_net(),
        loss_fn,
        batch_fn,
        cfg(sample_every=3),
        tmp_path / "a",
        sample_fn=sample_fn_factory(straight_samples),
    )
    r1 = t1.train()
    assert r1.steps == 20 and r1.steps_this_call == 20

    # Crash at step 13: the checkpoint of step 10 survives; steps 11-12 are lost.
    t2 = Trainer(
        make_net(),
        loss_fn,
        crashing_batch_fn(13),
        cfg(sample_every=3),
        tmp_path / "b",
        sample_fn=sample_fn_factory(resumed_samples),
    )
    with pytest.raises(Crash):
        t2.train()
    assert load_checkpoint(tmp_path / "b").step == 10

    # A new process: different init, disturbed global RNGs.
    torch.manual_seed(999), np.random.seed(5), random.seed(7)
    t3 = Trainer(
        make_net(init_seed=7),
        loss_fn,
        batch_fn,
        cfg(sample_every=3),
        tmp_path / "b",
        sample_fn=sample_fn_factory(resumed_samples),
    )
    r3 = t3.train(resume=True)
    assert r3.steps == 20 and r3.steps_this_call == 10
    assert_same(params(t1.model), params(t3.model))
    assert_same(params(t1.ema.module), params(t3.ema.module))
    assert t1.ema.num_updates == t3.ema.num_updates == 20
    assert_same(load_checkpoint(tmp_path / "a").model, load_checkpoint(tmp_path / "b").model)
    assert straight_samples == [3, 6, 9, 12, 15, 18, 20]
    assert resumed_samples == [3, 6, 9, 12, 12, 15, 18, 20]
    # The history of the resumed run continues the one saved at step 10.
    h1, h3 = LossHistory.read_csv(r1.history_path), LossHistory.read_csv(r3.history_path)
    assert h1.step == h3.step == [4, 8, 12, 16, 20]
    assert h1.loss[:2] == h3.loss[:2]


def test_extending_the_step_budget_matches_one_long_run(tmp_path):
    c20 = cfg(schedule="constant", ckpt_every=None)
    t1 = Trainer(make_net(), loss_fn, batch_fn, c20, tmp_path / "a")
    t1.train()
    Trainer(make_net(), loss_fn, batch_fn, c20.replace(steps=10), tmp_path / "b").train()
    t2 = Trainer(make_net(), loss_fn, batch_fn, c20, tmp_path / "b")
    assert t2.train(resume=True).steps_this_call == 10
    assert_same(params(t1.model), params(t2.model))
    assert_same(params(t1.ema.module), params(t2.ema.module))


def test_ema_of_the_trainer_follows_the_recurrence(tmp_path):
    trajectory = []

    def recording_loss(model, x, ctx):
        trajectory.append([p.detach().clone() for p in model.parameters()])  # weights after the previous step
        return loss_fn(model, x, ctx)

    net = make_net()
    expected = [p.detach().clone() for p in net.parameters()]
    t = Trainer(net, recording_loss, batch_fn, cfg(steps=12, ckpt_every=None), tmp_path)
    t.train()
    trajectory = trajectory[1:] + [[p.detach().clone() for p in t.model.parameters()]]
    for n, theta in enumerate(trajectory):
        d = min(0.9, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * v for e, v in zip(expected, theta)]
    for e, p in zip(expected, t.ema.module.parameters()):
        assert torch.allclose(e, p, rtol=1e-5, atol=1e-6)


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}
    snapshot = {}

    def nan_at_7(model, x, ctx):
        calls["n"] += 1
        if calls["n"] == 6:  # before step 6: the weights that step 5 left
            snapshot.update(params(model))
        loss = loss_fn(model, x, ctx)
        return loss * float("nan") if calls["n"] == 7 else loss

    t = Trainer(make_net(), nan_at_7, batch_fn, cfg(log_every=10, ckpt_every=5), tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 7: the loss is nan.*step 5") as err:
        t.train()
    assert err.value.step == 7 and err.value.checkpoint_step == 5
    assert calls["n"] == 10  # detected at the next log interval, without a per-step sync
    c = load_checkpoint(tmp_path)
    assert c.step == 5
    assert_same(c.model, snapshot)
    assert all(torch.isfinite(v).all() for v in c.model.values())


def test_non_finite_weights_after_a_finite_loss_are_caught_before_checkpointing(tmp_path):
    calls = {"n": 0}

    def inf_grad_at_5(model, x, ctx):
        calls["n"] += 1
        loss = loss_fn(model, x, ctx)
        if calls["n"] == 5:
            p = next(model.parameters())
            loss = loss + torch.sqrt((p - p.detach()).abs().sum())  # value +0, gradient inf*0 = nan
        return loss

    t = Trainer(make_net(), inf_grad_at_5, batch_fn, cfg(log_every=10, ckpt_every=5), tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"step 5: the weights are no longer finite.*no checkpoint") as err:
        t.train()
    assert err.value.checkpoint is None
    assert not (tmp_path / "checkpoint").exists()


def test_learning_rates_applied_match_the_closed_form(tmp_path):
    seen = []
    holder = {}

    def loss_recording_lr(model, x, ctx):
        seen.append(holder["t"].optimizer.param_groups[0]["lr"])
        return loss_fn(model, x, ctx)

    c = cfg(steps=14, warmup_steps=4, schedule="cosine", lr=0.5, min_lr_ratio=0.1, ckpt_every=None)
    holder["t"] = Trainer(make_net(), loss_recording_lr, batch_fn, c, tmp_path)
    holder["t"].train()
    want = [
        0.5 * min(1, s / 4) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * max(0, s - 4) / 10))) for s in range(1, 15)
    ]
    assert seen == pytest.approx(want, rel=1e-12)
    assert lr_at(14, lr=0.5, warmup_steps=4, schedule="cosine", progress=1.0, min_lr_ratio=0.1) == pytest.approx(0.05)


def test_minutes_budget_stops_and_counts_time_across_resumes(tmp_path):
    c = cfg(steps=None, minutes=0.02, log_every=50, ckpt_every=None)
    r = Trainer(make_net(), loss_fn, batch_fn, c, tmp_path).train()
    assert r.stopped_by == "minutes" and r.steps > 0
    assert 1.2 <= r.seconds < 12.0
    elapsed = load_checkpoint(tmp_path).train_state["elapsed"]
    assert elapsed >= 1.2
    # Same budget again: nothing left to train.
    r2 = Trainer(make_net(), loss_fn, batch_fn, c, tmp_path).train(resume=True)
    assert r2.steps_this_call == 0 and r2.steps == r.steps
    # A larger budget trains for the difference only (0.01 min = 0.6 s).
    r3 = Trainer(make_net(), loss_fn, batch_fn, c.replace(minutes=0.03), tmp_path).train(resume=True)
    assert r3.steps_this_call > 0
    assert 1.8 <= load_checkpoint(tmp_path).train_state["elapsed"] < elapsed + 8.0
    assert r3.seconds < 8.0


def test_run_directory_contents_and_sampling_helper(tmp_path):
    c = cfg(steps=8, ckpt_every=None)
    t = Trainer(make_net(hidden=8), loss_fn, batch_fn, c, tmp_path, extra_config={"net": {"hidden": 8}, "data": "toy"})
    r = t.train()
    assert r.final_loss is not None and math.isfinite(r.final_loss)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "config.json", "loss.csv"]
    h = LossHistory.read_csv(tmp_path / "loss.csv")
    assert h.step == [4, 8] and h.loss[-1] == pytest.approx(r.final_loss)
    model, config = load_model_for_sampling(tmp_path, lambda cfg: make_net(hidden=cfg["net"]["hidden"]))
    assert config["train"]["steps"] == 8 and config["data"] == "toy" and config["step"] == 8
    assert_same(params(model), params(t.ema.module))


def test_fresh_start_refuses_an_existing_checkpoint_and_resume_without_one_starts_fresh(tmp_path):
    c = cfg(steps=5, ckpt_every=None)
    Trainer(make_net(), loss_fn, batch_fn, c, tmp_path / "a").train()
    with pytest.raises(ValueError, match="already holds a checkpoint.*resume=True"):
        Trainer(make_net(), loss_fn, batch_fn, c, tmp_path / "a").train()
    t_fresh = Trainer(make_net(), loss_fn, batch_fn, c, tmp_path / "b")
    t_fresh.train(resume=True)  # nothing to resume: same as a fresh run
    assert_same(load_checkpoint(tmp_path / "a").model, load_checkpoint(tmp_path / "b").model)


def test_resume_refuses_a_different_config_or_model(tmp_path):
    c = cfg(steps=5, ckpt_every=None)
    Trainer(make_net(), loss_fn, batch_fn, c, tmp_path, extra_config={"net": {"hidden": 16}}).train()
    with pytest.raises(
        CheckpointError, match=r"config\.json: config mismatch.*train\.lr=0\.01 in the checkpoint but 0\.02 now"
    ):
        Trainer(
            make_net(), loss_fn, batch_fn, c.replace(lr=0.02, steps=10), tmp_path, extra_config={"net": {"hidden": 16}}
        ).train(resume=True)
    with pytest.raises(CheckpointError, match=r"config mismatch.*net\.hidden=16 in the checkpoint but 32 now"):
        Trainer(
            make_net(), loss_fn, batch_fn, c.replace(steps=10), tmp_path, extra_config={"net": {"hidden": 32}}
        ).train(resume=True)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not fit the model.*wrong shapes"):
        Trainer(
            make_net(hidden=32), loss_fn, batch_fn, c.replace(steps=10), tmp_path, extra_config={"net": {"hidden": 16}}
        ).train(resume=True)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(extra_config={"train": 1}), "reserved"),
        (dict(extra_config={"f": float("nan")}), "JSON"),
        (dict(loss_fn=3), "loss_fn must be callable"),
    ],
)
def test_bad_trainer_arguments(tmp_path, kw, match):
    args = dict(model=make_net(), loss_fn=loss_fn, batch_fn=batch_fn, config=cfg(), run_dir=tmp_path)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        Trainer(**args)


def test_loss_must_be_a_scalar(tmp_path):
    t = Trainer(make_net(), lambda m, x, ctx: (m(x) - x) ** 2, batch_fn, cfg(), tmp_path)
    with pytest.raises(ValueError, match=r"0-d tensor, got \[8, 3\]"):
        t.train()


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_keys(tmp_path):
    """torch.compile on CPU (needs a C compiler; compiling takes tens of seconds)."""
    t = Trainer(make_net(), loss_fn, batch_fn, cfg(steps=6, compile=True, ckpt_every=None), tmp_path)
    r = t.train()
    assert r.steps == 6 and math.isfinite(r.final_loss)
    keys = set(load_checkpoint(tmp_path).model)
    assert keys == set(make_net().state_dict()) and not any("_orig_mod" in k for k in keys)
