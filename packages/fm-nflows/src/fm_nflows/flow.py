"""A normalizing flow: a stack of invertible layers over a standard normal base.

Direction: ``forward`` maps data ``x`` to noise ``z`` (like zuko and nflows; normflows
goes the other way). ``log p(x | y) = log N(z; 0, I) + log|det dz/dx|``, and sampling
runs ``inverse`` on Gaussian noise. Maximum-likelihood training minimises
``-(base_log_prob + logdet)``, split into its two terms by :meth:`Flow.nll_terms`.

Class conditioning: an ``nn.Embedding`` turns the label ``y`` into a context vector that
enters every coupling's conditioner.

References: Dinh et al., "Density estimation using Real NVP" (2017); Kingma & Dhariwal,
"Glow" (2018); Papamakarios et al., "Normalizing Flows for Probabilistic Modeling and
Inference" (2021), section 2.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .actnorm import ActNorm
from .base import FlowLayer, check_points
from .coupling import ACTIVATIONS, AffineCoupling, alternating_mask
from .functional import standard_normal_log_prob
from .invertible_linear import InvertibleLinear
from .permutation import Permutation

__all__ = ["Flow", "build_flow", "NLLTerms", "Layerwise", "MIXINGS"]

MIXINGS = ("lu", "random", "reverse", "none")


class NLLTerms(NamedTuple):
    """Batch means of the two terms of the log-likelihood, each a 0-d tensor.

    ``nll = -(base_log_prob + logdet)`` is the maximum-likelihood loss (nats per sample).
    Unpacks as ``base, logdet = flow.nll_terms(x, y)``.
    """

    base_log_prob: Tensor
    logdet: Tensor

    @property
    def nll(self) -> Tensor:
        """``-(base_log_prob + logdet)``, the loss to minimise."""
        return -(self.base_log_prob + self.logdet)


@dataclass
class Layerwise:
    """Points carried through the flow one layer at a time.

    points: ``[L + 1, B, D]``; ``points[0]`` is the input, ``points[i]`` the output of the
        i-th layer applied (in the order they are applied for the chosen direction).
    names: ``L`` layer class names in the same order (``names[i]`` produced ``points[i+1]``).
    logdet: ``[B]``, total log-determinant of the whole pass.
    direction: ``"inverse"`` (noise -> data) or ``"forward"`` (data -> noise).
    """

    points: Tensor
    names: tuple[str, ...]
    logdet: Tensor
    direction: str


class Flow(nn.Module, PyTorchModelHubMixin, library_name="fm-nflows", tags=["normalizing-flow", "fm-toolkit"]):
    """Normalizing flow over ``R^dim`` with a standard normal base distribution.

    Args:
        layers: invertible layers (:class:`~fm_nflows.base.FlowLayer`), listed in the
            data -> noise order (``layers[0]`` sees the data).
        dim: number of coordinates D.
        num_classes: number of labels for a class-conditional flow (None: unconditional).
        embed_dim: size of the label embedding passed as ``context`` to every layer.
        config: the ``build_flow`` keyword arguments, kept as ``.config`` (JSON-safe) for
            checkpoints; set by :func:`build_flow`.

    Labels ``y``: None for an unconditional flow; for a conditional one, an int (or 0-d
    tensor) that broadcasts over the batch, or an int64 tensor ``[B]`` in ``[0, num_classes)``.

    Sharing (huggingface_hub's ``PyTorchModelHubMixin``): ``flow.save_pretrained(DIR)`` writes
    config.json (the build_flow keyword arguments), model.safetensors and a model card;
    ``Flow.from_pretrained(DIR or "org/name")`` rebuilds it (also from :func:`save_flow` folders);
    ``flow.push_to_hub("org/name")`` uploads it.
    """

    def __init__(
        self,
        layers: list[FlowLayer],
        dim: int,
        *,
        num_classes: int | None = None,
        embed_dim: int = 16,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        self.dim = dim
        self.num_classes = num_classes
        self.layers = nn.ModuleList(layers)
        self.embedding = nn.Embedding(num_classes, embed_dim) if num_classes is not None else None
        self.config: dict[str, Any] | None = config

    # ------------------------------------------------------------------ labels
    def _context(self, y: Tensor | int | None, batch: int, device: torch.device) -> Tensor | None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("this flow is unconditional (num_classes=None); pass y=None")
            return None
        if y is None:
            raise ValueError(
                f"this flow is class-conditional (num_classes={self.num_classes}); "
                f"pass labels y (int or int64 [B]) in [0, {self.num_classes})"
            )
        if isinstance(y, bool) or (isinstance(y, Tensor) and y.dtype == torch.bool):
            raise ValueError(f"labels y must be integers, got {y!r}")
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point() or y.is_complex():
            raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
        if y.ndim == 0:
            y = y.expand(batch)
        elif y.shape != (batch,):
            raise ValueError(f"labels y must be an int or have shape [{batch}], got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"labels y must lie in [0, {self.num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
            )
        assert self.embedding is not None  # built in __init__ whenever num_classes is not None
        return self.embedding(y.long())

    def _flow_layers(self) -> list[FlowLayer]:
        """The layers in data -> noise order (``nn.ModuleList`` iterates as plain ``nn.Module``)."""
        return cast("list[FlowLayer]", list(self.layers))

    # ------------------------------------------------------------- transforms
    def forward(self, x: Tensor, y: Tensor | int | None = None) -> tuple[Tensor, Tensor]:
        """Data -> noise. ``x [B, D] -> (z [B, D], log|det dz/dx| [B])``."""
        check_points(x, self.dim)
        ctx = self._context(y, x.shape[0], x.device)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, ctx)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, y: Tensor | int | None = None) -> tuple[Tensor, Tensor]:
        """Noise -> data. ``z [B, D] -> (x [B, D], log|det dx/dz| [B])``."""
        check_points(z, self.dim, "z")
        ctx = self._context(y, z.shape[0], z.device)
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self._flow_layers()):
            z, ld = layer.inverse(z, ctx)
            logdet = logdet + ld
        return z, logdet

    def layerwise(self, inputs: Tensor, y: Tensor | int | None = None, *, direction: str = "inverse") -> Layerwise:
        """Carry points through the flow one layer at a time (for pictures of the flow).

        ``direction="inverse"``: ``inputs`` is noise ``z [B, D]`` and ``points[-1]`` the
        samples; ``"forward"``: ``inputs`` is data and ``points[-1]`` its noise. Returns a
        :class:`Layerwise` with ``points [L + 1, B, D]``.
        """
        if direction not in ("inverse", "forward"):
            raise ValueError(f"direction must be 'inverse' or 'forward', got {direction!r}")
        check_points(inputs, self.dim, "inputs")
        ctx = self._context(y, inputs.shape[0], inputs.device)
        layers = self._flow_layers()
        order = layers[::-1] if direction == "inverse" else layers
        points, h = [inputs], inputs
        logdet = inputs.new_zeros(inputs.shape[0])
        for layer in order:
            h, ld = layer.inverse(h, ctx) if direction == "inverse" else layer(h, ctx)
            logdet = logdet + ld
            points.append(h)
        names = tuple(type(layer).__name__ for layer in order)
        return Layerwise(torch.stack(points), names, logdet, direction)

    # ------------------------------------------------------------- densities
    def log_prob(self, x: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Exact ``log p(x | y)`` in nats, ``x [B, D] -> [B]``."""
        z, logdet = self(x, y)
        return standard_normal_log_prob(z) + logdet

    def nll_terms(self, x: Tensor, y: Tensor | int | None = None) -> NLLTerms:
        """Batch means of ``log N(z; 0, I)`` and ``log|det dz/dx|`` (0-d tensors).

        The maximum-likelihood loss is ``-(base_log_prob + logdet)`` = ``terms.nll``.
        """
        z, logdet = self(x, y)
        return NLLTerms(standard_normal_log_prob(z).mean(), logdet.mean())

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        ref = next(self.parameters())
        if generator is not None and generator.device != ref.device:
            # Draw on the generator's device, then move: keeps seeded results reproducible.
            return torch.randn(n, self.dim, generator=generator, device=generator.device, dtype=ref.dtype).to(
                ref.device
            )
        return torch.randn(n, self.dim, generator=generator, device=ref.device, dtype=ref.dtype)

    def sample(self, n: int, y: Tensor | int | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples ``[n, D]`` on the flow's device and dtype.

        ``y``: None (unconditional), one int for all ``n`` samples, or int64 ``[n]``.
        Gradients flow through the samples; wrap in ``torch.no_grad()`` when not needed.
        """
        x, _ = self.inverse(self._noise(n, generator), y)
        return x

    def sample_and_log_prob(
        self, n: int, y: Tensor | int | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x [n, D], log p(x | y) [n])`` in one pass (no second forward needed)."""
        z = self._noise(n, generator)
        x, logdet_inv = self.inverse(z, y)
        return x, standard_normal_log_prob(z) - logdet_inv

    # ------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomic)."""
        from .checkpoint import save_flow

        save_flow(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None) -> Flow:
        """Rebuild a flow saved with :meth:`save` (never re-initialises ActNorm)."""
        from .checkpoint import load_flow

        return load_flow(directory, device=device)

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: config.json = build_flow's keyword arguments, model.safetensors (atomic)."""
        from .checkpoint import flow_config_text, write_flow

        write_flow(self, Path(save_directory), flow_config_text(self))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> Flow:
        """The flow in a local folder (save_pretrained's or :func:`save_flow`'s) or a Hub repository.

        Eval mode, on ``map_location``. config.json is checked (unknown keys, wrong types: a one-line
        ValueError); an unreachable Hub with the files not cached raises ``ConnectionError`` (also a
        ValueError) in one line, without retries.
        """
        from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, hub_folder, load_flow

        where = Path(pretrained_model_name_or_path).expanduser()
        if not where.is_dir() and not isinstance(pretrained_model_name_or_path, Path):
            name = str(pretrained_model_name_or_path)
            if not name.startswith(("/", ".", "~")):
                where = hub_folder(name, (CONFIG_NAME, WEIGHTS_NAME), revision=revision)
        return load_flow(where, device=map_location)


def build_flow(
    dim: int = 2,
    n_layers: int = 10,
    hidden: int = 128,
    *,
    n_hidden: int = 3,
    num_classes: int | None = None,
    embed_dim: int = 16,
    mixing: str = "lu",
    actnorm: bool = True,
    scale_bound: float = 2.0,
    activation: str = "relu",
    zero_init: bool = True,
    seed: int | None = None,
) -> Flow:
    """RealNVP/Glow-style flow; defaults suit 2D data.

    The defaults (10 blocks, 3 hidden ReLU layers of 128, LU mixing, scale bound 2) were
    chosen on the class-conditional Olympic rings: ReLU conditioners learned the thin
    annuli clearly faster than SiLU/GELU/ELU ones at the same budget, a third hidden layer
    helped, and a bound of 2 instead of 3 kept the same quality while removing the loss
    spikes (points pushed far into the tails near the noise end of the stack). Unconditional
    2D maximum likelihood at a short budget (1,000 steps) later did better with zuko's
    layout, ``mixing="none", actnorm=False, scale_bound=7.0, zero_init=False`` (fm-toy2d's
    nf default; see its README, "Against zuko"); build_flow's own defaults are unchanged.

    Each of the ``n_layers`` blocks is, in the data -> noise direction,
    ``[ActNorm] -> mixing -> AffineCoupling``, with the coupling masks alternating
    between blocks (except for ``mixing="reverse"``, where the reversal alternates them).

    Args:
        dim: data dimension D (>= 2).
        n_layers: number of coupling blocks.
        hidden, n_hidden, activation: conditioner MLP width, number of hidden layers and
            nonlinearity (one of ``ACTIVATIONS``).
        num_classes: labels for a class-conditional flow; the label embedding
            (``embed_dim``) enters every conditioner.
        mixing: between couplings, ``"lu"`` (learned :class:`InvertibleLinear`),
            ``"random"`` / ``"reverse"`` (fixed :class:`Permutation`) or ``"none"``.
        actnorm: put an :class:`ActNorm` at the start of each block.
        scale_bound: c in the couplings' ``s = c * tanh(s_raw / c)``.
        zero_init: start every conditioner's last layer at zero (each coupling starts as
            the identity); False keeps PyTorch's default init there, as zuko's RealNVP does.
        seed: seeds all random initialisation (weights, permutations) without touching the
            global RNG; None draws from the global RNG.

    Returns a :class:`Flow` whose ``.config`` holds these arguments.
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2 for coupling flows, got {dim}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if mixing not in MIXINGS:
        raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
    config = dict(
        dim=dim,
        n_layers=n_layers,
        hidden=hidden,
        n_hidden=n_hidden,
        num_classes=num_classes,
        embed_dim=embed_dim,
        mixing=mixing,
        actnorm=actnorm,
        scale_bound=scale_bound,
        activation=activation,
        zero_init=zero_init,
        seed=seed,
    )
    context_dim = embed_dim if num_classes is not None else 0
    rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[])
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[FlowLayer] = []
        for i in range(n_layers):
            if actnorm:
                layers.append(ActNorm(dim))
            if mixing == "lu":
                layers.append(InvertibleLinear(dim))
            elif mixing in ("random", "reverse"):
                layers.append(Permutation(dim, mixing))
            parity = 0 if mixing == "reverse" else i % 2
            layers.append(
                AffineCoupling(
                    dim,
                    alternating_mask(dim, parity),
                    hidden=hidden,
                    n_hidden=n_hidden,
                    activation=activation,
                    context_dim=context_dim,
                    scale_bound=scale_bound,
                    zero_init=zero_init,
                )
            )
        flow = Flow(layers, dim, num_classes=num_classes, embed_dim=embed_dim, config=config)
    return flow
