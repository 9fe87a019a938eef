"""A token MLP for discrete flow matching on short sequences: ``logits = TokenMLP(...)(x, t, y)``.

x int64 [B, seq_len] token ids (0..vocab_size-1, plus the mask id ``vocab_size`` with
``mask_token=True``), t float [B] in [0, 1] (t = 0 source/noise, t = 1 data; a float or 0-d tensor
is broadcast), y int64 [B] or None (label ``num_classes`` = null class; ``y=None`` means null).
Output: float logits [B, seq_len, vocab_size] over the data tokens (never the mask), the estimate of
the posterior p(x1 = token | x_t) per position (fm_nets.tokens states the contract). Made for 2D
lattice points: 2 tokens of 64 levels (+ the mask).

Layout::

    one embedding table per position (vocab_size + mask_token rows each, embed_dim wide)
    -> concatenate [B, seq_len * embed_dim] -> Linear to hidden, + c
    -> depth x pre-norm residual SiLU blocks that each receive c (fm_nets.mlp's blocks)
    -> LayerNorm, SiLU, Linear to seq_len * vocab_size (zero at start) -> [B, seq_len, vocab_size]

    c = TimeEmbedding(t) + LabelEmbedding(y)   (sinusoids of 1000 t, so c varies over t in [0, 1])

One table per position (stored as one ``nn.Embedding`` of seq_len * (vocab_size + mask_token) rows,
position i using rows i * (vocab_size + mask_token) onwards): the same id at two positions (an x
and a y coordinate) gets unrelated embeddings, and no position embedding is needed. The output
layer starts at zero, so the initial logits are all zero: the uniform posterior. Example::

    >>> import torch
    >>> from fm_nets import TokenMLP, build_net
    >>> net = TokenMLP(vocab_size=64, seq_len=2, num_classes=8)
    >>> x = torch.tensor([[5, 64], [64, 64]])                 # 64 = the mask token
    >>> net(x, torch.tensor([0.5, 0.0]), torch.tensor([3, 8])).shape  # 8 = null label
    torch.Size([2, 2, 64])
    >>> same = build_net("token-mlp", **net.config)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .embeddings import LabelEmbedding, TimeEmbedding, as_time_batch
from .hub import HubMixin
from .mlp import _ResidualBlock
from .tokens import check_token_ids

__all__ = ["TokenMLP"]


class TokenMLP(nn.Module, HubMixin):
    """Token MLP ``forward(x [B, seq_len] int64, t [B], y [B] | None) -> logits [B, seq_len, vocab_size]``.

    Args:
        vocab_size: data tokens 0..vocab_size-1 (the logits' last dimension).
        seq_len: tokens per sample.
        num_classes: labels 0..num_classes-1 plus the null class num_classes; None = unconditional.
        mask_token: True = the input also takes id ``vocab_size``, the mask (absorbing source) token.
        embed_dim: width of each position's token embedding.
        hidden: width of the MLP. depth: number of residual blocks (0 allowed).
        time_dim: sinusoidal features of 1000 t fed to the time MLP (even).
    """

    offsets: Tensor  # buffer [seq_len]: first row of each position's table (not saved)

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        num_classes: int | None = None,
        mask_token: bool = True,
        embed_dim: int = 64,
        hidden: int = 256,
        depth: int = 4,
        time_dim: int = 128,
    ) -> None:
        super().__init__()
        for key, val, low in (
            ("vocab_size", vocab_size, 1),
            ("seq_len", seq_len, 1),
            ("embed_dim", embed_dim, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 0),
            ("time_dim", time_dim, 2),
        ):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"TokenMLP {key} must be an int >= {low}, got {val!r}")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even for sinusoidal features, got {time_dim}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
        if not isinstance(mask_token, bool):
            raise ValueError(f"mask_token must be True or False, got {mask_token!r}")
        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, seq_len=seq_len, num_classes=num_classes, mask_token=mask_token,
            embed_dim=embed_dim, hidden=hidden, depth=depth, time_dim=time_dim,
        )  # fmt: skip
        self.vocab_size, self.seq_len, self.num_classes, self.mask_token = vocab_size, seq_len, num_classes, mask_token
        rows = vocab_size + int(mask_token)
        self.token_embed = nn.Embedding(seq_len * rows, embed_dim)  # one table per position, stacked
        self.register_buffer("offsets", torch.arange(seq_len) * rows, persistent=False)
        self.in_proj = nn.Linear(seq_len * embed_dim, hidden)
        self.time_embed = TimeEmbedding(hidden, freq_dim=time_dim, scale=1000.0)
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, nn.SiLU) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, seq_len * vocab_size))
        last: nn.Linear = self.out[-1]  # type: ignore[assignment]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def condition(self, t: Tensor | float, y: Tensor | None, batch: int, like: Tensor) -> Tensor:
        """c [B, hidden] = TimeEmbedding(t) (+ LabelEmbedding(y)); ``like`` is a float activation."""
        c = self.time_embed(as_time_batch(t, batch, like))
        if self.label_embed is not None:
            c = c + self.label_embed(y, batch, like.device)
        elif y is not None:
            raise ValueError("this TokenMLP is unconditional (num_classes=None); pass y=None")
        return c

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """x int64 [B, seq_len]; t float [B] or a scalar in [0, 1] (0 = source, 1 = data); y int64 [B] or None.
        Returns logits [B, seq_len, vocab_size] over the data tokens."""
        x = check_token_ids(x, (self.seq_len,), self.vocab_size, self.mask_token, "TokenMLP")
        b = x.shape[0]
        h = self.in_proj(self.token_embed(x + self.offsets).reshape(b, -1))
        c = self.condition(t, y, b, h)
        h = h + c
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).reshape(b, self.seq_len, self.vocab_size)
