"""End-to-end tests of normalizing-flow runs (``fm-toy2d train --model nf``) on tiny budgets.

The exact NLL is checked against an independent computation: the EMA weights are read from the
checkpoint with safetensors into a flow built by fm_nflows.build_flow, and -log p is summed from
its own forward pass and the standard normal density, not through fm_toy2d.nf.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fm_toy2d import nf
from fm_toy2d.cli import main
from fm_toy2d.config import RunConfig
from fm_toy2d.evaluation import heldout_data
from fm_toy2d.training import build_distribution, run_model_kind

TINY = ["--steps", "20", "--hidden", "16", "--depth", "2", "--batch-size", "128", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def rings_nf(tmp_path_factory, fast_env):
    """A tiny conditional Olympic-rings flow, with pictures."""
    run = tmp_path_factory.mktemp("toy2d_nf") / "rings"
    assert (
        main(["train", "--model", "nf", "--dataset", "olympic-rings", "--conditional", "--out", str(run), *TINY]) == 0
    )
    return run


@pytest.fixture(scope="module")
def board_nf(tmp_path_factory, fast_env):
    """A tiny unconditional 4x4 checkerboard flow, without pictures."""
    run = tmp_path_factory.mktemp("toy2d_nf") / "board"
    assert (
        main(
            [
                "train",
                "--model",
                "nf",
                "--dataset",
                "checkerboard",
                "--cells",
                "4",
                "--no-pictures",
                "--out",
                str(run),
                *TINY,
            ]
        )
        == 0
    )
    return run


def test_train_writes_an_nf_run_directory(rings_nf):
    cfg = json.loads((rings_nf / "config.json").read_text())
    assert cfg["app"] == "fm-toy2d" and cfg["model"] == "nf" and run_model_kind(rings_nf) == "nf"
    toy = RunConfig.from_dict(cfg["toy2d"])  # a plain RunConfig (no "user_set" left in it)
    assert toy.model == "nf" and toy.dataset == "olympic-rings" and toy.conditional and toy.steps == 20
    assert toy.batch_size == 128  # given on the command line
    assert toy.lr == nf.NF_DEFAULTS["lr"] and toy.warmup_steps == nf.NF_DEFAULTS["warmup_steps"]  # nf defaults
    assert toy.net["hidden"] == 16 and toy.net["n_layers"] == 2  # --hidden / --depth
    assert cfg["net"]["name"] == "fm-nflows/flow" and cfg["net"]["config"]["num_classes"] == 5
    for name in (
        "checkpoint/model.safetensors",
        "checkpoint/ema.safetensors",
        "loss.csv",
        "nll_terms.csv",
        "flow/config.json",
        "flow/model.safetensors",
    ):
        assert (rings_nf / name).exists(), name
    terms = nf.nll_terms_history(rings_nf)
    assert terms["step"][-1] == 20
    for nll, base, logdet in zip(terms["nll"], terms["base_log_prob"], terms["logdet"]):
        assert nll == pytest.approx(-(base + logdet), abs=1e-12)


def test_pictures_are_written(rings_nf):
    for name in ("samples.png", "layers.png", "loss.png", "density.png"):
        with Image.open(rings_nf / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200, name
    assert "pictures_samples" in json.loads((rings_nf / "metrics.json").read_text())


def test_sample_with_and_without_label(rings_nf, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(rings_nf), "--n", "257", "--label", "2", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert set(f.files) == {"x", "y"}
        assert f["x"].shape == (257, 2) and f["x"].dtype == np.float32 and np.isfinite(f["x"]).all()
        assert f["y"].dtype == np.int64 and (f["y"] == 2).all()
    out2 = tmp_path / "s2.npz"
    assert main(["sample", "--run", str(rings_nf), "--n", "3000", "--seed", "1", "--out", str(out2)]) == 0
    counts = np.bincount(np.load(out2)["y"], minlength=5)
    assert len(counts) == 5 and counts.min() > 3000 / 5 * 0.8  # uniform labels
    again = tmp_path / "s3.npz"
    main(["sample", "--run", str(rings_nf), "--n", "257", "--label", "2", "--out", str(again)])
    assert np.array_equal(np.load(again)["x"], np.load(out)["x"])  # same seed, same samples


def test_conditional_broadcasting_shape(rings_nf):
    x, y = nf.sample(rings_nf, 33, 4, 0)
    assert x.shape == (33, 2) and x.dtype == torch.float32 and y.shape == (33,) and (y == 4).all()
    run = nf.load_nf_run(rings_nf)
    pts = torch.randn(7, 2)
    lp_int = run.flow.log_prob(pts, 3)  # one label broadcast over the batch
    lp_vec = run.flow.log_prob(pts, torch.full((7,), 3))
    assert lp_int.shape == (7,) and torch.equal(lp_int, lp_vec)
    with pytest.raises(ValueError, match="out of range"):
        nf.sample(rings_nf, 5, 5, 0)


def test_sample_label_errors(rings_nf, board_nf, capsys, tmp_path):
    out = str(tmp_path / "x.npz")
    for argv, needles in [
        (["sample", "--run", str(board_nf), "--n", "5", "--label", "1", "--out", out], ("--label 1", "unconditional")),
        (["sample", "--run", str(rings_nf), "--n", "5", "--label", "5", "--out", out], ("--label 5", "0..4")),
        (
            ["sample", "--run", str(rings_nf), "--n", "5", "--solver", "rk4", "--out", out],
            ("--solver", "normalizing-flow"),
        ),
        (["eval", "--run", str(rings_nf), "--nfe", "8"], ("--nfe", "normalizing-flow")),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), (needles, err)
    assert not (tmp_path / "x.npz").exists()


def _independent_nll(run_dir, n: int) -> float:
    """-mean log p(x | y) of the eval's held-out points, from the checkpoint's EMA weights."""
    from safetensors.torch import load_file

    from fm_nflows import build_flow

    cfg = json.loads((run_dir / "config.json").read_text())
    flow = build_flow(**cfg["net"]["config"])
    flow.load_state_dict(load_file(str(run_dir / "checkpoint" / "ema.safetensors")))
    flow = flow.double().eval()
    toy = RunConfig.from_dict(cfg["toy2d"])
    x, y = heldout_data(toy, build_distribution(toy), n)
    with torch.no_grad():
        z, logdet = flow(x.double(), y)
    log_p = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet  # N(0, I) in 2D
    return float(-log_p.mean())


@pytest.mark.parametrize("which", ["rings", "board"])
def test_eval_writes_the_exact_nll(which, rings_nf, board_nf):
    run = rings_nf if which == "rings" else board_nf
    assert main(["eval", "--run", str(run), "--n", "1000", "--n-nll", "500"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == "nf" and m["step"] == 20
    assert m["energy_distance"] >= 0 and m["w2"] >= 0 and m["samples"]["n"] == 1000
    nll = m["nll"]
    assert nll["method"] == "exact" and nll["n"] == 500
    assert nll["mean"] == pytest.approx(_independent_nll(run, 500), abs=1e-9)
    assert nll["mean"] == pytest.approx(-(nll["base_log_prob"] + nll["logdet"]), abs=1e-9)
    if which == "board":  # 8 cells of 2 x 2: H = log 32
        assert m["quality"]["kind"] == "checkerboard" and m["quality"]["n_filled"] == 8
        assert nll["entropy"] == pytest.approx(math.log(32), abs=1e-12) and not nll["conditional"]
    else:  # uniform on one annulus given its label: H(X | Y) = log(pi (1.1^2 - 0.9^2))
        q = m["quality"]
        assert q["kind"] == "rings" and len(q["on_own_ring_per_label"]) == 5
        assert nll["entropy"] == pytest.approx(math.log(math.pi * (1.1**2 - 0.9**2)), abs=1e-12)
        assert nll["marginal"]["entropy"] == pytest.approx(1.7665, abs=1e-4)
    assert nll["gap"] == pytest.approx(nll["mean"] - nll["entropy"], abs=1e-12)
    assert "pictures_samples" in m or which == "board"  # training's keys are kept


def test_nf_defaults_apply_only_to_unset_fields():
    cfg = nf.resolve_config({**RunConfig(dataset="moons", model="nf", lr=1e-4).to_dict(), "user_set": ["lr", "seed"]})
    assert cfg.lr == 1e-4 and cfg.batch_size == nf.NF_DEFAULTS["batch_size"] and cfg.steps == nf.NF_STEPS["moons"]
    assert cfg.net == nf.NF_NET
    with pytest.raises(ValueError, match="width"):
        nf.make_nf_config("moons", net={"width": 3})
    assert nf.make_nf_config("moons", net={"depth": 4}).net["n_layers"] == 4
