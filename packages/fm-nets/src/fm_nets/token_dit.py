"""A token DiT for discrete flow matching: ``logits = TokenDiT(...)(x, t, y)`` over a grid of tokens.

x int64 [B, *grid] token ids (0..vocab_size-1, plus the mask id ``vocab_size`` with
``mask_token=True``), t float [B] in [0, 1] (t = 0 source/noise, t = 1 data; a float or 0-d tensor
is broadcast), y int64 [B] or None (label ``num_classes`` = null class for classifier-free guidance;
``y=None`` means null). Output: float logits [B, *grid, vocab_size] over the data tokens (never the
mask), the estimate of the posterior p(x1 = token | x_t) per position (fm_nets.tokens states the
contract). ``grid`` is (H, W), or (L,) for a sequence, treated as a 1 x L grid (an int L means (L,)).

Layout (the adaLN-Zero DiT of Peebles & Xie 2023, with embeddings in and logits out)::

    nn.Embedding(vocab_size + mask_token, embed_dim) per token
    -> p x p tokens per patch, their embeddings concatenated (einops) -> Linear to hidden_size
       + fixed 2D sin-cos position embedding (fm_nets.dit.sincos_pos_embed_2d)
    -> depth x fm_nets.dit.DiTBlock (adaLN-Zero: LayerNorm, scale/shift/gate from c, attention, MLP)
    -> final LayerNorm with scale/shift from c, Linear to p*p*vocab_size per patch (zero at start)
    -> unpatchify to [B, H, W, vocab_size] -> [B, *grid, vocab_size]

    c = TimeEmbedding(t) + LabelEmbedding(y)   (sinusoids of 1000 t, so c varies over t in [0, 1])

The output layer starts at zero, so the initial logits are all zero: the uniform posterior. With
``depth=0`` (allowed) each patch's logits depend on that patch's tokens only. Example::

    >>> import torch
    >>> from fm_nets import TokenDiT, build_net
    >>> net = TokenDiT(vocab_size=16, grid=(28, 28), patch_size=2, num_classes=10)  # 196 patches
    >>> x = torch.randint(0, 17, (4, 28, 28))                   # 16 = the mask token
    >>> net(x, torch.rand(4), torch.tensor([0, 3, 9, 10])).shape  # 10 = null label
    torch.Size([4, 28, 28, 16])
    >>> pair = TokenDiT(vocab_size=64, grid=(2,), hidden_size=64, depth=2)  # two coordinate tokens
    >>> pair(torch.tensor([[3, 64]]), 0.5).shape
    torch.Size([1, 2, 64])
    >>> same = build_net("token-dit", **net.config)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from einops import rearrange
from torch import Tensor, nn

from .dit import DIT_CONFIGS, DiTBlock, FinalLayer, _xavier_linear, sincos_pos_embed_2d
from .embeddings import LabelEmbedding, TimeEmbedding, as_time_batch
from .hub import HubMixin
from .tokens import check_token_ids

__all__ = ["TokenDiT"]

#: Sinusoidal features of 1000 t fed to the time MLP (as DiT's default ``time_freq_dim``).
TIME_FREQ_DIM = 256


def _grid(value: int | Sequence[int]) -> tuple[int, ...]:
    refused = f"grid must be an int L, (L,) or (H, W) of positive ints, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(refused)
    if isinstance(value, int):
        value = (value,)
    try:
        grid = tuple(value)
    except TypeError:
        raise ValueError(refused) from None
    if len(grid) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in grid):
        raise ValueError(refused)
    return grid


def _positive_int(owner: str, key: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner} {key} must be an int >= {low}, got {value!r}")


class TokenDiT(nn.Module, HubMixin):
    """Token DiT ``forward(x [B, *grid] int64, t [B], y [B] | None) -> logits [B, *grid, vocab_size]``.

    Args:
        vocab_size: data tokens 0..vocab_size-1 (the logits' last dimension).
        grid: (H, W), or (L,) / L for a sequence (treated as 1 x L); x must have shape [B, *grid].
        patch_size: side p of the square patches of tokens (must divide H and W; a 1D grid needs p = 1).
        num_classes: labels 0..num_classes-1 plus the null class num_classes; None = unconditional.
        mask_token: True = the input also takes id ``vocab_size``, the mask (absorbing source) token.
        embed_dim: width of each token's embedding (a patch has p*p of them, concatenated).
        hidden_size: transformer width (divisible by 4 for the 2D position embedding and by num_heads).
        depth: number of adaLN-Zero blocks (0 allowed: then each patch sees only itself).
        num_heads: attention heads. mlp_ratio: MLP hidden width / hidden_size.
    """

    pos_embed: Tensor  # buffer [1, patches, hidden_size] (fixed, not saved)

    def __init__(
        self,
        vocab_size: int,
        grid: int | Sequence[int],
        patch_size: int = 1,
        num_classes: int | None = None,
        mask_token: bool = True,
        embed_dim: int = 32,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        shape = _grid(grid)
        for key, val, low in (
            ("vocab_size", vocab_size, 1),
            ("patch_size", patch_size, 1),
            ("embed_dim", embed_dim, 1),
            ("hidden_size", hidden_size, 4),
            ("depth", depth, 0),
            ("num_heads", num_heads, 1),
        ):
            _positive_int("TokenDiT", key, val, low)
        h, w = shape if len(shape) == 2 else (1, shape[0])
        if h % patch_size or w % patch_size:
            one_d = " (a 1D grid is 1 x L: use patch_size=1)" if len(shape) == 1 else ""
            raise ValueError(
                f"patch_size {patch_size} does not divide grid {h}x{w}{one_d}: choose a patch size that divides "
                "both sides"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2D sin-cos position embedding), got {hidden_size}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        if num_classes is not None:
            _positive_int("TokenDiT", "num_classes", num_classes)
        if not isinstance(mask_token, bool):
            raise ValueError(f"mask_token must be True or False, got {mask_token!r}")

        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, grid=list(shape), patch_size=patch_size, num_classes=num_classes,
            mask_token=mask_token, embed_dim=embed_dim, hidden_size=hidden_size, depth=depth,
            num_heads=num_heads, mlp_ratio=float(mlp_ratio),
        )  # fmt: skip
        self.vocab_size, self.num_classes, self.mask_token = vocab_size, num_classes, mask_token
        self.grid = shape  # the shape of x after the batch dimension
        self.patch_size = patch_size
        self.patch_grid = (h // patch_size, w // patch_size)

        self.token_embed = nn.Embedding(vocab_size + int(mask_token), embed_dim)
        self.patch_proj = nn.Linear(patch_size * patch_size * embed_dim, hidden_size)
        pos = sincos_pos_embed_2d(hidden_size, *self.patch_grid).unsqueeze(0)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.t_embedder = TimeEmbedding(hidden_size, freq_dim=TIME_FREQ_DIM)
        self.y_embedder = LabelEmbedding(num_classes, hidden_size) if num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, vocab_size)
        self._init_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TokenDiT:
        """A named size of :data:`fm_nets.DIT_CONFIGS` ("tiny": hidden 128, depth 6; "small": 256, 8) with
        keyword overrides, which must include ``vocab_size`` and ``grid``."""
        if name not in DIT_CONFIGS:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {', '.join(DIT_CONFIGS)}")
        return cls(**{**DIT_CONFIGS[name], **overrides})

    def _init_weights(self) -> None:
        """As :class:`fm_nets.DiT`: Xavier-uniform linears, N(0, 1) token and label rows, zero adaLN and output."""
        self.apply(_xavier_linear)
        nn.init.normal_(self.token_embed.weight, std=1.0)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding.weight, std=1.0)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def condition(self, t: Tensor | float, y: Tensor | None, batch: int, like: Tensor) -> Tensor:
        """c [B, hidden_size] = TimeEmbedding(t) (+ LabelEmbedding(y)); ``like`` is a float activation."""
        c = self.t_embedder(as_time_batch(t, batch, like))
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, batch, like.device)
        elif y is not None:
            raise ValueError("this TokenDiT is unconditional (num_classes=None); pass y=None")
        return c

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """x int64 [B, *grid]; t float [B] or a scalar in [0, 1] (0 = source, 1 = data); y int64 [B] or None.
        Returns logits [B, *grid, vocab_size] over the data tokens."""
        x = check_token_ids(x, self.grid, self.vocab_size, self.mask_token, "TokenDiT")
        b, p = x.shape[0], self.patch_size
        (gh, gw), h, w = self.patch_grid, self.patch_grid[0] * p, self.patch_grid[1] * p
        emb = self.token_embed(x.reshape(b, h, w))  # [B, H, W, E]
        patches = rearrange(emb, "b (h p) (w q) e -> b (h w) (p q e)", p=p, q=p)
        tokens = self.patch_proj(patches)
        tokens = tokens + self.pos_embed.to(tokens.dtype)
        c = self.condition(t, y, b, tokens)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final_layer(tokens, c)  # [B, patches, p*p*V]
        logits = rearrange(out, "b (h w) (p q v) -> b (h p) (w q) v", h=gh, w=gw, p=p, q=p)
        return logits.reshape(b, *self.grid, self.vocab_size)
