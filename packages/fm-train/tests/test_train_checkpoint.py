"""Atomic checkpoint directories: crash recovery, one-line errors, refusal of code-running pickles."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import fm_train.checkpoint as ck
from fm_train import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    load_model_for_sampling,
    load_weights,
    recover_checkpoint,
    save_checkpoint,
)


def _state(value: float) -> dict:
    return {"w": torch.full((3, 2), value), "b": torch.full((2,), value)}


def _save(path, step, value):
    return save_checkpoint(
        path,
        model_state=_state(value),
        ema_state=_state(value + 0.5),
        train_state={"format_version": 1, "step": step, "list": [1, 2.5, None, "x"], "t": torch.arange(3)},
        config={"step": step, "net": {"hidden": 2}},
    )


class Net(nn.Module):
    def __init__(self, hidden=2):
        super().__init__()
        self.lin = nn.Linear(3, hidden)


def _net_state(value, hidden=2):
    return {"lin.weight": torch.full((hidden, 3), value), "lin.bias": torch.full((hidden,), value)}


def _save_net(path, step=1, value=1.0):
    return save_checkpoint(
        path,
        model_state=_net_state(value),
        ema_state=_net_state(value + 1),
        config={"step": step, "net": {"hidden": 2}},
    )


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_round_trip(tmp_path):
    path = _save(tmp_path / "checkpoint", 3, 1.0)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "train_state.pt",
    ]
    c = load_checkpoint(tmp_path)  # a run dir works as well as the checkpoint dir
    assert c.path == path and c.step == 3
    assert c.config["format"] == "fm-train-checkpoint" and c.config["net"] == {"hidden": 2}
    assert torch.equal(c.model["w"], torch.full((3, 2), 1.0)) and torch.equal(c.ema["b"], torch.full((2,), 1.5))
    assert c.train_state["list"] == [1, 2.5, None, "x"] and torch.equal(c.train_state["t"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # nothing left beside it


def test_second_save_replaces_and_leaves_nothing_behind(tmp_path):
    _save(tmp_path / "checkpoint", 1, 1.0)
    _save(tmp_path / "checkpoint", 2, 2.0)
    assert load_checkpoint(tmp_path).step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def _crash_on_rename(monkeypatch, n):
    calls = []
    real = ck._rename

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == n:
            raise Crash
        real(src, dst)

    monkeypatch.setattr(ck, "_rename", rename)
    return calls


def test_crash_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    _save(path, 1, 1.0)
    calls = _crash_on_rename(monkeypatch, 2)
    with pytest.raises(Crash):
        _save(path, 2, 2.0)
    monkeypatch.undo()
    assert calls[0] == ("checkpoint", "checkpoint.old")
    assert not path.exists() and (tmp_path / "checkpoint.old").is_dir()
    assert len(list(tmp_path.glob("checkpoint.tmp-*"))) == 1
    # A reader (read-only) finds the old one.
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    c = load_checkpoint(tmp_path)
    assert c.step == 1 and torch.equal(c.model["w"], torch.full((3, 2), 1.0))
    # The writer repairs before writing again.
    assert recover_checkpoint(path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    assert load_checkpoint(path).step == 1
    _save(path, 3, 3.0)
    assert load_checkpoint(path).step == 3


def test_crash_before_removing_old(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    _save(path, 1, 1.0)
    monkeypatch.setattr(ck.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        _save(path, 2, 2.0)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.old").is_dir()
    assert load_checkpoint(tmp_path).step == 2  # the new one is complete and wins
    recover_checkpoint(path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_partial_tmp_dir_is_ignored_and_cleaned(tmp_path):
    path = tmp_path / "checkpoint"
    _save(path, 1, 1.0)
    junk = tmp_path / "checkpoint.tmp-abc123"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\x00\x01half a file")
    assert load_checkpoint(tmp_path).step == 1
    _save(path, 2, 2.0)
    assert not junk.exists()
    assert load_checkpoint(tmp_path).step == 2


def test_only_a_partial_tmp_dir_means_no_checkpoint(tmp_path):
    (tmp_path / "checkpoint.tmp-xyz").mkdir()
    assert find_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="no checkpoint found") as err:
        load_checkpoint(tmp_path)
    _one_line(err)


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    _save(path, 1, 1.0)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "_st_save_file", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact") as err:
        _save(path, 2, 2.0)
    _one_line(err)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    assert load_checkpoint(tmp_path).step == 1


# ------------------------------------------------------------------- errors naming the file


def test_missing_tensor(tmp_path):
    path = _save_net(tmp_path / "ck")
    state = load_checkpoint(path).model
    del state["lin.bias"]
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: does not fit the model \(missing tensors: lin\.bias\)"
    ) as err:
        load_weights(Net(), state, path / "model.safetensors")
    _one_line(err)


def test_extra_tensor_in_file(tmp_path):
    extra = {**_net_state(1.0), "lin.scale": torch.ones(2)}
    path = save_checkpoint(tmp_path / "ck", model_state=extra, ema_state=extra, config={"step": 0})
    with pytest.raises(CheckpointError, match=r"ema\.safetensors: .*unexpected tensors: lin\.scale") as err:
        load_model_for_sampling(path, lambda cfg: Net())
    _one_line(err)


def test_wrong_shape(tmp_path):
    path = _save_net(tmp_path / "ck")
    with pytest.raises(
        CheckpointError, match=r"ema\.safetensors: .*wrong shapes: lin\.weight \[2, 3\] in the file vs \[5, 3\]"
    ) as err:
        load_model_for_sampling(path, lambda cfg: Net(hidden=5))
    _one_line(err)


def test_non_json_config(tmp_path):
    path = _save_net(tmp_path / "ck")
    (path / "config.json").write_text("{'step': 1,")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON") as err:
        load_checkpoint(path)
    _one_line(err)


def test_config_of_another_tool(tmp_path):
    path = _save_net(tmp_path / "ck")
    (path / "config.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match=r"config\.json: not an fm-train checkpoint"):
        load_checkpoint(path)


def test_missing_and_truncated_files(tmp_path):
    path = _save(tmp_path / "ck", 1, 1.0)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file") as err:
        load_checkpoint(path)
    _one_line(err)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing file"):
        load_checkpoint(path)
    _save(tmp_path / "ck", 1, 1.0)
    data = (path / "train_state.pt").read_bytes()
    (path / "train_state.pt").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match=r"train_state\.pt: unreadable or truncated") as err:
        load_checkpoint(path)
    _one_line(err)


def test_build_fn_error_names_config(tmp_path):
    path = _save_net(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"config\.json: cannot build the model from this config \(TypeError"):
        load_model_for_sampling(path, lambda cfg: Net(**cfg["net"], depth=3))


def test_load_model_for_sampling_uses_ema(tmp_path):
    path = _save_net(tmp_path / "ck", value=1.0)
    model, cfg = load_model_for_sampling(tmp_path / "ck", lambda c: Net(**c["net"]))
    assert not model.training and cfg["net"] == {"hidden": 2}
    assert torch.all(model.lin.weight == 2.0)  # EMA weights, not the trained ones (1.0)
    raw, _ = load_model_for_sampling(path, lambda c: Net(**c["net"]), use_ema=False)
    assert torch.all(raw.lin.weight == 1.0)


# ------------------------------------------------------------------- untrusted pickles


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_weights_only_refuses_code_running_pickle(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"step": 1, "x": Payload(marker)}, evil)
    with pytest.raises(Exception) as err:
        torch.load(evil, weights_only=True)
    assert "exec" in str(err.value) or "weights_only" in str(err.value) or "Unsupported" in str(err.value)
    assert not marker.exists()
    # Through the loader: a one-line CheckpointError naming the file, and no code ran.
    path = _save(tmp_path / "ck", 1, 1.0)
    os.replace(evil, path / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state\.pt: refused to load") as err:
        load_checkpoint(path)
    _one_line(err)
    assert not marker.exists()
    # Control: the payload is live; an unsafe load would have run it.
    torch.load(path / "train_state.pt", weights_only=False)
    assert marker.read_text() == "pwned"
