"""Couplings: exact OT is a permutation, matches brute force, lowers the cost; labels stay with
their data points; log-domain Sinkhorn matches a plain-domain numpy Sinkhorn and has the right
marginals; its cost lies between exact OT and the independent coupling."""

import itertools

import numpy as np
import pytest
import torch

from fm_core import (
    CoupledBatch,
    ExactOTCoupling,
    IndependentCoupling,
    SinkhornCoupling,
    get_coupling,
    sinkhorn_plan,
    squared_distances,
    transport_cost,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _cost_matrix_numpy(a, b):
    a = a.reshape(len(a), -1).double().numpy()
    b = b.reshape(len(b), -1).double().numpy()
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def test_squared_distances_and_transport_cost_by_hand():
    g = _gen(0)
    a = torch.randn(5, 2, 3, generator=g)
    b = torch.randn(4, 2, 3, generator=g)
    np.testing.assert_allclose(squared_distances(a, b).numpy(), _cost_matrix_numpy(a, b), rtol=1e-10)
    c = torch.randn(5, 2, 3, generator=g)
    expected = np.mean([((a[i] - c[i]) ** 2).sum().item() for i in range(5)])
    assert transport_cost(a, c).item() == pytest.approx(expected, rel=1e-6)


def test_independent_keeps_pairs():
    g = _gen(1)
    x0, x1, y = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), torch.arange(6)
    out = IndependentCoupling()(x0, x1, y)
    assert isinstance(out, CoupledBatch)
    assert out.x0 is x0 and out.x1 is x1 and out.y is y


@pytest.mark.parametrize("shape", [(32, 2), (16, 1, 4, 4)])
def test_exact_ot_is_a_permutation_and_lowers_cost(shape):
    g = _gen(2)
    x0 = torch.randn(*shape, generator=g)
    x1 = torch.randn(*shape, generator=g) * 0.5 + 2.0
    y = torch.randint(0, 5, (shape[0],), generator=g)
    out = ExactOTCoupling()(x0, x1, y)
    idx = out.x0_index
    assert torch.equal(torch.sort(idx).values, torch.arange(shape[0]))
    assert torch.equal(out.x0, x0[idx])
    # data and labels untouched, so every label still belongs to its own data point
    assert torch.equal(out.x1, x1) and torch.equal(out.y, y)
    assert transport_cost(out.x0, out.x1) < transport_cost(x0, x1)


def test_exact_ot_equals_brute_force():
    for seed in range(5):
        g = _gen(10 + seed)
        x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
        x1 = torch.randn(6, 3, generator=g, dtype=torch.float64)
        cost = _cost_matrix_numpy(x0, x1)  # cost[i, j] = |x0_i - x1_j|^2
        best = min(itertools.permutations(range(6)), key=lambda p: sum(cost[p[j], j] for j in range(6)))
        best_cost = sum(cost[best[j], j] for j in range(6)) / 6
        out = ExactOTCoupling()(x0, x1)
        assert transport_cost(out.x0, out.x1).item() == pytest.approx(best_cost, rel=1e-12)
        assert out.x0_index.tolist() == list(best)  # continuous data: the optimum is unique


def test_labels_follow_points_through_ot():
    """Data clusters with labels = cluster id; after coupling, the pair (x1[i], y[i]) is intact
    and the noise assigned to cluster k lies nearest to cluster k's centre."""
    g = _gen(3)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
    y = torch.randint(0, 2, (64,), generator=g)
    x1 = centres[y] + 0.1 * torch.randn(64, 2, generator=g)
    x0 = torch.randn(64, 2, generator=g)
    out = ExactOTCoupling()(x0, x1, y)
    assert torch.equal(out.y, y) and torch.equal(out.x1, x1)
    assert torch.equal((out.x1[:, 0] > 0).long(), out.y)
    # OT sends left noise to the left cluster where the counts allow: compare mean sides
    assert out.x0[out.y == 1, 0].mean() > out.x0[out.y == 0, 0].mean() + 1.0


def _brute_force_index(x0, x1, rows):
    """For data rows ``rows`` (global indices), the global noise rows of the best permutation of
    x0[rows], by enumerating every permutation."""
    cost = _cost_matrix_numpy(x0[rows], x1[rows])
    k = len(rows)
    best = min(itertools.permutations(range(k)), key=lambda p: sum(cost[p[j], j] for j in range(k)))
    return [rows[p] for p in best], sum(cost[best[j], j] for j in range(k))


def _labelled_batch(seed, sizes=(5, 6, 3)):
    g = _gen(seed)
    y = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    y = y[torch.randperm(len(y), generator=g)]
    x0 = torch.randn(len(y), 2, generator=g, dtype=torch.float64)
    x1 = torch.randn(len(y), 2, generator=g, dtype=torch.float64) + y[:, None].double()
    return x0, x1, y


@pytest.mark.parametrize("seed", range(3))
def test_ot_by_label_equals_brute_force_within_each_class(seed):
    x0, x1, y = _labelled_batch(30 + seed)
    out = ExactOTCoupling(by_label=True)(x0, x1, y)
    expected = list(range(len(y)))
    for k in range(3):
        rows = torch.nonzero(y == k).flatten().tolist()
        best, best_cost = _brute_force_index(x0, x1, rows)
        for r, b in zip(rows, best):
            expected[r] = b
        # the OT cost within the class is the minimum over all its permutations
        got = ((out.x0[rows] - x1[rows]) ** 2).sum().item()
        assert got == pytest.approx(best_cost, rel=1e-12)
    assert out.x0_index.tolist() == expected
    # noise is paired only within a class; data and labels come back untouched
    assert torch.equal(y[out.x0_index], y)
    assert out.y is y and out.x1 is x1 and torch.equal(out.x0, x0[out.x0_index])
    # the plain coupling pairs across classes here, so the option changes the answer
    assert not torch.equal(y[ExactOTCoupling()(x0, x1, y).x0_index], y)


@pytest.mark.parametrize("by_label", [True, False])
def test_ot_in_blocks_equals_brute_force_per_block(by_label):
    x0, x1, y = _labelled_batch(40, sizes=(7, 4, 1))
    out = ExactOTCoupling(by_label=by_label, block=3)(x0, x1, y)
    groups = [torch.nonzero(y == k).flatten() for k in (0, 1, 2)] if by_label else [torch.arange(len(y))]
    expected = list(range(len(y)))
    for group in groups:
        rows = group.tolist()
        for start in range(0, len(rows), 3):  # consecutive blocks of at most 3 rows of the group
            block = rows[start : start + 3]
            for r, b in zip(block, _brute_force_index(x0, x1, block)[0]):
                expected[r] = b
    assert out.x0_index.tolist() == expected
    assert torch.equal(torch.sort(out.x0_index).values, torch.arange(len(y)))
    if by_label:
        assert torch.equal(y[out.x0_index], y)


def test_ot_by_label_without_labels_is_plain_ot():
    g = _gen(50)
    x0, x1 = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)
    plain = ExactOTCoupling()(x0, x1).x0_index
    assert torch.equal(ExactOTCoupling(by_label=True)(x0, x1).x0_index, plain)
    assert torch.equal(ExactOTCoupling(block=12)(x0, x1).x0_index, plain)
    built = get_coupling("ot", by_label=True, block=4)
    assert isinstance(built, ExactOTCoupling) and built.by_label and built.block == 4


def test_ot_on_uneven_dtypes_and_devices():
    x0 = torch.randn(8, 2, dtype=torch.float64)
    x1 = torch.randn(8, 2, dtype=torch.float64)
    out = ExactOTCoupling()(x0, x1)
    assert out.x0.dtype == torch.float64 and out.x0_index.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_couplings_on_cuda():
    x0 = torch.randn(16, 1, 4, 4, device="cuda")
    x1 = torch.randn(16, 1, 4, 4, device="cuda")
    y = torch.arange(16, device="cuda")
    for c in (ExactOTCoupling(), ExactOTCoupling(by_label=True, block=4), SinkhornCoupling()):
        out = c(x0, x1, y, generator=torch.Generator(device="cuda").manual_seed(0))
        assert out.x0.device.type == "cuda" and out.y is y and out.x1 is x1


def _sinkhorn_numpy(cost, reg, n_iters):
    """Plain (not log-domain) Sinkhorn with the same relative regularisation."""
    k = np.exp(-cost / (reg * cost.mean()))
    n0, n1 = cost.shape
    a, b = np.full(n0, 1 / n0), np.full(n1, 1 / n1)
    v = np.ones(n1)
    for _ in range(n_iters):
        u = a / (k @ v)
        v = b / (k.T @ u)
    return u[:, None] * k * v[None, :]


def test_sinkhorn_log_domain_matches_plain_sinkhorn():
    g = _gen(4)
    x0 = torch.randn(12, 2, generator=g, dtype=torch.float64)
    x1 = torch.randn(12, 2, generator=g, dtype=torch.float64) + 1.0
    cost = squared_distances(x0, x1)
    for reg in (0.1, 1.0):
        np.testing.assert_allclose(
            sinkhorn_plan(cost, reg, 200).numpy(), _sinkhorn_numpy(cost.numpy(), reg, 200), rtol=1e-8, atol=1e-14
        )


def test_sinkhorn_plan_marginals_and_limits():
    g = _gen(5)
    b = 32
    x0 = torch.randn(b, 2, generator=g)
    x1 = torch.randn(b, 2, generator=g) + 1.5
    p = SinkhornCoupling(reg=0.05, n_iters=500).plan(x0, x1)
    assert torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(0), torch.full((b,), 1 / b, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(p.sum(1), torch.full((b,), 1 / b, dtype=torch.float64), rtol=1e-3, atol=0)
    # tiny reg: still finite in the log domain and close to the exact OT permutation matrix
    p = SinkhornCoupling(reg=1e-3, n_iters=2000).plan(x0, x1)
    assert torch.isfinite(p).all()
    perm = ExactOTCoupling()(x0, x1).x0_index
    assert (p.argmax(0) == perm).float().mean() > 0.9
    # huge reg: the independent (product) plan
    p = SinkhornCoupling(reg=1e4, n_iters=50).plan(x0, x1)
    torch.testing.assert_close(p, torch.full((b, b), 1 / b**2, dtype=torch.float64), rtol=1e-3, atol=0)


def test_sinkhorn_cost_between_ot_and_independent():
    g = _gen(6)
    b = 64
    x0 = torch.randn(b, 2, generator=g)
    x1 = 0.5 * torch.randn(b, 2, generator=g) + torch.tensor([1.0, -0.5])
    cost = squared_distances(x0, x1)
    plan_cost = (SinkhornCoupling(reg=0.05, n_iters=300).plan(x0, x1) * cost).sum().item()
    ot_cost = transport_cost(ExactOTCoupling()(x0, x1).x0, x1).item()
    independent_cost = cost.mean().item()  # expected cost of a random pairing
    assert ot_cost * (1 - 1e-3) <= plan_cost < independent_cost
    # drawn pairs: every data point and label kept once, noise points from the batch
    y = torch.arange(b)
    out = SinkhornCoupling(reg=0.05)(x0, x1, y, generator=_gen(7))
    assert out.x1 is x1 and out.y is y
    assert torch.equal(out.x0, x0[out.x0_index]) and int(out.x0_index.max()) < b
    assert transport_cost(out.x0, out.x1).item() < independent_cost


def test_sinkhorn_draws_follow_the_plan():
    """Draws for column j follow P[:, j] / sum(P[:, j]) (chi-square on many draws)."""
    from scipy import stats

    g = _gen(8)
    x0 = torch.randn(5, 2, generator=g)
    x1 = torch.randn(5, 2, generator=g)
    coupling = SinkhornCoupling(reg=0.5, n_iters=200)
    plan = coupling.plan(x0, x1)
    p = plan.numpy()
    coupling.plan = lambda a, b: plan  # only the drawing is under test here; skip recomputing
    gen = _gen(9)
    counts = np.zeros((5, 5))
    for _ in range(2000):
        idx = coupling(x0, x1, generator=gen).x0_index.numpy()
        counts[idx, np.arange(5)] += 1
    for j in range(5):
        expected = p[:, j] / p[:, j].sum() * 2000
        assert stats.chisquare(counts[:, j], expected).pvalue > 1e-4


def test_get_coupling():
    assert isinstance(get_coupling("independent"), IndependentCoupling)
    assert isinstance(get_coupling("ot"), ExactOTCoupling)
    s = get_coupling("sinkhorn", reg=0.1, n_iters=10)
    assert isinstance(s, SinkhornCoupling) and (s.reg, s.n_iters) == (0.1, 10)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_coupling("emd"), "emd"),
        (lambda: ExactOTCoupling(block=1), "block"),
        (lambda: ExactOTCoupling(block=True), "block"),
        (lambda: ExactOTCoupling(by_label="yes"), "by_label"),
        (lambda: get_coupling("ot", blocks=4), "bad arguments"),
        (lambda: SinkhornCoupling(reg=0.0), "reg"),
        (lambda: SinkhornCoupling(n_iters=0), "n_iters"),
        (lambda: ExactOTCoupling()(torch.zeros(4, 2), torch.zeros(4, 3)), "same shape"),
        (lambda: ExactOTCoupling()(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3)), r"\[B\] = \[4\]"),
        (lambda: IndependentCoupling()(torch.zeros(0, 2), torch.zeros(0, 2)), "non-empty"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
