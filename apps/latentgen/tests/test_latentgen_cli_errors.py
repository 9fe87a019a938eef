"""fm-latentgen argument errors: usage errors exit 2 naming the bad value, before data or weights load."""

from __future__ import annotations

import pytest

from fm_latentgen.cli import main
from fm_latentgen.config import LatentConfig, VAEConfig, dit_defaults, make_config


def _usage_error(argv, capsys, match: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_usage_errors(tmp_path, capsys):
    _usage_error(["train-vae", "--dataset", "cifar"], capsys, "invalid choice: 'cifar'")
    _usage_error(["train-vae", "--kl-weight", "-1"], capsys, "must be a number >= 0, got '-1'")
    _usage_error(
        ["train-vae", "--channels", "8,12", "--out", str(tmp_path / "v")], capsys, "divisible by norm_num_groups=8"
    )
    _usage_error(["train-vae", "--steps", "3", "--minutes", "1"], capsys, "not allowed with argument")
    _usage_error(["encode", "--dataset", "mnist", "--out", str(tmp_path)], capsys, "--vae")
    _usage_error(["train", "--out", str(tmp_path / "r")], capsys, "--latents is required")
    _usage_error(["train", "--latents", str(tmp_path), "--out", str(tmp_path / "r")], capsys, "no latent cache there")
    _usage_error(
        ["sample", "--run", str(tmp_path), "--n", "0", "--out", "x.npz"],
        capsys,
        "argument --n: must be a positive integer",
    )
    _usage_error(["sample", "--run", str(tmp_path), "--n", "2", "--out", "x.png"], capsys, "must end in .npz")
    _usage_error(["sample", "--run", str(tmp_path), "--n", "2", "--out", "x.npz"], capsys, "not an fm-latentgen run")
    _usage_error(["eval", "--run", str(tmp_path), "--nfe", "-3"], capsys, "must be a positive integer")


def test_missing_vae_is_a_runtime_error(tmp_path, capsys):
    assert main(["encode", "--vae", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert "fm-latentgen encode: error: cannot load a VAE" in capsys.readouterr().err


def test_config_validation_is_fm_pixels():
    with pytest.raises(ValueError, match=r"lr=-1\.0 is invalid: must be a positive number"):
        make_config("mnist", [4, 8, 8], lr=-1.0)
    with pytest.raises(ValueError, match=r"guidance=2\.0 is invalid: must be 1 for an unconditional run"):
        LatentConfig(latent_shape=[4, 8, 8], guidance=2.0)
    with pytest.raises(ValueError, match=r"latent_shape=\[4, 8\] is invalid"):
        LatentConfig(latent_shape=[4, 8])
    with pytest.raises(ValueError, match="unknown run config key"):
        LatentConfig.from_dict({"latent_shap": [4, 8, 8]})
    cfg = make_config("mnist", [4, 8, 8], conditional=True)
    assert cfg.label_dropout == 0.1 and cfg.guidance == 1.5 and cfg.num_classes == 10  # MNIST's sweep best
    assert make_config("fashion-mnist", [4, 8, 8], conditional=True).guidance == 3.0  # Fashion-MNIST's
    assert LatentConfig.from_dict(cfg.to_dict()) == cfg
    uncond = make_config("mnist", [4, 8, 8])
    assert uncond.label_dropout == 0.0 and uncond.guidance == 1.0 and uncond.num_classes is None


def test_dit_defaults_pick_a_patch_that_divides_the_latents():
    assert dit_defaults([4, 8, 8])["patch_size"] == 2
    assert dit_defaults([8, 4, 4])["patch_size"] == 1
    assert dit_defaults([4, 7, 7])["patch_size"] == 1
    assert VAEConfig().sample_size == 32 and VAEConfig(block_out_channels=[8, 8, 8]).sample_size == 28
