"""fm_cli.method: the stored method of a run and the straightness of a sampler's paths (closed forms)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from fm_cli.method import (
    FLOW_MAP,
    MethodConfig,
    flow_map_sampler,
    is_two_time,
    method_entry,
    read_method,
    run_is_two_time,
    sampler_straightness,
    sampling_model,
)


def test_a_config_without_method_is_flow_matching():
    assert read_method({}) == MethodConfig() and read_method({}).name == "fm"
    m = read_method({"method": {"name": "meanflow", "equal_fraction": 0.5}})
    assert m.two_time and m.equal_fraction == 0.5 and m.to_dict() == {"name": "meanflow", "equal_fraction": 0.5}
    with pytest.raises(ValueError, match=r'RUN/config.json: bad "method" section: .*name'):
        read_method({"method": {"name": "consistency"}}, "RUN/config.json")
    with pytest.raises(ValueError, match="unknown method key"):
        read_method({"method": {"name": "fm", "teacher_run": "x"}})


@pytest.mark.parametrize(
    "fields, bad",
    [
        ({"name": "fm", "teacher": "runs/a"}, "method.teacher"),
        ({"name": "meanflow", "pairs": 10}, "method.pairs"),
        ({"name": "reflow"}, "method.teacher"),
        ({"name": "meanflow", "equal_fraction": 1.5}, "method.equal_fraction"),
        ({"name": "reflow", "teacher": "r", "teacher_solver": "dopri5"}, "method.teacher_solver"),
        ({"name": "reflow", "teacher": "r", "train_guidance": 2.0}, "method.train_guidance"),
        ({"name": "meanflow", "train_guidance": 0.5}, "method.train_guidance"),
        ({"name": "meanflow", "train_guidance": float("inf")}, "method.train_guidance"),
        ({"name": "meanflow", "distill": True}, "method.distill"),
        ({"name": "reflow", "teacher": "r", "distill": True}, "method.distill"),
        ({"name": "meanflow", "init_from": "r", "distill": 1}, "method.distill"),
    ],
)
def test_method_config_refuses_what_another_method_owns(fields, bad):
    with pytest.raises(ValueError, match=bad):
        MethodConfig(**fields)


def test_train_guidance_goes_to_the_meanflow_loss():
    from fm_cli.method import method_loss

    fn = method_loss(MethodConfig(name="meanflow", train_guidance=2.5), label_dropout=0.1, num_classes=3)
    assert fn.loss.guidance == 2.5
    assert method_loss(MethodConfig(name="meanflow"), label_dropout=0.1, num_classes=3).loss.guidance is None
    m = read_method({"method": {"name": "meanflow", "train_guidance": 2.5}})
    assert m.to_dict() == {"name": "meanflow", "train_guidance": 2.5}


def test_distill_gives_the_teacher_to_the_meanflow_loss():
    from fm_cli.method import distill_teacher, method_loss

    m = MethodConfig(name="meanflow", init_from="runs/fm", distill=True)
    net = nn.Linear(2, 2).train()
    asked = []
    teacher = distill_teacher(lambda run, dev: asked.append((run, dev)) or net, m, "cpu")
    assert asked == [("runs/fm", "cpu")] and teacher is net and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert method_loss(m, velocity=teacher).loss.velocity is net
    assert distill_teacher(lambda run, dev: net, MethodConfig(name="meanflow", init_from="runs/fm"), "cpu") is None
    with pytest.raises(ValueError, match="exactly when"):
        method_loss(m)  # a distilling method without its teacher
    with pytest.raises(ValueError, match="exactly when"):
        method_loss(MethodConfig(name="meanflow"), velocity=net)
    assert read_method({"method": m.to_dict()}) == m


def test_method_entry_keeps_old_runs_as_they_were(tmp_path):
    fm = MethodConfig()
    assert method_entry(fm, tmp_path, resume=False) == {"method": {"name": "fm"}}
    (tmp_path / "config.json").write_text(json.dumps({"format": "fm-train-run", "train": {}}))
    assert method_entry(fm, tmp_path, resume=True) == {}  # an old run resumes with the config it was trained with
    assert method_entry(fm, tmp_path, resume=False) == {"method": {"name": "fm"}}


def test_two_time_is_read_from_the_net_or_the_method():
    assert run_is_two_time({"net": {"config": {"two_time": True}}})
    assert run_is_two_time({"method": {"name": "meanflow"}})
    assert not run_is_two_time({"net": {"config": {"two_time": False}}, "method": {"name": "reflow", "teacher": "t"}})


class Decay(nn.Module):
    """v(x, t) = -x: x_t = x_0 e^{-t}."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        return -x + 0 * self.w


class DecayMap(Decay):
    """Its exact average velocity u(x, r, t) = x (e^{-(t - r)} - 1) / (t - r), and -x at t = r."""

    two_time = True

    def forward(self, x, r, t, y=None):
        h = (t - r).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        safe = torch.where(h > 0, h, torch.ones_like(h))
        return torch.where(h > 0, x * torch.expm1(-safe) / safe, -x)


def test_straightness_of_the_decay_flow_is_its_closed_form():
    # ||v - (x1 - x0)||^2 = ||x0||^2 (e^-t + a)^2 with a = e^-1 - 1; its mean over t in [0, 1] is
    # (1 - e^-2) / 2 + 2a (1 - e^-1) + a^2, times E||x0||^2 over the drawn noise.
    n, seed = 64, 3
    a = math.exp(-1) - 1
    per = (1 - math.exp(-2)) / 2 + 2 * a * (1 - math.exp(-1)) + a * a
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)).double()
    want = per * float(x0.pow(2).sum(1).mean())
    got = sampler_straightness(Decay(), n, (2,), solver="rk4", nfe=400, seed=seed)
    assert got["n"] == n and got["sampler_nfe"] == 400 and got["rule"] == "trapezoid"
    assert got["value"] == pytest.approx(want, rel=1e-3)
    norm = per / (a * a)  # E||x1 - x0||^2 = a^2 E||x0||^2
    assert got["normalised"] == pytest.approx(norm, rel=1e-3)


def test_flow_map_of_the_exact_average_velocity_lands_on_the_flow():
    model = DecayMap()
    assert is_two_time(model) and not is_two_time(Decay())
    assert flow_map_sampler(model, None) == (FLOW_MAP, 1)
    with pytest.raises(ValueError, match="flow-map needs a two-time model"):
        flow_map_sampler(Decay(), 1)
    from fm_core import sample

    for k in (1, 2):
        res = sample(sampling_model(model, FLOW_MAP), 8, (2,), seed=1, method=FLOW_MAP, nfe=k)
        x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(res.x, x0 * math.exp(-1), atol=1e-6) and res.nfe == k
    v = sampling_model(model, "euler")  # u(x, t, t) = v(x, t) = -x
    x = torch.randn(4, 2)
    assert torch.equal(v(x, torch.full((4,), 0.3)), -x)
