"""Breaking the training loop on purpose: SIGKILL at chosen and random points (during checkpoint
writes too), a full disk, an unwritable run directory, NaN/inf in a batch or a loss, broken
checkpoint files on resume. After each fault the run directory must load, the error must be one
line naming the file (or the step), and ``resume`` must end with the weights an uninterrupted
run of the same seed has (bit for bit, CPU).

The kill test forks the test process (torch already imported: a fresh interpreter needs ~15 s
to import torch on the 2-core CI machine) and drives the child through ``_kill_driver.py``:
the child stops at each interesting point and the test either lets it go on or SIGKILLs it
there. One slow variant runs the driver as a real ``python _kill_driver.py`` subprocess.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fm_train.checkpoint as ck
from fm_train import CheckpointError, LossHistory, Trainer, TrainingDivergedError, check_state_dict, load_checkpoint

torch.set_num_threads(1)

_DRIVER_PATH = Path(__file__).with_name("_kill_driver.py")
_spec = importlib.util.spec_from_file_location("fm_train_kill_driver", _DRIVER_PATH)
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)

CKPT_EVENTS = ("write-model", "half-ema", "rename-old", "rename-new", "after-renames", "loss-csv")
WAIT_EVENTS = ("batch",) + CKPT_EVENTS + ("recover",)
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill test forks (POSIX only)")


def _one_line(msg: str) -> str:
    assert "\n" not in msg.strip(), msg
    return msg


# ----------------------------------------------------------------------------- kill machinery


class Child:
    """A training process driven through the event protocol of _kill_driver.py."""

    def __init__(self, run_dir: Path, steps: int, subprocess_mode: bool = False):
        self.proc = None
        if subprocess_mode:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self.proc = subprocess.Popen([sys.executable, str(_DRIVER_PATH), str(run_dir), str(steps)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)  # fmt: skip
            self.pid, self.events, self.go = self.proc.pid, self.proc.stdout, self.proc.stdin
            return
        ev_r, ev_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: train, never return into pytest
            os.close(ev_r), os.close(go_w)
            driver.child_main(run_dir, ev_w, go_r, steps)
        os.close(ev_w), os.close(go_r)
        self.pid = pid
        self.events = os.fdopen(ev_r, "rb")
        self.go = os.fdopen(go_w, "wb", buffering=0)

    def next_event(self) -> tuple[str, int]:
        line = self.events.readline().decode().strip()
        if not line:
            raise AssertionError(f"the training process ended without 'done' (status {self.wait()})")
        if line.startswith("error"):
            raise AssertionError(f"the training process failed: {line}")
        name, step = line.rsplit(" ", 1)
        return name, int(step)

    def proceed(self) -> None:
        self.go.write(b"g")
        self.go.flush()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        status = self.wait()
        assert status == -signal.SIGKILL, status

    def wait(self) -> int:
        if self.proc is not None:
            code = self.proc.wait(timeout=60)
        else:
            _, st = os.waitpid(self.pid, 0)
            code = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
        for f in (self.events, self.go):
            try:
                f.close()
            except OSError:
                pass
        return code


def run_until(run_dir: Path, steps: int, target: tuple[str, int] | None, saved: list[int], subprocess_mode=False):
    """Start (resume) a training process; SIGKILL it at the ``n``-th ``event`` of ``target``.

    Returns the event it was killed at (or None when it ran to the end). ``saved`` collects
    the steps of completed checkpoints.
    """
    child = Child(run_dir, steps, subprocess_mode)
    seen: dict[str, int] = {}
    try:
        while True:
            name, step = child.next_event()
            if name == "saved":
                saved.append(step)
                continue
            if name == "done":
                assert child.wait() == 0
                return None
            seen[name] = seen.get(name, 0) + 1
            if target is not None and target == (name, seen[name]):
                child.kill()
                return name, step
            child.proceed()
    except BaseException:
        try:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        except (OSError, ChildProcessError):
            pass
        raise


def check_run_dir_after_kill(run_dir: Path, killed_at: tuple[str, int], saved: list[int]) -> None:
    """The run directory must hold a complete, loadable checkpoint: the last saved one, or the one
    being written when the kill came after its final rename. Reading must not modify anything."""
    event, step = killed_at
    if event in ("after-renames", "loss-csv"):  # the new checkpoint was complete and in place
        saved.append(step)
    if not saved:
        with pytest.raises(CheckpointError, match="no checkpoint"):
            load_checkpoint(run_dir)
        return
    expected = saved[-1]
    before = sorted(p.name for p in run_dir.iterdir())
    c = load_checkpoint(run_dir)  # reads checkpoint/ or, killed between the renames, checkpoint.old/
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert c.step == expected, (killed_at, c.step, saved)
    if event == "rename-new":
        assert c.path.name == "checkpoint.old"
    ref = driver.Net().state_dict()
    check_state_dict(ref, c.model, c.path / "model.safetensors")
    check_state_dict(ref, c.ema, c.path / "ema.safetensors")
    assert c.train_state["step"] == expected
    assert all(torch.isfinite(v).all() for v in c.model.values())


def assert_equal_to_reference(run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    c = load_checkpoint(run_dir)
    got = {**{f"model.{k}": v for k, v in c.model.items()}, **{f"ema.{k}": v for k, v in c.ema.items()}}
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), k


def assert_clean(run_dir: Path) -> None:
    """Nothing left behind by the kills: no temporary directories or files, no checkpoint.old."""
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint", "config.json", "loss.csv"]


def kill_campaign(tmp_path: Path, steps: int, targets: list[tuple[str, int]], subprocess_mode=False):
    reference = driver.reference_state(tmp_path / "reference", steps)
    ref_history = LossHistory.read_csv(tmp_path / "reference" / "loss.csv")
    run_dir = tmp_path / "killed"
    saved: list[int] = []
    kinds = []
    for target in targets:
        killed_at = run_until(run_dir, steps, target, saved, subprocess_mode)
        assert killed_at is not None, f"the run finished before {target} (saved {saved})"
        kinds.append(killed_at[0])
        check_run_dir_after_kill(run_dir, killed_at, saved)
    assert run_until(run_dir, steps, None, saved, subprocess_mode) is None
    assert saved[-1] == steps
    assert_equal_to_reference(run_dir, reference)
    assert_clean(run_dir)
    history = LossHistory.read_csv(run_dir / "loss.csv")
    assert history.step == ref_history.step and history.loss == ref_history.loss and history.lr == ref_history.lr
    return kinds


@needs_fork
def test_sigkill_at_chosen_points_then_resume_is_exact(tmp_path):
    """The default (fast) variant: 5 kills, one at each kind of point, then resume to the end."""
    targets = [("batch", 3), ("half-ema", 1), ("rename-new", 2), ("recover", 1), ("after-renames", 1)]
    t0 = time.perf_counter()
    kinds = kill_campaign(tmp_path, steps=10, targets=targets)
    assert kinds == [t[0] for t in targets]
    assert time.perf_counter() - t0 < 60


def random_targets(rng: random.Random, n: int) -> list[tuple[str, int]]:
    """n kill points: every kind at least twice, the rest random; each at its 1st or 2nd occurrence."""
    kinds = [k for k in WAIT_EVENTS if k != "recover"] * 2
    kinds += [rng.choice(WAIT_EVENTS[:-1]) for _ in range(n - len(kinds))]
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        out.append((kind, rng.randint(1, 2)))
        if kind == "rename-new" and i + 1 < len(kinds) and rng.random() < 0.5:
            out.append(("recover", 1))  # also kill the next process while it repairs that
    return out


@needs_fork
@pytest.mark.slow
def test_sigkill_at_random_points_many_times(tmp_path):
    """At least 20 kills (seeded random points, each kind of point at least twice)."""
    rng = random.Random(20241122)
    targets = random_targets(rng, 22)
    assert len(targets) >= 20
    # each kill adds at most two checkpoints of progress: leave room for all of them
    kinds = kill_campaign(tmp_path, steps=2 * driver.CKPT_EVERY * (len(targets) + 2), targets=targets)
    assert len(kinds) >= 20 and set(kinds) >= set(CKPT_EVENTS)


@pytest.mark.slow
def test_sigkill_of_a_fresh_interpreter_subprocess(tmp_path):
    """The driver as a real script in its own interpreter (slow: each start imports torch)."""
    kinds = kill_campaign(tmp_path, steps=8, targets=[("half-ema", 1), ("rename-new", 1)], subprocess_mode=True)
    assert kinds == ["half-ema", "rename-new"]


# ----------------------------------------------------------------------------- full disk, unwritable


def _trainer(run_dir, steps=8, batch_fn=None, loss_fn=None):
    torch.manual_seed(123)
    return Trainer(driver.Net(), loss_fn or driver.loss_fn, batch_fn or driver.batch_fn, driver.config(steps),
                   run_dir, extra_config={"net": "tiny"})  # fmt: skip


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resume_is_exact(tmp_path, monkeypatch):
    reference = driver.reference_state(tmp_path / "reference", 8)
    run_dir = tmp_path / "run"
    real = ck._st_save_file
    calls = {"n": 0}

    def full_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 4:  # the EMA file of the second checkpoint (step 4)
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:  # what ENOSPC leaves: a short file
                f.truncate(10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ck, "_st_save_file", full_disk)
    with pytest.raises(CheckpointError) as err:
        _trainer(run_dir).train()
    msg = _one_line(str(err.value))
    assert (
        str(run_dir / "checkpoint") in msg
        and "No space left on device" in msg
        and "previous checkpoint is intact" in msg
    )
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint", "config.json", "loss.csv"]  # no tmp left
    assert load_checkpoint(run_dir).step == 2
    _trainer(run_dir).train(resume=True)  # space freed: resume finishes exactly
    assert_equal_to_reference(run_dir, reference)


def test_disk_full_while_writing_the_loss_history_is_one_line_naming_the_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real = os.fsync
    state = {"armed": False}

    def fsync(fd):
        if state["armed"] and os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith("loss.csv.tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file being synced")
    t = _trainer(run_dir)
    orig_save = Trainer.save_checkpoint

    def save_then_arm(self):
        out = orig_save(self)
        state["armed"] = True  # the next loss.csv write fails
        return out

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_arm)
    state["armed"] = False
    with pytest.raises(OSError) as err:
        t.train()
    monkeypatch.undo()
    msg = _one_line(str(err.value))
    assert "loss.csv" in msg and "No space left on device" in msg
    assert not list(run_dir.glob("*.tmp-*"))
    assert load_checkpoint(run_dir).step in (2, 4)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_run_directory_keeps_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    _trainer(run_dir, steps=2).train()
    os.chmod(run_dir, 0o555)
    try:
        with pytest.raises(CheckpointError) as err:
            _trainer(run_dir, steps=4).train(resume=True)
        msg = _one_line(str(err.value))
        assert str(run_dir / "checkpoint") in msg and "Permission denied" in msg
    finally:
        os.chmod(run_dir, 0o755)
    assert load_checkpoint(run_dir).step == 2


def test_unwritable_checkpoint_location_keeps_the_checkpoint(tmp_path, monkeypatch):
    """Permission denied while creating the temporary directory (works as root too)."""
    run_dir = tmp_path / "run"
    _trainer(run_dir, steps=2).train()
    real = ck.tempfile.mkdtemp

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(k.get("dir", "")))

    monkeypatch.setattr(ck.tempfile, "mkdtemp", denied)
    with pytest.raises(CheckpointError) as err:
        _trainer(run_dir, steps=4).train(resume=True)
    monkeypatch.setattr(ck.tempfile, "mkdtemp", real)
    msg = _one_line(str(err.value))
    assert str(run_dir / "checkpoint") in msg and "Permission denied" in msg
    assert load_checkpoint(run_dir).step == 2


def test_run_directory_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OSError) as err:
        _trainer(tmp_path / "file" / "run", steps=2).train()
    assert "file" in str(err.value) and err.value.errno in (errno.ENOTDIR, errno.EEXIST)


# ----------------------------------------------------------------------------- numerical faults


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch_stops_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    def poisoned(step, g):
        x = driver.batch_fn(step, g)
        if step == 5:
            x = x.clone()
            x[3, 1] = bad
        return x

    with pytest.raises(TrainingDivergedError) as err:
        _trainer(tmp_path / "run", batch_fn=poisoned).train()
    msg = _one_line(str(err.value))
    assert err.value.step == 5 and err.value.checkpoint_step == 4
    assert "diverged at step 5" in msg and "step 4" in msg
    c = load_checkpoint(tmp_path / "run")
    assert c.step == 4 and all(torch.isfinite(v).all() for v in c.model.values())

    # the kept checkpoint is exactly what a clean run of the same config had at step 4
    class Stop(Exception):
        pass

    def stop_at_5(step, g):
        if step == 5:
            raise Stop
        return driver.batch_fn(step, g)

    with pytest.raises(Stop):
        _trainer(tmp_path / "clean", batch_fn=stop_at_5).train()
    clean = load_checkpoint(tmp_path / "clean")
    assert clean.step == 4
    assert_equal_to_reference(tmp_path / "run", {**{f"model.{k}": v for k, v in clean.model.items()},
                                                 **{f"ema.{k}": v for k, v in clean.ema.items()}})  # fmt: skip


def test_inf_loss_on_a_checkpoint_step_is_caught_before_the_checkpoint(tmp_path):
    """The loss of step 6 is inf and step 6 writes a checkpoint: it must not be written."""
    calls = {"n": 0}

    def inf_at_6(model, x, ctx):
        calls["n"] += 1
        loss = driver.loss_fn(model, x, ctx)
        return loss * float("inf") if calls["n"] == 6 else loss

    t = _trainer(tmp_path / "run", loss_fn=inf_at_6)
    t.config = t.config.replace(log_every=100)  # detection only where the checkpoint flushes
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 6: the loss is inf.*step 4") as err:
        t.train()
    _one_line(str(err.value))
    assert load_checkpoint(tmp_path / "run").step == 4


# ----------------------------------------------------------------------------- corrupt checkpoints on resume


@pytest.fixture
def saved_run(tmp_path):
    run_dir = tmp_path / "run"
    _trainer(run_dir, steps=2).train()
    return run_dir


def _resume_error(run_dir) -> str:
    with pytest.raises(CheckpointError) as err:
        _trainer(run_dir, steps=4).train(resume=True)
    return _one_line(str(err.value))


def test_resume_with_a_missing_tensor(saved_run):
    path = saved_run / "checkpoint" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    del state["body.3.bias"]
    save_file(state, str(path))
    msg = _resume_error(saved_run)
    assert str(path) in msg and "missing tensors: body.3.bias" in msg


def test_resume_with_an_extra_tensor(saved_run):
    path = saved_run / "checkpoint" / "ema.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state["body.9.weight"] = torch.zeros(2)
    save_file(state, str(path))
    msg = _resume_error(saved_run)
    assert str(path) in msg and "unexpected tensors: body.9.weight" in msg


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c.update(step="two"), "'step' must be an integer"),
        (lambda c: c.update(step=-1), "'step' must be an integer"),
        (lambda c: c.update(version=99), "unsupported checkpoint version 99"),
        (lambda c: c["train"].update(lr="fast"), "bad 'train' section"),
        (lambda c: c["train"].update(batch_size=-8), "bad 'train' section"),
        (lambda c: c["train"].update(ema_decay=1.5), "bad 'train' section"),
        (lambda c: c.update(train=[1, 2]), "bad 'train' section"),
        (lambda c: c.update(net="huge"), "config mismatch"),
        (lambda c: c.update(step=3), "differs from config.json's step 3"),
    ],
)
def test_resume_with_a_bad_checkpoint_config(saved_run, edit, needle):
    import json

    path = saved_run / "checkpoint" / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    msg = _resume_error(saved_run)
    assert "config.json" in msg or "train_state.pt" in msg
    assert needle in msg, msg


def test_resume_with_a_train_state_of_the_wrong_structure(saved_run):
    path = saved_run / "checkpoint" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    del state["optimizer"]
    torch.save(state, path)
    msg = _resume_error(saved_run)
    assert str(path) in msg and "does not fit this run" in msg and "optimizer" in msg
