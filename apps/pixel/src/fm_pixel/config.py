"""The configuration of one fm-pixel run: recipes, network defaults, validation.

A run is described by one :class:`PixelConfig` (fm-cli's image-run config plus the network),
stored in ``RUN/config.json`` under ``"pixel"`` beside fm-train's ``"train"`` section (the
embedded TrainConfig) and ``"net"`` (the network's name and its ``.config``). It is all that
``sample`` and ``eval`` need besides the weights.

Recipes (``--recipe``; the benchmark compares them at equal training time):

* ``default``: this project's recipe, chosen from measurements on the project's 2-core CPU (see
  the app's README for the numbers and the reasons).
* ``mit``: the MIT 6.S184 lab (2025, lab 3): U-Net with channels 32-64-128 and two residual layers
  per level, batch 250, Adam lr 1e-3, uniform t, independent coupling, label dropout 0.1, no EMA,
  Euler sampling, guidance 3. (Our U-Net blocks stand in for the lab's: GroupNorm instead of
  BatchNorm, scale-shift conditioning, no attention, as in the lab.)
* ``post``: the blog post "Flow matching for multi-modal density estimation and image
  generation": the plain 5 x 512 ReLU MLP on flattened pixels (``MLPVelocity.post_recipe``),
  uniform t, independent coupling, AdamW lr 1e-3, batch 256, no EMA, no clipping, Euler, no guidance.

Time convention everywhere: t = 0 is N(0, I) noise, t = 1 is data (images in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fm_cli.images.config import ImageRunConfig, check_network, from_recipe
from fm_data.images import CLASS_NAMES, IMAGE_DATASETS, parse_classes


def _build_net(name: str, **config: Any) -> Any:
    """fm_nets.build_net, imported when a network is first checked (fm-nets imports timm)."""
    from fm_nets import build_net

    return build_net(name, **config)


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "IMAGE_SIZE",
    "DISCRETE_RECIPE",
    "MODELS",
    "NETS",
    "NET_DEFAULTS",
    "RECIPES",
    "PixelConfig",
    "make_config",
]

IMAGE_SIZE = 28
NETS = ("unet", "mlp", "dit", "token-dit")
#: ``--model``: flow matching on pixel values, or discrete flow matching on grey levels (fm-discrete).
MODELS = ("fm", "discrete")
#: Discrete runs: the mixture path's sources, kappa schedulers and losses (== fm_discrete's).
SOURCES = ("mask", "uniform")
KAPPAS = ("linear", "polynomial", "cosine")
LOSSES = ("cross-entropy", "generalized-kl")
#: Discrete runs: the recipe's settings that differ from flow matching's (see the README): the token DiT,
#: uniform training times, CTMC Euler sampling with 32 steps, guidance 3 (FID 24.7 against 30.2 at guidance 2
#: on the 10-minute MNIST run, 500 samples; benchmarks/RESULTS.md).
DISCRETE_RECIPE: dict[str, Any] = dict(net="token-dit", time="uniform", solver="euler", nfe=32, guidance=3.0)

#: Network settings of this project's recipe, per ``--net`` (keyword arguments of fm_nets'
#: UNet / MLPVelocity / DiT without num_classes and the input size). See the README for the measurements.
NET_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": dict(channels=[32, 64, 128], num_res_blocks=1, attention=True, patch_size=2, mid_blocks=1),
    "mlp": dict(hidden=1024, depth=4, time_dim=128, activation="silu", time_embedding="sinusoidal", residual=True),
    # 28x28 pixels in 2x2 patches: 196 tokens (fm-latentgen's tiny DiT, one input channel)
    "dit": dict(in_channels=1, patch_size=2, hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0),
    # discrete runs: 28x28 grey-level tokens in 4x4 patches (49 tokens), logits over the levels per pixel
    "token-dit": dict(patch_size=4, embed_dim=32, hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0),
}

#: Training budget in optimizer steps when neither --steps nor --minutes is given.
DEFAULT_STEPS = 3000

#: The default recipe's guidance scale per data set (stored in each run's config at train time;
#: --guidance overrides it), the best FID of ``fm-pixel eval --guidance-sweep`` on a 10-minute run.
DEFAULT_GUIDANCE: dict[str, float] = {"mnist": 1.5, "fashion-mnist": 2.0}  # RESULTS.md, "Guidance sweeps"

#: Every knob of a recipe. ``net`` is the network's name, ``net_config`` its keyword arguments
#: (None: NET_DEFAULTS[net]); batch_size .. ema_decay go to the run's TrainConfig.
RECIPES: dict[str, dict[str, Any]] = {
    "default": dict(
        net="unet", net_config=None, time="logit-normal", coupling="independent", label_dropout=0.1,
        batch_size=64, lr=2e-3, weight_decay=0.0, schedule="constant", warmup_steps=100, grad_clip=1.0,
        ema_decay=0.999, solver="euler", nfe=10, guidance=2.0,
    ),
    "mit": dict(
        net="unet",
        net_config=dict(channels=[32, 64, 128], num_res_blocks=2, attention=False, patch_size=1, mid_blocks=2),
        time="uniform", coupling="independent", label_dropout=0.1,
        batch_size=250, lr=1e-3, weight_decay=0.0, schedule="constant", warmup_steps=0, grad_clip=None,
        ema_decay=0.0, solver="euler", nfe=50, guidance=3.0,
    ),
    "post": dict(
        net="mlp",
        net_config=dict(hidden=512, depth=5, time_dim=128, activation="relu", time_embedding="raw", residual=False),
        time="uniform", coupling="independent", label_dropout=0.0,
        batch_size=256, lr=1e-3, weight_decay=0.01, schedule="constant", warmup_steps=0, grad_clip=None,
        ema_decay=0.0, solver="euler", nfe=50, guidance=1.0,
    ),
}  # fmt: skip


@dataclass
class PixelConfig(ImageRunConfig):
    """Everything that defines an fm-pixel run (JSON-safe): fm-cli's ImageRunConfig (data set,
    classes, conditioning, time sampler, coupling, label dropout, default sampler, ``train``) plus
    the recipe's name and the network: ``net`` ("unet", "mlp", "dit"; "token-dit" for discrete runs)
    and ``net_config`` (its keyword arguments, fm_nets).

    ``model`` "discrete" (fm-discrete): pixels quantised to ``levels`` grey levels are tokens, the
    network predicts the posterior over the levels per pixel, trained on the mixture path with
    ``source``, ``kappa`` and ``discrete_loss``; ``solver`` "euler" is then the CTMC Euler sampler and
    ``nfe`` its steps. ``time`` and ``label_dropout`` mean what they mean for flow matching."""

    recipe: str = "default"
    net: str = "unet"
    net_config: dict[str, Any] = field(default_factory=dict)
    model: str = "fm"
    levels: int = 16
    source: str = "mask"
    kappa: str = "linear"
    discrete_loss: str = "cross-entropy"

    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS  # the data: fm-data's (see ImageRunConfig)
    class_names: ClassVar[Mapping[str, Sequence[str]]] = CLASS_NAMES
    parse_classes = staticmethod(parse_classes)

    @property
    def size_factor(self) -> int:
        """How much the network shrinks the image (H and W must be divisible by it)."""
        if self.net in ("dit", "token-dit"):
            return int(self.net_config.get("patch_size", 2))
        if self.net != "unet":
            return 1
        levels = len(self.net_config.get("channels", [32, 64, 128]))
        return int(self.net_config.get("patch_size", 1)) * 2 ** (levels - 1)

    @property
    def pad(self) -> bool:
        """Pad 28x28 images to 32x32 (with -1) when the network's downsampling needs it."""
        return IMAGE_SIZE % self.size_factor != 0

    @property
    def model_size(self) -> int:
        """Side of the images the network sees (28, or 32 when padded)."""
        return 32 if self.pad else IMAGE_SIZE

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, its value and what is allowed."""
        super().validate()
        self._check_choice("recipe", RECIPES)
        self._check_choice("net", NETS)
        self._check_choice("model", MODELS)
        self._check_int("levels", 2, 256)
        self._check_choice("source", SOURCES)
        self._check_choice("kappa", KAPPAS)
        self._check_choice("discrete_loss", LOSSES)
        if (self.model == "discrete") != (self.net == "token-dit"):
            raise self._invalid("net", "token-dit for a discrete run, and only for one")
        if self.model == "discrete":
            if self.coupling != "independent":
                raise self._invalid("coupling", "independent for a discrete run (tokens have no OT coupling here)")
            if self.solver != "euler":
                raise self._invalid("solver", "euler for a discrete run (the CTMC Euler sampler)")
            if self.pad:
                raise self._invalid("net_config", "a token-dit patch_size that divides 28 (1, 2, 4, 7, 14 or 28)")
        if not isinstance(self.net_config, dict):
            raise self._invalid("net_config", "a dict of network keyword arguments")
        if self.pad and 32 % self.size_factor:
            raise self._invalid(
                "net_config", f"a network whose downsampling factor ({self.size_factor}) divides 28 or 32"
            )
        # the command line's bounds for config.json too, and the network's own checks before data loads
        check_network(self, self.net, self.net_kwargs, self._estimated_params, _build_net)

    @property
    def net_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``fm_nets.build_net(self.net, ...)``: ``net_config`` plus the input
        size and the number of classes."""
        kw = dict(self.net_config)
        if self.net == "mlp":
            kw["dim"] = self.model_size**2
        elif self.net == "dit":
            kw["input_size"] = self.model_size
        elif self.net == "token-dit":
            kw.update(vocab_size=self.levels, grid=[IMAGE_SIZE, IMAGE_SIZE], mask_token=self.source == "mask")
        return {**kw, "num_classes": self.num_classes}

    def _estimated_params(self) -> float:
        """An upper bound of the network's parameter count from its widths and depths."""
        c = self.net_config
        if self.net == "mlp":
            h, d = int(c.get("hidden", 1024)), int(c.get("depth", 4))
            return float((d + 2) * h * h + 4 * self.model_size**2 * h)
        if self.net in ("dit", "token-dit"):
            h, d = int(c.get("hidden_size", 128)), int(c.get("depth", 6))
            p, e = int(c.get("patch_size", 2)), int(c.get("embed_dim", 32))
            out = 2 * p * p * (e + self.levels) * h if self.net == "token-dit" else 0  # patch in, logits out
            return float((13 * d + 4) * h * h + out)
        widths = [int(w) for w in c.get("channels", [32, 64, 128])]
        return float(50 * (int(c.get("num_res_blocks", 1)) + 1) * sum(w * w for w in widths))


def make_config(dataset: str = "fashion-mnist", recipe: str = "default", **overrides: Any) -> PixelConfig:
    """The recipe's settings with ``overrides`` (None values are ignored; TrainConfig fields such as
    ``batch_size`` or ``lr`` go to ``train``). ``net="mlp"`` with the default recipe switches to
    :data:`NET_DEFAULTS` ["mlp"]; ``net_config`` overrides are merged into the recipe's network settings.
    The default recipe's guidance is the data set's (:data:`DEFAULT_GUIDANCE`).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    base = dict(RECIPES[recipe])
    if overrides.get("model") == "discrete":
        base.update(DISCRETE_RECIPE)
    net = overrides.pop("net", None) or base["net"]
    if net not in NETS:
        raise ValueError(f"unknown network {net!r}; choose one of {', '.join(NETS)}")
    if net != base["net"] or base["net_config"] is None:
        net_config = dict(NET_DEFAULTS[net])
    else:
        net_config = dict(base["net_config"])
    net_config.update(overrides.pop("net_config", None) or {})
    base.update(dataset=dataset, recipe=recipe, net=net, net_config=net_config)
    if recipe == "default" and dataset in DEFAULT_GUIDANCE and overrides.get("model") != "discrete":
        base["guidance"] = DEFAULT_GUIDANCE[dataset]
    return from_recipe(PixelConfig, base, overrides)
