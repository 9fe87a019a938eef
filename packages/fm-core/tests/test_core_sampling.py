"""sample(): closed-form flows, independence of the batch size, labels (balanced, random, given),
classifier-free guidance, decode and trajectories, NFE accounting and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from fm_core import SampleResult, balanced_labels, sample, solve_ode


def _noise(n, *shape, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


class Offset(torch.nn.Module):
    """v(x, t, y) = y + 1 per row (a constant field, so Euler is exact): x(1) = x(0) + y + 1.
    The null label K gives K + 1. Records the batch size and labels of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((x.shape[0], y.clone()))
        return (y + 1).to(x.dtype)[:, None].expand_as(x)


# ----------------------------------------------------------------------------- closed forms
def test_rk4_reaches_the_exact_endpoint_of_a_linear_flow():
    # dx/dt = 2 cos(2t) x  =>  x(1) = x(0) exp(sin 2)
    res = sample(lambda x, t: 2.0 * torch.cos(2.0 * t)[:, None] * x, 64, (3,), method="rk4", nfe=80, seed=3)
    assert isinstance(res, SampleResult)
    torch.testing.assert_close(res.x, _noise(64, 3, seed=3) * math.exp(math.sin(2.0)), atol=1e-5, rtol=1e-5)
    assert res.nfe == 80 and res.method == "rk4" and res.guidance == 1.0 and res.labels is None
    assert res.x.dtype == torch.float32 and res.x.device.type == "cpu"
    torch.testing.assert_close(res.times, torch.linspace(0.0, 1.0, 21))


def test_zero_field_returns_the_seeded_noise_and_a_generator_gives_the_same():
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    a = sample(zero, 10, (1, 4, 4), seed=7, steps=2)
    assert torch.equal(a.x, _noise(10, 1, 4, 4, seed=7))
    b = sample(zero, 10, (1, 4, 4), generator=torch.Generator().manual_seed(7), seed=123, steps=2)
    assert torch.equal(a.x, b.x)


def test_samples_do_not_depend_on_batch_size():
    def v(x, t, y=None):  # elementwise, so every row is computed alike in any batch
        return torch.sin(3.0 * x) * t[:, None] - 0.5 * x

    full = sample(v, 23, (2,), method="midpoint", nfe=12, seed=1)
    for bs in (1, 5, 22, 23, 100):
        assert torch.equal(sample(v, 23, (2,), method="midpoint", nfe=12, seed=1, batch_size=bs).x, full.x)
    # and equal to a direct solve of the same noise
    direct = solve_ode(v, _noise(23, 2, seed=1), method="midpoint", steps=6)
    assert torch.equal(full.x, direct.x)


# ----------------------------------------------------------------------------- labels
def test_balanced_labels_cycle_through_the_classes():
    assert balanced_labels(7, [2, 5, 9]).tolist() == [2, 5, 9, 2, 5, 9, 2]
    assert balanced_labels(4, range(3)).dtype == torch.int64
    with pytest.raises(ValueError, match="classes"):
        balanced_labels(3, [])


def test_balanced_labels_reach_the_model_and_move_each_sample_by_its_label():
    model = Offset()
    res = sample(model, 7, (2,), num_classes=4, classes=[1, 3], steps=1, batch_size=3, seed=2)
    assert res.labels.tolist() == [1, 3, 1, 3, 1, 3, 1]
    # euler on a constant field is exact: x = noise + y + 1
    torch.testing.assert_close(res.x, _noise(7, 2, seed=2) + (res.labels + 1).float()[:, None])
    assert [c[0] for c in model.calls] == [3, 3, 1]
    assert torch.cat([c[1] for c in model.calls]).tolist() == res.labels.tolist()
    # all classes by default
    assert sample(Offset(), 5, (2,), num_classes=3, steps=1).labels.tolist() == [0, 1, 2, 0, 1]


def test_random_labels_are_drawn_after_the_noise_from_the_same_generator():
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(50, 2, generator=g)
    expected = torch.randint(0, 6, (50,), generator=g)
    res = sample(Offset(), 50, (2,), num_classes=6, random_labels=True, steps=1, seed=11)
    assert torch.equal(res.labels, expected)
    torch.testing.assert_close(res.x, noise + (expected + 1).float()[:, None])


def test_explicit_labels_are_used_as_given():
    y = torch.tensor([4, 0, 4, 2])
    res = sample(Offset(), 4, (3,), labels=y, steps=1, seed=5)
    assert torch.equal(res.labels, y)
    torch.testing.assert_close(res.x, _noise(4, 3, seed=5) + (y + 1).float()[:, None])


# ----------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("w", [0.0, 2.5])
def test_guidance_is_v_null_plus_w_times_the_difference(w):
    k = 5
    y = torch.tensor([0, 3, 1])
    model = Offset()
    res = sample(model, 3, (2,), labels=y, num_classes=k, guidance=w, method="euler", steps=4, seed=0)
    # v_null = k + 1, v_cond = y + 1: v = (k + 1) + w (y - k), constant in x and t
    v = (k + 1) + w * (y - k).float()
    torch.testing.assert_close(res.x, _noise(3, 2) + v[:, None])
    assert res.nfe == 4 and res.guidance == w  # a guided evaluation counts once
    if w == 2.5:  # one batched call of size 2B per evaluation, null labels last
        assert all(size == 6 for size, _ in model.calls)
        assert model.calls[0][1].tolist() == y.tolist() + [k] * 3


def test_guidance_one_is_the_plain_conditional_model():
    y = torch.tensor([1, 2])
    guided = sample(Offset(), 2, (2,), labels=y, num_classes=3, guidance=1.0, steps=2)
    plain = sample(Offset(), 2, (2,), labels=y, steps=2)
    assert torch.equal(guided.x, plain.x)


def test_guidance_needs_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        sample(Offset(), 2, (2,), labels=torch.tensor([0, 1]), guidance=2.0, steps=1)
    with pytest.raises(ValueError, match="num_classes"):
        sample(lambda x, t: x, 2, (2,), guidance=2.0, steps=1)


# ----------------------------------------------------------------------------- decode, trajectory
def test_decode_and_trajectory_shapes_and_values():
    def v(x, t):
        return -x

    decode = lambda x: (x.flatten(1).sum(1) * 100).round().to(torch.int16)  # noqa: E731  [B, 1, 2, 2] -> [B]
    res = sample(v, 9, (1, 2, 2), method="heun", steps=3, batch_size=4, trajectory=6, decode=decode, seed=4)
    assert res.x.shape == (9,) and res.x.dtype == torch.int16
    assert res.trajectory.shape == (4, 6) and res.times.shape == (4,)
    ref = solve_ode(v, _noise(9, 1, 2, 2, seed=4), method="heun", steps=3, return_trajectory=True)
    assert torch.equal(res.x, decode(ref.x))
    assert torch.equal(res.trajectory, torch.stack([decode(s[:6]) for s in ref.trajectory]))
    # without decode: float32 frames [T, G, ...]; trajectory[0] is the noise, trajectory[-1] the samples
    plain = sample(v, 9, (1, 2, 2), method="heun", steps=3, batch_size=4, trajectory=20, seed=4)
    assert plain.trajectory.shape == (4, 9, 1, 2, 2)
    assert torch.equal(plain.trajectory[0], _noise(9, 1, 2, 2, seed=4))
    assert torch.equal(plain.trajectory[-1], plain.x)
    assert sample(v, 3, (2,), steps=1).trajectory is None


def test_results_are_ordinary_tensors():
    res = sample(lambda x, t: -x, 4, (2,), steps=2, trajectory=2)
    for tensor in (res.x, res.times, res.trajectory):
        assert not tensor.is_inference()
    res.x.add_(1.0)  # in-place use outside inference mode works


# ----------------------------------------------------------------------------- NFE and methods
@pytest.mark.parametrize(
    "kwargs, nfe, points",
    [
        ({"method": "euler", "steps": 7}, 7, 8),
        ({"method": "midpoint", "nfe": 8}, 8, 5),
        ({"method": "rk4", "nfe": 8}, 8, 3),
        ({"method": "heun", "time_grid": [0.0, 0.5, 0.75, 1.0]}, 6, 4),
        ({"method": "euler"}, 100, 101),
    ],
)
def test_nfe_counts(kwargs, nfe, points):
    calls = []
    res = sample(lambda x, t: calls.append(1) or -x, 6, (2,), batch_size=4, **kwargs)
    assert res.nfe == nfe and res.times.shape == (points,)
    assert len(calls) == 2 * nfe  # two chunks, each nfe evaluations


def test_dopri5_is_adaptive():
    res = sample(lambda x, t: -x, 5, (2,), method="dopri5", trajectory=2, seed=0)
    torch.testing.assert_close(res.x, _noise(5, 2) * math.exp(-1.0), atol=1e-4, rtol=1e-4)
    assert res.nfe > 0 and res.times.tolist() == [0.0, 1.0] and res.trajectory.shape == (2, 2, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "dopri5", "nfe": 20}, "adaptive"),
        ({"method": "dopri5", "steps": 20}, "adaptive"),
        ({"nfe": 4, "steps": 4}, "at most one"),
        ({"steps": 4, "time_grid": [0.0, 1.0]}, "at most one"),
        ({"method": "rk4", "nfe": 6}, "multiple of 4"),
        ({"method": "rk45"}, "unknown ODE method"),
        ({"n": 0}, "n must"),
        ({"shape": (2, 0)}, "shape"),
        ({"batch_size": 0}, "batch_size"),
        ({"trajectory": -1}, "trajectory"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, r"\[n\] = \[4\]"),
        ({"labels": torch.zeros(4)}, "integer"),
        ({"labels": torch.tensor([0, 1, 2, 9]), "num_classes": 3}, "null label"),
        ({"random_labels": True}, "num_classes"),
        ({"classes": [0]}, "num_classes"),
        ({"num_classes": 3, "classes": [3]}, "classes"),
        ({"num_classes": 3, "classes": [0], "random_labels": True}, "not both"),
        ({"labels": torch.zeros(4, dtype=torch.long), "random_labels": True}, "not both"),
        ({"generator": 42}, "CPU torch.Generator"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"n": 4, "shape": (2,), "steps": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample(lambda x, t, y=None: -x, args.pop("n"), args.pop("shape"), **args)


def test_progress_bar(capsys):
    pytest.importorskip("tqdm", reason="the progress bar is optional: fm-core does not depend on tqdm")
    sample(lambda x, t: -x, 6, (2,), steps=1, batch_size=2, progress=True)
    assert "sampl" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_samples():
    def v(x, t, y):
        return torch.sin(x) * (y + 1).to(x.dtype)[:, None]

    kw = dict(num_classes=3, method="rk4", nfe=8, seed=0, trajectory=2, decode=lambda x: x.sum(1))
    gpu = sample(v, 6, (2,), device="cuda", **kw)
    cpu = sample(v, 6, (2,), device="cpu", **kw)
    assert gpu.x.device.type == "cpu" and gpu.trajectory.device.type == "cpu"
    torch.testing.assert_close(gpu.x, cpu.x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpu.trajectory, cpu.trajectory, atol=1e-5, rtol=1e-5)


def test_draw_source_is_the_documented_draw_and_the_start_of_sample():
    from fm_core import draw_source

    g = torch.Generator().manual_seed(3)
    noise_ref = torch.randn(6, 2, generator=g)
    labels_ref = torch.randint(0, 4, (6,), generator=g)
    noise, labels = draw_source(6, (2,), seed=3, num_classes=4, random_labels=True)
    assert torch.equal(noise, noise_ref) and torch.equal(labels, labels_ref)
    res = sample(
        lambda x, t, y: torch.zeros_like(x), 6, (2,), seed=3, num_classes=4, random_labels=True, method="euler", steps=1
    )
    assert torch.equal(res.x, noise_ref) and torch.equal(res.labels, labels_ref)
    assert draw_source(3, (2,), seed=0)[1] is None
