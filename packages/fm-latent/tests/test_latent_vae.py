"""fm_latent.LatentVAE with tiny AutoencoderKL / AutoencoderTiny models built locally (no network):
shapes, ranges, padding, channels, posterior mode/sample, scale and shift through save_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

from fm_latent import LatentVAE, LatentVAEError, downsample_factor, pad_to_multiple, scale_shift_from_latents

torch.set_num_threads(1)  # tiny models: one thread avoids OpenMP stalls on a busy machine


def tiny_kl(in_channels: int = 3, levels: int = 4, seed: int = 0) -> AutoencoderKL:
    """An AutoencoderKL with levels - 1 downsamplings (widths of 8, GroupNorm groups of 4)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * levels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        mid_block_add_attention=False,
    ).eval()


def tiny_taesd(in_channels: int = 3, seed: int = 0) -> AutoencoderTiny:
    """An AutoencoderTiny with three downsamplings (four encoder blocks), widths of 8."""
    torch.manual_seed(seed)
    return AutoencoderTiny(
        in_channels=in_channels,
        out_channels=in_channels,
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).eval()


def images(n: int = 3, size: int = 28, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def test_downsample_factor_of_both_classes():
    assert downsample_factor(tiny_kl(levels=4)) == 8
    assert downsample_factor(tiny_kl(levels=2)) == 2
    assert downsample_factor(tiny_taesd()) == 8


def test_the_pitfall_and_the_guard():
    """diffusers alone: 28x28 through three downsamplings decodes to 24x24 without an error.
    The wrapper pads to 32, gets 4x4 latents and decodes back to 28x28."""
    vae = tiny_kl()
    x = images(2, 28, 3)
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.mode()
        assert tuple(vae.decode(raw).sample.shape[-2:]) == (24, 24)  # what we guard against
    w = LatentVAE(vae, image_size=28)
    z = w.encode(x)
    assert z.shape == (2, 4, 4, 4) and w.latent_shape() == (4, 4, 4)
    assert w.decode(z).shape == (2, 3, 28, 28)
    # the padding is 2 pixels of -1 on each side: the same as padding by hand
    with torch.no_grad():
        manual = vae.encode(F.pad(x, (2, 2, 2, 2), value=-1.0)).latent_dist.mode()
    assert torch.allclose(w.encode_raw(x), manual, atol=1e-6)


def test_pad_to_multiple():
    x = torch.zeros(1, 1, 28, 30)
    y = pad_to_multiple(x, 8)
    assert y.shape == (1, 1, 32, 32)
    assert y[0, 0, :2].eq(-1).all() and y[0, 0, -2:].eq(-1).all() and y[0, 0, 2:30, 1:31].eq(0).all()
    assert pad_to_multiple(x, 2) is x


@pytest.mark.parametrize("make", [tiny_kl, tiny_taesd], ids=["AutoencoderKL", "AutoencoderTiny"])
def test_one_channel_data_through_a_three_channel_vae(make):
    vae = make(in_channels=3)
    w = LatentVAE(vae, image_channels=1, image_size=28)
    x = images(3, 28, 1)
    z = w.encode(x)
    assert z.shape == (3, 4, 4, 4)
    out = w.decode(z)
    assert out.shape == (3, 1, 28, 28) and out.min() >= -1 and out.max() <= 1
    with torch.no_grad():  # independent: repeat the channel and pad by hand, average the output by hand
        xin = F.pad(x.repeat(1, 3, 1, 1), (2, 2, 2, 2), value=-1.0)
        enc = vae.encode(xin)
        raw = enc.latents if isinstance(vae, AutoencoderTiny) else enc.latent_dist.mode()
        dec = vae.decode(raw).sample.mean(dim=1, keepdim=True)[..., 2:30, 2:30].clamp(-1, 1)
    assert torch.allclose(w.encode_raw(x), raw, atol=1e-5)
    assert torch.allclose(out, dec, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_kl, tiny_taesd], ids=["AutoencoderKL", "AutoencoderTiny"])
def test_same_channels_and_ranges(make):
    w = LatentVAE(make(in_channels=1), image_size=28)
    assert w.image_channels == 1
    out = w.decode(w.encode(images(2, 28, 1)))
    assert out.shape == (2, 1, 28, 28) and out.min() >= -1 and out.max() <= 1
    assert LatentVAE(make(in_channels=3)).decode(torch.randn(1, 4, 4, 4)).shape == (1, 3, 32, 32)  # no crop asked


def test_bad_inputs_are_refused():
    w = LatentVAE(tiny_kl(in_channels=3), image_channels=1, image_size=28)
    with pytest.raises(LatentVAEError, match=r"expected images \[B, 1, H, W\]"):
        w.encode(images(1, 28, 3))
    with pytest.raises(LatentVAEError, match="float images"):
        w.encode(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(LatentVAEError, match=r"expected latents \[B, 4, h, w\]"):
        w.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(LatentVAEError, match="image_channels=2"):
        LatentVAE(tiny_kl(in_channels=3), image_channels=2)
    with pytest.raises(LatentVAEError, match="unsupported VAE class"):
        LatentVAE(torch.nn.Linear(2, 2))


def test_posterior_mode_and_sample():
    vae = tiny_kl(in_channels=1)
    w = LatentVAE(vae)
    x = images(2, 32, 1)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    assert torch.allclose(w.encode_raw(x), dist.mean, atol=1e-6)
    s1 = w.encode_raw(x, sample=True, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(s1, dist.mean + dist.std * eps, atol=1e-5)  # the reparameterised draw
    assert not torch.allclose(s1, dist.mean)
    t = LatentVAE(tiny_taesd(in_channels=1))  # deterministic: sampling is the mode
    assert torch.equal(t.encode_raw(x, sample=True, generator=torch.Generator().manual_seed(3)), t.encode_raw(x))


def test_scale_shift_from_latents_is_one_over_std_and_the_mean():
    raw = torch.randn(50, 4, 2, 2, dtype=torch.float64) * 3 + 5
    scale, shift = scale_shift_from_latents(raw)
    assert scale == pytest.approx(1 / raw.numpy().std(ddof=1)) and shift == pytest.approx(raw.numpy().mean())
    with pytest.raises(LatentVAEError, match="constant"):
        scale_shift_from_latents(torch.ones(3, 4))


@pytest.mark.parametrize("make", [tiny_kl, tiny_taesd], ids=["AutoencoderKL", "AutoencoderTiny"])
def test_scale_and_shift_round_trip_through_save_pretrained(make, tmp_path):
    w = LatentVAE(make(in_channels=1), image_size=28)
    x = images(40, 28, 1)
    raw = w.encode_raw(x)
    scale, shift = w.fit_scale_shift(x)
    assert scale == pytest.approx(1 / float(raw.double().std())) and shift == pytest.approx(float(raw.double().mean()))
    z = w.encode(x)
    assert float(z.double().mean()) == pytest.approx(0.0, abs=1e-5) and float(z.double().std()) == pytest.approx(
        1.0, abs=1e-5
    )
    assert torch.allclose(z, (raw - shift) * scale, atol=1e-5)
    # decode undoes the scale: decode(z) is the VAE's decoder on the raw latents
    with torch.no_grad():
        dec = w.vae.decode(raw[:2]).sample[..., 2:30, 2:30].clamp(-1, 1)
    assert torch.allclose(w.decode(z[:2]), dec, atol=1e-5)

    w.save_pretrained(tmp_path / "vae")
    stored = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert stored["scaling_factor"] == pytest.approx(scale) and stored["shift_factor"] == pytest.approx(shift)
    back = LatentVAE.from_pretrained(tmp_path / "vae", image_size=28)
    assert back.kind == w.kind and back.scale == pytest.approx(scale) and back.shift == pytest.approx(shift)
    assert torch.allclose(back.encode(x), z, atol=1e-6)
    same, other = back.identity(), w.identity()
    assert same["weights_sha256"] == other["weights_sha256"] and same["config"] == other["config"]


def test_identity_changes_with_the_weights_and_the_scale():
    a, b = LatentVAE(tiny_kl(seed=0)), LatentVAE(tiny_kl(seed=1))
    assert a.identity()["weights_sha256"] != b.identity()["weights_sha256"]
    before = a.identity()
    a.set_scale_shift(2.0, 0.5)
    assert a.identity()["config"]["scaling_factor"] == 2.0 and a.identity()["config"] != before["config"]
    with pytest.raises(LatentVAEError, match="scale must be positive"):
        a.set_scale_shift(0.0, 0.0)


def test_loading_from_a_missing_directory_fails_fast(tmp_path):
    with pytest.raises(LatentVAEError, match="no such directory"):
        LatentVAE.from_pretrained(tmp_path / "missing")
    with pytest.raises(LatentVAEError, match="config.json"):
        LatentVAE.from_pretrained(tmp_path)
