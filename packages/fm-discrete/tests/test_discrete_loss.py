"""The losses: values against hand computations, and their minimiser against the memoriser."""

import itertools
import math

import pytest
import torch

from fm_discrete import DiscreteFlowMatchingLoss, DiscreteMemoriser, MixturePath, ctmc_sample

DATA = torch.tensor([[0, 1], [0, 1], [2, 0], [1, 1], [0, 2]])


def test_cross_entropy_value_by_hand():
    path = MixturePath(3, source="uniform")
    loss = DiscreteFlowMatchingLoss(path)
    logits = torch.tensor([1.0, -0.5, 2.0])
    model = lambda x, t: logits.expand(*x.shape, 3)  # noqa: E731
    x1 = torch.tensor([[0, 2], [1, 1]])
    logp = logits - torch.logsumexp(logits, 0)
    want = -(logp[0] + logp[2] + 2 * logp[1]) / 4
    assert float(loss(model, x1, t=torch.tensor([0.3, 0.9]))) == pytest.approx(float(want), rel=1e-6)


def test_cross_entropy_mask_source_counts_masked_positions_only():
    path = MixturePath(3, source="mask")
    loss = DiscreteFlowMatchingLoss(path)
    model = lambda x, t: torch.zeros(*x.shape, 3)  # noqa: E731
    x1 = torch.zeros(4000, 5, dtype=torch.long)
    # at t the expected share of masked positions is 1 - t: loss = (1 - t) log 3
    got = float(loss(model, x1, t=torch.full((4000,), 0.25), generator=torch.Generator().manual_seed(0)))
    assert got == pytest.approx(0.75 * math.log(3), rel=0.02)
    assert float(loss(model, x1, t=torch.ones(4000))) == 0.0


def _gkl_by_definition(path, p, z, x1, t):
    """sum over x != z of u log(u / u_hat) - u + u_hat, u = c (delta_x1 - delta_z), u_hat = c (p - delta_z)."""
    c = float(path.jump_coefficient(torch.tensor(t, dtype=torch.float64)))
    total = 0.0
    for x in range(path.vocab_size):
        if x == z:
            continue
        u, uh = c * (x == x1), c * float(p[x])
        total += (u * math.log(u / uh) if u > 0 else 0.0) - u + uh
    return total


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_generalized_kl_is_the_divergence(source):
    path = MixturePath(4, source=source, scheduler="polynomial")
    loss = DiscreteFlowMatchingLoss(path, loss="generalized-kl")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3, 4, generator=g)
    x1 = torch.randint(0, 4, (64, 3), generator=g)
    t = torch.rand(64, generator=g) * 0.9
    seen = {}

    def model(x, tt):
        seen["x"] = x
        return logits

    got = float(loss(model, x1, t=t, generator=g))
    p = logits.softmax(-1)
    want = 0.0
    for b, i in itertools.product(range(64), range(3)):
        want += _gkl_by_definition(path, p[b, i], int(seen["x"][b, i]), int(x1[b, i]), float(t[b]))
    assert got == pytest.approx(want / (64 * 3), rel=1e-4)


def _table_model(path, length):
    """A lookup table of logits per state x_t (it ignores t): the most flexible posterior model."""
    k = path.input_vocab_size
    table = torch.nn.Parameter(torch.zeros(k**length, length, path.vocab_size))
    weights = k ** torch.arange(length - 1, -1, -1)

    def model(x, t):
        return table[(x * weights).sum(-1)]

    return table, model, weights


def _train_table(path, kind, t_fixed):
    """A lookup table trained by the loss on DATA (Adam, 400 steps of 2,048; a smaller step at the end takes
    the SGD noise out of it)."""
    torch.manual_seed(0)
    loss = DiscreteFlowMatchingLoss(path, loss=kind)
    table, model, weights = _table_model(path, 2)
    opt = torch.optim.Adam([table], lr=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(400):
        if step == 250:
            opt.param_groups[0]["lr"] = 0.01
        x1 = DATA[torch.randint(0, len(DATA), (2048,), generator=g)]
        t = None if t_fixed is None else torch.full((2048,), t_fixed)
        opt.zero_grad()
        loss(model, x1, t=t, generator=g).backward()
        opt.step()
    return table, model, weights


@pytest.mark.parametrize(("source", "kind", "t_fixed"), [("mask", "cross-entropy", None), ("mask", "generalized-kl", None),
                                                         ("uniform", "cross-entropy", 0.6), ("uniform", "generalized-kl", 0.6)])  # fmt: skip
def test_minimiser_is_the_posterior(source, kind, t_fixed):
    """Train a lookup table by the loss; its posterior matches the memoriser's on every state the path visits
    (the mask source's posterior does not depend on t; the uniform one is trained at one fixed t)."""
    path = MixturePath(3, source=source)
    table, model, weights = _train_table(path, kind, t_fixed)
    mem = DiscreteMemoriser(path, DATA)
    states = torch.tensor(list(itertools.product(range(path.input_vocab_size), repeat=2)))
    t_eval = 0.6 if t_fixed is None else t_fixed
    if source == "mask":
        possible = [
            any(all(z == 3 or z == d for z, d in zip(s, row)) for row in DATA.tolist()) for s in states.tolist()
        ]
        keep = torch.tensor(possible) & (states == 3).any(-1)  # states with a masked position
        pos_mask = states[keep] == 3  # compare the masked positions (the unmasked ones are known)
    else:
        keep = torch.ones(len(states), dtype=torch.bool)
        pos_mask = torch.ones(int(keep.sum()), 2, dtype=torch.bool)
    got = table.detach()[(states[keep] * weights).sum(-1)].softmax(-1)
    want = mem(states[keep], torch.full((int(keep.sum()),), t_eval)).softmax(-1)
    err = (got - want).abs().amax(-1)[pos_mask]
    assert float(err.max()) < 0.03, float(err.max())


def test_label_dropout_and_checks():
    path = MixturePath(3)
    seen = []
    model = lambda x, t, y: (seen.append(y), torch.zeros(*x.shape, 3))[1]  # noqa: E731
    x1 = torch.zeros(8, 2, dtype=torch.long)
    DiscreteFlowMatchingLoss(path, label_dropout=1.0, num_classes=5)(model, x1, torch.arange(8) % 5)
    assert seen[-1].tolist() == [5] * 8
    DiscreteFlowMatchingLoss(path, label_dropout=0.0, num_classes=5)(model, x1, torch.arange(8) % 5)
    assert seen[-1].tolist() == (torch.arange(8) % 5).tolist()
    with pytest.raises(ValueError, match="needs num_classes"):
        DiscreteFlowMatchingLoss(path, label_dropout=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        DiscreteFlowMatchingLoss(path, loss="mse")
    with pytest.raises(ValueError, match=r"logits of shape \(8, 2, 3\)"):
        DiscreteFlowMatchingLoss(path)(lambda x, t: torch.zeros(8, 2, 4), x1)
    with pytest.raises(ValueError, match="token ids"):
        DiscreteFlowMatchingLoss(path)(lambda x, t: torch.zeros(1, 1, 3), torch.tensor([[5]]))


def test_trained_table_samples_the_data(chi2_pvalue):
    """End to end: a table trained with the cross-entropy, sampled per position by the CTMC, gives the
    data's pair frequencies (two positions, 100 steps)."""
    path = MixturePath(3, source="mask")
    table, model, _ = _train_table(path, "cross-entropy", None)
    with torch.no_grad():
        res = ctmc_sample(model, path, 3000, (2,), steps=100, seed=0)
    pairs = res.x[:, 0] * 3 + res.x[:, 1]
    want = torch.bincount(DATA[:, 0] * 3 + DATA[:, 1], minlength=9).double()
    counts = torch.bincount(pairs, minlength=9)
    assert int(counts[want == 0].sum()) <= 0.03 * 3000  # two positions unmasked in one step, drawn apart
    counts[want == 0] = 0
    assert chi2_pvalue(counts, want) > 1e-3
