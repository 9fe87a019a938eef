"""ctmc_sample with the exact posterior (the memoriser) against the data it memorised."""

import pytest
import torch

from fm_discrete import DiscreteMemoriser, MixturePath, ctmc_sample

DATA = torch.tensor([[0, 1, 2, 3], [0, 1, 1, 3], [2, 2, 0, 1], [0, 1, 2, 3], [3, 0, 1, 1], [1, 1, 1, 1]])
LABELS = torch.tensor([0, 1, 1, 0, 1, 0])


def _frequencies(x, data):
    """Counts of each distinct data row among the samples, the data's own frequencies, and how many
    samples are no data row."""
    uniq = data.unique(dim=0)
    hits = torch.stack([(x == u).all(-1) for u in uniq])  # [U, n]
    want = torch.stack([(data == u).all(-1).sum() for u in uniq]).double()
    return hits.sum(1), want / want.sum(), int((~hits.any(0)).sum())


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize(("method", "steps", "corrector"), [("exact", 1, 0.0), ("exact", 10, 0.0),
                                                            ("euler", 16, 0.0), ("exact", 16, 2.0), ("euler", 7, 1.0)])  # fmt: skip
def test_memoriser_reproduces_the_data(source, method, steps, corrector, chi2_pvalue):
    """Joint posterior draws: every sample is a data point, and the points come with the data's frequencies."""
    path = MixturePath(4, source=source, scheduler="polynomial" if steps == 7 else "cosine")
    res = ctmc_sample(DiscreteMemoriser(path, DATA), path, 3000, (4,), steps=steps, method=method,
                      corrector=corrector, seed=1)  # fmt: skip
    counts, want, off = _frequencies(res.x, DATA)
    assert off == 0
    assert chi2_pvalue(counts, want) > 1e-3
    assert res.nfe == steps and res.method == f"ctmc-{method}" and res.x.dtype == torch.long


def test_per_position_sampling_with_the_mask_source(chi2_pvalue):
    """The memoriser's marginal logits alone (no joint draws): with 200 steps two positions seldom unmask
    in the same step, so almost every sample is a data point (each position's token is drawn from the
    posterior given the ones already unmasked) and the frequencies still match."""
    path = MixturePath(4, source="mask")
    mem = DiscreteMemoriser(path, DATA)
    res = ctmc_sample(lambda x, t: mem(x, t), path, 2000, (4,), steps=200, seed=2)
    counts, want, off = _frequencies(res.x, DATA)
    assert off <= 0.03 * 2000
    assert chi2_pvalue(counts, want) > 1e-3


def test_labels_restrict_to_the_class():
    path = MixturePath(4, source="uniform")
    mem = DiscreteMemoriser(path, DATA, labels=LABELS)
    res = ctmc_sample(mem, path, 600, (4,), steps=6, num_classes=2, seed=0)
    assert res.labels.tolist() == [0, 1] * 300
    for y in (0, 1):
        rows = {tuple(r) for r in DATA[LABELS == y].tolist()}
        assert {tuple(r) for r in res.x[res.labels == y].tolist()} <= rows


def test_guidance_on_the_logits(chi2_pvalue):
    """One token, mask source, one step: the sample is drawn from the guided posterior at t = 0,
    p proportional to p_null^(1 - w) p_cond^w, computed here from the class frequencies."""
    data = torch.tensor([[0], [0], [1], [2], [2], [2], [1], [0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    path = MixturePath(3, source="mask")
    mem = DiscreteMemoriser(path, data, labels=labels)
    w = 2.5
    res = ctmc_sample(mem, path, 20000, (1,), steps=1, num_classes=2, labels=torch.zeros(20000, dtype=torch.long),
                      guidance=w, seed=3)  # fmt: skip
    p_null = torch.tensor([3, 2, 3], dtype=torch.float64) / 8
    p_cond = torch.tensor([2, 1, 1], dtype=torch.float64) / 4
    want = p_null ** (1 - w) * p_cond**w
    assert chi2_pvalue(torch.bincount(res.x[:, 0], minlength=3), want / want.sum()) > 1e-3


def test_reproducible_trajectory_and_decode():
    path = MixturePath(4)
    mem = DiscreteMemoriser(path, DATA)
    a = ctmc_sample(mem, path, 50, (4,), steps=5, seed=7, trajectory=3)
    b = ctmc_sample(mem, path, 50, (4,), steps=5, seed=7)
    assert torch.equal(a.x, b.x)
    assert a.trajectory.shape == (6, 3, 4) and bool((a.trajectory[0] == 4).all())
    assert torch.equal(a.trajectory[-1], a.x[:3])
    masked = (a.trajectory == 4).sum((1, 2))
    assert bool((masked.diff() <= 0).all())  # without a corrector masks only ever go away
    d = ctmc_sample(mem, path, 200, (4,), steps=10, seed=7, trajectory=200, corrector=3.0)
    remasked = ((d.trajectory[1:] == 4) & (d.trajectory[:-1] != 4)).sum()
    assert int(remasked) > 0 and not bool((d.x == 4).any())  # the corrector sends tokens back, the end is data
    c = ctmc_sample(mem, path, 50, (4,), steps=5, seed=7, decode=lambda x: x * 10)
    assert torch.equal(c.x, a.x * 10)
    grid = ctmc_sample(mem, path, 5, (4,), time_grid=[0.0, 0.5, 0.9, 1.0])
    assert grid.nfe == 3 and grid.times.tolist() == pytest.approx([0.0, 0.5, 0.9, 1.0])


def test_checks():
    path = MixturePath(4)
    mem = DiscreteMemoriser(path, DATA)
    with pytest.raises(ValueError, match="either steps or time_grid"):
        ctmc_sample(mem, path, 4, (4,), steps=3, time_grid=[0, 1])
    with pytest.raises(ValueError, match="unknown CTMC method"):
        ctmc_sample(mem, path, 4, (4,), method="tau-leaping")
    with pytest.raises(ValueError, match="needs num_classes"):
        ctmc_sample(mem, path, 4, (4,), guidance=2.0)
    with pytest.raises(ValueError, match="time_grid must increase"):
        ctmc_sample(mem, path, 4, (4,), time_grid=[0.0, 0.7, 0.5, 1.0])
    with pytest.raises(ValueError, match="logits of shape"):
        ctmc_sample(lambda x, t: torch.zeros(*x.shape, 3), path, 4, (4,), steps=2)
