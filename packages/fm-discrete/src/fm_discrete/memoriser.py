"""The exact posterior of a mixture path when the data is a finite set: the discrete memoriser.

The discrete analogue of ``fm_core.EmpiricalMarginalVelocity``. With data d_1..d_N (repeats count
as frequency) and x_t = z at time t, the posterior over the data points is

    P(n | z) proportional to  prod_i [ kappa_t delta(z^i = d_n^i) + (1 - kappa_t) p_0(z^i) ].

Mask source: a point is consistent with z when it agrees on every unmasked position, and all
consistent points have the same weight kappa^(#unmasked) (1 - kappa)^(#masked), so the posterior is
uniform over the consistent points and does not depend on t. Uniform source: with m matching
positions out of L the weight is (kappa + (1 - kappa)/V)^m ((1 - kappa)/V)^(L - m).

The module returns the per-position marginals of that posterior as logits (the form a token model
has); :meth:`DiscreteMemoriser.sample_posterior` draws whole data points from the joint posterior,
which :func:`fm_discrete.ctmc_sample` uses when it is there. The cost is O(B N L) per call (chunked
over the data): meant for small data sets and tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .paths import MixturePath

__all__ = ["DiscreteMemoriser"]

#: log of a probability that is zero (finite, so guidance arithmetic on the logits stays finite).
LOG_ZERO = -1e4


class DiscreteMemoriser(nn.Module):
    """``DiscreteMemoriser(path, data, labels=None)(x, t, y=None) -> logits [B, ..., vocab_size]``.

    Args:
        path: the :class:`fm_discrete.MixturePath` the data was noised with.
        data: int64 [N, ...] data token sequences (a buffer).
        labels: optional int64 [N] class of each point; then ``y`` [B] restricts row b's posterior to
            the points of class y[b] (rows whose y is not a label of any point, such as the null class
            or None, use all points).
        chunk_size: data points per chunk.

    A row z that no data point could have produced (the mask source, with an unmasked token that no
    consistent point has) gets the uniform posterior over all points of its class.
    """

    data: Tensor
    labels: Tensor | None

    def __init__(self, path: MixturePath, data: Tensor, labels: Tensor | None = None, chunk_size: int = 1024) -> None:
        super().__init__()
        path.check_tokens(data, "data")
        if labels is not None and (not torch.is_tensor(labels) or labels.shape != data.shape[:1]):
            raise ValueError(
                f"labels must be an int tensor [N] = [{data.shape[0]}], got {getattr(labels, 'shape', labels)}"
            )
        self.path = path
        self.register_buffer("data", data.long().reshape(data.shape[0], -1))
        self.register_buffer("labels", None if labels is None else labels.long())
        self.shape = tuple(data.shape[1:])
        self.chunk_size = int(chunk_size)

    def log_posterior(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """log P(n | x_t = x) [B, N] (float64) over the data points (module docstring)."""
        self.path.check_tokens(x, "x", allow_mask=True)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")
        b = x.shape[0]
        z = x.reshape(b, -1).to(self.data.device)
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device).expand(b)
        kappa = self.path.scheduler.kappa(t).clamp(1e-12, 1 - 1e-12)
        length = z.shape[1]
        matches = torch.cat([(z[:, None, :] == d[None]).sum(-1) for d in self.data.split(self.chunk_size)], dim=1)
        if self.path.source == "mask":
            known = z.ne(self.path.vocab_size).sum(-1, keepdim=True)
            logw = torch.where(matches == known, 0.0, -math.inf).double()
        else:
            v = self.path.vocab_size
            hit = torch.log(kappa + (1 - kappa) / v)[:, None]
            miss = torch.log((1 - kappa) / v)[:, None]
            logw = matches * hit + (length - matches) * miss
        bias = torch.zeros_like(logw)  # -inf on the points of another class than a row's known label
        if y is not None and self.labels is not None:
            y = y.to(z.device)
            known_label = (y[:, None] == self.labels[None]).any(-1, keepdim=True)
            bias = bias.masked_fill(known_label & (y[:, None] != self.labels[None]), -math.inf)
            logw = logw + bias
        lost = torch.isinf(logw).all(-1, keepdim=True)  # off the path's support: uniform over the points
        logw = torch.where(lost, bias, logw)
        return torch.log_softmax(logw, dim=-1)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        post = self.log_posterior(x, t, y).exp()  # [B, N]
        v = self.path.vocab_size
        probs = torch.zeros(x.shape[0], self.data.shape[1], v, dtype=torch.float64, device=post.device)
        for p, d in zip(post.split(self.chunk_size, dim=1), self.data.split(self.chunk_size)):
            probs += torch.einsum("bn,nlv->blv", p, nn.functional.one_hot(d, v).double())
        logits = probs.clamp_min(0).log().clamp_min(LOG_ZERO)
        return logits.float().reshape(*x.shape, v).to(x.device)

    def sample_posterior(self, x: Tensor, t: Tensor | float, y: Tensor | None, u: Tensor) -> Tensor:
        """Whole data points x1 ~ P(n | x_t = x) [B, ...], one per row, by inverting the posterior's CDF at
        the uniforms ``u`` [B] (drawn by the caller, so the draw follows its generator)."""
        post = self.log_posterior(x, t, y).exp()
        cdf = post.cumsum(-1)
        idx = (cdf < u.to(cdf)[:, None] * cdf[:, -1:]).sum(-1).clamp(max=post.shape[1] - 1)
        return self.data[idx].reshape(x.shape).to(x.device)
