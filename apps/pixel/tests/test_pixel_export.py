"""``fm-pixel export``: a tiny run exported, loaded back with from_pretrained and sampled by hand with
fm-core gives the images ``fm-pixel sample`` writes for the run (same seed); the model card parses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from fm_core import sample
from fm_data.images import to_uint8
from fm_nets import UNet
from fm_pixel.cli import main

torch.set_num_threads(1)

pytestmark = pytest.mark.needs_mnist  # apps/conftest.py

TINY = ["--channels", "8,16", "--patch-size", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run, out = root / "run", root / "exp"
    train = ["train", "--dataset", "mnist", "--classes", "3,5", "--conditional", "--label-dropout", "0.2",
             "--guidance", "1.5", "--steps", "3", "--solver", "midpoint", "--nfe", "4", "--out", str(run), *TINY]  # fmt: skip
    assert main(train) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    return run, out


def test_from_pretrained_samples_what_fm_pixel_sample_draws(exported, tmp_path):
    run, out = exported
    assert main(["sample", "--run", str(run), "--n", "6", "--seed", "4", "--out", str(tmp_path / "s.npz"),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    ref = np.load(tmp_path / "s.npz")
    # the three lines of the README, with the values of sampling.json
    spec = json.loads((out / "sampling.json").read_text())
    net = UNet.from_pretrained(out)
    res = sample(net, 6, spec["shape"], seed=4, num_classes=spec["num_classes"], classes=spec["classes"],
                 method=spec["solver"], nfe=spec["nfe"], guidance=spec["guidance"])  # fmt: skip
    assert (spec["solver"], spec["nfe"], spec["guidance"], spec["classes"]) == ("midpoint", 4, 1.5, [3, 5])
    np.testing.assert_array_equal(res.labels.numpy(), ref["labels"])
    np.testing.assert_array_equal(to_uint8(res.x).numpy(), ref["images"])


def test_the_folder_and_the_model_card(exported):
    run, out = exported
    assert {p.name for p in out.iterdir()} == {"README.md", "config.json", "model.safetensors", "sampling.json",
                                               "samples.png"}  # fmt: skip
    run_cfg = json.loads((run / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == run_cfg["net"]["config"]
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "fm-nets" and meta["datasets"] == ["mnist"]
    assert {"flow-matching", "fm-pixel", "mnist"} <= set(meta["tags"])
    assert "fm-pixel train --dataset mnist --classes 3,5 --conditional" in card.text
    assert "--label-dropout 0.2" in card.text and "--channels 8,16" in card.text and "--steps 3" in card.text
    assert "| train.steps | 3 |" in card.text and "![samples](samples.png)" in card.text
    assert "UNet.from_pretrained(" in card.text
    assert "--levels" not in card.text and "--model" not in card.text  # the discrete options are no fm flags


def test_export_errors_are_one_line(exported, tmp_path, capsys):
    run, out = exported
    assert main(["export", "--run", str(run), "--out", str(out)]) == 1  # not empty
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fm-pixel export: error: --out") and "not an empty directory" in err[0]
    assert main(["export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fm-pixel export: error: ")
