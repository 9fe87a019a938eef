"""A Diffusion Transformer (DiT) velocity field: ``v = DiT(...)(x, t, y)``, for pixels or VAE latents.

x [B, C, H, W], t float [B] in [0, 1] (t = 0 noise, t = 1 data; a float or 0-d tensor is
broadcast), y int64 [B] or None. With ``num_classes`` set, label ``num_classes`` is the null class
(classifier-free guidance) and ``y=None`` means null. Output: same shape as x (flow matching
predicts one velocity per input channel, so there is no ``learn_sigma`` doubling of channels).
With ``two_time=True``: ``u = DiT(..., two_time=True)(x, r, t, y)``, the average velocity from r to t
(fm_nets.two_time).

Layout (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", the adaLN-Zero variant)::

    timm PatchEmbed (p x p patches -> tokens) + fixed 2D sin-cos position embedding
    -> depth x [adaLN-Zero block: LayerNorm, scale/shift from c, timm Attention, gate;
                LayerNorm, scale/shift from c, timm Mlp, gate]
    -> final LayerNorm with scale/shift from c, Linear to p*p*C per token -> unpatchify (einops)

    c = TimeEmbedding(t) + LabelEmbedding(y)   (sinusoids of 1000 t, so c varies over t in [0, 1])

Every modulation layer and the output layer start at zero, so each block is the identity and
v = 0 at initialisation. Sizes the patch does not divide are refused (timm's PatchEmbed would
floor 7x7 with patch 2 to a 3x3 grid and the output would come back 6x6, silently).

Configurations (:data:`DIT_CONFIGS`): ``tiny`` (hidden 128, depth 6, 4 heads, 1.9M parameters
for 4x8x8 latents) and ``small`` (hidden 256, depth 8, 4 heads, 9.7M). Example::

    net = DiT(in_channels=4, input_size=8, patch_size=2, num_classes=10)   # latents 4x8x8
    v = net(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([3, 10]))  # 10 = null
    same = build_net("dit", **net.config)
    pixel = DiT.from_preset("tiny", in_channels=1, input_size=28, patch_size=2, num_classes=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed
from torch import Tensor, nn

from .embeddings import LabelEmbedding, TimeEmbedding
from .hub import HubMixin
from .two_time import attention_with_forward_ad, bind_times, embed_times, zero_last_layer

__all__ = ["DiT", "DiTBlock", "DIT_CONFIGS", "sincos_pos_embed_2d"]

#: Named sizes (keyword arguments of :class:`DiT`); ``DiT.from_preset(name, **overrides)``.
DIT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0),
    "small": dict(hidden_size=256, depth=8, num_heads=4, mlp_ratio=4.0),
}


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2D sin-cos position embedding [grid_h * grid_w, dim] (row-major tokens, as PatchEmbed).

    Half of the channels encode the row, half the column, each with the 1D transformer
    encoding (Vaswani et al. 2017; MAE / DiT's ``get_2d_sincos_pos_embed``): for position p and
    frequency k < dim/4, sin(p w_k) and cos(p w_k) with w_k = 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"the 2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")

    def enc(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([enc(rows), enc(cols)], axis=1)
    return torch.from_numpy(emb).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [B, N, D] * (1 + scale [B, D]) + shift [B, D] (adaptive LayerNorm)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: tokens [B, N, D], c [B, D] -> [B, N, D].

    The six modulation vectors (shift, scale, gate for attention and MLP) come from one
    SiLU-Linear of c that starts at zero, so the block starts as the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        # timm annotates act_layer as type[nn.Module] but only ever calls act_layer() with no arguments
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio), act_layer=_gelu_tanh)  # type: ignore[arg-type]
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        attended = attention_with_forward_ad(self.attn, _modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_a.unsqueeze(1) * attended
        return x + gate_m.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then Linear to p*p*C per token; both start at zero."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


def _xavier_linear(m: nn.Module) -> None:
    """Xavier-uniform weight and zero bias for an nn.Linear (``module.apply`` hook); other modules untouched."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _size2(value: int | Sequence[int], name: str) -> tuple[int, int]:
    refused = f"{name} must be an int or [height, width], got {value!r}"
    if isinstance(value, bool):
        raise ValueError(refused)
    if isinstance(value, int):
        h = w = value
    else:
        try:
            h, w = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(refused) from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return h, w


class DiT(nn.Module, HubMixin):
    """DiT velocity field ``forward(x [B, C, H, W], t [B], y [B] | None) -> v [B, C, H, W]``.

    Args:
        in_channels: channels C of x (4 for the VAE latents here, 1 for MNIST pixels).
        input_size: H (= W) or [H, W] of x; both must be divisible by ``patch_size``.
        patch_size: side p of the square patches that become tokens ((H/p) * (W/p) tokens).
        hidden_size: token width D (divisible by 4 for the 2D position embedding and by num_heads).
        depth: number of adaLN-Zero blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        num_classes: classes for conditioning (label num_classes = null); None = unconditional.
        time_freq_dim: sinusoidal features of 1000 t fed to the time MLP (fm_nets.TimeEmbedding).
        two_time: False = velocity field ``forward(x, t, y=None) -> v``; True = average-velocity
            field ``forward(x, r, t, y=None) -> u`` (fm_nets.two_time): c = TimeEmbedding(r) +
            ``interval_embed``(t - r) (+ label), the interval embedding's last layer zero.
    """

    def __init__(
        self,
        in_channels: int = 4,
        input_size: int | Sequence[int] = 8,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        time_freq_dim: int = 256,
        two_time: bool = False,
    ) -> None:
        super().__init__()
        h, w = _size2(input_size, "input_size")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"patch_size {patch_size} does not divide input_size {h}x{w}: choose a patch size that "
                f"divides both sides or pad the input (timm's PatchEmbed would silently drop the remainder)"
            )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2D sin-cos position embedding), got {hidden_size}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        if time_freq_dim < 2 or time_freq_dim % 2:
            raise ValueError(f"time_freq_dim must be an even number >= 2, got {time_freq_dim}")

        self.config = dict(
            in_channels=in_channels, input_size=h if h == w else [h, w], patch_size=patch_size,
            hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=float(mlp_ratio),
            num_classes=num_classes, time_freq_dim=time_freq_dim,
        )  # fmt: skip
        self.two_time = bool(two_time)
        if self.two_time:  # one-time configs stay as before the flag (old runs resume, old exports match)
            self.config["two_time"] = True
        self.in_channels = in_channels
        self.input_size = (h, w)
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed((h, w), patch_size, in_channels, hidden_size, bias=True, strict_img_size=True)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, *self.grid).unsqueeze(0), persistent=False)
        self.t_embedder = TimeEmbedding(hidden_size, freq_dim=time_freq_dim)
        self.y_embedder = LabelEmbedding(num_classes, hidden_size) if num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.interval_embed: nn.Module | None = None
        self._init_weights()
        if self.two_time:  # after the one-time layers' init, so they draw the same weights as in a one-time net
            self.interval_embed = TimeEmbedding(hidden_size, freq_dim=time_freq_dim)
            self.interval_embed.apply(_xavier_linear)  # as the time MLP, but its last layer zero
            zero_last_layer(self.interval_embed)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiT:
        """A named size from :data:`DIT_CONFIGS` ("tiny", "small") with keyword overrides."""
        if name not in DIT_CONFIGS:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {', '.join(DIT_CONFIGS)}")
        return cls(**{**DIT_CONFIGS[name], **overrides})

    def _init_weights(self) -> None:
        """Xavier-uniform linears (the time MLP too), N(0, 1) label rows, zero adaLN and output.

        The DiT reference draws the time MLP and label table from N(0, 0.02); then c is about
        50 times smaller and the zero-initialised adaLN weights need thousands of steps before t
        and y steer the blocks (measured here: label accuracy 0.13 after 166 CPU steps). With
        PyTorch's default scale, c has entries of order 1 from the first step.
        """
        self.apply(_xavier_linear)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding.weight, std=1.0)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DiT expects x of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"patch_size {p} does not divide the input size {h}x{w}; pad the input to a multiple of {p} "
                f"(this DiT was built for {self.input_size[0]}x{self.input_size[1]})"
            )
        if (h, w) != self.input_size:
            raise ValueError(
                f"this DiT was built for {self.input_size[0]}x{self.input_size[1]} inputs (fixed position embedding), got {h}x{w}"
            )

    def condition(
        self, t: Tensor | float, y: Tensor | None, batch: int, like: Tensor, r: Tensor | float | None = None
    ) -> Tensor:
        """The conditioning vector c [B, D] = TimeEmbedding(t) (+ LabelEmbedding(y)); for a two-time net
        TimeEmbedding(r) + interval_embed(t - r) (+ LabelEmbedding(y))."""
        c = embed_times(self.t_embedder, self.interval_embed, r, t, batch, like)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, batch, like.device)
        elif y is not None:
            raise ValueError("this DiT is unconditional (num_classes=None) but got labels y")
        return c

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``forward(x, t, y=None) -> v``, or with ``two_time`` ``forward(x, r, t, y=None) -> u``.

        x [B, C, H, W]; t, r float [B] or scalars in [0, 1] (0 = noise, 1 = data; r <= t, the current
        point x at r); y int64 [B] or None. Output [B, C, H, W].
        """
        r, t, y = bind_times(self, args, kwargs)
        self._check_input(x)
        b = x.shape[0]
        c = self.condition(t, y, b, x, r=r)
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final_layer(tokens, c)  # [B, N, p*p*C]
        p = self.patch_size
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=self.grid[0], w=self.grid[1], p=p, q=p)
