"""Time conditioning under CPU bf16 autocast: t near 1 must stay distinguishable (bf16 has 8 bits of
mantissa: 1 - 1e-3 rounds to 1), so the time embedding runs in float32 whatever the autocast."""

from __future__ import annotations

import pytest
import torch

from fm_nets import MLPVelocity, UNet
from fm_nets.embeddings import TimeEmbedding, as_time_batch

torch.set_num_threads(1)

T = torch.tensor([1.0 - 1e-3, 1.0])


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_bf16_cannot_tell_the_two_times_apart():
    """The premise: as bf16 numbers, 1 - 1e-3 and 1 are equal."""
    b = T.to(torch.bfloat16)
    assert b[0] == b[1]


def test_time_embedding_under_bf16_autocast_is_float32_and_separates_t_near_1():
    torch.manual_seed(0)
    emb = TimeEmbedding(64)
    with torch.no_grad():
        ref = emb(T)
        with bf16():
            out = emb(T)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=0, atol=1e-6)  # computed in float32: the same numbers
    gap = (out[0] - out[1]).abs().max()
    assert gap > 1e-3 and torch.allclose(out[0] - out[1], ref[0] - ref[1], atol=1e-6)


def test_as_time_batch_keeps_float32_t_for_a_bf16_activation_under_autocast():
    like = torch.zeros(2, dtype=torch.bfloat16)
    with bf16():
        t = as_time_batch(T, 2, like)
    assert t.dtype == torch.float32 and t[0] != t[1]
    assert as_time_batch(T, 2, like).dtype == torch.bfloat16  # no autocast: the activation's dtype, as before


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_network_conditioning_separates_t_near_1_under_bf16(kind):
    """The conditioning vector of the MLP (whose time input follows a bf16 activation under autocast)
    and of the U-Net differs between t = 1 - 1e-3 and t = 1, as much as in float32 (to 5%)."""
    torch.manual_seed(0)
    if kind == "mlp":
        net = MLPVelocity(4, hidden=32, depth=1)

        def cond(dtype):  # the MLP hands embed() its first activation: bf16 under autocast
            return net.embed(T, None, 2, torch.zeros(2, 32, dtype=dtype))
    else:
        net = UNet(channels=(8, 16), attention=False, groups=4)

        def cond(dtype):  # the U-Net hands it the input, float32 under autocast too
            return net.time_embed(as_time_batch(T, 2, torch.zeros(2, 1, 8, 8)))

    with torch.no_grad():
        ref = cond(torch.float32)
        with bf16():
            out = cond(torch.bfloat16)
    d_ref, d_out = (ref[0] - ref[1]).norm(), (out[0] - out[1]).float().norm()
    assert d_ref > 0 and abs(d_out - d_ref) <= 0.05 * d_ref
