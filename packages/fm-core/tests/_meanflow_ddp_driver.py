"""Driver of test_meanflow_ddp.py: one backward of MeanFlowLoss, gradients saved to OUT_DIR.

python _meanflow_ddp_driver.py OUT_DIR single          # one process, the whole batch
python _meanflow_ddp_driver.py OUT_DIR shard0          # one process, rank 0's half alone
python -m torch.distributed.run --standalone --nproc-per-node 2 _meanflow_ddp_driver.py OUT_DIR ddp
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from fm_core import MeanFlowLoss

B = 16


class TwoTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, r, t, y=None):
        return self.net(torch.cat([x, r[:, None], t[:, None]], dim=1))


def main(out_dir: str, mode: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TwoTime()
    trained: nn.Module = model
    shard = None
    name = mode
    if mode == "ddp":
        dist.init_process_group("gloo")
        shard = (dist.get_rank(), dist.get_world_size())
        trained = nn.parallel.DistributedDataParallel(model)
        name = f"rank{shard[0]}"
    elif mode == "shard0":
        shard = (0, 2)
    x1 = torch.randn(B, 2, generator=torch.Generator().manual_seed(1)) + 2
    loss = MeanFlowLoss(equal_fraction=0.25)(trained, x1, generator=torch.Generator().manual_seed(2), shard=shard)
    loss.backward()
    torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"{name}.pt"))
    if mode == "ddp":
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
