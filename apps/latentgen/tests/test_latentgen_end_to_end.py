"""End-to-end: fm-latentgen train-vae -> encode -> train -> sample -> eval on tiny budgets.

Needs the MNIST files (FM_DATA_DIR, e.g. ../shared/data); skipped with the reason when they are
absent. Checks files, shapes, dtypes, labels and the stored VAE against independent facts (the
VAE's downsampling, the class cycle, the solver's step count), not against the app's own output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fm_cli.pictures import CAPTION_HEIGHT, title_margin
from fm_data.images import load_images
from fm_latentgen.cli import main

torch.set_num_threads(1)


pytestmark = [
    pytest.mark.needs_mnist,  # apps/conftest.py
    pytest.mark.filterwarnings("ignore:FID on .* samples"),  # tiny sample counts on purpose
]

TINY_VAE = [
    "--channels",
    "8,8,8,8",
    "--latent-channels",
    "4",
    "--batch-size",
    "8",
    "--fit-n",
    "64",
    "--eval-n",
    "40",
    "--quiet",
    "--device",
    "cpu",
]
TINY_DIT = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("latentgen")
    assert main(["train-vae", "--dataset", "mnist", "--steps", "2", "--out", str(root / "vae"), *TINY_VAE]) == 0
    assert (
        main(
            [
                "encode",
                "--vae",
                str(root / "vae" / "vae"),
                "--dataset",
                "mnist",
                "--limit",
                "120",
                "--out",
                str(root / "lat"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--latents",
                str(root / "lat"),
                "--conditional",
                "--classes",
                "3,5",
                "--steps",
                "3",
                "--sample-every",
                "2",
                "--solver",
                "midpoint",
                "--nfe",
                "4",
                "--out",
                str(root / "run"),
                *TINY_DIT,
            ]
        )
        == 0
    )
    return root


def test_train_vae_saves_a_diffusers_vae_with_its_scale(pipeline):
    from fm_latent import LatentVAE

    cfg = json.loads((pipeline / "vae" / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKL" and cfg["block_out_channels"] == [8, 8, 8, 8]
    assert cfg["scaling_factor"] > 0 and cfg["shift_factor"] is not None
    vae = LatentVAE.from_pretrained(pipeline / "vae" / "vae", image_size=28)
    assert vae.latent_shape() == (4, 4, 4)  # three downsamplings of 28 padded to 32
    rec = json.loads((pipeline / "vae" / "metrics.json").read_text())["vae"]
    assert rec["steps"] == 2 and rec["reconstruction"]["n"] == 40 and rec["latent_shape"] == [4, 4, 4]
    with Image.open(pipeline / "vae" / "reconstructions.png") as im:
        assert im.format == "PNG" and im.size == (
            2 * (10 * 30 + 2) + title_margin(),
            2 * (8 * 30 + 2),
        )  # 40 test images: 4 pairs of rows of 10, "original" / "reconstruction" left of them


def test_encode_writes_a_cache_of_this_vae(pipeline):
    from fm_latent import LatentVAE, load_latent_cache

    vae = LatentVAE.from_pretrained(pipeline / "lat" / "vae", image_size=28)
    cache = load_latent_cache(pipeline / "lat" / "latents-train.safetensors", vae)
    assert cache.latents.shape == (120, 4, 4, 4)
    assert torch.equal(cache.labels, load_images("mnist", "train").labels[:120])
    # the scale and shift were fitted to these latents: mean 0 and std 1 after scaling
    assert abs(float(cache.latents.mean())) < 1e-3 and abs(float(cache.latents.std()) - 1) < 1e-3
    # the cache refuses the VAE of train-vae, whose scale was fitted on other images
    from fm_latent import LatentCacheError

    with pytest.raises(LatentCacheError, match="scaling_factor"):
        load_latent_cache(
            pipeline / "lat" / "latents-train.safetensors", LatentVAE.from_pretrained(pipeline / "vae" / "vae")
        )


def test_train_writes_the_run_directory(pipeline):
    run = pipeline / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["app"] == "fm-latentgen"
        and cfg["latent"]["classes"] == [3, 5]
        and cfg["latent"]["latent_shape"] == [4, 4, 4]
    )
    assert (
        cfg["net"]["name"] == "dit"
        and cfg["net"]["config"]["num_classes"] == 10
        and cfg["net"]["config"]["patch_size"] == 1
    )
    assert (run / "vae" / "config.json").is_file() and (run / "checkpoint" / "ema.safetensors").is_file()
    for name in ("samples/step_000002.png", "samples/step_000003.png", "samples.png"):
        with Image.open(run / name) as im:
            assert im.size == (2 * (8 * 30 + 2), 2 * (4 * 30 + 2) + CAPTION_HEIGHT)  # 2 classes: 32 images, 8 a row


def test_sample_npz_grid_gif(pipeline, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(pipeline / "run"),
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
        == 0
    )
    z = np.load(out)
    assert set(z.files) == {"images", "labels"}
    assert z["images"].shape == (9, 28, 28) and z["images"].dtype == np.uint8
    assert z["labels"].tolist() == [3, 5, 3, 5, 3, 5, 3, 5, 3]
    with Image.open(tmp_path / "g.gif") as im:
        assert im.n_frames == 4 // 2 + 1  # midpoint, NFE 4: noise + 2 steps
    assert "NFE 4" in capsys.readouterr().out


def test_eval_writes_metrics(pipeline):
    from fm_eval.classifier import weights_path

    if not weights_path("mnist").is_file():
        pytest.skip(f"fm-eval's classifier weights are not there ({weights_path('mnist')})")
    assert main(["eval", "--run", str(pipeline / "run"), "--n", "150", "--device", "cpu"]) == 0
    rec = json.loads((pipeline / "run" / "metrics.json").read_text())["eval"][-1]
    assert rec["n"] == 150 and rec["fid_n_samples"] == 150 and rec["fid_reference"] == "test split, classes [3, 5]"
    assert 0.0 <= rec["label_accuracy"] <= 1.0 and rec["nfe"] == 4


def test_a_run_refuses_a_vae_that_was_swapped(pipeline, tmp_path, capsys):
    """Replace the run's VAE by the train-vae one (other scale): sampling must refuse it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pipeline / "run", run)
    shutil.rmtree(run / "vae")
    shutil.copytree(pipeline / "vae" / "vae", run / "vae")
    assert main(["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "x.npz"), "--device", "cpu"]) == 1
    assert "encoded by another VAE" in capsys.readouterr().err


def test_resume_continues_exactly(pipeline, tmp_path, capsys):
    """2 steps, then --resume to 4 (taking only the 2 missing steps), ends with the same weights and
    EMA as 4 steps in one go."""
    from safetensors.torch import load_file

    common = ["--conditional", "--classes", "3,5", "--sample-every", "100", *TINY_DIT]
    lat = str(pipeline / "lat")
    assert main(["train", "--latents", lat, "--steps", "4", "--out", str(tmp_path / "once"), *common]) == 0
    assert main(["train", "--latents", lat, "--steps", "2", "--out", str(tmp_path / "twice"), *common]) == 0
    capsys.readouterr()
    assert (
        main(["train", "--resume", "--steps", "4", "--out", str(tmp_path / "twice"), "--quiet", "--device", "cpu"]) == 0
    )
    assert "trained 4 steps (2 now" in capsys.readouterr().out
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "once" / "checkpoint" / name)
        b = load_file(tmp_path / "twice" / "checkpoint" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((tmp_path / "twice" / "metrics.json").read_text())["train"]["steps"] == 4


def test_resume_with_nothing_left_to_do(pipeline, tmp_path, capsys):
    """--resume of a latent run and of a VAE run whose budgets are used: one line each, exit 0,
    metrics.json byte for byte as it was."""
    import shutil

    for name, command in (("run", "train"), ("vae", "train-vae")):
        run = tmp_path / name
        shutil.copytree(pipeline / name, run)
        before = (run / "metrics.json").read_bytes()
        capsys.readouterr()
        assert main([command, "--resume", "--out", str(run), "--quiet", "--device", "cpu"]) == 0
        out = capsys.readouterr().out.strip()
        assert len(out.splitlines()) == 1 and "nothing left to do" in out, out
        assert (run / "metrics.json").read_bytes() == before
