"""MeanFlowLoss under DistributedDataParallel: two gloo processes (torchrun) against one.

The JVP of the target runs on the plain module and the trained forward through the DDP wrapper, so
the gradients are all-reduced: after one backward, each rank's gradient (DDP's average of the two
shards) equals the one-process gradient of the whole batch. Had the trained forward gone through
``.module`` (as a JVP on ``.module`` does), each rank would keep its own shard's gradient, which the
last check shows to differ.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

DRIVER = str(Path(__file__).with_name("_meanflow_ddp_driver.py"))


def _run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_processes_give_the_one_process_gradient(tmp_path):
    _run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", DRIVER, str(tmp_path), "ddp"], tmp_path
    )
    _run([DRIVER, str(tmp_path), "single"], tmp_path)
    _run([DRIVER, str(tmp_path), "shard0"], tmp_path)
    want = torch.load(tmp_path / "single.pt", weights_only=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (rank, (a - b).abs().max())
    alone = torch.load(tmp_path / "shard0.pt", weights_only=True)
    assert max(float((a - b).abs().max()) for a, b in zip(alone, want, strict=True)) > 1e-4
