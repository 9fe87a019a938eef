"""The input contract of the token models (:class:`fm_nets.TokenDiT`, :class:`fm_nets.TokenMLP`).

A token model is ``model(x, t, y=None) -> logits`` for discrete flow matching:

* x int64 [B, *grid]: token ids 0..vocab_size-1 (data tokens) and, with ``mask_token=True``, the
  extra id ``vocab_size``, the mask (absorbing source) token;
* t float [B] in [0, 1] (t = 0 source/noise, t = 1 data; a Python float or 0-d tensor is broadcast);
* y int64 [B] or None, labels 0..num_classes-1, ``num_classes`` the null class (``y=None`` = null);
* logits float [B, *grid, vocab_size] over the data tokens only (never the mask): the model's
  estimate of the posterior p(x1 = token | x_t) at every position.

Ids outside the allowed range are a ValueError naming the bad value and the range, not an
IndexError (CPU) or a device-side assertion with no value (CUDA) from inside ``nn.Embedding``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_token_ids"]


def check_token_ids(x: Tensor, shape: Sequence[int], vocab_size: int, mask_token: bool, owner: str) -> Tensor:
    """``x`` as int64 after checking it is [B, *shape] of ids in [0, vocab_size - 1 + mask_token].

    Raises ValueError naming the bad shape, dtype or id. On the CPU the range check raises at once;
    on other devices it is a device-side assertion (``torch._assert_async``), so a training step does
    not wait for the device, as :class:`fm_nets.LabelEmbedding` checks labels. Skipped while compiling.
    """
    shape = tuple(shape)
    if not isinstance(x, Tensor):
        raise ValueError(f"{owner} expects x as an integer tensor of token ids, got {type(x).__name__}")
    dims = ", ".join(str(s) for s in shape)
    if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{owner} expects token ids x of shape [B, {dims}], got {tuple(x.shape)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{owner} expects integer token ids (int64), got dtype {x.dtype}")
    x = x.long()
    high = vocab_size - 1 + int(mask_token)
    allowed = f"[0, {high}]" + (f" ({vocab_size} = the mask token)" if mask_token else " (no mask token)")
    if x.numel() and not torch.compiler.is_compiling():
        if x.device.type == "cpu":
            low_got, high_got = (int(v) for v in torch.aminmax(x))
            if low_got < 0 or high_got > high:
                bad = low_got if low_got < 0 else high_got
                raise ValueError(f"{owner}: token id {bad} is out of range; ids must lie in {allowed}")
        else:  # no host-device sync in a training step: checked on the device
            torch._assert_async(((x >= 0) & (x <= high)).all(), f"{owner}: token ids must lie in {allowed}")
    return x
