"""fm-pixel train under torchrun (2 CPU processes, gloo) against one process, then resumed on one.

For the same global batch and seed the two-process weights must equal the one-process weights
up to floating-point summation order (stated tolerance 1e-5 absolute after 4 AdamW steps); a run
trained under torchrun resumes on one process, and its samples equal those of the run trained in
one process throughout (uint8 images: at most one grey level apart where a float lands on a
rounding boundary; the labels exactly).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fm_pixel.cli import main

pytestmark = pytest.mark.needs_mnist  # apps/conftest.py

TOL = 1e-5
TINY = [
    "--dataset",
    "mnist",
    "--conditional",
    "--channels",
    "8,16",
    "--patch-size",
    "2",
    "--batch-size",
    "8",
    "--sample-every",
    "1000",
    "--quiet",
    "--device",
    "cpu",
    "--seed",
    "3",
]


def _torchrun(args, nproc=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "fm_pixel.cli",
        *args,
    ]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _weights(run):
    return {
        f"{n}/{k}": v for n in ("model", "ema") for k, v in load_file(run / "checkpoint" / f"{n}.safetensors").items()
    }


def _gap(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_torchrun_matches_one_process_and_resumes_on_one(tmp_path):
    torch.set_num_threads(1)
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _torchrun(["train", *TINY, "--steps", "4", "--out", str(two)])
    assert "2 processes (DDP), 4 of the batch of 8 each" in proc.stdout
    assert proc.stdout.count("trained 4 steps") == 1  # rank 1 prints nothing
    assert main(["train", *TINY, "--steps", "4", "--out", str(one)]) == 0
    assert _gap(_weights(two), _weights(one)) <= TOL
    # resume the torchrun run on one process, and the one-process run too, to 6 steps
    assert main(["train", "--resume", "--steps", "6", "--out", str(two), "--quiet", "--device", "cpu"]) == 0
    assert main(["train", "--resume", "--steps", "6", "--out", str(one), "--quiet", "--device", "cpu"]) == 0
    assert _gap(_weights(two), _weights(one)) <= TOL
    samples = {}
    for name, run in (("two", two), ("one", one)):
        out = tmp_path / f"{name}.npz"
        assert main(["sample", "--run", str(run), "--n", "16", "--out", str(out), "--device", "cpu"]) == 0
        samples[name] = np.load(out)
    np.testing.assert_array_equal(samples["two"]["labels"], samples["one"]["labels"])
    diff = np.abs(samples["two"]["images"].astype(int) - samples["one"]["images"].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_torchrun_usage_errors(monkeypatch, tmp_path, capsys):
    # what a launch needs is checked before any work: --out given, a batch that splits evenly
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    for argv, needle in (
        (["train", *TINY], "give --out"),
        (["train", *TINY, "--out", str(tmp_path / "r")], "multiple of 3"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
