"""Training losses of discrete flow matching: the model predicts the posterior p_{1|t}(x1^i | x_t).

A token model is called ``model(x_t, t, y) -> logits`` (``model(x_t, t)`` without labels): x_t int64
[B, ...], t float [B] in [0, 1] (t = 0 source, t = 1 data), logits float [B, ..., vocab_size] over the
data tokens, one categorical per position. Two losses, both minimised by the exact posterior:

* ``"cross-entropy"``: -log p_theta(x1^i | x_t), averaged over positions. With the mask source a
  position that is already unmasked has a known posterior (delta at its token, which the sampler
  carries over), so only masked positions carry loss; the sum is still divided by all positions.
* ``"generalized-kl"``: the generalized KL divergence between the path's conditional velocity
  u(x | x_t, x1) = c_t (delta(x = x1^i) - delta(x = x_t^i)) and the model's velocity
  c_t (p_theta(x | x_t) - delta(x = x_t^i)), summed over x != x_t^i, with c_t = kappa'_t / (1 - kappa_t):

      l = c_t [ (1 - d) (-log p_theta(x1^i | x_t)) + d - p_theta(x_t^i | x_t) ],   d = [x_t^i == x1^i]

  (exact, no constant dropped: l >= 0, and l = 0 when p_theta is the point mass at x1^i). Its
  minimiser over p_theta is the posterior as well (Lagrange: p(a) = P(a) for a != x_t^i, the rest on
  x_t^i). Gat et al. (2024), and Shaul et al., "Flow Matching with General Discrete Paths" (2024).

Label dropout replaces a label by the null class ``num_classes`` with probability ``label_dropout``
(classifier-free guidance; Ho & Salimans 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fm_core import TimeSampler, UniformTime, check_batch_labels, check_label_args

from .paths import MixturePath, uniform_draw

__all__ = ["DiscreteFlowMatchingLoss", "LOSSES", "call_token_model"]

LOSSES = ("cross-entropy", "generalized-kl")


def call_token_model(model, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """``model(x, t, y)``, or ``model(x, t)`` when y is None (a model without labels fits)."""
    return model(x, t) if y is None else model(x, t, y)


class DiscreteFlowMatchingLoss:
    """``loss(model, x1, y=None, *, t=None, generator=None) -> scalar`` for x1 int64 [B, ...] data tokens.

    Args:
        path: the :class:`fm_discrete.MixturePath` (source, kappa scheduler, vocabulary).
        time_sampler: training times (default: fm-core's ``UniformTime``).
        loss: ``"cross-entropy"`` or ``"generalized-kl"`` (module docstring).
        label_dropout, num_classes: classifier-free guidance training (null label ``num_classes``).
        t_max: the generalized KL's weight c_t is infinite at t = 1; t is clamped to ``t_max`` there.

    Example:
        >>> import torch
        >>> from fm_discrete import MixturePath
        >>> loss = DiscreteFlowMatchingLoss(MixturePath(3))
        >>> uniform = lambda x, t: torch.zeros(*x.shape, 3)   # p = 1/3 everywhere
        >>> round(float(loss(uniform, torch.zeros(8, 5, dtype=torch.long), t=torch.zeros(8))), 4)  # all masked
        1.0986
    """

    def __init__(
        self,
        path: MixturePath,
        time_sampler: TimeSampler | None = None,
        loss: str = "cross-entropy",
        label_dropout: float = 0.0,
        num_classes: int | None = None,
        t_max: float = 1.0 - 1e-3,
    ) -> None:
        if not isinstance(path, MixturePath):
            raise ValueError(f"path must be a fm_discrete.MixturePath, got {type(path).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if not 0.0 < float(t_max) <= 1.0:
            raise ValueError(f"t_max must lie in (0, 1], got {t_max!r}")
        check_label_args(label_dropout, num_classes)
        self.path = path
        self.time_sampler = time_sampler if time_sampler is not None else UniformTime()
        self.loss = loss
        self.label_dropout = float(label_dropout)
        self.num_classes = num_classes
        self.t_max = float(t_max)

    def __repr__(self) -> str:
        return (f"DiscreteFlowMatchingLoss(path={self.path!r}, time_sampler={self.time_sampler!r}, "
                f"loss={self.loss!r}, label_dropout={self.label_dropout}, num_classes={self.num_classes})")  # fmt: skip

    def __call__(
        self,
        model,
        x1: Tensor,
        y: Tensor | None = None,
        *,
        t: Tensor | float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        self.path.check_tokens(x1)
        b = x1.shape[0]
        check_batch_labels(y, b, self.num_classes)
        if t is None:
            t = self.time_sampler(b, device=x1.device, generator=generator)
        ps = self.path.sample(x1, t, generator=generator)
        if y is not None and self.label_dropout > 0 and self.num_classes is not None:
            drop = uniform_draw((b,), x1.device, generator) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        logits = call_token_model(model, ps.x_t, ps.t, y)
        want = (*x1.shape, self.path.vocab_size)
        if not torch.is_tensor(logits) or tuple(logits.shape) != want:
            shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
            raise ValueError(f"model output must be logits of shape {want} ([*x1.shape, vocab_size]), got {shape}")
        logp = F.log_softmax(logits.float(), dim=-1)
        logp_x1 = logp.gather(-1, x1.unsqueeze(-1)).squeeze(-1)
        if self.loss == "cross-entropy":
            ce = -logp_x1
            if self.path.source == "mask":
                ce = ce * (~ps.from_data)
            return ce.mean()
        same = ps.x_t == x1
        z = ps.x_t.clamp(max=self.path.vocab_size - 1)  # the mask id has no output: p_theta(mask) = 0
        p_z = logp.gather(-1, z.unsqueeze(-1)).squeeze(-1).exp()
        if self.path.source == "mask":
            p_z = torch.where(ps.x_t == self.path.vocab_size, torch.zeros_like(p_z), p_z)
        tt = ps.t.clamp(max=self.t_max)
        c = self.path.jump_coefficient(tt).reshape((b,) + (1,) * (x1.ndim - 1))
        per = torch.where(same, 1.0 - p_z, -logp_x1 - p_z)
        return (c * per).mean()
