"""A real full disk (a small tmpfs, mounted when the tests run as root; skipped otherwise): whatever
library meets it (safetensors' SafetensorError, torch.save's RuntimeError, a plain OSError), the
checkpoint write ends in one line naming RUN/checkpoint, the previous checkpoint loads whole and no
temporary directory is left."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from fm_train import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk but ``leave`` bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


@pytest.mark.parametrize(
    "model_n, state_n",
    [(64 * 1024, 0), (16, 64 * 1024)],  # safetensors meets the full disk / torch.save meets it
    ids=["safetensors", "torch.save"],
)
def test_a_real_full_disk_is_one_line_and_keeps_the_previous_checkpoint(small_disk, model_n, state_n):
    path = small_disk / "run" / "checkpoint"
    small = {"w": torch.ones(4)}
    save_checkpoint(path, model_state=small, ema_state=small, train_state={"step": 1}, config={"step": 1})
    _fill(small_disk, 48 * 1024)
    big = {"w": torch.zeros(model_n)}
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, model_state=big, ema_state=big, train_state={"x": torch.zeros(state_n)},
                        config={"step": 2})  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: cannot write checkpoint (") and "intact" in msg, msg
    c = load_checkpoint(path)
    assert c.step == 1 and torch.equal(c.model["w"], torch.ones(4))
    assert not list(path.parent.glob("checkpoint.*"))
