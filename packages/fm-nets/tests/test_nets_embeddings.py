"""fm_nets.embeddings: time batches, sinusoidal features against numpy, variation over t in [0, 1], labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fm_nets.embeddings import LabelEmbedding, TimeEmbedding, as_time_batch, sinusoidal_embedding

T_GRID = torch.linspace(0.0, 1.0, 201)


def test_as_time_batch_broadcasts_scalars_and_checks_shape():
    like = torch.zeros(3, dtype=torch.float64)
    for t in (0.25, torch.tensor(0.25), torch.tensor([0.25])):
        out = as_time_batch(t, 4, like)
        assert out.shape == (4,) and out.dtype == torch.float64 and bool((out == 0.25).all())
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(as_time_batch(t, 3, like), t.double())
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        as_time_batch(torch.zeros(3), 4, like)


def test_sinusoidal_matches_numpy_formula():
    t = np.array([0.0, 0.013, 0.5, 0.999])
    dim, scale, max_period = 16, 1000.0, 10000.0
    freqs = max_period ** (-np.arange(dim // 2) / (dim // 2))
    args = scale * t[:, None] * freqs[None]
    ref = np.concatenate([np.cos(args), np.sin(args)], 1)
    out = sinusoidal_embedding(torch.tensor(t, dtype=torch.float64), dim).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)  # computed in float32 inside
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.zeros(2), 7)


def _channel_ranges(features: torch.Tensor) -> torch.Tensor:
    return features.max(0).values - features.min(0).values


def test_scaled_sinusoidal_features_vary_over_unit_interval_but_unscaled_do_not():
    scaled = sinusoidal_embedding(T_GRID, 128, scale=1000.0)
    raw = sinusoidal_embedding(T_GRID, 128, scale=1.0)
    # fraction of channels whose value moves by more than 0.5 (of a possible 2) as t sweeps [0, 1]
    assert float((_channel_ranges(scaled) > 0.5).float().mean()) > 0.7
    assert float((_channel_ranges(raw) > 0.5).float().mean()) < 0.1
    # the same between the two ends t = 0 and t = 1
    assert float(((scaled[-1] - scaled[0]).abs() > 0.5).float().mean()) > 0.5
    assert float(((raw[-1] - raw[0]).abs() > 0.5).float().mean()) < 0.1
    # why: with raw t the argument t * f stays below ~0.3 rad for frequencies f = 10^(-4k/64) < 0.3,
    # i.e. for all but the first 9 of 64 frequency pairs
    k_active = sum(1 for k in range(64) if 10000 ** (-k / 64) > 0.3)
    assert k_active == 9


def test_time_embedding_output_channels_vary_with_t():
    torch.manual_seed(0)
    emb = TimeEmbedding(256, freq_dim=128)
    with torch.no_grad():
        out = emb(T_GRID)
        typical = float(out.std())
        frac_scaled = float((_channel_ranges(out) > 0.5 * typical).float().mean())
        emb.scale = 1.0  # same weights, raw t fed to the sinusoids
        frac_raw = float((_channel_ranges(emb(T_GRID)) > 0.5 * typical).float().mean())
    assert out.shape == (201, 256)
    assert frac_scaled > 0.8 and frac_raw < 0.2


def test_label_embedding_null_class_and_errors():
    torch.manual_seed(0)
    emb = LabelEmbedding(num_classes=5, dim=8)
    y = torch.tensor([0, 4, 5])
    out = emb(y, 3, torch.device("cpu"))
    assert torch.equal(out, emb.embedding.weight[y])
    assert torch.equal(emb(None, 3, torch.device("cpu")), emb.embedding.weight[[5, 5, 5]])
    assert torch.equal(emb(torch.tensor(2), 3, torch.device("cpu")), emb.embedding.weight[[2, 2, 2]])
    for bad in ([6, 0, 0], [-1, 0, 0]):
        with pytest.raises(ValueError, match=r"\[0, 5\]"):
            emb(torch.tensor(bad), 3, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        emb(torch.tensor([0, 1]), 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="num_classes"):
        LabelEmbedding(0, 8)
