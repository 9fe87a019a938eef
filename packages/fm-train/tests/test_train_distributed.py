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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(_DRIVER_PATH),
        str(run_dir),
        json.dumps(cfg_kw),
        "1" if resume else "0",
        str(out),
    ]
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
    # the loss saw its StepContext: step 1..6, this rank, 2 processes, shard (rank, 2)
    for r in (0, 1):
        assert ranks[r]["contexts"] == [[step, r, 2, [r, 2]] for step in range(1, 7)]
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
    assert res["contexts"] == [[step, 0, 1, None] for step in (4, 5, 6)]  # one process: no shard
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


def test_rank_0_stop_fn_stops_every_rank_and_only_rank_0_logs(tmp_path):
    run = tmp_path / "stopped"
    ranks = _run_two(tmp_path, run, {"steps": 10, "stop_at": 4})
    assert [r["steps"] for r in ranks] == [4, 4] and [r["stopped_by"] for r in ranks] == ["callback", "callback"]
    assert [r["ckpt_step"] for r in ranks] == [4, 4]  # the final checkpoint, written together
    assert ranks[0]["stop_calls"] == [2, 4] and ranks[1]["stop_calls"] == []  # rank 1's stop_fn is never asked
    assert ranks[0]["logged"] == [2, 4] and ranks[1]["logged"] == []
    assert [line.split(",")[0] for line in (run / "loss.csv").read_text().splitlines()] == ["step", "2", "4"]
    # one process continues it to the budget
    res = driver.train(run, {"steps": 10}, resume=True)
    assert (res["steps"], res["this_call"], res["stopped_by"]) == (10, 6, "steps")
    driver.train(tmp_path / "ref10", {"steps": 10})  # an uninterrupted one-process run of the same config
    _assert_close(_weights(run), _weights(tmp_path / "ref10"))


# ----------------------------------------------------------------------------- wording and stdout policy


def test_launch_problems_name_no_flags_unless_the_command_line_gives_them(monkeypatch):
    from fm_train import distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.launch_problem(6, True) is None
    assert distributed.launch_problem(6, False) == (
        "under torchrun give the run directory: every process must write to, and read from, the same run directory"
    )
    assert distributed.launch_problem(7, True) == (
        "the batch size 7 does not split evenly over 3 processes; the batch is global (each process trains on "
        "batch/3 of it): choose a multiple of 3"
    )
    names = {"run_dir": "--out", "batch_size": "--batch-size"}
    assert distributed.launch_problem(6, False, names).startswith("under torchrun give --out: every process")
    assert distributed.launch_problem(7, True, names).startswith("--batch-size 7 does not split evenly over 3")
    with pytest.raises(ValueError, match="unknown launch name"):
        distributed.launch_problem(6, True, {"out": "--out"})

    class Usage(Exception):
        pass

    def usage_error(msg):
        raise Usage(msg)

    with pytest.raises(Usage, match="^--batch-size 7 does not split"):
        distributed.start_training(7, True, "cpu", "demo", usage_error, names=names)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.launch_problem(7, False) is None


def test_stdout_of_other_ranks_is_left_alone_by_default():
    import inspect

    from fm_train import distributed

    assert inspect.signature(distributed.setup).parameters["quiet_others"].default is False
    assert inspect.signature(distributed.start_training).parameters["quiet_others"].default is False


def test_fm_train_names_no_command_line_flag_of_an_app():
    """Strings in fm_train's source (messages and docstrings) do not mention the apps' flags."""
    import ast
    import re

    import fm_train

    flag = re.compile(r"--(out|batch-size|resume|device|steps|minutes|run|seed|threads|recipe)\b")
    found = []
    for path in sorted(Path(fm_train.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and flag.search(node.value):
                found.append(f"{path.name}:{node.lineno}: {flag.search(node.value).group(0)}")
    assert not found, found
