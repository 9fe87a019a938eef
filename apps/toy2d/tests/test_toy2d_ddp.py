"""fm-toy2d train under torchrun (2 CPU processes, gloo) against one process.

The default recipe's batch-marginal target keeps the whole global batch as its reference set,
so two processes must reproduce the one-process weights up to floating-point summation order
(stated tolerance 1e-5 after 10 AdamW steps); fm-toy2d --model nf refuses torchrun.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from fm_toy2d.cli import main

ARGS = ["train", "--steps", "10", "--batch-size", "64", "--no-pictures", "--quiet", "--device", "cpu", "--seed", "3"]


def test_torchrun_matches_one_process(tmp_path, one_thread):
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fm_toy2d.cli",
        *ARGS,
        "--out",
        str(two),
    ]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (DDP), 32 of the batch of 64 each" in proc.stdout
    assert main([*ARGS, "--out", str(one)]) == 0
    for name in ("model", "ema"):
        a = load_file(two / "checkpoint" / f"{name}.safetensors")
        b = load_file(one / "checkpoint" / f"{name}.safetensors")
        assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


def test_nf_refuses_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "nf", "--steps", "2", "--out", str(tmp_path / "nf")])
    assert e.value.code == 2 and "--model nf trains in one process" in capsys.readouterr().err
