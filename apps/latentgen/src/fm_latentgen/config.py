"""Configurations of fm-latentgen: the small VAE it trains (:class:`VAEConfig`) and the latent
flow-matching run (:class:`LatentConfig`).

The fields a latent run shares with fm-pixel (data set, classes, conditioning, time sampler,
coupling, optimisation, sampler) have fm-pixel's names, meanings and validation: ``validate``
hands them to ``fm_pixel.config.PixelConfig``, so the two apps accept and refuse the same values,
and fm-pixel's training, loss and scoring helpers take a LatentConfig as they take a PixelConfig.

Time convention everywhere: t = 0 is N(0, I) noise, t = 1 is data (here: scaled VAE latents).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fm_pixel.config import NUM_CLASSES, PixelConfig, _is_int, parse_classes  # noqa: F401  (NUM_CLASSES: re-exported)

__all__ = ["IMAGE_SIZE", "LATENT_DEFAULTS", "VAE_DEFAULTS", "LatentConfig", "VAEConfig", "dit_defaults", "from_dict", "make_config"]

IMAGE_SIZE = 28

#: The VAE ``fm-latentgen train-vae`` builds (fm_latent.small_autoencoder_kl) and how it trains.
#: Widths 8-16-32-32: three downsamplings, 28x28 images padded to 32x32 -> latents 8x4x4
#: (128 numbers for 784 pixels); of four shapes timed, the fastest to train (109 images per
#: CPU-second at batch 64, against 77 for 16-32-32 with two downsamplings).
VAE_DEFAULTS: dict[str, Any] = dict(
    block_out_channels=[8, 16, 32, 32], latent_channels=8, layers_per_block=1, norm_num_groups=8,
    kl_weight=1e-4, batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=0.995,
)  # fmt: skip

#: The flow-matching recipe on latents (fields shared with fm-pixel's default recipe, DiT net).
LATENT_DEFAULTS: dict[str, Any] = dict(
    time="logit-normal", coupling="independent", label_dropout=0.1, batch_size=128, lr=1e-3,
    weight_decay=0.0, schedule="constant", warmup_steps=100, grad_clip=1.0, ema_decay=0.999,
    solver="midpoint", nfe=10, guidance=2.0,
)  # fmt: skip


def dit_defaults(latent_shape: list[int]) -> dict[str, Any]:
    """fm_nets.DiT keyword arguments for latents [C, h, w]: the tiny size, patch 2 from 8x8 up, else 1."""
    c, h, w = latent_shape
    patch = 2 if min(h, w) >= 8 and h % 2 == 0 and w % 2 == 0 else 1
    return dict(in_channels=c, input_size=[h, w] if h != w else h, patch_size=patch, hidden_size=128,
                depth=6, num_heads=4, mlp_ratio=4.0)


@dataclass
class VAEConfig:
    """The VAE that ``train-vae`` trains: its architecture (fm_latent.small_autoencoder_kl) and optimisation."""

    dataset: str = "mnist"
    classes: list[int] | None = None
    block_out_channels: list[int] = field(default_factory=lambda: list(VAE_DEFAULTS["block_out_channels"]))
    latent_channels: int = VAE_DEFAULTS["latent_channels"]
    layers_per_block: int = VAE_DEFAULTS["layers_per_block"]
    norm_num_groups: int = VAE_DEFAULTS["norm_num_groups"]
    kl_weight: float = VAE_DEFAULTS["kl_weight"]
    batch_size: int = VAE_DEFAULTS["batch_size"]
    lr: float = VAE_DEFAULTS["lr"]
    warmup_steps: int = VAE_DEFAULTS["warmup_steps"]
    ema_decay: float = VAE_DEFAULTS["ema_decay"]
    seed: int = 0

    def __post_init__(self) -> None:
        self.classes = parse_classes(self.classes)
        self.block_out_channels = [int(c) for c in self.block_out_channels]
        # the shared fields are checked exactly as fm-pixel checks them
        PixelConfig(dataset=self.dataset, classes=self.classes, net="mlp", batch_size=self.batch_size, lr=self.lr,
                    warmup_steps=self.warmup_steps, ema_decay=self.ema_decay, seed=self.seed, label_dropout=0.0, guidance=1.0)
        if not isinstance(self.kl_weight, (int, float)) or not self.kl_weight >= 0:
            raise ValueError(f"kl_weight={self.kl_weight!r} is invalid: must be a number >= 0")
        from fm_latent import check_small_vae

        arch = self.arch()
        arch.pop("image_channels")
        check_small_vae(**arch)  # architecture errors now (fm-latent's checks), without importing diffusers

    @property
    def sample_size(self) -> int:
        """Side of the images the VAE sees: 28 padded up to a multiple of its downsampling factor."""
        f = 2 ** (len(self.block_out_channels) - 1)
        return -(-IMAGE_SIZE // f) * f

    to_dict = PixelConfig.to_dict
    from_dict = classmethod(PixelConfig.from_dict.__func__)  # unknown keys are an error naming them

    def arch(self) -> dict[str, Any]:
        """Keyword arguments of fm_latent.small_autoencoder_kl."""
        return dict(image_channels=1, block_out_channels=self.block_out_channels, latent_channels=self.latent_channels,
                    layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups, sample_size=self.sample_size)


@dataclass
class LatentConfig:
    """Everything that defines a latent flow-matching run (JSON-safe).

    dataset / classes / conditional / time .. guidance: as in fm-pixel (same validation).
    latent_shape: [C, h, w] of the cached latents; net_config: fm_nets.DiT keyword arguments
    (without num_classes). ``vae`` (the VAE's identity) is stored beside it in config.json.
    """

    dataset: str = "mnist"
    classes: list[int] | None = None
    conditional: bool = False
    latent_shape: list[int] = field(default_factory=lambda: [8, 4, 4])
    net: str = "dit"
    net_config: dict[str, Any] = field(default_factory=dict)
    time: str = LATENT_DEFAULTS["time"]
    coupling: str = LATENT_DEFAULTS["coupling"]
    label_dropout: float = 0.0
    batch_size: int = LATENT_DEFAULTS["batch_size"]
    lr: float = LATENT_DEFAULTS["lr"]
    weight_decay: float = LATENT_DEFAULTS["weight_decay"]
    schedule: str = LATENT_DEFAULTS["schedule"]
    warmup_steps: int = LATENT_DEFAULTS["warmup_steps"]
    grad_clip: float | None = LATENT_DEFAULTS["grad_clip"]
    ema_decay: float = LATENT_DEFAULTS["ema_decay"]
    seed: int = 0
    solver: str = LATENT_DEFAULTS["solver"]
    nfe: int = LATENT_DEFAULTS["nfe"]
    guidance: float = 1.0

    _SHARED = ("dataset", "classes", "conditional", "time", "coupling", "label_dropout", "batch_size", "lr",
               "weight_decay", "schedule", "warmup_steps", "grad_clip", "ema_decay", "seed", "solver", "nfe", "guidance")

    def __post_init__(self) -> None:
        self.classes = parse_classes(self.classes)
        self.validate()
        if not self.net_config:
            self.net_config = dit_defaults(list(self.latent_shape))

    # the same labels as fm-pixel: 10 classes with null label 10 when conditional; sampled classes
    num_classes = PixelConfig.num_classes
    sample_classes = PixelConfig.sample_classes
    to_dict = PixelConfig.to_dict
    from_dict = classmethod(PixelConfig.from_dict.__func__)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (shared fields: fm-pixel's messages)."""
        PixelConfig(net="mlp", **{k: getattr(self, k) for k in self._SHARED})
        if self.net != "dit":
            raise ValueError(f"net={self.net!r} is invalid: fm-latentgen trains a DiT ('dit')")
        shape = self.latent_shape
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s >= 1 for s in shape)):
            raise ValueError(f"latent_shape={shape!r} is invalid: must be [C, h, w] with positive integers")
        if not isinstance(self.net_config, dict):
            raise ValueError(f"net_config={self.net_config!r} is invalid: must be a dict of DiT keyword arguments")


def make_config(dataset: str, latent_shape: list[int], **overrides: Any) -> LatentConfig:
    """The latent recipe (:data:`LATENT_DEFAULTS`) with ``overrides`` (None values ignored); an
    unconditional run gets no label dropout and no guidance, as in fm-pixel's make_config."""
    base = dict(LATENT_DEFAULTS)
    over = {k: v for k, v in overrides.items() if v is not None}
    if not over.get("conditional", False):
        base.update(label_dropout=0.0, guidance=1.0)
    net_config = dit_defaults(list(latent_shape))
    net_config.update(over.pop("net_config", {}) or {})
    base.update(over)
    return LatentConfig(dataset=dataset, latent_shape=list(latent_shape), net_config=net_config, **base)


def from_dict(kind: str, data: dict[str, Any]):
    """Rebuild a stored ``"vae"`` (VAEConfig) or ``"latent"`` (LatentConfig) section."""
    return {"vae": VAEConfig, "latent": LatentConfig}[kind].from_dict(data)
