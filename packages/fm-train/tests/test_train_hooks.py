"""The Trainer's hooks: the StepContext of the loss, stop_fn (a clean, resumable end), loggers
(CSV as before, any object with log/close, TensorBoard through a stand-in SummaryWriter).

Resumed runs are compared with uninterrupted ones bit for bit (torch.equal), loss.csv is read with
the csv module, the learning rates against the schedule's closed form."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from fm_train import (
    CSVLogger,
    Logger,
    LossHistory,
    MissingDependencyError,
    StepContext,
    StepInfo,
    TensorBoardLogger,
    Trainer,
    load_checkpoint,
)

torch.set_num_threads(1)

_DRIVER_PATH = Path(__file__).with_name("_kill_driver.py")
_spec = importlib.util.spec_from_file_location("fm_train_kill_driver_hooks", _DRIVER_PATH)
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)


def cfg(steps=20, **kw):
    # the driver's config (lr 1e-2, warmup 3, cosine over `steps`) with a log row every 4 steps
    return driver.config(steps).replace(**{"log_every": 4, "ckpt_every": None, **kw})


def trainer(run_dir, config, **kw) -> Trainer:
    torch.manual_seed(123)
    return Trainer(driver.Net(), kw.pop("loss_fn", driver.loss_fn), driver.batch_fn, config, run_dir,
                   extra_config={"net": "tiny"}, **kw)  # fmt: skip


def weights(run_dir) -> dict[str, torch.Tensor]:
    c = load_checkpoint(run_dir)
    return {**{f"model.{k}": v for k, v in c.model.items()}, **{f"ema.{k}": v for k, v in c.ema.items()}}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def csv_rows(path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class RecordingLogger:
    """A logger that records every call."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []
        self.calls: list[str] = []
        self.restored: list[tuple[int, list[int]]] = []

    def log(self, step, metrics):
        self.calls.append("log")
        self.rows.append((step, dict(metrics)))

    def flush(self):
        self.calls.append("flush")

    def restore(self, step, history):
        self.calls.append("restore")
        self.restored.append((step, list(history.step)))

    def close(self):
        self.calls.append("close")


# ----------------------------------------------------------------------------- the step context


def test_loss_gets_a_step_context(tmp_path):
    seen = []

    def loss_fn(model, x, ctx):
        seen.append(ctx)
        return driver.loss_fn(model, x, ctx)

    t = trainer(tmp_path, cfg(steps=5), loss_fn=loss_fn)
    t.train()
    assert [c.step for c in seen] == [1, 2, 3, 4, 5]
    assert all(isinstance(c, StepContext) and c.generator is t.generator for c in seen)
    assert all(c.shard is None and c.rank == 0 and c.world_size == 1 for c in seen)
    with pytest.raises(AttributeError):  # frozen: a loss cannot change what the next step sees
        seen[0].step = 9


# ----------------------------------------------------------------------------- stop_fn


def test_stop_at_a_log_row_then_resume_equals_an_uninterrupted_run(tmp_path):
    infos: list[StepInfo] = []

    def stop_fn(info):
        infos.append(info)
        return info.step >= 8

    straight = trainer(tmp_path / "straight", cfg()).train()
    r = trainer(tmp_path / "stopped", cfg(), stop_fn=stop_fn).train()
    assert (r.steps, r.steps_this_call, r.stopped_by) == (8, 8, "callback")
    assert load_checkpoint(tmp_path / "stopped").step == 8  # the final checkpoint of a clean end
    # StepInfo: the log rows' steps and mean losses (as in loss.csv), the lr of the schedule
    rows = csv_rows(tmp_path / "stopped" / "loss.csv")
    assert [i.step for i in infos] == [int(row["step"]) for row in rows] == [4, 8]
    assert [i.loss for i in infos] == [row["loss"] for row in rows]
    c = cfg()
    want_lr = [c.lr * min(1, s / c.warmup_steps) * 0.5 * (1 + math.cos(math.pi * (s - 3) / 17)) for s in (4, 8)]
    assert [i.lr for i in infos] == pytest.approx(want_lr, rel=1e-12)
    assert 0 < infos[0].elapsed < infos[1].elapsed
    # resume without the callback: continues to the budget and ends where the uninterrupted run ended
    r2 = trainer(tmp_path / "stopped", cfg()).train(resume=True)
    assert (r2.steps, r2.steps_this_call, r2.stopped_by) == (20, 12, "steps")
    assert straight.stopped_by == "steps"
    assert_same(weights(tmp_path / "stopped"), weights(tmp_path / "straight"))
    # stopped at a log row: the loss history is the uninterrupted one too
    a = LossHistory.read_csv(tmp_path / "stopped" / "loss.csv")
    b = LossHistory.read_csv(tmp_path / "straight" / "loss.csv")
    assert a.step == b.step == [4, 8, 12, 16, 20] and a.loss == b.loss and a.lr == b.lr


def test_stop_right_after_sample_fn(tmp_path):
    calls: list[tuple[str, int]] = []

    def sample_fn(ema_model, step, run_dir):
        calls.append(("sample", step))

    def stop_fn(info):
        calls.append(("stop?", info.step))
        return info.step >= 6

    r = trainer(tmp_path / "stopped", cfg(sample_every=3), sample_fn=sample_fn, stop_fn=stop_fn).train()
    assert (r.steps, r.stopped_by) == (6, "callback")
    # checked after each sample call and each log row; no second sample_fn call at step 6
    assert calls == [("sample", 3), ("stop?", 3), ("stop?", 4), ("sample", 6), ("stop?", 6)]
    assert load_checkpoint(tmp_path / "stopped").step == 6
    assert [int(row["step"]) for row in csv_rows(tmp_path / "stopped" / "loss.csv")] == [4, 6]  # last partial interval
    trainer(tmp_path / "straight", cfg()).train()
    r2 = trainer(tmp_path / "stopped", cfg()).train(resume=True)
    assert (r2.steps, r2.steps_this_call) == (20, 14)
    assert_same(weights(tmp_path / "stopped"), weights(tmp_path / "straight"))


def test_stop_fn_that_never_stops_changes_nothing(tmp_path):
    trainer(tmp_path / "a", cfg(steps=8)).train()
    r = trainer(tmp_path / "b", cfg(steps=8), stop_fn=lambda info: False).train()
    assert r.stopped_by == "steps" and r.steps == 8
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_a_stopped_minutes_run_says_callback(tmp_path):
    r = trainer(tmp_path, cfg(steps=None, minutes=1.0), stop_fn=lambda info: info.step >= 4).train()
    assert (r.steps, r.stopped_by) == (4, "callback") and r.seconds < 30


def test_stop_fn_must_be_callable(tmp_path):
    with pytest.raises(TypeError, match="stop_fn must be callable"):
        trainer(tmp_path, cfg(), stop_fn=3)


# ----------------------------------------------------------------------------- loggers


def test_default_logger_writes_loss_csv_and_empty_list_logs_nowhere(tmp_path):
    t = trainer(tmp_path / "a", cfg(steps=8))
    assert len(t.loggers) == 1 and isinstance(t.loggers[0], CSVLogger)
    assert t.loggers[0].path == tmp_path / "a" / "loss.csv"
    t.train()
    assert [int(row["step"]) for row in csv_rows(tmp_path / "a" / "loss.csv")] == [4, 8]
    trainer(tmp_path / "b", cfg(steps=8), loggers=[]).train()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint", "config.json"]
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_loggers_receive_the_rows_of_loss_csv(tmp_path):
    fake = RecordingLogger()
    assert isinstance(fake, Logger)
    r = trainer(tmp_path, cfg(steps=10, ckpt_every=5), loggers=[CSVLogger(tmp_path), fake]).train()
    rows = csv_rows(tmp_path / "loss.csv")
    assert [s for s, _ in fake.rows] == [int(row["step"]) for row in rows] == [4, 8, 10]
    for (_, m), row in zip(fake.rows, rows):
        assert set(m) == {"loss", "lr", "elapsed_s", "steps_per_s"}
        assert (m["loss"], m["lr"], m["elapsed_s"]) == (row["loss"], row["lr"], row["elapsed_s"])
        assert m["steps_per_s"] > 0
    assert r.final_loss == fake.rows[-1][1]["loss"]
    # flushed after each checkpoint (steps 5 and 10) and once more after the last row, closed at the end
    assert fake.calls == ["log", "flush", "log", "flush", "log", "flush", "close"]


def test_loggers_on_resume_get_the_rows_up_to_the_checkpoint(tmp_path):
    class Crash(Exception):
        pass

    def crash_at_11(step, g):
        if step == 11:
            raise Crash
        return driver.batch_fn(step, g)

    first = RecordingLogger()
    torch.manual_seed(123)
    t = Trainer(driver.Net(), driver.loss_fn, crash_at_11, cfg(ckpt_every=6), tmp_path, extra_config={"net": "tiny"},
                loggers=[CSVLogger(tmp_path), first])  # fmt: skip
    with pytest.raises(Crash):
        t.train()
    assert [s for s, _ in first.rows] == [4, 8] and first.calls[-1] == "close"  # closed on the way out
    second = RecordingLogger()
    trainer(tmp_path, cfg(ckpt_every=6), loggers=[CSVLogger(tmp_path), second]).train(resume=True)
    assert second.restored == [(6, [4])]  # the checkpoint of step 6 holds the row of step 4
    assert [s for s, _ in second.rows] == [8, 12, 16, 20]
    # and loss.csv is the uninterrupted run's (but for the seconds)
    trainer(tmp_path / "straight", cfg(ckpt_every=6)).train()
    a, b = csv_rows(tmp_path / "loss.csv"), csv_rows(tmp_path / "straight" / "loss.csv")
    assert [(r["step"], r["loss"], r["lr"]) for r in a] == [(r["step"], r["loss"], r["lr"]) for r in b]
    assert len(a) == 5


def test_a_logger_needs_log_and_close(tmp_path):
    with pytest.raises(TypeError, match="log\\(step, metrics\\) and close\\(\\)"):
        trainer(tmp_path, cfg(), loggers=[object()])
    with pytest.raises(TypeError, match="sequence of loggers"):
        trainer(tmp_path, cfg(), loggers=RecordingLogger())


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_logger_without_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError) as err:
        TensorBoardLogger(tmp_path)
    assert isinstance(err.value, ImportError) and isinstance(err.value, ValueError)
    assert str(err.value) == "TensorBoard logging needs the tensorboard package: pip install tensorboard"
    assert not any(tmp_path.iterdir())


def test_tensorboard_logger_here(tmp_path):
    """The real import on this machine: either it works, or the same one-line error."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(
            ValueError, match=r"^TensorBoard logging needs the tensorboard package: pip install tensorboard$"
        ):
            TensorBoardLogger(tmp_path)
    else:
        TensorBoardLogger(tmp_path).close()


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes, self.closed = 0, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_tensorboard_logger_writes_the_rows_through_summary_writer(tmp_path, monkeypatch):
    fake_module = types.ModuleType("torch.utils.tensorboard")
    fake_module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_module)
    FakeWriter.made = []
    tb = TensorBoardLogger(tmp_path)
    assert FakeWriter.made == []  # no event file before the first row (ranks other than 0 write nothing)
    trainer(tmp_path, cfg(steps=8, ckpt_every=4), loggers=[CSVLogger(tmp_path), tb]).train()
    (w,) = FakeWriter.made
    assert w.log_dir == str(tmp_path / "tensorboard") and w.purge_step is None
    rows = csv_rows(tmp_path / "loss.csv")
    assert [(s, v) for tag, v, s in w.scalars if tag == "train/loss"] == [(int(r["step"]), r["loss"]) for r in rows]
    assert {tag for tag, _, _ in w.scalars} == {"train/loss", "train/lr", "train/elapsed_s", "train/steps_per_s"}
    assert w.flushes == 3 and w.closed  # checkpoints at steps 4 and 8, the end
    # resume with a longer budget: a new writer that purges the events after the checkpoint's step
    trainer(tmp_path, cfg(steps=12, ckpt_every=4), loggers=[TensorBoardLogger(tmp_path)]).train(resume=True)
    assert FakeWriter.made[-1].purge_step == 9
    assert [s for tag, _, s in FakeWriter.made[-1].scalars if tag == "train/loss"] == [12]
