"""DiscreteMemoriser against brute-force enumeration of the posterior."""

import itertools

import pytest
import torch

from fm_discrete import DiscreteMemoriser, MixturePath

DATA = torch.tensor([[0, 1, 2], [0, 1, 1], [2, 2, 0], [0, 1, 2], [1, 0, 1]])  # a repeat: weight 2
LABELS = torch.tensor([0, 1, 1, 0, 1])


def _brute_posterior(path: MixturePath, z, t: float, y=None):
    """P(n | z) from the product formula, point by point in plain Python."""
    k = float(path.scheduler.kappa(torch.tensor(t, dtype=torch.float64)))
    v = path.vocab_size
    w = []
    for n, d in enumerate(DATA.tolist()):
        p = 1.0
        for zi, di in zip(z, d):
            p0 = (1.0 if zi == v else 0.0) if path.source == "mask" else 1.0 / v
            p *= k * (zi == di) + (1 - k) * p0
        if y is not None and int(LABELS[n]) != y:
            p = 0.0
        w.append(p)
    s = sum(w)
    return [x / s for x in w] if s > 0 else None


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("t", [0.2, 0.7])
def test_marginals_match_enumeration(source, t):
    path = MixturePath(3, source=source, scheduler="cosine")
    mem = DiscreteMemoriser(path, DATA, labels=LABELS)
    states = list(itertools.product(range(path.input_vocab_size), repeat=3))
    for y in (None, 0, 1):
        rows, want = [], []
        for z in states:
            post = _brute_posterior(path, z, t, y)
            if post is None:
                continue
            marg = torch.zeros(3, 3, dtype=torch.float64)
            for p, d in zip(post, DATA.tolist()):
                for i, di in enumerate(d):
                    marg[i, di] += p
            rows.append(z)
            want.append(marg)
        x = torch.tensor(rows)
        yy = None if y is None else torch.full((len(rows),), y)
        got = mem(x, torch.full((len(rows),), t), yy).double().softmax(-1)
        assert torch.allclose(got, torch.stack(want), atol=1e-5), (source, t, y)
        if y is None:  # the null label (2 here is no label of any point) is the unconditional posterior
            null = mem(x, torch.full((len(rows),), t), torch.full((len(rows),), 2)).double().softmax(-1)
            assert torch.allclose(null, got, atol=1e-6)


def test_mask_posterior_ignores_t_and_off_support_is_uniform():
    path = MixturePath(3, source="mask")
    mem = DiscreteMemoriser(path, DATA)
    z = torch.tensor([[0, 3, 3], [0, 3, 3], [1, 1, 1]])  # [1, 1, 1]: no point has it
    lp = mem.log_posterior(z, torch.tensor([0.1, 0.9, 0.5]))
    assert torch.allclose(lp[0].exp(), torch.tensor([1 / 3, 1 / 3, 0, 1 / 3, 0], dtype=torch.float64))
    assert torch.allclose(lp[0], lp[1])
    assert torch.allclose(lp[2].exp(), torch.full((5,), 0.2, dtype=torch.float64))


def test_joint_draws_follow_the_posterior(chi2_pvalue):
    path = MixturePath(3, source="uniform")
    mem = DiscreteMemoriser(path, DATA)
    z = torch.tensor([[0, 1, 0]]).expand(30000, 3)
    g = torch.Generator().manual_seed(0)
    x1 = mem.sample_posterior(z, 0.6, None, torch.rand(30000, generator=g))
    post = torch.tensor(_brute_posterior(path, (0, 1, 0), 0.6))
    uniq = DATA.unique(dim=0)
    counts = torch.stack([(x1 == u).all(-1).sum() for u in uniq])
    want = torch.stack([post[(DATA == u).all(-1)].sum() for u in uniq])
    assert chi2_pvalue(counts, want) > 1e-3


def test_checks():
    path = MixturePath(3)
    with pytest.raises(ValueError, match="data token ids"):
        DiscreteMemoriser(path, torch.tensor([[3, 0]]))
    mem = DiscreteMemoriser(path, DATA)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 3\]"):
        mem(torch.zeros(2, 4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="labels must be"):
        DiscreteMemoriser(path, DATA, labels=torch.zeros(3))
