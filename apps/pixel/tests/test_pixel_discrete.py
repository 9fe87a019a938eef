"""Discrete runs of fm-pixel (``train --model discrete --levels L``) on tiny budgets.

Needs the MNIST files (FM_DATA_DIR). The token conversion is checked against the bin arithmetic
(floor(v L / 256) and the bin centres), the samples' grey values against the levels' centres.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm_pixel import discrete
from fm_pixel.cli import main
from fm_pixel.config import make_config

torch.set_num_threads(1)

TINY = ["--patch-size", "7", "--hidden", "32", "--depth", "1", "--batch-size", "8", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def run16(tmp_path_factory):
    run = tmp_path_factory.mktemp("pixel_discrete") / "d16"
    argv = ["train", "--model", "discrete", "--levels", "16", "--dataset", "mnist", "--classes", "3,5", "--conditional",
            "--steps", "3", "--nfe", "4", "--out", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_tokens_are_grey_level_bins(levels):
    cfg = make_config("mnist", model="discrete", levels=levels)
    v = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    tokens = discrete.to_tokens(cfg)(v)
    assert torch.equal(tokens, (v.long() * levels) // 256)
    back = discrete.to_uint8_images(cfg)(tokens)
    width = 256 / levels
    want = torch.floor((tokens.double() + 0.5) * width).to(torch.uint8)  # 256 levels: the value itself
    assert torch.equal(back, want)
    assert torch.equal(discrete.to_tokens(cfg)(back), tokens)  # a centre stays in its bin


def test_config_defaults_and_checks():
    cfg = make_config("mnist", model="discrete", conditional=True, label_dropout=0.1)
    assert (cfg.net, cfg.levels, cfg.source, cfg.solver, cfg.nfe, cfg.time) == ("token-dit", 16, "mask", "euler", 32,
                                                                                "uniform")  # fmt: skip
    kw = cfg.net_kwargs
    assert kw["vocab_size"] == 16 and kw["grid"] == [28, 28] and kw["mask_token"] and kw["num_classes"] == 10
    assert not make_config("mnist", model="discrete", source="uniform").net_kwargs["mask_token"]
    with pytest.raises(ValueError, match="levels"):
        make_config("mnist", model="discrete", levels=300)
    with pytest.raises(ValueError, match="patch_size that divides 28"):
        make_config("mnist", model="discrete", net_config={"patch_size": 3})
    with pytest.raises(ValueError, match="token-dit for a discrete run"):
        make_config("mnist", net="token-dit")


@pytest.mark.needs_mnist
@pytest.mark.filterwarnings("ignore:FID on 20 samples")  # 20 samples: the wiring, not the number
def test_train_sample_eval(run16, tmp_path):
    cfg = json.loads((run16 / "config.json").read_text())
    px = cfg["pixel"]
    assert (px["model"], px["levels"], px["net"], px["nfe"]) == ("discrete", 16, "token-dit", 4)
    assert cfg["net"]["name"] == "token-dit" and cfg["net"]["config"]["vocab_size"] == 16
    assert (run16 / "samples.png").is_file()
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run16), "--n", "6", "--nfe", "3", "--label", "5", "--out", str(out)]) == 0
    data = np.load(out)
    images, labels = data["images"], data["labels"]
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8 and (labels == 5).all()
    centres = {16 * k + 8 for k in range(16)}
    assert set(np.unique(images).tolist()) <= centres
    assert main(["eval", "--run", str(run16), "--n", "20", "--nfe", "2", "--quiet"]) == 0
    ev = json.loads((run16 / "metrics.json").read_text())["eval"][-1]
    assert ev["nfe"] == 2 and ev["solver"] == "ctmc-euler" and ev["n"] == 20 and "fid" in ev


@pytest.mark.needs_mnist
def test_guidance_runs_and_solver_is_refused(run16, tmp_path, capsys):
    out = tmp_path / "g.npz"
    assert main(["sample", "--run", str(run16), "--n", "4", "--nfe", "2", "--guidance", "2", "--out", str(out)]) == 0
    assert main(["sample", "--run", str(run16), "--n", "4", "--solver", "midpoint", "--out", str(out)]) == 1
    assert "does not apply to a discrete run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--levels", "16"], ("--levels", "--model fm")),
        (["train", "--kappa", "cosine"], ("--kappa", "--model fm")),
        (["train", "--model", "discrete", "--net", "unet"], ("--net", "--model discrete")),
        (["train", "--model", "discrete", "--coupling", "ot"], ("--coupling", "--model discrete")),
        (["train", "--model", "discrete", "--channels", "8,16"], ("--channels",)),
        (["train", "--model", "discrete", "--levels", "1"], ("--levels",)),
    ],
)
def test_usage_errors(argv, needles, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err


@pytest.mark.needs_mnist
def test_export_samples_like_the_run(run16, tmp_path):
    """The exported TokenDiT, sampled as its model card says, draws the images fm-pixel sample draws."""
    from fm_discrete import MixturePath, ctmc_sample
    from fm_nets import TokenDiT
    from fm_pixel.sampling import generate, load_run

    out = tmp_path / "export"
    assert main(["export", "--run", str(run16), "--out", str(out)]) == 0
    spec = json.loads((out / "sampling.json").read_text())
    net = TokenDiT.from_pretrained(out)
    path = MixturePath(spec["levels"], source=spec["source"], scheduler=spec["kappa"])
    tokens = ctmc_sample(net, path, 4, tuple(spec["shape"]), steps=spec["nfe"], seed=0, num_classes=spec["num_classes"],
                         classes=spec["classes"], guidance=spec["guidance"]).x  # fmt: skip
    ours = torch.floor((tokens + 0.5) * (256 / spec["levels"])).to(torch.uint8)
    model, cfg = load_run(run16)
    theirs = generate(model, cfg, 4, seed=0)
    assert torch.equal(ours, theirs.x)
    card = (out / "README.md").read_text()
    assert "--model discrete" in card and "--levels 16" in card and "--net" not in card and "--coupling" not in card
