"""Discrete flow-matching runs of fm-toy2d (``train --model discrete``) on tiny budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fm_toy2d import discrete
from fm_toy2d.cli import main

TINY = ["--steps", "20", "--hidden", "32", "--depth", "1", "--batch-size", "128", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def board(tmp_path_factory, fast_env):
    """A tiny conditional 4x4 checkerboard on a 16-point lattice, with pictures."""
    run = tmp_path_factory.mktemp("toy2d_discrete") / "board"
    argv = ["train", "--model", "discrete", "--cells", "4", "--lattice", "16", "--conditional", "--out", str(run)]
    assert main([*argv, *TINY]) == 0
    return run


def test_run_directory(board):
    cfg = json.loads((board / "config.json").read_text())
    assert cfg["model"] == "discrete" and cfg["app"] == "fm-toy2d"
    toy = cfg["toy2d"]
    assert (toy["lattice"], toy["source"], toy["kappa"], toy["discrete_loss"], toy["nfe"]) == (16, "mask", "linear",
                                                                                      "cross-entropy", 64)  # fmt: skip
    net = cfg["net"]
    assert net["name"] == "token-mlp"
    assert (net["config"]["vocab_size"], net["config"]["seq_len"], net["config"]["num_classes"]) == (
        16,
        2,
        8,
    )  # a label per filled cell
    assert net["config"]["mask_token"] is True and net["config"]["hidden"] == 32
    for f in ("samples.png", "nfe_grid.png", "loss.png"):
        assert (board / f).stat().st_size > 0


def test_samples_are_points_in_lattice_cells(board, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(board), "--n", "300", "--nfe", "5", "--label", "2", "--out", str(out)]) == 0
    data = np.load(out)
    x, y = data["x"], data["y"]
    assert x.shape == (300, 2) and x.dtype == np.float32 and (y == 2).all()
    assert (np.abs(x) <= 4).all()
    again = tmp_path / "again.npz"
    assert main(["sample", "--run", str(board), "--n", "300", "--nfe", "5", "--label", "2", "--out", str(again)]) == 0
    assert np.array_equal(np.load(again)["x"], x)  # the same seed gives the same points
    assert main(["sample", "--run", str(board), "--n", "300", "--nfe", "5", "--seed", "1", "--out", str(again)]) == 0
    assert not np.array_equal(np.load(again)["x"], x)


def test_eval_records_metrics_and_the_nfe_sweep(board):
    assert main(["eval", "--run", str(board), "--n", "500", "--nfe", "8", "--quiet"]) == 0
    m = json.loads((board / "metrics.json").read_text())
    assert m["samples"]["nfe"] == 8 and m["samples"]["solver"] == "ctmc-euler"
    assert m["energy_distance"] >= 0 and 0 <= m["quality"]["in_support"] <= 1
    assert [r["nfe"] for r in m["quality_vs_nfe"]] == list(discrete.NFE_SWEEP)


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--lattice", "32"], ("--lattice", "does not apply to --model fm")),
        (["train", "--model", "nf", "--source", "uniform"], ("--source", "--model nf")),
        (["train", "--model", "discrete", "--time", "logit-normal"], ("--time", "--model discrete")),
        (["train", "--model", "discrete", "--method", "meanflow"], ("--method", "--model discrete")),
        (["train", "--model", "discrete", "--lattice", "1"], ("--lattice", ">= 2")),
        (["train", "--model", "discrete", "--kappa", "sqrt"], ("--kappa", "invalid choice")),
    ],
)
def test_usage_errors(argv, needles, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "r").exists()


def test_sample_flags_that_do_not_apply(board, capsys, tmp_path):
    out = str(tmp_path / "x.npz")
    for argv, needles in [
        (["sample", "--run", str(board), "--n", "5", "--solver", "rk4", "--out", out], ("--solver", "discrete run")),
        (["sample", "--run", str(board), "--n", "5", "--guidance", "2", "--out", out], ("--guidance",)),
        (["sample", "--run", str(board), "--n", "5", "--label", "8", "--out", out], ("--label 8", "0..7")),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err


def test_resume_of_a_finished_run_changes_nothing(board, capsys):
    before = (board / "checkpoint" / "model.safetensors").read_bytes()
    assert main(["train", "--out", str(board), "--resume", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (board / "checkpoint" / "model.safetensors").read_bytes() == before


def test_a_short_run_learns_the_checkerboard(tmp_path):
    """250 steps on a 4x4 board over a 16-point lattice: the samples keep to the filled cells (a model that
    learned nothing puts half of them in empty cells)."""
    run = tmp_path / "learn"
    argv = ["train", "--model", "discrete", "--cells", "4", "--lattice", "16", "--steps", "250", "--hidden", "64",
            "--depth", "2", "--batch-size", "256", "--no-pictures", "--quiet", "--device", "cpu", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    res = discrete.sample_run(discrete.load_discrete_run(run), 4000, seed=0, nfe=32)
    cells = np.floor((res.x.numpy() + 4) / 2).astype(int)  # 4 cells of side 2 over [-4, 4]
    filled = (cells.sum(1) % 2 == 0).mean()
    assert filled > 0.9, filled


def test_export_loads_back_the_ema_token_mlp(board, tmp_path):
    import torch

    from fm_nets import TokenMLP

    out = tmp_path / "export"
    assert main(["export", "--run", str(board), "--out", str(out)]) == 0
    net = TokenMLP.from_pretrained(out)
    run = discrete.load_discrete_run(board)
    x = torch.tensor([[16, 16], [3, 16], [5, 9]])  # 16 = the mask
    t, y = torch.tensor([0.0, 0.5, 0.9]), torch.tensor([0, 3, 8])
    assert torch.equal(net(x, t, y), run.model(x, t, y))
    sampling = json.loads((out / "sampling.json").read_text())
    assert (sampling["lattice"], sampling["source"], sampling["nfe"]) == (16, "mask", 64)
    card = (out / "README.md").read_text()
    assert "--model discrete" in card and "--lattice 16" in card and "--time" not in card
