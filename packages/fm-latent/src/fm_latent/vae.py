"""A pretrained diffusers VAE as an image <-> latent map for latent flow matching.

:class:`LatentVAE` wraps a diffusers ``AutoencoderKL`` (``encode`` returns a diagonal Gaussian,
``.latent_dist``) or ``AutoencoderTiny`` (``encode`` returns ``.latents``, deterministic) behind
one interface::

    vae = LatentVAE.from_pretrained("runs/vae", image_channels=1, image_size=28)
    z = vae.encode(x)          # x [B, 1, 28, 28] in [-1, 1] -> z [B, 4, 8, 8], about N(0, 1)
    x_hat = vae.decode(z)      # -> [B, 1, 28, 28] in [-1, 1]

What it takes care of:

* **Range and channels.** Images are float in [-1, 1] (both diffusers classes take and return
  that range). A 1-channel image into a 3-channel VAE is repeated over the channels, and the
  3-channel output is averaged back to one channel.
* **Padding.** The VAE halves the size ``n_down`` times (``downsample_factor`` = 2^n_down). An
  image whose side it does not divide is padded with -1 (black) to the next multiple, and
  ``decode`` crops back to ``image_size``: 28 -> 32 for a factor of 8. Without it, 28 through
  three downsamplings comes back as 24 without an error; both directions check the sizes.
* **Scale and shift.** ``z = (raw - shift) * scale``, with ``scale`` and ``shift`` stored in the
  VAE config as ``scaling_factor`` and ``shift_factor`` (the SD3 / FLUX convention), so that
  ``save_pretrained`` / ``from_pretrained`` round-trip them. :meth:`LatentVAE.fit_scale_shift`
  computes them from a data set's latents (1 / std and the mean, Rombach et al. 2022, sec. 4.3.2),
  rather than Stable Diffusion's 0.18215, which belongs to its own VAE.
* **Identity.** :meth:`LatentVAE.identity` (class, config, SHA-256 of the weights) is what a
  latent cache records, so latents from another VAE are refused (``fm_latent.cache``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # diffusers is imported lazily at run time (it is slow to import)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    DiffusersVAE = AutoencoderKL | AutoencoderTiny

__all__ = [
    "VAE_CLASSES",
    "HubUnreachableError",
    "LatentVAE",
    "LatentVAEError",
    "downsample_factor",
    "pad_to_multiple",
    "scale_shift_from_latents",
]

#: diffusers classes this wrapper knows (``_class_name`` in a VAE's config.json).
VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


class LatentVAEError(ValueError):
    """A VAE, image or latent that the wrapper cannot use (the message says why and what is allowed)."""


class HubUnreachableError(ConnectionError, LatentVAEError):
    """The Hugging Face Hub could not be reached (or HF_HUB_OFFLINE=1) and the VAE is not cached."""


#: What a hub id's snapshot must hold (weights only as safetensors: nothing is unpickled).
HUB_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def _hub_folder(repo_id: str) -> Path:
    """Local snapshot of the VAE ``repo_id``: one metadata request, no retries, before diffusers is imported.

    (fm-nets and fm-nflows have the same function; the import graph keeps the packages apart.)
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(HUB_FILES)))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubUnreachableError(
                f"cannot load the VAE {repo_id!r}: HF_HUB_OFFLINE=1 is set and it is not in the local Hub cache; give a "
                "local folder written by save_pretrained instead (e.g. RUN/vae of fm-latentgen train-vae), or unset HF_HUB_OFFLINE to download it"
            ) from None
        raise HubUnreachableError(
            f"cannot load the VAE {repo_id!r}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached and it is "
            "not in the local cache; give a local folder written by save_pretrained instead (e.g. RUN/vae of fm-latentgen train-vae) "
            "(HF_HUB_OFFLINE=1 uses cached files without asking the Hub)"
        ) from None
    except RepositoryNotFoundError:
        raise LatentVAEError(
            f"no repository {repo_id!r} on the Hugging Face Hub (or it is private: `hf auth login`)"
        ) from None
    except HFValidationError as exc:
        raise LatentVAEError(f"{repo_id!r} is neither a local folder nor a valid Hub id ('org/name'): {exc}") from None
    missing = [f for f in HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise LatentVAEError(f"the Hub repository {repo_id!r} has no {', '.join(missing)} (a diffusers VAE needs both)")
    return folder


def _vae_class(name: str):
    if name not in VAE_CLASSES:
        raise LatentVAEError(f"unsupported VAE class {name!r}; fm-latent wraps {', '.join(VAE_CLASSES)}")
    import diffusers

    return getattr(diffusers, name)


def _config(vae: nn.Module) -> dict[str, Any]:
    """The config of a diffusers VAE (a FrozenDict; call only once the class name is checked)."""
    return cast("DiffusersVAE", vae).config


def downsample_factor(vae: nn.Module) -> int:
    """How much the encoder shrinks each side: 2 ** (number of stride-2 stages).

    AutoencoderKL: one per ``block_out_channels`` entry but the last; AutoencoderTiny: one per
    encoder block but the first.
    """
    name = type(vae).__name__
    if name == "AutoencoderKL":
        return 2 ** (len(_config(vae)["block_out_channels"]) - 1)
    if name == "AutoencoderTiny":
        return 2 ** (len(_config(vae)["num_encoder_blocks"]) - 1)
    raise LatentVAEError(f"unsupported VAE class {name!r}; fm-latent wraps {', '.join(VAE_CLASSES)}")


def scale_shift_from_latents(raw: Tensor) -> tuple[float, float]:
    """(scale, shift) = (1 / std, mean) over all elements of raw latents [N, C, h, w] (float64).

    After ``z = (raw - shift) * scale`` the latents have mean 0 and standard deviation 1.
    """
    if raw.numel() < 2:
        raise LatentVAEError(f"need at least two latent values to compute a scale, got shape {tuple(raw.shape)}")
    r = raw.detach().double()
    if not torch.isfinite(r).all():
        raise LatentVAEError("the latents contain NaN or inf; is the VAE broken?")
    std = float(r.std())
    if not std > 0:
        raise LatentVAEError("the latents are constant (std 0): cannot compute a scale")
    return 1.0 / std, float(r.mean())


def pad_to_multiple(images: Tensor, factor: int, value: float = -1.0) -> Tensor:
    """Pad images [B, C, H, W] (centred, with ``value``: -1 is black) to the next multiple of ``factor``.

    28 -> 32 for a factor of 8; sizes the factor already divides are returned as they are.
    """
    h, w = images.shape[-2:]
    ph, pw = -(-h // factor) * factor, -(-w // factor) * factor
    if (ph, pw) == (h, w):
        return images
    top, left = (ph - h) // 2, (pw - w) // 2
    return F.pad(images, (left, pw - w - left, top, ph - h - top), value=value)


def _sha256_state(module: nn.Module) -> str:
    """SHA-256 over the sorted state dict: names, dtypes, shapes and raw bytes of every tensor."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _public_config(config: Any) -> dict[str, Any]:
    """The VAE's config without diffusers' bookkeeping keys (``_class_name``, ``_diffusers_version``, ...), JSON-normalised."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


class LatentVAE:
    """Images in [-1, 1] <-> scaled latents through a diffusers AutoencoderKL or AutoencoderTiny.

    Args:
        vae: the diffusers model (moved to nothing; use ``.to(device)``).
        image_channels: channels of the data (1 for MNIST); default the VAE's ``in_channels``.
            1-channel data may go through a 3-channel VAE (repeated in, averaged out).
        image_size: side (int or (H, W)) of the data images; ``decode`` crops to it. Default:
            no crop (the padded size).
        name_or_path: where the VAE came from (recorded, informational).
    """

    def __init__(
        self,
        vae: nn.Module,
        *,
        image_channels: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        name_or_path: str | None = None,
    ) -> None:
        self.kind = type(vae).__name__
        _vae_class(self.kind)
        self.vae: DiffusersVAE = cast("DiffusersVAE", vae.eval())  # the class name was checked just above
        self.factor = downsample_factor(vae)
        cfg = self.vae.config
        self.vae_in_channels = int(cfg["in_channels"])
        self.vae_out_channels = int(cfg["out_channels"])
        self.latent_channels = int(cfg["latent_channels"])
        self.image_channels = int(image_channels) if image_channels is not None else self.vae_in_channels
        for what, ch in (("input", self.vae_in_channels), ("output", self.vae_out_channels)):
            if ch != self.image_channels and self.image_channels != 1:
                raise LatentVAEError(
                    f"image_channels={self.image_channels} does not fit a VAE with {ch} {what} channels "
                    f"(allowed: the same number, or 1-channel data)"
                )
        self.image_size: tuple[int, int] | None = None
        if image_size is not None:
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
            if len(hw) != 2 or min(hw) < 1:
                raise LatentVAEError(f"image_size must be a positive int or (H, W), got {hw!r}")
            self.image_size = (hw[0], hw[1])
        self.name_or_path = name_or_path or cfg.get("_name_or_path") or ""

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", **kwargs: Any
    ) -> LatentVAE:
        """Load a VAE saved with diffusers' ``save_pretrained`` from a local directory or a hub id.

        A folder (:meth:`save_pretrained`'s, diffusers' layout) holds config.json (class, architecture,
        ``scaling_factor`` and ``shift_factor``) and diffusion_pytorch_model.safetensors. The class
        (AutoencoderKL or AutoencoderTiny) is read from config.json. ``kwargs`` go to
        :class:`LatentVAE` (image_channels, image_size: not stored in the folder). Weights load as
        float32. A hub id is fetched first (config.json and the safetensors weights; no retries):
        offline with the files not cached, :class:`HubUnreachableError` (a LatentVAEError) says so in
        one line within seconds.
        """
        where = str(name_or_path)
        local = Path(where).expanduser()
        if not local.exists() and (
            isinstance(name_or_path, Path) or where.startswith(("/", ".", "~")) or where.count("/") != 1
        ):
            # not a hub id ("org/name"): fail now instead of asking the hub for it
            raise LatentVAEError(
                f"cannot load a VAE from {where!r}: no such directory (give a directory written by "
                "save_pretrained, e.g. RUN/vae of fm-latentgen train-vae, or a hub id 'org/name')"
            )
        where = str(local) if local.is_dir() else str(_hub_folder(where))
        from diffusers import AutoencoderKL  # slow to import: only once the files are here

        try:
            config = AutoencoderKL.load_config(where)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LatentVAEError(f"cannot load a VAE from {where!r}: {first}") from None
        name = config.get("_class_name", "AutoencoderKL")
        model_cls = _vae_class(name)
        vae = model_cls.from_pretrained(where, torch_dtype=torch.float32, low_cpu_mem_usage=False)
        return cls(vae.to(device), name_or_path=where, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the VAE as a folder in diffusers' layout: config.json (architecture, class, scale and shift)
        and diffusion_pytorch_model.safetensors; :meth:`from_pretrained` reads it back (and so does
        diffusers' ``AutoencoderKL.from_pretrained``). Returns the folder."""
        directory = Path(directory)
        self.vae.save_pretrained(directory, safe_serialization=True)
        return directory

    def to(self, device: str | torch.device) -> LatentVAE:
        module: nn.Module = self.vae  # diffusers' @wraps(nn.Module.to) hides the method's self from mypy
        module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    # ------------------------------------------------------------------ scale and shift
    @property
    def scale(self) -> float:
        return float(self.vae.config["scaling_factor"])

    @property
    def shift(self) -> float:
        s = self.vae.config.get("shift_factor")
        return 0.0 if s is None else float(s)

    def set_scale_shift(self, scale: float, shift: float) -> None:
        """Store ``z = (raw - shift) * scale`` in the VAE config (``scaling_factor``, ``shift_factor``)."""
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(shift)):
            raise LatentVAEError(
                f"scale must be positive and finite and shift finite, got scale={scale!r}, shift={shift!r}"
            )
        self.vae.register_to_config(scaling_factor=float(scale), shift_factor=float(shift))

    def fit_scale_shift(self, images: Tensor, *, batch_size: int = 500) -> tuple[float, float]:
        """Encode ``images`` (posterior mode), set scale = 1/std and shift = mean of the raw latents; return them."""
        raw = self.encode_raw(images, batch_size=batch_size)
        scale, shift = scale_shift_from_latents(raw)
        self.set_scale_shift(scale, shift)
        return scale, shift

    # ------------------------------------------------------------------ sizes
    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The smallest size >= (h, w) that the VAE's downsampling divides."""
        f = self.factor
        return -(-h // f) * f, -(-w // f) * f  # as pad_to_multiple

    def latent_shape(self, h: int | None = None, w: int | None = None) -> tuple[int, int, int]:
        """(C, h', w') of the latents of (h, w) images (default ``image_size``)."""
        if h is None:
            if self.image_size is None:
                raise LatentVAEError("latent_shape needs a size: pass (h, w) or build the wrapper with image_size")
            h, w = self.image_size
        w = h if w is None else w
        ph, pw = self.padded_size(h, w)
        return self.latent_channels, ph // self.factor, pw // self.factor

    def identity(self) -> dict[str, Any]:
        """What identifies this VAE: class, config (scale and shift included) and a SHA-256 of the weights."""
        return {
            "class": self.kind,
            "name_or_path": str(self.name_or_path),
            "weights_sha256": _sha256_state(self.vae),
            "config": _public_config(self.vae.config),
        }

    # ------------------------------------------------------------------ images <-> latents
    def _prepare(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise LatentVAEError(
                f"expected images [B, {self.image_channels}, H, W] in [-1, 1], got shape {tuple(images.shape)}"
            )
        if not torch.is_floating_point(images):
            raise LatentVAEError(
                f"expected float images in [-1, 1], got dtype {images.dtype} (convert uint8 with x / 127.5 - 1)"
            )
        x = pad_to_multiple(images.to(self.device, torch.float32), self.factor)
        if self.vae_in_channels != self.image_channels:
            x = x.expand(-1, self.vae_in_channels, -1, -1)
        return x

    def _encode_batch(self, x: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        out = self.vae.encode(x)
        if self.kind == "AutoencoderTiny":  # deterministic: .latents, no distribution
            raw = out.latents
        else:
            dist = out.latent_dist
            raw = dist.sample(generator=generator) if sample else dist.mode()
        expect = (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        if tuple(raw.shape[-2:]) != expect:
            raise LatentVAEError(
                f"the VAE encoded {x.shape[-2]}x{x.shape[-1]} to {raw.shape[-2]}x{raw.shape[-1]} latents, "
                f"expected {expect[0]}x{expect[1]} (downsampling factor {self.factor})"
            )
        return raw

    def encode_raw(
        self,
        images: Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """Unscaled latents [B, C, h', w'] of images [B, image_channels, H, W] in [-1, 1].

        ``sample=False`` takes the posterior mode (mean), ``sample=True`` draws from it with
        ``generator`` (AutoencoderKL; AutoencoderTiny is deterministic and ignores it).
        """
        x = self._prepare(images)
        bs = batch_size or x.shape[0]
        with torch.no_grad():
            return torch.cat([self._encode_batch(x[i : i + bs], sample, generator) for i in range(0, x.shape[0], bs)])

    def encode(
        self,
        images: Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """Scaled latents ``z = (raw - shift) * scale`` [B, C, h', w'] of images in [-1, 1]."""
        return (
            self.encode_raw(images, sample=sample, generator=generator, batch_size=batch_size) - self.shift
        ) * self.scale

    def decode(
        self, latents: Tensor, *, size: int | tuple[int, int] | None = None, batch_size: int | None = None
    ) -> Tensor:
        """Images [B, image_channels, H, W] in [-1, 1] from scaled latents [B, C, h', w'].

        Crops (centred, undoing the padding of :meth:`encode`) to ``size``, default ``image_size``.
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise LatentVAEError(
                f"expected latents [B, {self.latent_channels}, h, w], got shape {tuple(latents.shape)}"
            )
        raw = latents.to(self.device, torch.float32) / self.scale + self.shift
        bs = batch_size or raw.shape[0]
        with torch.no_grad():
            x = torch.cat([self.vae.decode(raw[i : i + bs]).sample for i in range(0, raw.shape[0], bs)])
        expect = (raw.shape[-2] * self.factor, raw.shape[-1] * self.factor)
        if tuple(x.shape[-2:]) != expect:
            raise LatentVAEError(
                f"the VAE decoded {tuple(raw.shape[-2:])} latents to {tuple(x.shape[-2:])}, expected {expect}"
            )
        if self.vae_out_channels != self.image_channels:
            x = x.mean(dim=1, keepdim=True)
        size = size if size is not None else self.image_size
        if size is not None:
            th, tw = (size, size) if isinstance(size, int) else size
            h, w = x.shape[-2:]
            if th > h or tw > w:
                raise LatentVAEError(f"cannot crop decoded {h}x{w} images to {th}x{tw}")
            top, left = (h - th) // 2, (w - tw) // 2
            x = x[..., top : top + th, left : left + tw]
        return x.clamp(-1.0, 1.0)
