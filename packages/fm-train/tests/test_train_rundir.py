"""RunDir: config.json and metrics.json round trips, one meaning per metrics method, loss history
columns, atomic JSON files inside the run, machine_info. Files are checked with json/csv directly."""

import json
import math
import os

import pytest
import torch

from fm_train import RunDir, machine_info, save_checkpoint


def _weights() -> dict:
    return {"w": torch.zeros(2)}


def test_paths_and_state(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.path == tmp_path / "run"
    assert run.config_path == tmp_path / "run" / "config.json"
    assert run.metrics_path == tmp_path / "run" / "metrics.json"
    assert run.checkpoint_dir == tmp_path / "run" / "checkpoint"
    assert run.history_path == tmp_path / "run" / "loss.csv"
    assert not run.exists() and not run.has_checkpoint()
    run.write_config({"app": "demo"})
    assert run.exists() and not run.has_checkpoint()
    save_checkpoint(run.checkpoint_dir, model_state=_weights(), config={"step": 1})
    assert run.has_checkpoint()
    os.replace(run.checkpoint_dir, tmp_path / "run" / "checkpoint.old")  # killed between the two renames
    assert run.has_checkpoint()


def test_config_round_trip(tmp_path):
    run = RunDir(tmp_path)
    data = {"format": "fm-train-run", "app": "fm-demo", "demo": {"width": 3, "names": ["a", "b"]}, "x": 0.25}
    path = run.write_config(data)
    assert path == tmp_path / "config.json"
    assert json.loads(path.read_text()) == data
    assert run.read_config() == data
    assert run.read_config(app="fm-demo") == data
    assert run.read_config(app="fm-demo", section="demo") == data
    assert run.read_config(section="x") == data
    assert not list(tmp_path.glob("*.tmp-*"))  # nothing left beside the file


def test_write_config_refuses_non_json(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match=r"config\.json: the config is not JSON-serialisable"):
        run.write_config({"lr": float("nan")})
    with pytest.raises(ValueError, match="must be a dict"):
        run.write_config([1, 2])
    assert not run.config_path.exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "missing (not an fm-demo run directory)"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"app": "fm-other", "demo": {}}', "not an fm-demo run (\"app\" is 'fm-other', expected 'fm-demo')"),
        ('{"demo": {}}', "not an fm-demo run (no \"app\" key, expected 'fm-demo')"),
        ('{"app": "fm-demo", "other": {}}', "not an fm-demo demo run (no 'demo' section; keys: app, other)"),
    ],
)
def test_read_config_errors_name_the_file(tmp_path, content, needle):
    run = RunDir(tmp_path)
    if content is not None:
        run.config_path.write_text(content)
    with pytest.raises(ValueError) as err:
        run.read_config(app="fm-demo", section="demo")
    msg = str(err.value)
    assert str(run.config_path) in msg and needle in msg, msg
    assert "\n" not in msg


def test_read_config_of_a_missing_directory(tmp_path):
    with pytest.raises(ValueError, match=r"run directory '.*nowhere' does not exist"):
        RunDir(tmp_path / "nowhere").read_config()


def test_read_config_section_without_app(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"train": {}})
    with pytest.raises(ValueError, match=r"not a run with a 'vae' section \(no 'vae' section; keys: train\)"):
        run.read_config(section="vae")


def test_update_append_and_merge_have_one_meaning_each(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_metrics() == {}
    run.update_metrics("train", {"steps": 10, "loss": 0.5})
    run.update_metrics("train", {"steps": 20})  # update replaces the section: "loss" is gone
    run.append_metrics("eval", {"fid": 30.0})
    run.append_metrics("eval", {"fid": 20.0})  # append adds to the list
    assert json.loads(run.metrics_path.read_text()) == {"train": {"steps": 20}, "eval": [{"fid": 30.0}, {"fid": 20.0}]}
    # merge sets several sections at once and keeps the others
    path = run.merge_metrics({"train": {"steps": 30}, "quality": 0.9})
    assert path == run.metrics_path
    assert json.loads(path.read_text()) == {
        "train": {"steps": 30},
        "eval": [{"fid": 30.0}, {"fid": 20.0}],
        "quality": 0.9,
    }
    # update of a list section replaces the whole list
    run.update_metrics("eval", [])
    assert json.loads(path.read_text())["eval"] == []
    assert run.read_metrics() == json.loads(path.read_text())


def test_append_to_a_section_that_is_not_a_list_is_refused(tmp_path):
    run = RunDir(tmp_path)
    run.update_metrics("train", {"steps": 1})
    before = run.metrics_path.read_text()
    with pytest.raises(ValueError, match=r"metrics\.json: section 'train' holds a dict, not a list"):
        run.append_metrics("train", {"steps": 2})
    assert run.metrics_path.read_text() == before


@pytest.mark.parametrize(
    "content, needle", [("{oops", "not valid JSON"), ('"text"', "expected a JSON object, found str")]
)
def test_corrupt_metrics_are_an_error_and_never_overwritten(tmp_path, content, needle):
    run = RunDir(tmp_path)
    run.metrics_path.write_text(content)
    for call in (run.read_metrics, lambda: run.update_metrics("a", 1), lambda: run.append_metrics("a", 1),
                 lambda: run.merge_metrics({"a": 1})):  # fmt: skip
        with pytest.raises(ValueError) as err:
            call()
        assert str(run.metrics_path) in str(err.value) and needle in str(err.value)
    assert run.metrics_path.read_text() == content


def test_bad_metrics_arguments(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="non-empty string"):
        run.update_metrics("", 1)
    with pytest.raises(ValueError, match="needs a dict"):
        run.merge_metrics([("a", 1)])
    assert not run.metrics_path.exists()


def test_metrics_keep_nan_as_the_apps_write_it(tmp_path):
    run = RunDir(tmp_path)
    run.update_metrics("eval", {"fid": float("nan")})
    assert "NaN" in run.metrics_path.read_text()
    assert math.isnan(run.read_metrics()["eval"]["fid"])


def test_read_history_columns(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_history() == {"step": [], "loss": []}  # no loss.csv yet
    run.history_path.write_text("step,loss,lr,elapsed_s\n4,0.5,0.001,1.25\n8,0.25,0.002,2.5\n")
    assert run.read_history() == {"step": [4.0, 8.0], "loss": [0.5, 0.25]}
    assert run.read_history(("elapsed_s", "step")) == {"elapsed_s": [1.25, 2.5], "step": [4.0, 8.0]}
    (tmp_path / "nll_terms.csv").write_text("step,nll,logdet\n1,2.0,-0.5\n")
    assert run.read_history(("step", "logdet"), file="nll_terms.csv") == {"step": [1.0], "logdet": [-0.5]}
    with pytest.raises(
        ValueError, match=r"loss\.csv: no column\(s\) grad_norm \(the header is step,loss,lr,elapsed_s\)"
    ):
        run.read_history(("step", "grad_norm"))
    run.history_path.write_text("step,loss\n4,0.5\n8,x\n")
    with pytest.raises(ValueError, match=r"loss\.csv: line 3 holds a value that is not a number"):
        run.read_history()
    run.history_path.write_text("step,loss\n4\n")
    with pytest.raises(ValueError, match=r"line 2 has 1 values, the header 2"):
        run.read_history()


def test_write_json_stays_inside_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    path = run.write_json("eval/scores.json", {"a": [1, 2], "b": None})
    assert path == tmp_path / "run" / "eval" / "scores.json"
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": None}
    for bad in ("../escape.json", str(tmp_path / "abs.json"), ""):
        with pytest.raises(ValueError, match="relative path inside"):
            run.write_json(bad, {})
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "abs.json").exists()
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        run.write_json("x.json", {"t": torch.zeros(1)})


def test_machine_info():
    info = machine_info()
    assert set(info) == {"cpus", "torch_threads", "loadavg_1min", "machine"}
    assert info["cpus"] == os.cpu_count() and info["torch_threads"] == torch.get_num_threads()
    if hasattr(os, "getloadavg"):
        assert info["loadavg_1min"] == pytest.approx(os.getloadavg()[0], abs=0.5)
    json.dumps(info)
