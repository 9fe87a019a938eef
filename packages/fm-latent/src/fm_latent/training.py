"""Training a small AutoencoderKL where no pretrained VAE can be downloaded.

:func:`small_autoencoder_kl` builds a diffusers ``AutoencoderKL`` sized for a CPU (defaults:
1-channel 32x32 images, widths 8-16-32-32, three downsamplings to 8x4x4 latents, no attention);
:func:`vae_loss` is the objective of Kingma & Welling (2014) with a weighted KL, as in the
latent-diffusion autoencoders (Rombach et al. 2022, without their perceptual and adversarial
terms): mean squared error per pixel of the reconstruction from a posterior sample, plus
``kl_weight`` times the KL divergence to N(0, I) per latent element. The trained model is saved
with ``save_pretrained`` and loaded through :class:`fm_latent.LatentVAE` like any pretrained one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # diffusers is imported lazily at run time (it is slow to import)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

__all__ = ["VAELoss", "check_small_vae", "kl_to_standard_normal", "small_autoencoder_kl", "vae_loss"]


def check_small_vae(
    block_out_channels: Sequence[int],
    latent_channels: int,
    layers_per_block: int,
    norm_num_groups: int,
    sample_size: int,
    image_channels: int = 1,
) -> None:
    """Raise ValueError for arguments of :func:`small_autoencoder_kl` that diffusers would reject deep
    inside (or silently mishandle); imports nothing heavy, so a CLI can check before loading diffusers."""
    widths = [int(c) for c in block_out_channels]
    if not widths or min(widths) < 1:
        raise ValueError(f"block_out_channels must be positive widths, got {list(block_out_channels)}")
    bad = [c for c in widths if c % norm_num_groups]
    if bad:
        raise ValueError(
            f"every width in block_out_channels={widths} must be divisible by norm_num_groups={norm_num_groups}; {bad} are not"
        )
    factor = 2 ** (len(widths) - 1)
    if sample_size % factor:
        raise ValueError(f"sample_size {sample_size} is not divisible by the downsampling factor {factor}")
    if min(latent_channels, image_channels, layers_per_block) < 1:
        raise ValueError(
            f"latent_channels, image_channels and layers_per_block must be >= 1, got {latent_channels}, {image_channels}, {layers_per_block}"
        )


def small_autoencoder_kl(
    image_channels: int = 1,
    block_out_channels: Sequence[int] = (8, 16, 32, 32),
    latent_channels: int = 8,
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    sample_size: int = 32,
    attention: bool = False,
) -> AutoencoderKL:
    """A diffusers AutoencoderKL with ``len(block_out_channels) - 1`` downsamplings.

    Every width must be divisible by ``norm_num_groups`` (GroupNorm; diffusers would fail deep
    inside otherwise) and ``sample_size`` by the downsampling factor (:func:`check_small_vae`).
    """
    check_small_vae(block_out_channels, latent_channels, layers_per_block, norm_num_groups, sample_size, image_channels)
    # from the defining module: type checkers read diffusers.AutoencoderKL as a dummy placeholder class
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=image_channels, out_channels=image_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(int(c) for c in block_out_channels), layers_per_block=layers_per_block,
        latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
        scaling_factor=1.0, shift_factor=0.0, mid_block_add_attention=attention, force_upcast=False,
    )  # fmt: skip


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element: 0.5 (mean^2 + var - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


@dataclass
class VAELoss:
    """loss = recon + kl_weight * kl (0-d tensors); recon: MSE per pixel; kl: nats per latent element."""

    loss: Tensor
    recon: Tensor
    kl: Tensor


def vae_loss(
    vae: nn.Module, x: Tensor, *, kl_weight: float = 1e-4, generator: torch.Generator | None = None
) -> VAELoss:
    """Reconstruction + KL of an AutoencoderKL on images x [B, C, H, W] in [-1, 1].

    The reconstruction decodes one posterior sample z = mean + std * eps (reparameterised,
    eps from ``generator``).
    """
    kl_vae = cast("AutoencoderKL", vae)  # any module with AutoencoderKL's encode/decode (e.g. an EMA copy)
    dist = kl_vae.encode(x).latent_dist
    eps = torch.randn(dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype)
    z = dist.mean + dist.std * eps
    recon = F.mse_loss(kl_vae.decode(z).sample, x)
    kl = kl_to_standard_normal(dist.mean, dist.logvar).mean()
    return VAELoss(loss=recon + kl_weight * kl, recon=recon, kl=kl)
