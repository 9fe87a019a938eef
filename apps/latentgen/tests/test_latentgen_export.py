"""``fm-latentgen export``: a tiny latent run exported (DiT + VAE + card) samples, loaded back by hand,
the images ``fm-latentgen sample`` writes (same seed). Slow: the pipeline imports diffusers and trains a VAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from fm_core import sample
from fm_data.images import to_uint8
from fm_latent import LatentVAE
from fm_latentgen.cli import main
from fm_nets import DiT

torch.set_num_threads(1)

pytestmark = [pytest.mark.needs_mnist, pytest.mark.slow]

TINY_VAE = ["--channels", "8,8,8,8", "--latent-channels", "4", "--batch-size", "8", "--fit-n", "64", "--eval-n", "40",
            "--quiet", "--device", "cpu"]  # fmt: skip
TINY_DIT = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]


def test_export_samples_what_fm_latentgen_sample_draws(tmp_path):
    assert main(["train-vae", "--dataset", "mnist", "--steps", "2", "--out", str(tmp_path / "vae"), *TINY_VAE]) == 0
    assert main(["encode", "--vae", str(tmp_path / "vae" / "vae"), "--dataset", "mnist", "--limit", "60",
                 "--out", str(tmp_path / "lat"), "--device", "cpu"]) == 0  # fmt: skip
    run, out = tmp_path / "run", tmp_path / "exp"
    assert main(["train", "--latents", str(tmp_path / "lat"), "--conditional", "--classes", "3,5", "--steps", "2",
                 "--solver", "midpoint", "--nfe", "4", "--out", str(run), *TINY_DIT]) == 0  # fmt: skip
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert main(["sample", "--run", str(run), "--n", "4", "--seed", "2", "--out", str(tmp_path / "s.npz"),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    ref = np.load(tmp_path / "s.npz")
    spec = json.loads((out / "sampling.json").read_text())
    net, vae = DiT.from_pretrained(out), LatentVAE.from_pretrained(out / "vae", image_size=28)
    res = sample(net, 4, spec["shape"], seed=2, num_classes=spec["num_classes"], classes=spec["classes"],
                 method=spec["solver"], nfe=spec["nfe"], guidance=spec["guidance"], decode=vae.decode)  # fmt: skip
    np.testing.assert_array_equal(to_uint8(res.x).numpy(), ref["images"])
    card = ModelCard.load(out / "README.md")
    assert (
        "fm-latentgen train --classes 3,5 --conditional" in card.text and f"--latents {tmp_path / 'lat'}" in card.text
    )
    run_vae = json.loads((run / "config.json").read_text())["vae"]
    assert spec["vae"]["weights_sha256"] == run_vae["weights_sha256"] == vae.identity()["weights_sha256"]
    assert card.data.to_dict()["library_name"] == "fm-nets"
