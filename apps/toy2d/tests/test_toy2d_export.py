"""``fm-toy2d export``: a flow-matching run (MLP) and a normalizing-flow run exported, loaded back with
from_pretrained, give what the app's own loaders give; the model card parses and names the command."""

from __future__ import annotations

import json

import torch
from huggingface_hub import ModelCard

from fm_core import sample
from fm_nets import MLPVelocity
from fm_nflows import Flow
from fm_toy2d import training
from fm_toy2d.cli import main
from fm_toy2d.nf_run import load_nf_run

torch.set_num_threads(1)

TINY = ["--steps", "4", "--hidden", "16", "--depth", "1", "--batch-size", "64", "--quiet", "--device", "cpu",
        "--no-pictures"]  # fmt: skip


def test_export_an_fm_run(tmp_path):
    run, out = tmp_path / "run", tmp_path / "exp"
    assert main(["train", "--dataset", "olympic-rings", "--conditional", "--out", str(run), *TINY]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    spec = json.loads((out / "sampling.json").read_text())
    net = MLPVelocity.from_pretrained(out)
    ours = sample(net, 50, spec["shape"], seed=3, num_classes=spec["num_classes"], random_labels=True,
                  method=spec["solver"], nfe=spec["nfe"])  # fmt: skip
    theirs = training.load_run(run).sample(50, seed=3)
    assert torch.equal(ours.x, theirs.x) and torch.equal(ours.labels, theirs.labels)
    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict()["library_name"] == "fm-nets"
    assert "fm-toy2d train --dataset olympic-rings --conditional --model fm" in card.text
    assert "--hidden 16 --depth 1 --steps 4" in card.text and "--dim" not in card.text and "--lattice" not in card.text


def test_export_an_nf_run(tmp_path):
    run, out = tmp_path / "run", tmp_path / "exp"
    assert main(["train", "--model", "nf", "--dataset", "moons", "--out", str(run), *TINY]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    flow, ref = Flow.from_pretrained(out), load_nf_run(run).flow
    x = torch.randn(20, 2)
    with torch.no_grad():
        assert torch.equal(flow.log_prob(x), ref.log_prob(x))
    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict()["library_name"] == "fm-nflows"
    assert "fm-toy2d train --dataset moons --model nf" in card.text and "--recipe" not in card.text
    assert "--lattice" not in card.text and "--source" not in card.text
