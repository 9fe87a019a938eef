"""fm_latent.cache (round trip, refusing another VAE's latents) and fm_latent.training (the small
AutoencoderKL, the KL term against torch.distributions, the loss against a hand computation)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from safetensors.torch import save_file

from fm_latent import (
    LatentCacheError,
    LatentVAE,
    kl_to_standard_normal,
    load_latent_cache,
    save_latent_cache,
    small_autoencoder_kl,
    vae_loss,
)

torch.set_num_threads(1)  # tiny models: one thread avoids OpenMP stalls on a busy machine


def small(seed: int = 0) -> LatentVAE:
    torch.manual_seed(seed)
    return LatentVAE(small_autoencoder_kl(block_out_channels=(8, 8, 8, 8), latent_channels=4), image_size=28)


def test_small_autoencoder_kl_shapes_and_checks():
    w = small()
    assert isinstance(w.vae, AutoencoderKL) and w.factor == 8 and w.latent_shape() == (4, 4, 4)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert w.decode(w.encode(x)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"divisible by norm_num_groups=8; \[12\]"):
        small_autoencoder_kl(block_out_channels=(8, 12))
    with pytest.raises(ValueError, match="sample_size 28 is not divisible by the downsampling factor 8"):
        small_autoencoder_kl(block_out_channels=(8, 8, 8, 8), sample_size=28)


def test_kl_term_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    assert torch.allclose(kl_to_standard_normal(mean, logvar), torch.distributions.kl_divergence(q, p), atol=1e-6)


def test_vae_loss_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    vae = small_autoencoder_kl(block_out_channels=(8, 8), latent_channels=2, sample_size=32)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    out = vae_loss(vae, x, kl_weight=0.25, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():  # by hand, with the same noise
        dist = vae.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
        recon = ((vae.decode(dist.mean + dist.std * eps).sample - x) ** 2).mean()
        kl = (0.5 * (dist.mean**2 + dist.var - 1 - dist.logvar)).mean()
    assert out.recon.item() == pytest.approx(recon.item(), rel=1e-5)
    assert out.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(recon.item() + 0.25 * kl.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in vae.parameters() if p.requires_grad)


def test_a_few_steps_reduce_the_reconstruction_error():
    torch.manual_seed(0)
    vae = small_autoencoder_kl(block_out_channels=(8, 8), latent_channels=4, sample_size=8)
    x = torch.zeros(16, 1, 8, 8)
    x[:, :, 2:6, 3:5] = 1.0  # one bar, 8x8: learnable in a few steps
    x = x * 2 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    first = vae_loss(vae, x, generator=torch.Generator().manual_seed(0)).recon.item()
    for i in range(30):
        opt.zero_grad()
        vae_loss(vae, x, generator=torch.Generator().manual_seed(i)).loss.backward()
        opt.step()
    assert vae_loss(vae, x, generator=torch.Generator().manual_seed(99)).recon.item() < 0.5 * first


def test_cache_round_trip(tmp_path):
    w = small()
    z = torch.randn(6, 4, 4, 4)
    y = torch.arange(6)
    path = save_latent_cache(tmp_path / "c.safetensors", z, w, labels=y, info={"dataset": "mnist", "n": 6})
    c = load_latent_cache(path, w)
    assert torch.equal(c.latents, z) and torch.equal(c.labels, y)
    assert c.info == {"dataset": "mnist", "n": 6} and c.vae["class"] == "AutoencoderKL"
    assert c.vae["weights_sha256"] == w.identity()["weights_sha256"]
    assert load_latent_cache(path).latents.shape == (6, 4, 4, 4)  # no VAE given: no check
    assert not list(tmp_path.glob(".*tmp*"))  # written beside and renamed


def test_cache_refuses_another_vae(tmp_path):
    w = small(seed=0)
    path = save_latent_cache(tmp_path / "c.safetensors", torch.randn(2, 4, 4, 4), w)
    with pytest.raises(LatentCacheError, match=r"encoded by another VAE.*weights sha256"):
        load_latent_cache(path, small(seed=1))  # same architecture, other weights
    refit = small(seed=0)
    refit.set_scale_shift(3.0, 0.1)
    with pytest.raises(LatentCacheError, match=r"config scaling_factor=1\.0 vs 3\.0"):
        load_latent_cache(path, refit)  # same weights, another scale: the latents would decode wrongly
    torch.manual_seed(0)
    taesd = LatentVAE(
        AutoencoderTiny(
            in_channels=1,
            out_channels=1,
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    )
    with pytest.raises(LatentCacheError, match="class 'AutoencoderKL' vs 'AutoencoderTiny'"):
        load_latent_cache(path, taesd)
    assert load_latent_cache(path, small(seed=0)).latents.shape == (2, 4, 4, 4)  # the same VAE rebuilt: accepted


def test_cache_errors(tmp_path):
    with pytest.raises(LatentCacheError, match="no latent cache there"):
        load_latent_cache(tmp_path / "none.safetensors")
    save_file({"latents": torch.zeros(1, 4, 2, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LatentCacheError, match="not a latent cache"):
        load_latent_cache(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LatentCacheError, match="not a readable safetensors file"):
        load_latent_cache(tmp_path / "junk.safetensors")
    with pytest.raises(LatentCacheError, match=r"labels must have shape \[3\]"):
        save_latent_cache(tmp_path / "c.safetensors", torch.zeros(3, 4, 2, 2), small(), labels=torch.zeros(2))
