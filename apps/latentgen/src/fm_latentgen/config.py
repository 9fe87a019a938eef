"""Configurations of fm-latentgen: the small VAE it trains (:class:`VAEConfig`) and the latent
flow-matching run (:class:`LatentConfig`).

The fields a latent run shares with fm-pixel (data set, classes, conditioning, time sampler,
coupling, label dropout, sampler, the embedded ``train: TrainConfig``) are fm-cli's
``ImageRunConfig``: the two apps accept and refuse the same values with the same messages, and
train with the same loss (``fm_cli.images.flow_loss``).

Time convention everywhere: t = 0 is N(0, I) noise, t = 1 is data (here: scaled VAE latents).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fm_cli.argtypes import MAX_WIDTH
from fm_cli.images.config import ImageRunConfig, ImageTrainConfig, build_config, check_network, from_recipe
from fm_data.images import CLASS_NAMES, IMAGE_DATASETS, parse_classes
from fm_train import StrictConfig


def _build_net(name: str, **config: Any) -> Any:
    """fm_nets.build_net, imported when a network is first checked (fm-nets imports timm)."""
    from fm_nets import build_net

    return build_net(name, **config)


__all__ = [
    "DEFAULT_GUIDANCE",
    "IMAGE_SIZE",
    "LATENT_DEFAULTS",
    "VAE_DEFAULTS",
    "LatentConfig",
    "VAEConfig",
    "dit_defaults",
    "make_config",
]

IMAGE_SIZE = 28

#: The VAE ``fm-latentgen train-vae`` builds (fm_latent.small_autoencoder_kl) and how it trains.
#: Widths 8-16-32-32: three downsamplings, 28x28 images padded to 32x32 -> latents 8x4x4
#: (128 numbers for 784 pixels); of four shapes timed, the fastest to train (109 images per
#: CPU-second at batch 64, against 77 for 16-32-32 with two downsamplings).
VAE_DEFAULTS: dict[str, Any] = dict(
    block_out_channels=[8, 16, 32, 32], latent_channels=8, layers_per_block=1, norm_num_groups=8,
    kl_weight=1e-4, batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=0.995,
)  # fmt: skip
_VAE_TRAIN = ("batch_size", "lr", "warmup_steps", "ema_decay")

#: The flow-matching recipe on latents (fields shared with fm-pixel's default recipe, DiT net).
LATENT_DEFAULTS: dict[str, Any] = dict(
    time="logit-normal", coupling="independent", label_dropout=0.1, batch_size=128, lr=1e-3,
    weight_decay=0.0, schedule="constant", warmup_steps=100, grad_clip=1.0, ema_decay=0.999,
    solver="midpoint", nfe=10, guidance=2.0,
)  # fmt: skip


#: The latent recipe's guidance scale per data set (stored in each run's config at train time;
#: --guidance overrides it): the best FID of ``fm-latentgen eval --guidance-sweep 1,1.25,1.5,2,3`` on a
#: 1,200-step run (about 10 minutes on two idle cores; benchmarks/RESULTS.md, "Guidance sweeps").
DEFAULT_GUIDANCE: dict[str, float] = {"mnist": 1.5, "fashion-mnist": 3.0}


def dit_defaults(latent_shape: list[int]) -> dict[str, Any]:
    """fm_nets.DiT keyword arguments for latents [C, h, w]: the tiny size, patch 2 from 8x8 up, else 1."""
    c, h, w = latent_shape
    patch = 2 if min(h, w) >= 8 and h % 2 == 0 and w % 2 == 0 else 1
    return dict(in_channels=c, input_size=[h, w] if h != w else h, patch_size=patch, hidden_size=128,
                depth=6, num_heads=4, mlp_ratio=4.0)  # fmt: skip


@dataclass
class VAEConfig(StrictConfig):
    """The VAE that ``train-vae`` trains: its architecture (fm_latent.small_autoencoder_kl), KL
    weight and optimisation (``train``)."""

    dataset: str = "mnist"
    classes: list[int] | None = None
    block_out_channels: list[int] = field(default_factory=lambda: list(VAE_DEFAULTS["block_out_channels"]))
    latent_channels: int = VAE_DEFAULTS["latent_channels"]
    layers_per_block: int = VAE_DEFAULTS["layers_per_block"]
    norm_num_groups: int = VAE_DEFAULTS["norm_num_groups"]
    kl_weight: float = VAE_DEFAULTS["kl_weight"]
    train: ImageTrainConfig = field(
        default_factory=lambda: ImageTrainConfig(**{k: VAE_DEFAULTS[k] for k in _VAE_TRAIN})
    )

    def __post_init__(self) -> None:
        self.classes = parse_classes(self.classes)
        if isinstance(self.block_out_channels, (list, tuple)):
            self.block_out_channels = [int(c) for c in self.block_out_channels]
        super().__post_init__()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (the architecture: fm-latent's checks)."""
        self._check_choice("dataset", IMAGE_DATASETS)
        if not isinstance(self.block_out_channels, list) or not self.block_out_channels:
            raise self._invalid("block_out_channels", "a non-empty list of widths")
        if len(self.block_out_channels) > 6 or any(
            isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_WIDTH for c in self.block_out_channels
        ):
            raise self._invalid("block_out_channels", f"1 to 6 widths in 1..{MAX_WIDTH}")
        for name, high in (("latent_channels", 256), ("layers_per_block", 16), ("norm_num_groups", MAX_WIDTH)):
            self._check_int(name, 1, high)
        self._check_real("kl_weight", 0, allowed="a number >= 0")
        from fm_latent import check_small_vae

        arch = self.arch()
        arch.pop("image_channels")
        check_small_vae(**arch)  # architecture errors now, without importing diffusers

    @property
    def sample_size(self) -> int:
        """Side of the images the VAE sees: 28 padded up to a multiple of its downsampling factor."""
        f = 2 ** (len(self.block_out_channels) - 1)
        return -(-IMAGE_SIZE // f) * f

    def arch(self) -> dict[str, Any]:
        """Keyword arguments of fm_latent.small_autoencoder_kl."""
        return dict(image_channels=1, block_out_channels=self.block_out_channels, latent_channels=self.latent_channels,
                    layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
                    sample_size=self.sample_size)  # fmt: skip


def make_vae_config(**overrides: Any) -> VAEConfig:
    """:data:`VAE_DEFAULTS` with ``overrides`` (None values ignored; batch_size .. seed go to ``train``)."""
    return build_config(VAEConfig, {**VAE_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class LatentConfig(ImageRunConfig):
    """Everything that defines a latent flow-matching run (JSON-safe): fm-cli's ImageRunConfig
    (as in fm-pixel, same validation) plus ``latent_shape`` [C, h, w] of the cached latents and
    ``net_config`` (fm_nets.DiT keyword arguments without num_classes; default :func:`dit_defaults`).
    The VAE's identity is stored beside it in config.json."""

    dataset: str = "mnist"
    solver: str = LATENT_DEFAULTS["solver"]
    train: ImageTrainConfig = field(
        default_factory=lambda: ImageTrainConfig(batch_size=LATENT_DEFAULTS["batch_size"], lr=LATENT_DEFAULTS["lr"])
    )
    latent_shape: list[int] = field(default_factory=lambda: [8, 4, 4])
    net: str = "dit"
    net_config: dict[str, Any] = field(default_factory=dict)

    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS  # the data: fm-data's (see ImageRunConfig)
    class_names: ClassVar[Mapping[str, Sequence[str]]] = CLASS_NAMES
    parse_classes = staticmethod(parse_classes)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.net_config:
            self.net_config = dit_defaults(list(self.latent_shape))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (shared fields: fm-cli's ImageRunConfig)."""
        super().validate()
        if self.net != "dit":
            raise self._invalid("net", "'dit' (fm-latentgen trains a DiT)")
        shape = self.latent_shape
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
        ):
            raise self._invalid("latent_shape", "[C, h, w] with positive integers")
        if not isinstance(self.net_config, dict):
            raise self._invalid("net_config", "a dict of DiT keyword arguments")
        # the command line's bounds for config.json too, and the DiT's own checks before the latents load
        c = self.net_config
        if c:  # empty until __post_init__ fills in the defaults
            check_network(
                self,
                "dit",
                {**c, "num_classes": self.num_classes},
                lambda: float((13 * int(c.get("depth", 6)) + 4) * int(c.get("hidden_size", 128)) ** 2),
                _build_net,
            )


def make_config(dataset: str, latent_shape: list[int], **overrides: Any) -> LatentConfig:
    """The latent recipe (:data:`LATENT_DEFAULTS`) with ``overrides`` (None values ignored;
    ``net_config`` merged into :func:`dit_defaults`; guidance: the data set's, :data:`DEFAULT_GUIDANCE`);
    an unconditional run gets no label dropout and no guidance, as in fm-pixel."""
    net_config = dit_defaults(list(latent_shape))
    net_config.update(overrides.pop("net_config", None) or {})
    recipe = {**LATENT_DEFAULTS, "dataset": dataset, "latent_shape": list(latent_shape), "net_config": net_config}
    recipe["guidance"] = DEFAULT_GUIDANCE.get(dataset, LATENT_DEFAULTS["guidance"])
    return from_recipe(LatentConfig, recipe, overrides)
