"""UniformQuantizer against its bin arithmetic."""

import pytest
import torch

from fm_discrete import UniformQuantizer


def test_pixels_to_levels_and_back():
    q = UniformQuantizer(16, 0.0, 256.0)
    v = torch.arange(256)
    assert torch.equal(q.encode(v), v // 16)
    assert torch.equal(q.decode(q.encode(v)), (v // 16 * 16 + 8).float())
    q2 = UniformQuantizer(2, 0.0, 256.0)
    assert q2.encode(torch.tensor([0, 127, 128, 255])).tolist() == [0, 0, 1, 1]


def test_lattice_clamps_and_jitter():
    q = UniformQuantizer(64, -4.0, 4.0)
    assert q.encode(torch.tensor([-9.0, -4.0, -3.876, 0.0, 3.99, 9.0])).tolist() == [0, 0, 0, 32, 63, 63]
    k = torch.tensor([0, 63])
    assert q.decode(k).tolist() == pytest.approx([-4 + 0.0625, 4 - 0.0625])
    out = q.decode(k, jitter=torch.tensor([0.0, 0.999]))
    assert out.tolist() == pytest.approx([-4.0, 4 - 0.125 * 0.001], abs=1e-5)
    assert torch.equal(q.encode(q.decode(torch.arange(64), jitter=torch.rand(64))), torch.arange(64))


def test_checks():
    with pytest.raises(ValueError, match="levels"):
        UniformQuantizer(1, 0, 1)
    with pytest.raises(ValueError, match="low < high"):
        UniformQuantizer(4, 1, 1)
    with pytest.raises(ValueError, match="integer bin indices"):
        UniformQuantizer(4, 0, 1).decode(torch.zeros(2))
