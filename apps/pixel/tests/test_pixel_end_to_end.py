"""End-to-end: fm-pixel train -> sample -> eval on tiny budgets (tiny U-Net, a few steps).

Needs the MNIST files (FM_DATA_DIR, e.g. ../shared/data); skipped with the reason when they are
absent. Checks shapes, dtypes, labels and file formats against independent facts (the class
counts of the test split, the solver's number of steps), never against the app's own output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fm_cli.pictures import CAPTION_HEIGHT
from fm_data.images import load_images
from fm_pixel.cli import main

torch.set_num_threads(1)

pytestmark = pytest.mark.needs_mnist  # apps/conftest.py

TINY = ["--channels", "8,16", "--patch-size", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pixel") / "cond"
    code = main(
        [
            "train",
            "--dataset",
            "mnist",
            "--classes",
            "3,5",
            "--conditional",
            "--steps",
            "3",
            "--sample-every",
            "2",
            "--solver",
            "midpoint",
            "--nfe",
            "4",
            "--out",
            str(run),
            *TINY,
        ]
    )
    assert code == 0
    return run


def test_train_writes_the_run_directory(cond_run):
    cfg = json.loads((cond_run / "config.json").read_text())
    assert cfg["app"] == "fm-pixel" and cfg["pixel"]["classes"] == [3, 5] and cfg["pixel"]["conditional"]
    assert cfg["net"]["name"] == "unet" and cfg["net"]["config"]["num_classes"] == 10
    assert cfg["train"]["steps"] == 3 and cfg["train"]["batch_size"] == 8
    for f in ("model.safetensors", "ema.safetensors", "train_state.pt", "config.json"):
        assert (cond_run / "checkpoint" / f).is_file()
    train = json.loads((cond_run / "metrics.json").read_text())["train"]
    assert train["steps"] == 3 and train["images_per_s"] > 0 and "loadavg_1min" in train["machine"]
    # grids at step 2 (sample_every) and at the end (step 3); 2 classes -> 8 columns x 4 rows
    for name in ("samples/step_000002.png", "samples/step_000003.png", "samples.png"):
        with Image.open(cond_run / name) as im:
            assert im.format == "PNG" and im.size == (2 * (8 * 30 + 2), 2 * (4 * 30 + 2) + CAPTION_HEIGHT)


def test_sample_npz_grid_gif(cond_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code = main(
        [
            "sample",
            "--run",
            str(cond_run),
            "--n",
            "9",
            "--out",
            str(out),
            "--grid",
            str(tmp_path / "g.png"),
            "--gif",
            str(tmp_path / "g.gif"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    z = np.load(out)
    assert set(z.files) == {"images", "labels"}
    assert z["images"].shape == (9, 28, 28) and z["images"].dtype == np.uint8
    assert z["labels"].dtype == np.int64 and sorted(np.bincount(z["labels"], minlength=10)[[3, 5]]) == [4, 5]
    assert set(z["labels"].tolist()) == {3, 5}
    with Image.open(tmp_path / "g.gif") as im:
        assert im.n_frames == 4 // 2 + 1  # midpoint, NFE 4: noise + 2 steps
    assert "NFE 4" in capsys.readouterr().out
    one = tmp_path / "one.npz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(cond_run),
                "--n",
                "3",
                "--label",
                "5",
                "--guidance",
                "1",
                "--solver",
                "euler",
                "--nfe",
                "3",
                "--out",
                str(one),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert np.load(one)["labels"].tolist() == [5, 5, 5]


def test_eval_writes_metrics(cond_run):
    from fm_eval.classifier import weights_path

    if not weights_path("mnist").is_file():
        pytest.skip(f"fm-eval's classifier weights are not there yet ({weights_path('mnist')})")
    assert main(["eval", "--run", str(cond_run), "--n", "150", "--device", "cpu"]) == 0
    rec = json.loads((cond_run / "metrics.json").read_text())["eval"][-1]
    test = load_images("mnist", "test")
    expected_ref = int(((test.labels == 3) | (test.labels == 5)).sum())
    assert rec["fid_n_samples"] == 150 and rec["fid_n_reference"] == expected_ref and rec["fid"] >= 0
    assert 0.0 <= rec["label_accuracy"] <= 1.0 and rec["nfe"] == 4 and rec["n"] == 150
    assert len(rec["coverage"]["shares"]) == 10 and abs(sum(rec["coverage"]["shares"]) - 1) < 1e-3


def test_single_class_unconditional(tmp_path):
    run = tmp_path / "threes"
    assert main(["train", "--dataset", "mnist", "--classes", "3", "--steps", "2", "--out", str(run), *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())["pixel"]
    assert cfg["classes"] == [3] and not cfg["conditional"]
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run), "--n", "4", "--nfe", "2", "--out", str(out), "--device", "cpu"]) == 0
    z = np.load(out)
    assert z.files == ["images"] and z["images"].shape == (4, 28, 28) and z["images"].dtype == np.uint8


def test_dit_net_trains_and_samples(tmp_path):
    # --net dit: --patch-size/--hidden/--depth are the DiT's patch_size/hidden_size/depth; 28x28 in 4x4 patches
    run = tmp_path / "dit"
    code = main(
        [
            "train",
            "--dataset",
            "mnist",
            "--conditional",
            "--net",
            "dit",
            "--patch-size",
            "4",
            "--hidden",
            "16",
            "--depth",
            "1",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(run),
        ]
    )
    assert code == 0
    net = json.loads((run / "config.json").read_text())["net"]
    assert net["name"] == "dit"
    assert {k: net["config"][k] for k in ("patch_size", "hidden_size", "depth", "in_channels", "input_size")} == {
        "patch_size": 4,
        "hidden_size": 16,
        "depth": 1,
        "in_channels": 1,
        "input_size": 28,
    }
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run), "--n", "3", "--label", "7", "--out", str(out), "--device", "cpu"]) == 0
    z = np.load(out)
    assert z["images"].shape == (3, 28, 28) and z["labels"].tolist() == [7, 7, 7]
