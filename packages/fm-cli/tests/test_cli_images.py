"""fm_cli.images: the image apps' config, loss wiring, sampling, grids, metrics records and commands.

Numbers are checked against closed forms (a constant velocity moves every sample by exactly its
value, so x(1) = x(0) + c), against fm-core's own primitives built by hand (the loss wiring), or
against sizes and files computed independently.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fm_cli import LABEL_HEIGHT
from fm_cli.images import (
    CONFIG_LAYOUT,
    ImageRunConfig,
    ImageTrainConfig,
    add_eval_parser,
    add_sample_parser,
    build_config,
    check_label_guidance,
    column_labels,
    config_section,
    eval_line,
    field_path,
    flow_loss,
    from_recipe,
    grid_layout,
    read_run,
    record_eval,
    sample_command,
    sample_images,
    train_and_record,
    train_command,
    training_grids,
)
from fm_cli.pictures import CAPTION_HEIGHT
from fm_core import ExactOTCoupling, FlowMatchingLoss, IndependentCoupling, UniformTime
from fm_data.images import CLASS_NAMES, IMAGE_DATASETS, parse_classes, to_uint8
from fm_train import StepContext, Trainer, save_checkpoint


@dataclass
class Img(ImageRunConfig):
    """Img bound to fm-data's MNIST and Fashion-MNIST, as the apps bind it."""

    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS
    class_names: ClassVar[dict[str, tuple[str, ...]]] = CLASS_NAMES
    parse_classes = staticmethod(parse_classes)


def cond(**kw) -> Img:
    base = dict(dataset="mnist", conditional=True, label_dropout=0.1, guidance=2.0)
    return build_config(Img, {**base, **kw})


# ----------------------------------------------------------------------------- config
def test_train_config_cadence_and_lr_wording():
    t = ImageTrainConfig()
    assert (t.log_every, t.ckpt_minutes, t.ckpt_every) == (25, 2.0, None)
    with pytest.raises(ValueError, match=r"^TrainConfig\.lr=-1\.0 is invalid: must be a positive number$"):
        ImageTrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"TrainConfig\.batch_size=True is invalid"):
        ImageTrainConfig(batch_size=True)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"dataset": "cifar"}, "dataset='cifar' is invalid: must be one of mnist, fashion-mnist"),
        (
            {"solver": "midpoint", "nfe": 7},
            "nfe=7 is invalid: must be a positive multiple of 2 for the midpoint solver",
        ),
        ({"nfe": "ten"}, "nfe='ten' is invalid: must be a positive multiple of 1 for the euler solver"),
        ({"conditional": False}, "label_dropout=0.1 is invalid: must be 0 for an unconditional run"),
        ({"label_dropout": 0.0}, "guidance=2.0 is invalid: must be 1 when label_dropout is 0"),
        ({"guidance": float("nan")}, "guidance=nan is invalid: must be a finite number"),
        ({"time": "stratified"}, "time='stratified' is invalid: must be one of uniform, logit-normal, u-shaped"),
        ({"classes": [42]}, "classes [42] out of range"),
        ({"colour": "red"}, "unknown run config key(s) colour"),
    ],
)
def test_run_config_names_the_bad_field(fields, message):
    with pytest.raises(ValueError, match=f"^{__import__('re').escape(message)}"):
        cond(**fields)


def test_an_unbound_config_says_what_is_missing():
    with pytest.raises(ValueError, match=r"dataset='mnist' is invalid: .*set datasets on the config class"):
        ImageRunConfig(dataset="mnist")


def test_build_config_puts_train_fields_into_train():
    c = cond(batch_size=8, lr=0.5, seed=3, classes="5,3")
    assert (c.train.batch_size, c.train.lr, c.train.seed) == (8, 0.5, 3)
    assert c.classes == [3, 5] and c.sample_classes == [3, 5] and c.num_classes == 10
    assert Img.from_dict(c.to_dict()) == c  # nested round trip
    section = config_section(c)
    assert "train" not in section and section["classes"] == [3, 5]
    assert field_path("lr") == "train.lr" and field_path("nfe") == "nfe"
    u = Img()
    assert u.num_classes is None and u.sample_classes == list(range(10))


def test_from_recipe_rules():
    recipe = dict(dataset="mnist", label_dropout=0.1, guidance=2.0, solver="euler", nfe=10)
    u = from_recipe(Img, recipe, {"conditional": False, "lr": None})
    assert (u.label_dropout, u.guidance) == (0.0, 1.0)  # no labels: no dropout, no guidance
    c = from_recipe(Img, recipe, {"conditional": True, "label_dropout": 0.0})
    assert c.guidance == 1.0  # no null label: guidance 1
    with pytest.raises(ValueError, match="guidance=2"):
        from_recipe(Img, recipe, {"conditional": True, "label_dropout": 0.0, "guidance": 2.0})
    r = from_recipe(Img, recipe, {"conditional": True, "solver": "rk4"})
    assert (r.solver, r.nfe) == ("rk4", 8)  # 10 rounded down to whole rk4 steps of 4
    m = from_recipe(Img, recipe, {"conditional": True, "solver": "midpoint", "nfe": 4})
    assert m.nfe == 4


def _write_run(path, cfg, **top):
    path.mkdir(parents=True, exist_ok=True)
    data = {"format": "fm-train-run", "train": cfg.train.to_dict(), "app": "fm-x", "layout": CONFIG_LAYOUT,
            "img": config_section(cfg), **top}  # fmt: skip
    (path / "config.json").write_text(json.dumps(data))
    return path


def test_read_run(tmp_path):
    c = cond(batch_size=8)
    run = _write_run(tmp_path / "r", c)
    got, data = read_run(run, "fm-x", "img", Img)
    assert got == c and data["app"] == "fm-x"
    old = _write_run(tmp_path / "old", c, layout=None)
    with pytest.raises(ValueError, match=r"config\.json: written by fm-x before 0\.2\.0 .* train the run again"):
        read_run(old, "fm-x", "img", Img)
    bad = _write_run(tmp_path / "bad", c, train={"batch_size": 0})
    with pytest.raises(ValueError, match=r'config\.json: bad "train" section: TrainConfig\.batch_size=0'):
        read_run(bad, "fm-x", "img", Img)
    worse = _write_run(tmp_path / "worse", c, img="mnist")
    with pytest.raises(ValueError, match=r'bad "img" section: a run config must be a JSON object'):
        read_run(worse, "fm-x", "img", Img)
    with pytest.raises(ValueError, match="not an fm-y run"):
        read_run(run, "fm-y", "img", Img)


# ----------------------------------------------------------------------------- loss wiring
class Zero(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        return x * self.w


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_flow_loss_is_fm_cores_loss_with_the_runs_settings(coupling):
    cfg = cond(coupling=coupling, time="uniform")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 4, 4, generator=g)
    y = torch.tensor([3, 5] * 4)
    hand = FlowMatchingLoss(
        time_sampler=UniformTime(),
        coupling=ExactOTCoupling(by_label=True) if coupling == "ot" else IndependentCoupling(),
        label_dropout=0.1,
        num_classes=10,
    )
    for shard in (None, (1, 2)):
        a = flow_loss(cfg)(Zero(), (x, y), StepContext(generator=torch.Generator().manual_seed(7), shard=shard))
        b = hand(Zero(), x, y, generator=torch.Generator().manual_seed(7), shard=shard)
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- sampling
class Const(nn.Module):
    """v = c (y + 1) per sample (y = 10 is the null label), or c without labels."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x, t, y=None):
        if y is None:
            return torch.full_like(x, self.c)
        return self.c * (y.to(x.dtype) + 1).view(-1, *[1] * (x.ndim - 1)).expand_as(x)


def test_check_label_guidance_messages():
    u = Img(dataset="mnist")
    with pytest.raises(ValueError, match=r"^--label 3: the run is unconditional"):
        check_label_guidance(u, 3, None, flags=True)
    with pytest.raises(ValueError, match=r"^guidance=2: the run is unconditional"):
        check_label_guidance(u, None, 2.0)
    check_label_guidance(u, None, 1.0)  # guidance 1 is the plain model
    c = cond(classes=[3, 5])
    with pytest.raises(ValueError, match=r"^label=4: not a trained class; this run's classes are \[3, 5\]$"):
        check_label_guidance(c, 4, None)
    no_null = cond(label_dropout=0.0, guidance=1.0)
    with pytest.raises(ValueError, match=r"^--guidance 3: the run was trained without label dropout.*--guidance 1$"):
        check_label_guidance(no_null, None, 3.0, flags=True)


def test_sample_images_closed_form_labels_and_guidance():
    cfg = cond(classes=[3, 5], solver="heun", nfe=4)
    n, c, w = 6, 0.01, 2.0
    res = sample_images(Const(c), cfg, n, (1, 4, 4), decode=lambda x: x, seed=1, batch_size=4)
    assert res.labels.tolist() == [3, 5, 3, 5, 3, 5] and res.nfe == 4 and res.method == "heun"
    x0 = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    v = c * 11 + w * (c * (res.labels.float() + 1) - c * 11)  # guided: v_null + w (v_cond - v_null)
    torch.testing.assert_close(res.x, x0 + v.view(-1, 1, 1, 1))
    one = sample_images(Const(c), cfg, 3, (1, 4, 4), decode=lambda x: x, label=5, guidance=1.0, solver="rk4")
    assert one.labels.tolist() == [5, 5, 5] and one.nfe == 4  # the run's NFE 4 is one rk4 step
    with pytest.raises(ValueError, match="label=4"):
        sample_images(Const(c), cfg, 3, (1, 4, 4), decode=lambda x: x, label=4)


def test_sample_images_decodes_and_takes_dopri5():
    cfg = Img(dataset="mnist")
    res = sample_images(Const(0.5), cfg, 5, (1, 30, 30), decode=to_uint8, solver="dopri5", trajectory=2, seed=3)
    x0 = torch.randn(5, 1, 30, 30, generator=torch.Generator().manual_seed(3))
    assert res.x.dtype == torch.uint8 and res.x.shape == (5, 28, 28) and res.labels is None
    assert int((res.x.int() - to_uint8(x0 + 0.5).int()).abs().max()) <= 1  # x(1) = x(0) + 0.5, cropped to 28
    assert res.trajectory.shape[1:] == (2, 28, 28) and torch.equal(res.trajectory[0], to_uint8(x0[:2]))
    assert res.method == "dopri5" and res.nfe > 0


# ----------------------------------------------------------------------------- grids
def test_grid_layout_and_column_labels():
    assert grid_layout(cond()) == (40, 10)
    assert grid_layout(cond(classes=[3, 5])) == (32, 8)
    assert grid_layout(Img()) == (32, 8)
    names = CLASS_NAMES["fashion-mnist"]
    labels = torch.arange(20) % 10
    assert column_labels(labels, 10, names) == list(names)
    assert column_labels(torch.tensor([3, 5] * 16), 8, names) is None  # columns repeat a class
    assert column_labels(torch.tensor([3, 5, 3, 5, 3]), 3, names) is None  # a column holds two classes
    assert column_labels(None, 8, names) is None


def test_training_grids_write_labelled_pictures(tmp_path):
    cfg = cond(dataset="fashion-mnist")
    calls = []

    def draw(model, n, seed):
        calls.append((n, seed))
        return sample_images(model, cfg, n, (1, 28, 28), decode=to_uint8, seed=seed, nfe=2)

    fn = training_grids(cfg, draw)
    model = Zero().train()
    fn(model, 7, tmp_path)
    assert calls == [(40, 1234)] and model.training  # back in training mode
    for name in ("samples/step_000007.png", "samples.png"):
        with Image.open(tmp_path / name) as im:  # 10 columns, 4 rows, one label strip, the caption
            assert im.size == (2 * (10 * 30 + 2), 2 * (4 * 30 + 2) + LABEL_HEIGHT + CAPTION_HEIGHT)


# ----------------------------------------------------------------------------- records
def test_train_and_record(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 2, generator=g)

    def batch_fn(step, gen):
        return data[torch.randint(0, 64, (16,), generator=gen)], None

    cfg = build_config(Img, {"dataset": "mnist", "batch_size": 16, "steps": 3, "device": "cpu",
                                        "progress": False})  # fmt: skip
    model = nn.Linear(2, 2)
    trainer = Trainer(Wrapped(model), flow_loss(cfg), batch_fn, cfg.train, tmp_path / "run")
    s = train_and_record(trainer)
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    assert rec["steps"] == 3 and rec["steps_this_call"] == 3 and rec["processes"] == 1
    assert rec["num_params"] == 6 and math.isclose(s.images_per_s, 3 * 16 / s.result.seconds)
    assert {"cpus", "loadavg_1min", "loadavg_1min_at_start"} <= set(rec["machine"])


class Wrapped(nn.Module):
    """A velocity model(x, t) around a linear layer."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.lin = linear

    def forward(self, x, t, y=None):
        return self.lin(x)


def test_record_eval_appends(tmp_path):
    res = sample_images(Const(0.1), cond(), 4, (1, 28, 28), decode=to_uint8)
    scores = {"fid": 1.5, "fid_n_samples": 4, "fid_n_reference": 10, "fid_reference": "test split, all classes",
              "label_accuracy": 0.5, "coverage": {"classes_present": 3, "min_ratio": 0.0}}  # fmt: skip
    for _ in range(2):
        path = record_eval(tmp_path, res, scores, n=4, seed=9)
    recs = json.loads(path.read_text())["eval"]
    assert len(recs) == 2 and recs[0]["seed"] == 9 and recs[0]["nfe"] == 10 and recs[0]["solver"] == "euler"
    line = eval_line(res, scores, path)
    assert line.startswith("FID 1.50 (4 samples vs 10 test split, all classes), label accuracy 0.500")


# ----------------------------------------------------------------------------- commands
def _parser():
    p = argparse.ArgumentParser(prog="fm-x")
    sub = p.add_subparsers(dest="command")
    add_sample_parser(sub, "sample")
    add_eval_parser(sub, "eval")
    return p, sub


def _fake_app(tmp_path, cfg):
    run = _write_run(tmp_path / "run", cfg)
    (run / "checkpoint").mkdir()

    def read(path):
        return read_run(path, "fm-x", "img", Img)

    def load(args, c):
        def draw(n, **kw):
            return sample_images(Const(0.0), c, n, (1, 28, 28), decode=to_uint8, **kw)

        return draw, "cpu"

    return run, read, load


def test_sample_command_writes_npz_and_labelled_grid(tmp_path, capsys):
    p, _ = _parser()
    run, read, load = _fake_app(tmp_path, cond(dataset="fashion-mnist"))
    out = tmp_path / "o" / "s.npz"
    args = p.parse_args(["sample", "--run", str(run), "--n", "20", "--out", str(out), "--grid", str(tmp_path / "g.png"),
                         "--device", "cpu", "--quiet"])  # fmt: skip
    assert sample_command("fm-x", p, args, read=read, load=load) == 0
    with np.load(out) as z:
        assert z["images"].shape == (20, 28, 28) and z["labels"].tolist() == list(range(10)) * 2
    with Image.open(tmp_path / "g.png") as im:  # 10 columns (one per class), 2 rows, names above, caption below
        assert im.size == (2 * (10 * 30 + 2), 2 * (2 * 30 + 2) + LABEL_HEIGHT + CAPTION_HEIGHT)
    out_line = capsys.readouterr().out
    assert "sampled 20 images (labels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]; euler, NFE 10, guidance 2)" in out_line


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--solver", "dopri5", "--nfe", "4"], "--nfe 4 cannot be used with --solver dopri5"),
        (["--label", "11"], "--label 11: not a trained class"),
        (["--out", "s.txt"], "must end in .npz"),
    ],
)
def test_sample_command_usage_errors(tmp_path, capsys, extra, needle):
    p, sub = _parser()
    run, read, load = _fake_app(tmp_path, cond())
    args = p.parse_args(["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s.npz"), *extra])
    with pytest.raises(SystemExit) as e:
        sample_command("fm-x", sub.choices["sample"], args, read=read, load=load)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_train_command_with_nothing_left(tmp_path, capsys):
    """A resumed run whose checkpoint reached the budget: one line, exit 0, nothing written."""
    cfg = cond(steps=3)
    run = _write_run(tmp_path / "run", cfg)
    save_checkpoint(run / "checkpoint", model_state={"w": torch.zeros(1)}, config={"step": 3})
    (run / "metrics.json").write_text('{"train": {"steps": 3}}\n')
    before = (run / "metrics.json").read_bytes()
    p = argparse.ArgumentParser(prog="fm-x train")
    for flag in ("--out", "--device"):
        p.add_argument(flag, default="cpu" if flag == "--device" else None)
    for flag in ("--resume", "--quiet"):
        p.add_argument(flag, action="store_true")
    for flag in ("--steps", "--minutes", "--threads", "--lr"):
        p.add_argument(flag, type=float if flag == "--lr" else int, default=None)
    args = p.parse_args(["--out", str(run), "--resume"])

    def train(c, r):
        raise AssertionError("trained although nothing was left")

    code = train_command("fm-x", p, args, prefix="x", read=lambda out: read_run(out, "fm-x", "img", Img),
                         from_args=lambda: cfg, train=train, fields=("lr",), default_steps=10)  # fmt: skip
    assert code == 0 and (run / "metrics.json").read_bytes() == before
    line = f"{run}: the run has trained 3 of 3 steps; nothing left to do (raise --steps to continue)"
    assert capsys.readouterr().out.strip() == line
    args = p.parse_args(["--out", str(run), "--resume", "--lr", "0.5"])  # a setting that differs from the run's
    with pytest.raises(SystemExit):
        train_command("fm-x", p, args, prefix="x", read=lambda out: read_run(out, "fm-x", "img", Img),
                      from_args=lambda: cfg, train=train, fields=("lr",), default_steps=10)  # fmt: skip
    assert "--lr 0.5 (the run has 0.001)" in capsys.readouterr().err
