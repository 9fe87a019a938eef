"""A small U-Net velocity field for 28x28 / 32x32 images: ``v = UNet(...)(x, t, y)``.

x [B, C, H, W] (images in [-1, 1]), t float [B] in [0, 1] (t = 0 noise, t = 1 data; a float or
0-d tensor is broadcast), y int64 [B] or None. With ``num_classes`` set, label ``num_classes`` is
the null class (classifier-free guidance) and ``y=None`` means null. Output: same shape as x.
With ``two_time=True``: ``u = UNet(..., two_time=True)(x, r, t, y)``, the average velocity from r
to t (fm_nets.two_time).

Layout (Ronneberger et al. 2015; residual blocks with GroupNorm and time conditioning after
Ho et al. 2020 / Dhariwal & Nichol 2021)::

    [pixel unshuffle p x p] -> stem 3x3 conv -> per level: num_res_blocks x ResBlock (a skip after
    each), then a 2x2 stride-2 conv to the next width -> middle: mid_blocks x ResBlock with
    self-attention after the first, at the lowest resolution -> per level (reversed):
    num_res_blocks x ResBlock(concat skip), then a 2x2 stride-2 transposed conv up ->
    GroupNorm, SiLU, 3x3 conv (zero-initialised: v = 0 at start) -> [pixel shuffle].

Built for a CPU first. The defaults (patch_size=2, channels=(48, 96), one residual block per
level, one middle block with attention; 1.0M parameters, 111 MFLOP per 28x28 image) fold 2x2
pixel patches into channels (as DiT's patch size 2 or Hoogeboom et al. 2023's "simple diffusion"
do), so the U-Net runs at 14x14 and 7x7 with wide, GEMM-friendly convolutions; the 2x2 stride-2
down/up convolutions change width and resolution at the cost of a 1x1 conv per output pixel. The
package README has the measured speed of candidate shapes. Each halving needs even sizes:
28 -> 14 -> 7 works with patch 2 and two levels (or patch 1 and three levels); deeper nets need
32x32 (``fm_data.to_model(..., pad=True)``). Sizes the depth cannot handle raise ValueError, and
the output always has the input's shape.

Example::

    net = UNet(num_classes=10)                       # defaults: patch 2, widths (48, 96)
    v = net(torch.randn(4, 1, 28, 28), torch.rand(4), torch.tensor([0, 1, 2, 10]))  # 10 = null
    same = build_net("unet", **net.config)
    big = UNet(channels=(32, 64, 128), patch_size=1, mid_blocks=2)   # a classic 28-14-7 U-Net
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import LabelEmbedding, TimeEmbedding
from .hub import HubMixin
from .two_time import attention_with_forward_ad, bind_times, embed_times, zero_last_layer

__all__ = ["UNet", "ResBlock", "SelfAttention2d", "GroupNorm32"]

CONDITIONING = ("scale-shift", "additive")


class GroupNorm32(nn.GroupNorm):
    """nn.GroupNorm computed in float32 under autocast on every device (CUDA's autocast policy for
    group_norm; the CPU's would keep bf16). Besides precision this keeps ``torch.func.jvp`` working
    under CPU bf16 autocast: there group_norm's forward-mode derivative comes out float32 beside a
    bf16 value, and the next convolution refuses the mix. Without autocast it is nn.GroupNorm."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
            x = x.float()
        return super().forward(x)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3x3, conditioning, GroupNorm-SiLU-Dropout-Conv3x3, plus a (1x1) skip.

    ``scale-shift``: h = GN(h) * (1 + s) + b with (s, b) from the embedding (FiLM / AdaGN of
    Dhariwal & Nichol 2021); ``additive``: h = h + W emb before the second norm (Ho et al. 2020).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        groups: int,
        dropout: float = 0.0,
        conditioning: str = "scale-shift",
    ) -> None:
        super().__init__()
        self.scale_shift = conditioning == "scale-shift"
        self.norm1 = GroupNorm32(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if self.scale_shift else out_ch)
        self.norm2 = GroupNorm32(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, in_ch, H, W], emb [B, emb_dim] (already passed through SiLU) -> [B, out_ch, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def _zero_init(conv: nn.Conv2d) -> None:
    """Set a convolution's weight and bias (if any) to zero, so its output starts at 0."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-GroupNorm, residual, output zero-initialised."""

    def __init__(self, ch: int, groups: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        _zero_init(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        qkv = (q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = attention_with_forward_ad(F.scaled_dot_product_attention, *qkv)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module, HubMixin):
    """U-Net velocity field ``forward(x [B,C,H,W], t [B], y [B] | None) -> v [B,C,H,W]``.

    Args:
        in_channels: image channels C (1 for MNIST).
        channels: width per resolution level; len(channels) levels, len - 1 halvings
            (H and W must be divisible by patch_size * 2 ** (len(channels) - 1)).
        num_res_blocks: residual blocks per level on the way down (and as many on the way up).
        attention: self-attention in the middle, at the lowest resolution.
        num_classes: number of classes for class conditioning (label num_classes = null); None = unconditional.
        dropout: dropout inside the residual blocks.
        groups: GroupNorm groups; every width must be divisible by it.
        emb_dim: width of the time (+ label) embedding; default 4 * channels[0].
        conditioning: "scale-shift" (AdaGN) or "additive".
        num_heads: attention heads (channels[-1] must be divisible by it).
        mid_blocks: residual blocks in the middle (attention, if on, sits after the first).
            Defaults (patch_size=2, channels=(48, 96), mid_blocks=1) were chosen for speed on a
            2-core CPU; see the README's timing table.
        patch_size: 1, or p > 1 to fold p x p pixel patches into channels first (pixel unshuffle,
            Shi et al. 2016) and unfold them at the end: the U-Net then runs at H/p x W/p, with
            p^2 fewer positions per convolution.
        two_time: False = velocity field ``forward(x, t, y=None) -> v``; True = average-velocity
            field ``forward(x, r, t, y=None) -> u`` (fm_nets.two_time): r goes through
            ``time_embed``, the interval t - r through a second TimeEmbedding ``interval_embed``
            (last layer zero), and the two are summed.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (48, 96),
        num_res_blocks: int = 1,
        attention: bool = True,
        num_classes: int | None = None,
        dropout: float = 0.0,
        groups: int = 8,
        emb_dim: int | None = None,
        conditioning: str = "scale-shift",
        num_heads: int = 4,
        mid_blocks: int = 1,
        patch_size: int = 2,
        two_time: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        bad = [c for c in channels if c % groups]
        if bad:
            raise ValueError(
                f"every width in channels={list(channels)} must be divisible by groups={groups} "
                f"(GroupNorm); widths {bad} are not"
            )
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if mid_blocks < 0:
            raise ValueError(f"mid_blocks must be >= 0, got {mid_blocks}")
        if conditioning not in CONDITIONING:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {', '.join(CONDITIONING)}")
        if attention and (num_heads < 1 or channels[-1] % num_heads):
            raise ValueError(f"channels[-1]={channels[-1]} must be divisible by num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        emb_dim = int(emb_dim) if emb_dim is not None else 4 * channels[0]
        if emb_dim < 2 or emb_dim % 2:
            raise ValueError(f"emb_dim must be an even number >= 2, got {emb_dim}")

        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            channels=list(channels),
            num_res_blocks=num_res_blocks,
            attention=bool(attention),
            num_classes=num_classes,
            dropout=float(dropout),
            groups=groups,
            emb_dim=emb_dim,
            conditioning=conditioning,
            num_heads=num_heads,
            mid_blocks=mid_blocks,
            patch_size=patch_size,
        )
        self.two_time = bool(two_time)
        if self.two_time:  # one-time configs stay as before the flag (old runs resume, old exports match)
            self.config["two_time"] = True
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.factor = patch_size * 2 ** (len(channels) - 1)

        self.time_embed = TimeEmbedding(emb_dim)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, groups, dropout, conditioning)

        io_channels = in_channels * patch_size**2
        self.stem = nn.Conv2d(io_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(channels):
            self.down.append(nn.ModuleList(block(c, c) for _ in range(num_res_blocks)))
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, channels[i + 1], 2, stride=2))
        c = channels[-1]
        self.mid = nn.ModuleList(block(c, c) for _ in range(mid_blocks))
        self.attn = SelfAttention2d(c, groups, num_heads) if attention else None
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c = channels[i]
            self.up.append(nn.ModuleList(block(2 * c, c) for _ in range(num_res_blocks)))
            if i > 0:
                self.upsample.append(nn.ConvTranspose2d(c, channels[i - 1], 2, stride=2))
        self.out_norm = GroupNorm32(groups, channels[0])
        self.out_conv = nn.Conv2d(channels[0], io_channels, 3, padding=1)
        _zero_init(self.out_conv)
        # built last, so the one-time layers draw the same initial weights as in a one-time net
        self.interval_embed: nn.Module | None = TimeEmbedding(emb_dim) if self.two_time else None
        if self.interval_embed is not None:
            zero_last_layer(self.interval_embed)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            levels = len(self.config["channels"])
            raise ValueError(
                f"UNet with {levels} levels (patch_size {self.patch_size}) shrinks the image by "
                f"{self.factor}, so H and W must be divisible by {self.factor}; got {h}x{w}. Use fewer "
                "levels or pad (e.g. 28 -> 32 with fm_data.to_model(..., pad=True))."
            )

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``forward(x, t, y=None) -> v``, or with ``two_time`` ``forward(x, r, t, y=None) -> u``.

        x [B, C, H, W]; t, r float [B] or scalars in [0, 1] (0 = noise, 1 = data; r <= t, the current
        point x at r); y int64 [B] or None. Output [B, C, H, W].
        """
        r, t, y = bind_times(self, args, kwargs)
        self._check_input(x)
        b = x.shape[0]
        emb = embed_times(self.time_embed, self.interval_embed, r, t, b, x)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, b, x.device)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) but got labels y")
        emb = F.silu(emb)

        p = self.patch_size
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)
        skips = []
        for i, blocks in enumerate(self.down):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for j, blk in enumerate(self.mid):
            h = blk(h, emb)
            if j == 0 and self.attn is not None:
                h = self.attn(h)
        if not self.mid and self.attn is not None:
            h = self.attn(h)
        for i, blocks in enumerate(self.up):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        out = self.out_conv(F.silu(self.out_norm(h)))
        if p > 1:
            out = F.pixel_shuffle(out, p)
        if out.shape != x.shape:  # cannot happen after _check_input; never return a different size
            raise RuntimeError(f"UNet output shape {tuple(out.shape)} != input shape {tuple(x.shape)}")
        return out
