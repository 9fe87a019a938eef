"""fm_cli.reflow: teacher pairs against closed-form flows, bit-identical resume after an interruption,
refusal of a store made otherwise, labels and guidance, and the minibatch order of PairBatches."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fm_cli.reflow import PairBatch, PairBatches, PairSet, chunk_seed, generate_pairs


def _decay(x, t):
    return -x  # x(1) = x(0) e^-1


def test_pairs_are_noise_and_the_ode_endpoint(tmp_path):
    pairs = generate_pairs(_decay, tmp_path / "r", 50, (3,), method="rk4", nfe=40, seed=5, chunk=16)
    assert isinstance(pairs, PairSet) and len(pairs) == 50 and pairs.y is None
    assert pairs.x0.dtype == pairs.x1.dtype == torch.float32 and pairs.x0.shape == (50, 3)
    assert float((pairs.x1 - pairs.x0 * math.exp(-1)).abs().max()) < 1e-5
    # chunk k (rows 16k .. 16k+15) is standard normal noise from the documented seed rule
    for k, rows in enumerate([range(0, 16), range(16, 32), range(32, 48), range(48, 50)]):
        g = torch.Generator().manual_seed(chunk_seed(5, k))
        assert torch.equal(pairs.x0[rows.start : rows.stop], torch.randn(len(rows), 3, generator=g))
    assert abs(float(pairs.x0.mean())) < 0.5 and 0.5 < float(pairs.x0.std()) < 1.5


class _Net(nn.Module):
    """A small nonlinear velocity field, so rounding differences would show in the endpoints."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 2))
        self.calls, self.fail_after = 0, fail_after

    def forward(self, x, t):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return self.net(torch.cat([x, t[:, None]], 1))


def test_an_interrupted_generation_resumes_bit_identical(tmp_path):
    whole = generate_pairs(_Net(), tmp_path / "a", 70, (2,), method="midpoint", nfe=8, seed=3, chunk=20)
    killed = _Net(fail_after=8 * 2 + 3)  # dies inside the third chunk (8 evaluations per chunk)
    with pytest.raises(KeyboardInterrupt):
        generate_pairs(killed, tmp_path / "b", 70, (2,), method="midpoint", nfe=8, seed=3, chunk=20)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "chunk-00000.safetensors",
        "chunk-00001.safetensors",
        "manifest.json",
    ]
    rest = _Net()
    resumed = generate_pairs(rest, tmp_path / "b", 70, (2,), method="midpoint", nfe=8, seed=3, chunk=20)
    assert rest.calls == 2 * 8  # only chunks 2 and 3 were computed
    assert torch.equal(resumed.x0, whole.x0) and torch.equal(resumed.x1, whole.x1)
    again = _Net()
    generate_pairs(again, tmp_path / "b", 70, (2,), method="midpoint", nfe=8, seed=3, chunk=20)
    assert again.calls == 0  # complete: loaded, not recomputed


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"seed": 4}, "seed: 3 vs 4"),
        ({"nfe": 4}, "nfe: 8 vs 4"),
        ({"method": "euler"}, "method: 'midpoint' vs 'euler'"),
        ({"settings": {"teacher_step": 2}}, "teacher: {'teacher_step': 1} vs {'teacher_step': 2}"),
        ({"n": 60}, "other n"),
    ],
)
def test_a_store_made_otherwise_is_refused(tmp_path, change, what):
    kw = {"method": "midpoint", "nfe": 8, "seed": 3, "chunk": 20, "settings": {"teacher_step": 1}}
    generate_pairs(_decay, tmp_path / "r", 40, (2,), **kw)
    kw = {**kw, "n": 40, **change}
    n = kw.pop("n")
    with pytest.raises(ValueError, match="manifest.json: this store was begun with other") as err:
        generate_pairs(_decay, tmp_path / "r", n, (2,), **kw)
    assert what in str(err.value)


def _label_velocity(x, t, y):
    return y[:, None].float().expand_as(x)  # x(1) = x(0) + y


def test_balanced_labels_span_the_whole_set_and_reach_the_teacher(tmp_path):
    pairs = generate_pairs(_label_velocity, tmp_path / "r", 25, (2,), method="euler", nfe=3, num_classes=3, chunk=7)
    assert torch.equal(pairs.y, torch.arange(25) % 3)  # balanced over the set, not restarted per chunk
    assert float((pairs.x1 - (pairs.x0 + pairs.y[:, None].float())).abs().max()) < 1e-5
    chosen = generate_pairs(
        _label_velocity, tmp_path / "c", 10, (2,), method="euler", nfe=1, num_classes=3, classes=[2], chunk=4
    )
    assert torch.equal(chosen.y, torch.full((10,), 2))


def test_given_labels_and_guidance(tmp_path):
    y = torch.tensor([0, 1, 1, 2, 0, 2])
    w = 2.5
    pairs = generate_pairs(
        _label_velocity, tmp_path / "r", 6, (1,), method="euler", nfe=2, labels=y, num_classes=3, guidance=w, chunk=4
    )
    assert torch.equal(pairs.y, y)
    # guided velocity w v(y) + (1 - w) v(null = 3), constant in x and t
    assert float((pairs.x1 - (pairs.x0 + (w * y + (1 - w) * 3).float()[:, None])).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="other settings"):  # other labels: another store
        generate_pairs(_label_velocity, tmp_path / "r", 6, (1,), method="euler", nfe=2, labels=y.flip(0),
                       num_classes=3, guidance=w, chunk=4)  # fmt: skip


def test_random_labels_come_from_each_chunks_generator(tmp_path):
    pairs = generate_pairs(
        _label_velocity, tmp_path / "r", 12, (2,), method="euler", nfe=1, num_classes=4, random_labels=True, chunk=5
    )
    for k, rows in enumerate([range(0, 5), range(5, 10), range(10, 12)]):
        g = torch.Generator().manual_seed(chunk_seed(0, k))
        torch.randn(len(rows), 2, generator=g)  # the noise first, then the labels
        assert torch.equal(pairs.y[rows.start : rows.stop], torch.randint(0, 4, (len(rows),), generator=g))


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        generate_pairs(_decay, tmp_path / "r", 0, (2,))
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), chunk=0)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \[n\] = \[4\]"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), labels=torch.zeros(3, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \[n\] = \[2\], got torch.float32"):
        generate_pairs(_decay, tmp_path / "r", 2, (2,), labels=torch.zeros(2), num_classes=2)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        generate_pairs(_decay, tmp_path / "r", 2, (2,), seed=-1)
    with pytest.raises(ValueError, match="classes needs num_classes"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), classes=[0])
    with pytest.raises(ValueError, match=r"classes must be a non-empty list of class ids in \[0, 2\)"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), num_classes=2, classes=[2])
    with pytest.raises(ValueError, match=r"shape must be a sequence of positive ints, got \(2, 0\)"):
        generate_pairs(_decay, tmp_path / "r", 4, (2, 0))
    with pytest.raises(ValueError, match="unknown ODE method 'bogus'"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), method="bogus")
    with pytest.raises(ValueError, match="nfe must be a positive multiple of 2 for method 'midpoint'"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), method="midpoint", nfe=3)
    with pytest.raises(ValueError, match="random_labels needs num_classes"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), random_labels=True)
    with pytest.raises(ValueError, match="guidance=2 needs num_classes"):
        generate_pairs(_decay, tmp_path / "r", 4, (2,), guidance=2.0)
    with pytest.raises(ValueError, match="give either labels or classes/random_labels"):
        generate_pairs(_decay, tmp_path / "r", 2, (2,), labels=torch.zeros(2, dtype=torch.long), num_classes=2,
                       random_labels=True)  # fmt: skip
    assert not (tmp_path / "r").exists()  # refused before any store was begun
    with pytest.raises(ValueError, match="x0 and x1 must be tensors of the same shape"):
        PairSet(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"y must be None or a label tensor of shape \[N\] = \[3\]"):
        PairSet(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))


def test_a_two_time_teacher_and_image_shapes(tmp_path):
    def average_velocity(x, r, t):
        return torch.ones_like(x) * 0.25  # u(x, r, t) constant: x1 = x0 + 0.25

    pairs = generate_pairs(average_velocity, tmp_path / "r", 6, (1, 4, 4), method="flow-map", nfe=1, chunk=4)
    assert pairs.x0.shape == pairs.x1.shape == (6, 1, 4, 4)
    assert float((pairs.x1 - (pairs.x0 + 0.25)).abs().max()) < 1e-6


def _pairs(n: int) -> PairSet:
    i = torch.arange(n, dtype=torch.float32)
    return PairSet(torch.stack([i, -i], 1), torch.stack([2 * i, i + 0.5], 1), torch.arange(n) % 5)


def test_pair_batches_visit_every_pair_once_per_epoch():
    pairs = _pairs(103)
    batches = PairBatches(pairs, 10, seed=1)
    assert batches.per_epoch == 10  # 103 // 10; 3 pairs of each epoch's order are left out
    it = iter(batches)
    seen = []
    for _ in range(10):
        b = next(it)
        assert isinstance(b, PairBatch) and b.x0.shape == (10, 2) and b.y is not None
        i = b.x0[:, 0]
        # every row keeps its own x1 and y
        assert torch.equal(b.x0[:, 1], -i) and torch.equal(b.x1, torch.stack([2 * i, i + 0.5], 1))
        assert torch.equal(b.y, i.long() % 5)
        seen += i.long().tolist()
    assert len(set(seen)) == 100  # no pair twice within the epoch
    assert seen != list(range(100))  # shuffled
    second = [int(v) for s in range(11, 21) for v in batches.batch(s).x0[:, 0]]
    assert len(set(second)) == 100 and second != seen  # a new order in the next epoch


def test_pair_batches_are_a_function_of_seed_and_step():
    pairs = _pairs(64)
    a, b = PairBatches(pairs, 16, seed=7), PairBatches(pairs, 16, seed=7)
    first = [a.batch(s).x0 for s in range(1, 10)]
    assert torch.equal(b.batch(9).x0, first[8])  # resume at step 9 without replaying 1..8
    assert torch.equal(b(3, torch.Generator()).x1, a.batch(3).x1)  # the Trainer's batch_fn form
    assert not torch.equal(PairBatches(pairs, 16, seed=8).batch(1).x0, first[0])
    unlabelled = PairBatches(PairSet(pairs.x0, pairs.x1), 16)
    assert unlabelled.batch(1).y is None


def test_pair_batches_bad_arguments():
    with pytest.raises(ValueError, match="batch_size 11 is larger than the 10 pairs"):
        PairBatches(_pairs(10), 11)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        PairBatches(_pairs(10), 0)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        PairBatches(_pairs(10), 2).batch(0)
    with pytest.raises(ValueError, match="pairs must be a PairSet"):
        PairBatches((torch.zeros(3), torch.zeros(3)), 2)  # type: ignore[arg-type]
