"""fm_train.sweep: the append-only CSV log (crash repair, resume without duplicate or lost rows,
atomic rewrite) and the task pool (results for every task, events before results, the deadline,
errors, in-process with one worker, spawned processes with more).

Files are read back with the csv module or as raw bytes, not through the code under test."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from fm_train.sweep import CsvLog, TaskContext, TaskResult, read_csv_rows, run_pool

COLUMNS = ("task", "step", "score", "note")


def raw_rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------- CsvLog
def test_log_writes_a_header_and_one_line_per_row_with_the_value_rules(tmp_path):
    path = tmp_path / "sub" / "log.csv"
    with CsvLog(path, COLUMNS, float_format=".3g") as log:
        log.append({"task": "a", "step": 10, "score": 0.123456, "note": None})
        log.append({"task": "b", "step": 20, "score": 1 / 3})  # "note" missing: empty
    assert path.read_bytes() == b"task,step,score,note\r\na,10,0.123,\r\nb,20,0.333,\r\n"
    with CsvLog(path, COLUMNS) as log:  # default float format: repr, which reads back exactly
        log.append({"task": "c", "step": 30, "score": 1 / 3, "note": "x, y"})
        assert float(raw_rows(path)[-1][2]) == 1 / 3 and raw_rows(path)[-1][3] == "x, y"
        assert log.rows()[-1] == {"task": "c", "step": "30", "score": repr(1 / 3), "note": "x, y"}
    assert read_csv_rows(tmp_path / "absent.csv") == []


def test_log_refuses_unknown_keys_line_breaks_and_another_header(tmp_path):
    path = tmp_path / "log.csv"
    with CsvLog(path, COLUMNS) as log:
        with pytest.raises(ValueError, match="no column.*colour"):
            log.append({"task": "a", "colour": "red"})
        with pytest.raises(ValueError, match="line break"):
            log.append({"task": "a", "note": "two\nlines"})
    assert raw_rows(path) == [list(COLUMNS)]  # nothing written by the refused rows
    with pytest.raises(ValueError, match="its columns are task,step,score,note"):
        CsvLog(path, ("task", "step"))
    with pytest.raises(ValueError, match="distinct"):
        CsvLog(tmp_path / "other.csv", ("a", "a"))


@pytest.mark.parametrize("cut", [1, 5, 11, 14])
def test_log_resumes_after_a_crash_in_the_middle_of_a_row(tmp_path, cut):
    """A process killed while writing a row leaves part of its line (no line ending); reopening the
    log drops that part, and the rows written after it are whole lines, none lost, none twice."""
    path = tmp_path / "log.csv"
    with CsvLog(path, COLUMNS) as log:
        for step in (1, 2, 3):
            log.append({"task": "a", "step": step, "score": 0.5})
    whole = path.read_bytes()
    last = b"b,4,0.25,note\r\n"  # the row being written when the process died: 15 bytes
    path.write_bytes(whole + last[:cut])  # cut before its line ending ("\r" included at 14)
    with CsvLog(path, COLUMNS) as log:
        assert path.read_bytes() == whole  # the partial row is gone
        assert [r["step"] for r in log.rows()] == ["1", "2", "3"]
        log.append({"task": "b", "step": 4, "score": 0.25, "note": "note"})  # written again, whole
    assert path.read_bytes() == whole + last
    assert [r[1] for r in raw_rows(path)[1:]] == ["1", "2", "3", "4"]


def test_log_cut_inside_its_header_starts_again(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"task,st")  # killed while writing the header
    with CsvLog(path, COLUMNS) as log:
        log.append({"task": "a", "step": 1})
    assert raw_rows(path) == [list(COLUMNS), ["a", "1", "", ""]]


def test_resumed_sweep_keeps_finished_tasks_and_redoes_the_rest_once(tmp_path):
    """The resume of a sweep: rows of finished tasks stay, rows of the unfinished one are dropped
    (keep) and written again when it reruns, so every (task, step) appears exactly once."""
    path = tmp_path / "evals.csv"
    with CsvLog(path, COLUMNS) as log:
        for task in ("a", "b"):
            for step in (1, 2, 3):
                log.append({"task": task, "step": step})
        log.append({"task": "c", "step": 1})  # c was running when the sweep died
    with open(path, "ab") as f:
        f.write(b"c,2,0.")  # ... in the middle of its second row
    finished = {"a", "b"}
    with CsvLog(path, COLUMNS) as log:
        kept = log.keep(lambda r: r["task"] in finished)
        assert [(r["task"], r["step"]) for r in kept] == [(t, str(s)) for t in "ab" for s in (1, 2, 3)]
        for step in (1, 2, 3):  # c runs again
            log.append({"task": "c", "step": step})
    pairs = [(r[0], r[1]) for r in raw_rows(path)[1:]]
    assert pairs == [(t, str(s)) for t in "abc" for s in (1, 2, 3)]
    assert [p for p in os.listdir(tmp_path) if p != "evals.csv"] == []  # no temporary file left


# ----------------------------------------------------------------------------- run_pool: this process
@pytest.fixture
def tasks(monkeypatch):
    """The module of task functions, importable by name in spawned workers too."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import _sweep_tasks

    return _sweep_tasks


def _record():
    log: list = []
    return log, (lambda i, e: log.append(("event", i, e))), (lambda r: log.append(("result", r.index, r.status)))


def _events_before_results(log: list, n: int) -> None:
    for i in range(n):
        events = [k for k, entry in enumerate(log) if entry[0] == "event" and entry[1] == i]
        (result,) = [k for k, entry in enumerate(log) if entry[0] == "result" and entry[1] == i]
        assert all(k < result for k in events), (i, log)


def test_one_worker_runs_every_task_in_this_process_in_order(tasks):
    log, on_event, on_result = _record()
    results = run_pool([1, 2, 3, 4], tasks.square, workers=1, on_event=on_event, on_result=on_result)
    assert [r.index for r in results] == [0, 1, 2, 3] and [r.task for r in results] == [1, 2, 3, 4]
    assert [r.status for r in results] == ["done"] * 4 and [r.value["value"] for r in results] == [1, 4, 9, 16]
    assert {r.value["pid"] for r in results} == {os.getpid()}
    assert [e for kind, _, e in log if kind == "event"] == [(t, k) for t in (1, 2, 3, 4) for k in range(3)]
    assert [entry[1] for entry in log if entry[0] == "result"] == [0, 1, 2, 3]
    _events_before_results(log, 4)


def test_one_worker_sets_torch_threads_for_the_tasks_and_restores_them():
    import torch

    before = torch.get_num_threads()
    seen = run_pool([0], lambda task, ctx: torch.get_num_threads(), threads=1)[0].value
    assert seen == 1 and torch.get_num_threads() == before


def test_an_error_ends_only_its_task(tasks):
    results = run_pool([2, "boom", 3], tasks.square, workers=1)
    assert [r.status for r in results] == ["done", "error", "done"]
    assert results[1].error == "RuntimeError: task failed on purpose" and results[1].value is None
    assert results[2].value["value"] == 9


def test_tasks_not_started_by_the_deadline_are_skipped():
    def wait_for_deadline(task, ctx: TaskContext):
        assert ctx.deadline is not None and not ctx.past_deadline()
        while not ctx.past_deadline():  # the task decides when to stop: here, at the deadline
            time.sleep(0.01)
        return task

    deadline = time.time() + 0.3
    results = run_pool(["a", "b", "c"], wait_for_deadline, deadline=deadline)
    assert [r.status for r in results] == ["done", "skipped", "skipped"]
    assert results[0].value == "a" and results[0].seconds >= 0.2
    assert results[1].value is None and results[1].seconds == 0.0
    passed = run_pool([1, 2], lambda t, ctx: t, deadline=time.time() - 1.0)
    assert [r.status for r in passed] == ["skipped", "skipped"]


def test_bad_arguments(tasks):
    with pytest.raises(ValueError, match="workers"):
        run_pool([1], tasks.square, workers=0)
    with pytest.raises(ValueError, match="threads"):
        run_pool([1], tasks.square, threads=0)
    assert run_pool([], tasks.square, workers=3) == []


# ----------------------------------------------------------------------------- run_pool: processes
def test_two_workers_deliver_every_result_with_its_events_first(tasks):
    items = [1, 2, "boom", 3, 4, 5]
    log, on_event, on_result = _record()
    results = run_pool(items, tasks.square, workers=2, on_event=on_event, on_result=on_result)
    assert [r.index for r in results] == list(range(6)) and all(isinstance(r, TaskResult) for r in results)
    assert [r.status for r in results] == ["done", "done", "error", "done", "done", "done"]
    assert [r.value["value"] for r in results if r.status == "done"] == [1, 4, 9, 16, 25]
    assert results[2].error == "RuntimeError: task failed on purpose"
    pids = {r.value["pid"] for r in results if r.status == "done"}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # spawned workers, at most two
    assert sorted((e for kind, _, e in log if kind == "event"), key=repr) == sorted(
        ((t, k) for t in items for k in range(3)), key=repr
    )
    for i, t in enumerate(items):  # each task's events in the order it emitted them
        assert [e for kind, j, e in log if kind == "event" and j == i] == [(t, 0), (t, 1), (t, 2)]
    _events_before_results(log, 6)


@pytest.mark.slow
def test_workers_report_skipped_tasks_and_a_worker_that_dies(tasks):
    # a deadline already passed: every task is reported as skipped by its worker
    assert [r.status for r in run_pool([1, 2, 3], tasks.square, workers=2, deadline=time.time() - 1)] == ["skipped"] * 3
    # a worker process that dies is reported, not waited for
    t0 = time.monotonic()
    results = run_pool(["die", "x"], tasks.die, workers=2)
    assert results[0].status == "error" and "worker process" in results[0].error
    assert results[1].status in ("done", "error") and time.monotonic() - t0 < 120
