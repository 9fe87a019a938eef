"""fm-latent: a pretrained diffusers VAE as the image <-> latent map of latent flow matching.

``LatentVAE`` wraps AutoencoderKL and AutoencoderTiny (encode/decode, [-1, 1] range, 1 -> 3
channels and back, padding to the downsampling factor, data-set scale and shift stored in the VAE
config); ``fm_latent.cache`` encodes a data set once into a safetensors cache that remembers which
VAE wrote it; ``fm_latent.training`` builds and trains a small AutoencoderKL where no pretrained
one can be downloaded.
"""

from .cache import CACHE_FORMAT, LatentCache, LatentCacheError, check_vae_identity, load_latent_cache, save_latent_cache
from .training import VAELoss, check_small_vae, kl_to_standard_normal, small_autoencoder_kl, vae_loss
from .vae import (
    VAE_CLASSES,
    HubUnreachableError,
    LatentVAE,
    LatentVAEError,
    downsample_factor,
    pad_to_multiple,
    scale_shift_from_latents,
)

__version__ = "0.2.0"

__all__ = [
    "CACHE_FORMAT",
    "LatentCache",
    "LatentCacheError",
    "HubUnreachableError",
    "LatentVAE",
    "LatentVAEError",
    "VAELoss",
    "VAE_CLASSES",
    "check_small_vae",
    "check_vae_identity",
    "downsample_factor",
    "kl_to_standard_normal",
    "load_latent_cache",
    "pad_to_multiple",
    "save_latent_cache",
    "scale_shift_from_latents",
    "small_autoencoder_kl",
    "vae_loss",
]
