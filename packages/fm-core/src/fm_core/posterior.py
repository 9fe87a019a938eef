"""The posterior mean of the data given a point on an affine path, over a finite reference set.

Time convention: t = 0 is the source N(0, I), t = 1 the data. On an affine path
``x_t = alpha_t x1 + sigma_t x0`` with x0 ~ N(0, I) independent of x1, and x1 uniform over reference
points r_1..r_M, the posterior of x1 given x_t = x is

    w_j(x) = softmax_j(-||x - alpha_t r_j||^2 / (2 sigma_t^2)),   E[x1 | x_t = x] = sum_j w_j r_j,

for any scheduler (it only needs alpha_t and sigma_t). This one kernel serves the closed-form
marginal velocity (:class:`fm_core.EmpiricalMarginalVelocity`, the data set as reference set) and
the batch-marginal training target (:func:`fm_core.batch_marginal_target`, the batch itself).
Lipman et al., "Flow Matching for Generative Modeling" (ICLR 2023), eq. 8; Xu et al., "Stable
Target Field" (ICLR 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["posterior_mean"]


def posterior_mean(
    x: Tensor,
    ref: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    labels: Tensor | None = None,
    ref_labels: Tensor | None = None,
    use_all: Tensor | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    """E[x1 | x_t = x] with x1 uniform over ``ref``; returns a tensor shaped like ``x``.

    Args:
        x: points x_t [B, ...].
        ref: reference points [M, ...] with as many elements per row as x (flattened inside).
        alpha, sigma: alpha_t and sigma_t of each row, [B]; sigma must be > 0 (clamp it first).
        labels: optional int [B]; row i then averages only over the reference points whose
            ``ref_labels`` [M] equal labels[i] (a class-conditional posterior).
        use_all: optional bool [B]; rows flagged here average over all reference points
            whatever their label (e.g. labels dropped to the null class).
        chunk_size: reference points per chunk.

    The weights use a streaming log-sum-exp over chunks of ``chunk_size`` reference points (one
    matrix product per chunk), so any M fits in memory and nothing overflows as sigma -> 0: the
    logits are (alpha x.r_j - alpha^2 |r_j|^2 / 2) / sigma^2, without the |x|^2 term that is
    common to a row (and would cancel catastrophically). The computation runs in x's dtype and
    on x's device; a row whose labels match no reference point comes back NaN.
    """
    if labels is not None and ref_labels is None:
        raise ValueError("posterior_mean: labels need ref_labels (the class of each reference point)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    b = x.shape[0]
    xf = x.reshape(b, -1)
    rf = ref.reshape(ref.shape[0], -1)
    if rf.shape[1] != xf.shape[1]:
        raise ValueError(f"ref rows have {rf.shape[1]} elements, x rows {xf.shape[1]}; they must match")
    coef_xd = (alpha / sigma**2)[:, None]  # [B, 1]
    coef_dd = (0.5 * alpha**2 / sigma**2)[:, None]

    m = torch.full((b, 1), float("-inf"), dtype=x.dtype, device=x.device)  # running max
    z = torch.zeros((b, 1), dtype=x.dtype, device=x.device)  # running sum of weights
    num = torch.zeros_like(xf)  # running weighted sum of reference points
    for start in range(0, rf.shape[0], chunk_size):
        d = rf[start : start + chunk_size].to(device=x.device, dtype=x.dtype)
        # -||x - a r_j||^2 / (2 s^2) up to the per-row constant -||x||^2 / (2 s^2), which the
        # softmax ignores (dropping it also avoids the cancellation of the expanded square)
        logits = (xf @ d.T) * coef_xd - (d * d).sum(1)[None, :] * coef_dd  # [B, n]
        if labels is not None and ref_labels is not None:  # (labels without ref_labels raised above)
            keep = labels[:, None] == ref_labels[start : start + chunk_size].to(x.device)[None, :]
            if use_all is not None:
                keep = keep | use_all[:, None]
            logits = logits.masked_fill(~keep, float("-inf"))
        m_new = torch.maximum(m, logits.max(dim=1, keepdim=True).values)
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        scale_old = torch.exp(m - m_safe)  # exp(-inf) = 0 on the first chunk
        w = torch.exp(logits - m_safe)
        z = z * scale_old + w.sum(dim=1, keepdim=True)
        num = num * scale_old + w @ d
        m = m_new
    return (num / z).reshape(x.shape)
