"""Unit tests of fm-pixel's pieces: config, sampling with closed-form velocities, pictures.

Sampling is checked against velocities whose ODE solution is known exactly (constant and
label-dependent fields), so the expected images are computed independently of the app.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fm_cli.pictures import grid_array, save_gif, save_grid
from fm_core import balanced_labels
from fm_data.images import to_uint8
from fm_pixel.config import NET_DEFAULTS, RECIPES, PixelConfig, make_config
from fm_pixel.sampling import generate
from fm_pixel.training import build_model

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- config
def test_recipes_and_padding():
    d = make_config("fashion-mnist", conditional=True)
    assert d.net == "unet" and d.net_config == NET_DEFAULTS["unet"] and d.guidance == RECIPES["default"]["guidance"]
    # factor = patch 2 * 2^(levels - 1): 28 divisible -> no padding, otherwise pad to 32
    f = d.net_config["patch_size"] * 2 ** (len(d.net_config["channels"]) - 1)
    assert d.pad == (28 % f != 0) and d.model_size == (32 if 28 % f else 28)
    mit = make_config("mnist", "mit", conditional=True)
    assert mit.net_config["channels"] == [32, 64, 128] and mit.net_config["num_res_blocks"] == 2
    assert (
        mit.train.batch_size,
        mit.train.lr,
        mit.time,
        mit.coupling,
        mit.label_dropout,
        mit.solver,
        mit.guidance,
    ) == (250, 1e-3, "uniform", "independent", 0.1, "euler", 3.0)
    assert not mit.pad  # 28 -> 14 -> 7
    post = make_config("mnist", "post")
    assert post.net == "mlp" and post.net_config["hidden"] == 512 and post.net_config["depth"] == 5
    assert post.time == "uniform" and post.solver == "euler" and post.guidance == 1.0
    # unconditional runs carry no label dropout and no guidance
    u = make_config("mnist")
    assert u.label_dropout == 0.0 and u.guidance == 1.0
    # a U-Net with 3 levels and patch 2 needs 32x32
    p = make_config("mnist", net_config={"channels": [8, 16, 32], "patch_size": 2})
    assert p.pad and p.model_size == 32
    with pytest.raises(ValueError, match="net_config"):
        make_config("mnist", net_config={"channels": [8, 16, 32, 64, 128], "patch_size": 4})


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="nfe=7"):
        make_config("mnist", solver="midpoint", nfe=7)
    with pytest.raises(ValueError, match="dataset='cifar'"):
        PixelConfig(dataset="cifar")
    with pytest.raises(ValueError, match="guidance"):
        make_config("mnist", guidance=2.0)  # unconditional
    with pytest.raises(ValueError, match="guidance"):
        make_config("mnist", conditional=True, label_dropout=0.0, guidance=2.0)
    cfg = make_config("mnist", conditional=True, classes=[3, 5])
    assert PixelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        PixelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_build_model_shapes():
    for net, extra in (
        ("unet", {"channels": [8, 16]}),
        ("mlp", {"hidden": 16, "depth": 1}),
        ("dit", {"hidden_size": 16, "depth": 1, "num_heads": 2}),
    ):
        cfg = make_config("mnist", net=net, conditional=True, net_config=extra)
        m = build_model(cfg)
        s = cfg.model_size
        x = torch.randn(3, 1, s, s)
        assert m(x, torch.rand(3), torch.tensor([0, 9, 10])).shape == x.shape


def test_dit_patch_sizes_pad_only_when_needed():
    # 28 = 14 x 2 = 7 x 4: no padding; 8 does not divide 28 but divides 32: pad; 3 divides neither
    small = {"hidden_size": 16, "depth": 1, "num_heads": 2}
    for patch, size in ((2, 28), (4, 28), (7, 28), (8, 32)):
        cfg = make_config("mnist", net="dit", net_config={**small, "patch_size": patch})
        assert cfg.model_size == size
        m = build_model(cfg)
        assert m.grid == (size // patch, size // patch)
        x = torch.randn(2, 1, size, size)
        assert m(x, torch.rand(2)).shape == x.shape
    with pytest.raises(ValueError, match="net_config"):
        make_config("mnist", net="dit", net_config={**small, "patch_size": 3})


# ----------------------------------------------------------------------------- sampling
class ConstVelocity(nn.Module):
    """v(x, t, y) = c (unconditional) or c * (y + 1) per image (y = 10 is the null label)."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        assert t.shape == (x.shape[0],)
        if y is None:
            return torch.full_like(x, self.c)
        return self.c * (y.to(x.dtype) + 1).view(-1, 1, 1, 1).expand_as(x)


def test_generate_constant_velocity_matches_closed_form():
    # dx/dt = c from t=0 to 1: x1 = x0 + c for every solver; noise is randn(seed) of the model's size
    cfg = make_config("mnist", net_config={"channels": [8, 16]}, solver="heun", nfe=6)
    n = 7
    x0 = torch.randn(n, 1, cfg.model_size, cfg.model_size, generator=torch.Generator().manual_seed(5))
    expected = to_uint8(x0 + 0.25)
    res = generate(ConstVelocity(0.25), cfg, n, seed=5, batch_size=3)
    assert res.x.dtype == torch.uint8 and res.x.shape == (n, 28, 28)
    assert res.labels is None and res.nfe == 6
    diff = (res.x.int() - expected.int()).abs()
    assert int(diff.max()) <= 1  # float rounding at the .5 boundaries only
    # the images do not depend on the batch size
    again = generate(ConstVelocity(0.25), cfg, n, seed=5, batch_size=n)
    assert torch.equal(again.x, res.x)


def test_generate_guidance_and_labels():
    # v_cond = c (y + 1), v_null = c * 11; guided v = v_null + w (v_cond - v_null)
    cfg = make_config(
        "mnist", conditional=True, net_config={"channels": [8, 16]}, classes=[3, 5], solver="euler", nfe=4, guidance=2.0
    )
    n, c, w = 6, 0.01, 2.0
    res = generate(ConstVelocity(c), cfg, n, seed=1)
    assert res.labels.tolist() == [3, 5, 3, 5, 3, 5]
    x0 = torch.randn(n, 1, cfg.model_size, cfg.model_size, generator=torch.Generator().manual_seed(1))
    v = c * 11 + w * (c * (res.labels.float() + 1) - c * 11)
    expected = to_uint8(x0 + v.view(-1, 1, 1, 1))
    assert int((res.x.int() - expected.int()).abs().max()) <= 1
    one = generate(ConstVelocity(c), cfg, 4, label=5, seed=0)
    assert one.labels.tolist() == [5] * 4
    with pytest.raises(ValueError, match="label=4"):
        generate(ConstVelocity(c), cfg, 4, label=4)
    with pytest.raises(ValueError, match="nfe"):
        generate(ConstVelocity(c), cfg, 4, solver="midpoint", nfe=5)


def test_generate_trajectory_starts_at_noise():
    cfg = make_config("mnist", net_config={"channels": [8, 16]}, solver="euler", nfe=4)
    res = generate(ConstVelocity(0.5), cfg, 5, seed=2, trajectory=3)
    assert res.trajectory.shape == (5, 3, 28, 28) and res.trajectory.dtype == torch.uint8
    x0 = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))[:3]
    assert torch.equal(res.trajectory[0], to_uint8(x0))
    assert torch.equal(res.trajectory[-1], res.x[:3])


def test_balanced_labels():
    lab = balanced_labels(23, [1, 4, 7])
    counts = torch.bincount(lab, minlength=10)
    assert counts[[1, 4, 7]].tolist() == [8, 8, 7] and counts.sum() == 23


# ----------------------------------------------------------------------------- pictures
def test_grid_layout_and_files(tmp_path):
    imgs = torch.zeros(5, 28, 28, dtype=torch.uint8)
    imgs[3] = 200
    g = grid_array(imgs, ncol=3, gap=2, scale=1)
    assert g.shape == (2 * 30 + 2, 3 * 30 + 2)
    # image 3 sits in row 1, column 0
    assert (g[32:60, 2:30] == 200).all() and g[:32].max() == 0 and g[32:60, 32:].max() == 0
    p = save_grid(imgs, tmp_path / "g.png", 3)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size == (2 * (3 * 30 + 2), 2 * (2 * 30 + 2))
        assert np.array_equal(np.asarray(im), grid_array(imgs, 3))
    frames = torch.stack([imgs, 255 - imgs, imgs])
    p = save_gif(frames, tmp_path / "a.gif", 3)
    with Image.open(p) as im:
        assert im.format == "GIF" and im.n_frames == 3
