"""FlowMatchingLoss(shard=(rank, world)): what W processes compute together equals one process.

Under DDP each rank's loss is the mean over its B/W rows and DDP averages the gradients, so the
ranks' average loss and gradient must equal the one-process loss and gradient on the whole batch
(same generator state). Checked here without processes: the W shard losses are computed one after
the other from copies of the same generator state, and compared with the full-batch value.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fm_core import FlowMatchingLoss, batch_marginal_target, shard_slice
from fm_core.paths import CondOTPath
from fm_core.time_samplers import LogitNormalTime


class Net(nn.Module):
    def __init__(self, num_classes=None):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 + 1, 3)
        self.emb = nn.Embedding(num_classes + 1, 3) if num_classes else None

    def forward(self, x, t, y=None):
        out = self.lin(torch.cat([x, t[:, None]], 1))
        return out + self.emb(y) if self.emb is not None and y is not None else out


def _loss_and_grad(loss, net, x1, y, seed, shard=None):
    g = torch.Generator().manual_seed(seed)
    net.zero_grad()
    value = loss(net, x1, y, generator=g, shard=shard)
    value.backward()
    return value.detach(), [p.grad.clone() for p in net.parameters()], g.get_state()


@pytest.mark.parametrize("target", ["conditional", "batch-marginal"])
@pytest.mark.parametrize("world", [2, 4])
def test_rank_average_equals_one_process(target, world):
    torch.manual_seed(1)
    b = 8
    x1 = torch.randn(b, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = FlowMatchingLoss(time_sampler=LogitNormalTime(), label_dropout=0.3, num_classes=3, target=target)
    net = Net(3)
    full, full_grad, full_state = _loss_and_grad(loss, net, x1, y, seed=5)
    parts = [_loss_and_grad(loss, net, x1, y, seed=5, shard=(r, world)) for r in range(world)]
    mean_loss = sum(p[0] for p in parts) / world
    mean_grad = [sum(p[1][i] for p in parts) / world for i in range(len(full_grad))]
    assert float(mean_loss) == pytest.approx(float(full), rel=1e-6)
    for a, c in zip(mean_grad, full_grad):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
    # every rank leaves the generator where the one process leaves it (the next batch is the same)
    assert all(torch.equal(p[2], full_state) for p in parts)


def test_shard_slice_and_uneven_batches():
    assert shard_slice(8, None) == slice(0, 8)
    assert [shard_slice(8, (r, 4)) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        shard_slice(8, (0, 3))
    with pytest.raises(ValueError, match="rank"):
        shard_slice(8, (2, 2))


def test_batch_marginal_rows_against_the_whole_batch():
    # the target of a shard's rows with the whole batch as reference = those rows of the full target
    torch.manual_seed(2)
    path = CondOTPath()
    x0, x1, t = torch.randn(6, 2), torch.randn(6, 2), torch.rand(6)
    full = batch_marginal_target(path, path.sample(x0, x1, t))
    rows = slice(2, 4)
    part = batch_marginal_target(path, path.sample(x0[rows], x1[rows], t[rows]), ref_x1=x1)
    torch.testing.assert_close(part, full[rows])
    # and not the same as using only the shard as reference (the check can fail)
    alone = batch_marginal_target(path, path.sample(x0[rows], x1[rows], t[rows]))
    assert not torch.allclose(alone, full[rows])
