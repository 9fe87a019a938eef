"""Two CPU processes with gloo (as torchrun starts them) against one process.

The contract (fm_train.distributed): every rank draws the same global batch and noise from the
Trainer's generator and trains on its slice; DDP averages the gradients. So for the same global
batch and seed, the weights after a few steps must equal the one-process weights up to
floating-point summation order. Stated tolerance: 1e-5 absolute on weights of size ~0.5 after
6 AdamW steps at lr 1e-2 (the two computations differ only in how the batch mean is summed).
Also: resuming with another number of processes, the time-synchronised minutes budget, and
only rank 0 writing files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOL = 1e-5
_DRIVER_PATH = Path(__file__).with_name("_ddp_driver.py")
_spec = importlib.util.spec_from_file_location("fm_train_ddp_driver", _DRIVER_PATH)
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)


def _run_two(tmp_path, run_dir, cfg_kw, resume=False) -> list[dict]:
    """torchrun (python -m torch.distributed.run) with 2 CPU processes on the driver script."""
    out = tmp_path / f"ranks-{run_dir.name}-{int(resume)}"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(_DRIVER_PATH),
           str(run_dir), json.dumps(cfg_kw), "1" if resume else "0", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    ck = run_dir / "checkpoint"
    return {f"{name}/{k}": v for name in ("model", "ema") for k, v in load_file(ck / f"{name}.safetensors").items()}


def _assert_close(a: dict, b: dict, tol=TOL) -> float:
    assert a.keys() == b.keys()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert gap <= tol, f"largest difference {gap:.3g} > {tol}"
    return gap


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, 6 steps."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("one")
    driver.train(root / "six", {"steps": 6})
    return root


def test_two_processes_match_one_process(one_process, tmp_path):
    run = tmp_path / "two"
    ranks = _run_two(tmp_path, run, {"steps": 6})
    assert [r["steps"] for r in ranks] == [6, 6] and [r["world"] for r in ranks] == [2, 2]
    _assert_close(_weights(run), _weights(one_process / "six"))
    # the logged loss is the mean over ranks, i.e. the one-process loss
    a = (run / "loss.csv").read_text().splitlines()
    b = (one_process / "six" / "loss.csv").read_text().splitlines()
    assert len(a) == len(b) == 1 + 3
    for ra, rb in zip(a[1:], b[1:]):
        sa, la = ra.split(",")[:2]
        sb, lb = rb.split(",")[:2]
        assert sa == sb and float(la) == pytest.approx(float(lb), rel=1e-5)
    state = torch.load(run / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 6


def test_resume_with_another_number_of_processes(tmp_path):
    # constant lr after the warm-up, so that a run planned for 3 steps and extended to 6 is the
    # 6-step run (a cosine schedule depends on the planned steps)
    const = {"schedule": "constant"}
    ref = tmp_path / "ref"
    driver.train(ref, {"steps": 6, **const})
    # two processes for 3 steps, then one process to 6
    run = tmp_path / "mixed"
    ranks = _run_two(tmp_path, run, {"steps": 3, **const})
    assert [r["steps"] for r in ranks] == [3, 3]
    res = driver.train(run, {"steps": 6, **const}, resume=True)
    assert res["this_call"] == 3 and res["world"] == 1
    _assert_close(_weights(run), _weights(ref))
    # and the other way: one process for 3 steps, two processes to 6
    run2 = tmp_path / "mixed2"
    driver.train(run2, {"steps": 3, **const})
    ranks = _run_two(tmp_path, run2, {"steps": 6, **const}, resume=True)
    assert [r["this_call"] for r in ranks] == [3, 3]
    _assert_close(_weights(run2), _weights(ref))


def test_minutes_budget_and_time_checkpoints_stop_every_rank_at_the_same_step(tmp_path):
    # rank 0's clock decides: both ranks take the same number of steps and checkpoint together
    # (a rank that checkpointed alone would hang the other in the weight check's all_reduce)
    run = tmp_path / "timed"
    ranks = _run_two(tmp_path, run, {"minutes": 0.05, "ckpt_minutes": 0.01, "schedule": "cosine"})
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["ckpt_step"] == ranks[1]["ckpt_step"] == ranks[0]["steps"]
    # only rank 0 wrote: one checkpoint, one loss.csv, no stray files
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json", "loss.csv"]
