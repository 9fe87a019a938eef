"""End-to-end tests of the fm-toy2d commands on tiny budgets (tiny nets, a few dozen steps).

Numbers are checked against independent facts (shapes, dtypes, closed-form entropies, the
geometry of the data sets), never against the app's own earlier output.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from fm_toy2d.cli import main

TINY = ["--steps", "30", "--hidden", "16", "--depth", "1", "--batch-size", "128", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def board_run(tmp_path_factory, fast_env):
    """A tiny 4x4 checkerboard run, with pictures."""
    run = tmp_path_factory.mktemp("toy2d") / "board"
    assert main(["train", "--dataset", "checkerboard", "--cells", "4", "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def rings_run(tmp_path_factory, fast_env):
    """A tiny conditional Olympic-rings run, without pictures."""
    run = tmp_path_factory.mktemp("toy2d") / "rings"
    assert (
        main(["train", "--dataset", "olympic-rings", "--conditional", "--no-pictures", "--out", str(run), *TINY]) == 0
    )
    return run


def test_train_writes_run_directory_and_pictures(board_run):
    cfg = json.loads((board_run / "config.json").read_text())
    assert cfg["model"] == "fm" and cfg["app"] == "fm-toy2d"
    assert cfg["toy2d"]["dataset"] == "checkerboard" and cfg["toy2d"]["grid"] == 4 and cfg["toy2d"]["steps"] == 30
    assert (board_run / "checkpoint" / "ema.safetensors").exists()
    for name in (
        "samples.png",
        "trajectories.png",
        "velocity.png",
        "loss.png",
        "nfe_quality.png",
        "nfe_grid.png",
        "reversibility.png",
    ):
        with Image.open(board_run / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200, name
    with Image.open(board_run / "velocity.gif") as im:
        assert im.format == "GIF" and im.n_frames > 5
    metrics = json.loads((board_run / "metrics.json").read_text())
    rows = metrics["quality_vs_nfe"]
    assert {r["solver"] for r in rows} == {"euler", "midpoint", "heun", "rk4"}
    assert {r["nfe"] for r in rows} >= {4, 8, 16}
    rev = metrics["reversibility"]
    assert rev["nfe_encode"] == rev["nfe_decode"] == 200  # rk4, 50 steps, 4 evaluations per step
    # encode then decode with the same solver on a smooth field: far below the data scale (~2.3)
    assert rev["reconstruction_error_mean"] < 1e-2
    assert len(rev["code_mean"]) == 2 and np.asarray(rev["code_cov"]).shape == (2, 2)


def test_sample_npz_shapes_and_seeds(board_run, tmp_path):
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(board_run),
                "--n",
                "500",
                "--solver",
                "midpoint",
                "--nfe",
                "8",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with np.load(out) as f:
        assert set(f.files) == {"x"}
        x = f["x"]
    assert x.dtype == np.float32 and x.shape == (500, 2) and np.isfinite(x).all()
    # the same seed gives the same samples; another seed other samples
    out2, out3 = tmp_path / "s2.npz", tmp_path / "s3.npz"
    main(
        [
            "sample",
            "--run",
            str(board_run),
            "--n",
            "500",
            "--solver",
            "midpoint",
            "--nfe",
            "8",
            "--out",
            str(out2),
            "--device",
            "cpu",
        ]
    )
    main(
        [
            "sample",
            "--run",
            str(board_run),
            "--n",
            "500",
            "--solver",
            "midpoint",
            "--nfe",
            "8",
            "--seed",
            "3",
            "--out",
            str(out3),
            "--device",
            "cpu",
        ]
    )
    assert np.array_equal(np.load(out2)["x"], x)
    assert not np.allclose(np.load(out3)["x"], x)


def test_eval_metrics_keys_and_entropy(board_run):
    assert main(["eval", "--run", str(board_run), "--n", "2000", "--n-nll", "200", "--device", "cpu"]) == 0
    m = json.loads((board_run / "metrics.json").read_text())
    assert m["energy_distance"] >= 0 and m["w2"] >= 0
    q = m["quality"]
    assert 0 <= q["in_support"] <= 1 and q["n_filled"] == 8 and q["min_cell_ratio"] >= 0
    nll = m["nll"]
    assert nll["method"] == "dopri5" and nll["divergence"] == "exact" and nll["n"] == 200
    assert nll["entropy"] == pytest.approx(math.log(32), abs=1e-9)  # 8 cells of area 2x2
    assert nll["gap"] == pytest.approx(nll["mean"] - math.log(32), abs=1e-9)
    assert math.isfinite(nll["mean"]) and nll["nfe"] > 0
    assert "quality_vs_nfe" in m and "reversibility" in m  # the training's keys were kept


def test_conditional_rings_sample_with_and_without_label(rings_run, tmp_path):
    out = tmp_path / "r.npz"
    assert (
        main(["sample", "--run", str(rings_run), "--n", "300", "--label", "3", "--out", str(out), "--device", "cpu"])
        == 0
    )
    with np.load(out) as f:
        assert set(f.files) == {"x", "y"}
        assert f["x"].shape == (300, 2) and f["x"].dtype == np.float32
        assert f["y"].shape == (300,) and np.issubdtype(f["y"].dtype, np.integer) and (f["y"] == 3).all()
    out = tmp_path / "r2.npz"
    assert main(["sample", "--run", str(rings_run), "--n", "3000", "--out", str(out), "--device", "cpu"]) == 0
    y = np.load(out)["y"]
    counts = np.bincount(y, minlength=5)
    assert len(counts) == 5 and counts.min() > 3000 / 5 * 0.8  # uniform labels: 600 +- 22 each


def test_conditional_rings_eval(rings_run):
    assert main(["eval", "--run", str(rings_run), "--n", "1000", "--no-nll", "--device", "cpu"]) == 0
    m = json.loads((rings_run / "metrics.json").read_text())
    q = m["quality"]
    assert q["kind"] == "rings" and len(q["on_own_ring_per_label"]) == 5 and 0 <= q["on_own_ring"] <= 1
    assert "nll" not in m


def _usage_error(capsys, argv, *needles):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["train", "--steps", "-5"], ["--steps", "-5"]),
        (["train", "--steps", "ten"], ["--steps", "ten"]),
        (["train", "--dataset", "swissroll"], ["--dataset", "swissroll"]),
        (["train", "--coupling", "sinkhorn"], ["--coupling", "sinkhorn"]),
        (["train", "--time", "beta"], ["--time", "beta"]),
        (["train", "--target", "exact"], ["--target", "exact"]),
        (["train", "--coupling", "ot", "--target", "batch-marginal"], ["batch-marginal", "independent"]),
        (["train", "--dataset", "moons", "--cells", "4"], ["--cells 4", "moons"]),
        (["train", "--batch-size", "1"], ["--batch-size", "1"]),
        (["train", "--device", "tpu"], ["--device", "tpu"]),
        (["train", "--steps", "10", "--minutes", "1"], ["--minutes"]),
        (["sample", "--run", "no/such/run", "--n", "10", "--out", "x.npz"], ["no/such/run", "does not exist"]),
        (["sample", "--n", "10", "--out", "x.npz"], ["--run"]),
        (["eval", "--run", "no/such/run"], ["no/such/run"]),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(capsys, tmp_path, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    _usage_error(capsys, argv, *needles)


def test_bad_sampler_and_label_arguments(board_run, rings_run, capsys, tmp_path):
    out = str(tmp_path / "x.npz")
    _usage_error(
        capsys,
        ["sample", "--run", str(board_run), "--n", "10", "--solver", "midpoint", "--nfe", "7", "--out", out],
        "--nfe 7",
        "multiple of 2",
    )
    _usage_error(
        capsys,
        ["sample", "--run", str(board_run), "--n", "10", "--solver", "rk4", "--nfe", "6", "--out", out],
        "--nfe 6",
    )
    _usage_error(
        capsys, ["sample", "--run", str(board_run), "--n", "10", "--solver", "leapfrog", "--out", out], "leapfrog"
    )
    _usage_error(
        capsys,
        ["sample", "--run", str(board_run), "--n", "10", "--label", "1", "--out", out],
        "--label 1",
        "unconditional",
    )
    _usage_error(
        capsys, ["sample", "--run", str(rings_run), "--n", "10", "--label", "5", "--out", out], "--label 5", "0..4"
    )
    _usage_error(
        capsys, ["sample", "--run", str(board_run), "--n", "10", "--out", str(tmp_path / "x.txt")], "x.txt", ".npz"
    )
    _usage_error(capsys, ["sample", "--run", str(board_run), "--n", "0", "--out", out], "--n", "'0'")
    _usage_error(capsys, ["eval", "--run", str(board_run), "--solver", "dopri5", "--nfe", "8"], "--nfe 8", "dopri5")
    _usage_error(capsys, ["train", "--out", str(board_run), *TINY], str(board_run), "already holds a run")
    assert not (tmp_path / "x.npz").exists()


def test_no_arguments_runs_the_demo(monkeypatch):
    import fm_toy2d.cli as cli

    seen = {}

    def fake_demo(parser, args):
        seen["args"] = args
        return 0

    monkeypatch.setattr(cli, "cmd_demo", fake_demo)
    assert cli.main([]) == 0
    assert seen["args"].command == "demo" and seen["args"].out is None and seen["args"].steps is None


def test_sample_grid_gif_and_adaptive_solver(board_run, tmp_path, capsys):
    out, png, gif = tmp_path / "s.npz", tmp_path / "pics" / "s.png", tmp_path / "pics" / "s.gif"
    assert main(["sample", "--run", str(board_run), "--n", "600", "--out", str(out), "--grid", str(png), "--gif", str(gif),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert str(png) in printed and str(gif) in printed and "NFE 8" in printed  # the run's midpoint, NFE 8
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames >= 5  # midpoint NFE 8: 4 steps, 5 times from noise to data
    # the adaptive solver picks its own steps; its GIF has 40 equal steps in t and leaves the samples as they are
    out2, out3, gif2 = tmp_path / "d.npz", tmp_path / "d2.npz", tmp_path / "d.gif"
    assert (
        main(
            [
                "sample",
                "--run",
                str(board_run),
                "--n",
                "200",
                "--solver",
                "dopri5",
                "--out",
                str(out2),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["sample", "--run", str(board_run), "--n", "200", "--solver", "dopri5", "--out", str(out3), "--gif", str(gif2),
                 "--device", "cpu"]) == 0  # fmt: skip
    x = np.load(out2)["x"]
    assert x.shape == (200, 2) and np.isfinite(x).all() and np.array_equal(np.load(out3)["x"], x)
    with Image.open(gif2) as im:
        assert im.n_frames >= 41


def test_samples_follow_the_documented_noise(rings_run, tmp_path):
    """sample's x and y equal an independent midpoint integration of the EMA weights, started from
    torch.randn(n, 2) of a CPU generator seeded with --seed and labels torch.randint drawn after it."""
    import torch
    from safetensors.torch import load_file

    from fm_nets.mlp import MLPVelocity

    out = tmp_path / "r.npz"
    assert main(["sample", "--run", str(rings_run), "--n", "64", "--seed", "5", "--solver", "midpoint", "--nfe", "8",
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    cfg = json.loads((rings_run / "config.json").read_text())
    net = MLPVelocity(**cfg["net"]["config"])
    net.load_state_dict(load_file(str(rings_run / "checkpoint" / "ema.safetensors")))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2, generator=g)
    y = torch.randint(0, 5, (64,), generator=g)
    h = 1.0 / 4
    with torch.no_grad():
        for i in range(4):
            t = torch.full((64,), i * h)
            mid = x + 0.5 * h * net(x, t, y)
            x = x + h * net(mid, t + 0.5 * h, y)
    with np.load(out) as f:
        assert np.array_equal(f["y"], y.numpy())
        np.testing.assert_allclose(f["x"], x.numpy(), atol=1e-5)


def test_guidance_needs_label_dropout(board_run, rings_run, capsys, tmp_path):
    out = str(tmp_path / "x.npz")
    _usage_error(capsys, ["sample", "--run", str(rings_run), "--n", "10", "--guidance", "2", "--out", out],
                 "--guidance 2", "without label dropout")  # fmt: skip
    _usage_error(capsys, ["sample", "--run", str(board_run), "--n", "10", "--guidance", "1.5", "--out", out],
                 "--guidance 1.5", "unconditional")  # fmt: skip
    assert (
        main(["sample", "--run", str(rings_run), "--n", "10", "--guidance", "1", "--out", out, "--device", "cpu"]) == 0
    )


def test_flow_matching_options_are_refused_for_flows(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _usage_error(capsys, ["train", "--model", "nf", "--time", "logit-normal", "--coupling", "ot"],
                 "--coupling, --time do not apply to --model nf")  # fmt: skip
    _usage_error(capsys, ["train", "--model", "nf", "--recipe", "post"], "--recipe does not apply to --model nf")
    _usage_error(capsys, ["train", "--model", "nf", "--target", "conditional"], "--target does not apply to --model nf")
    assert not list(tmp_path.iterdir())


def test_old_grid_flag_still_sets_the_cells(capsys, tmp_path, monkeypatch):
    import fm_toy2d.training as training

    seen = {}

    def fake_train(cfg, out, **kw):
        seen["grid"] = cfg.grid
        raise KeyboardInterrupt  # stop here: nothing is trained

    monkeypatch.setattr(training, "train", fake_train)
    assert main(["train", "--grid", "4", "--out", str(tmp_path / "r"), "--quiet", "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert seen["grid"] == 4 and "--grid N is deprecated" in err and "use --cells N" in err
    _usage_error(capsys, ["train", "--grid", "4", "--cells", "4"], "--grid 4", "--cells only")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("fm-toy2d ")
