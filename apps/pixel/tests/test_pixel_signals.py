"""SIGINT and SIGTERM to a real ``fm-pixel train`` process: one line with the step and the resume
command, exit 130 / 143, a checkpoint of that step; ``--resume`` continues it. The slow test stops
one run at 20 random moments (each followed by ``--resume``) and compares the end with an
uninterrupted run: weights and EMA ``torch.equal``, the same loss.csv rows but the timing columns.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fm_pixel.cli import main
from fm_train import load_checkpoint, read_csv_columns

pytestmark = [pytest.mark.needs_mnist, pytest.mark.skipif(os.name != "posix", reason="POSIX signals")]

TINY = ["--dataset", "mnist", "--net", "mlp", "--hidden", "16", "--depth", "1", "--batch-size", "8",
        "--sample-every", "100000", "--quiet", "--device", "cpu"]  # fmt: skip
CODE = "import sys; from fm_pixel.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CODE, "train", *args], env=env, stderr=subprocess.PIPE, text=True)


def _training_started(run: Path, before: int | None, proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Wait until the Trainer has (re)written RUN/config.json (the loop starts right after); False if the
    process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ino = (run / "config.json").stat().st_ino
            if ino != before:
                return True
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("training did not start")


def _inode(run: Path) -> int | None:
    try:
        return (run / "config.json").stat().st_ino
    except FileNotFoundError:
        return None


def _interrupt(run: Path, args: list[str], sig: int, delay: float) -> tuple[int, str]:
    proc = _start(args)
    if _training_started(run, _inode(run) if "--resume" in args else None, proc):
        time.sleep(delay)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


@pytest.mark.slow  # a fresh interpreter imports torch and loads MNIST: 30-80 s on the loaded 2-core machine
def test_sigterm_writes_a_checkpoint_and_says_how_to_continue(tmp_path):
    run = tmp_path / "run"
    code, err = _interrupt(run, ["--steps", "1000000", "--out", str(run), *TINY], signal.SIGTERM, 0.5)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 143, err
    assert len(lines) == 1, err
    step = load_checkpoint(run).step
    assert step >= 1
    assert lines[0] == (
        f"fm-pixel train: interrupted by SIGTERM at step {step}; checkpoint of step {step} written to "
        f"{run / 'checkpoint'}; continue with: fm-pixel train --out {run} --resume"
    )
    assert main(["train", "--out", str(run), "--resume", "--steps", str(step + 2), "--quiet"]) == 0
    assert load_checkpoint(run).step == step + 2


def test_resume_of_a_run_without_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(run), "--resume", *TINY])
    assert e.value.code == 2
    assert "there is no run to resume" in capsys.readouterr().err
    run.mkdir()  # a run directory that never got a checkpoint
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(run), "--resume", *TINY])
    assert e.value.code == 2
    assert "holds no checkpoint to resume from" in capsys.readouterr().err


@pytest.mark.slow  # 22 processes, each imports torch and loads MNIST (minutes on 2 cores)
def test_20_random_signals_then_resume_equal_an_uninterrupted_run(tmp_path, one_thread):
    steps = 1500
    ref = tmp_path / "ref"
    assert main(["train", "--steps", str(steps), "--out", str(ref), *TINY]) == 0
    run = tmp_path / "run"
    rng = random.Random(20)
    seen = []
    for i in range(20):
        sig = rng.choice((signal.SIGINT, signal.SIGTERM))
        args = ["--out", str(run)] + (["--resume", "--quiet"] if i else ["--steps", str(steps), *TINY])
        code, err = _interrupt(run, args, sig, rng.uniform(0.0, 0.6))
        if code == 0:  # the run had ended before the signal
            break
        assert code == 128 + sig, err
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
        seen.append((sig, load_checkpoint(run).step))
    assert len(seen) >= 10, seen  # most signals hit a running training
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    a, b = load_checkpoint(run), load_checkpoint(ref)
    assert a.step == b.step == steps
    assert all(torch.equal(a.model[k], b.model[k]) for k in b.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in b.ema)
    cols = ("step", "loss", "lr")
    assert read_csv_columns(run / "loss.csv", cols) == read_csv_columns(ref / "loss.csv", cols)
    print("interrupted at (signal, step):", seen)
