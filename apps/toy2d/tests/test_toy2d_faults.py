"""fm-toy2d given broken files and failing disks: every user-facing failure is one line on stderr
naming the file and the problem, with a non-zero exit status and no traceback.

Two tiny runs (a few seconds of training) are shared by the module; each test works on a copy.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import fm_train.checkpoint as ck
from fm_toy2d.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = [
    "--steps",
    "12",
    "--hidden",
    "8",
    "--depth",
    "1",
    "--batch-size",
    "64",
    "--quiet",
    "--device",
    "cpu",
    "--no-pictures",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy2d-faults")
    assert main(["train", "--dataset", "checkerboard", "--cells", "4", "--out", str(root / "board"), *TINY]) == 0
    assert main(["train", "--dataset", "moons", "--out", str(root / "moons"), *TINY]) == 0
    return root


@pytest.fixture
def board(runs, tmp_path):
    shutil.copytree(runs / "board", tmp_path / "board")
    return tmp_path / "board"


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return code, err


def sample(run, tmp_path, capsys) -> tuple[int, str]:
    return run_cli(
        ["sample", "--run", str(run), "--n", "16", "--out", str(tmp_path / "s.npz"), "--device", "cpu"], capsys
    )


def one_line_error(code: int, err: str, *needles: str, status: int = 1) -> None:
    assert code == status, (code, err)
    lines = err.splitlines()
    if status == 1:
        assert len(lines) == 1, err
        assert lines[0].startswith("fm-toy2d "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_the_intact_copy_samples(board, tmp_path, capsys):
    """Control: the run copies used below work before they are broken."""
    assert sample(board, tmp_path, capsys)[0] == 0 and (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors"])
def test_truncated_weights(board, tmp_path, capsys, name):
    f = board / "checkpoint" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    # sampling uses the EMA weights, but a checkpoint with any broken file is refused whole
    one_line_error(*sample(board, tmp_path, capsys), str(f), "not a readable safetensors file")
    assert not (tmp_path / "s.npz").exists()


def test_missing_and_extra_tensors(board, tmp_path, capsys):
    f = board / "checkpoint" / "ema.safetensors"
    state = load_file(str(f))
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(f))
    code, err = sample(board, tmp_path, capsys)
    one_line_error(code, err, str(f), f"missing tensors: {dropped}", "unexpected tensors: extra.weight")


def test_wrongly_shaped_tensor(board, tmp_path, capsys):
    f = board / "checkpoint" / "ema.safetensors"
    state = load_file(str(f))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(state, str(f))
    one_line_error(*sample(board, tmp_path, capsys), str(f), "wrong shapes", key)


def test_missing_checkpoint_file(board, tmp_path, capsys):
    (board / "checkpoint" / "ema.safetensors").unlink()
    one_line_error(*sample(board, tmp_path, capsys), "ema.safetensors", "missing file")


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["toy2d"].update(grid="eight"), "grid='eight'"),
        (lambda c: c["toy2d"].update(grid=-3), "grid=-3"),
        (lambda c: c["toy2d"].update(nfe=0), "nfe=0"),
        (lambda c: c["toy2d"].update(solver="leapfrog"), "solver='leapfrog'"),
        (lambda c: c["toy2d"].update(input_scale=float("nan")), "input_scale=nan"),
        (lambda c: c["toy2d"].update(colour="red"), "unknown run config key(s) colour"),
        (lambda c: c.update(toy2d=[1, 2]), "must be a JSON object"),
        (lambda c: c.update(app="fm-pixel"), "not an fm-toy2d run"),
    ],
)
def test_run_config_with_wrong_types_or_values(board, tmp_path, capsys, edit, needle):
    f = board / "config.json"
    cfg = json.loads(f.read_text())
    edit(cfg)
    f.write_text(json.dumps(cfg))
    code, err = sample(board, tmp_path, capsys)
    one_line_error(code, err, str(f), needle, status=2)  # a usage error: --run names a broken run
    assert "usage:" in err


def test_config_json_that_is_not_json(board, tmp_path, capsys):
    (board / "config.json").write_text('{"app": "fm-toy2d", "toy2d": {')
    code, err = sample(board, tmp_path, capsys)
    one_line_error(code, err, str(board / "config.json"), "not valid JSON", status=2)


def test_checkpoint_from_another_run(board, runs, tmp_path, capsys):
    """moons' checkpoint copied into the checkerboard run: refused, not sampled as a checkerboard."""
    shutil.rmtree(board / "checkpoint")
    shutil.copytree(runs / "moons" / "checkpoint", board / "checkpoint")
    code, err = sample(board, tmp_path, capsys)
    one_line_error(code, err, str(board / "checkpoint" / "config.json"), "belongs to another run",
                   "toy2d.dataset='moons' in the checkpoint but 'checkerboard'")  # fmt: skip
    code, err = run_cli(["eval", "--run", str(board), "--n", "100", "--no-nll", "--device", "cpu"], capsys)
    one_line_error(code, err, "belongs to another run")


def test_sample_of_a_pixel_run(tmp_path, capsys):
    run = tmp_path / "pixel-run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps({"format": "fm-train-run", "app": "fm-pixel", "pixel": {}, "train": {}})
    )
    code, err = sample(run, tmp_path, capsys)
    one_line_error(code, err, str(run / "config.json"), "not an fm-toy2d run", status=2)


def test_full_disk_while_training_is_one_line(tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "_st_save_file", full)
    out = tmp_path / "full"
    code, err = run_cli(["train", "--out", str(out), *TINY], capsys)
    one_line_error(code, err, str(out / "checkpoint"), "No space left on device")
    assert not list(out.glob("checkpoint*"))  # no half-written checkpoint left


def test_output_under_a_file_is_one_line(board, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(
        ["sample", "--run", str(board), "--n", "4", "--out", str(tmp_path / "file" / "s.npz"), "--device", "cpu"],
        capsys,
    )
    assert code in (1, 2) and len(err.splitlines()) <= 3 and str(tmp_path / "file") in err, err
    code, err = run_cli(["train", "--out", str(tmp_path / "file" / "run"), *TINY], capsys)
    # refused when the run directory is locked, before any work: argparse's usage, then one error line
    last = err.strip().splitlines()[-1]
    assert code == 2 and "error:" in last and str(tmp_path / "file") in last and "Traceback" not in err, err


def test_diverging_training_names_the_step(tmp_path, capsys):
    # lr 1e30: the first AdamW step moves every weight by ~1e30, the next loss overflows
    code, err = run_cli(["train", "--out", str(tmp_path / "nan"), "--lr", "1e30", *TINY], capsys)
    one_line_error(code, err, "training diverged at step", "no checkpoint had been written yet")
    assert not (tmp_path / "nan" / "checkpoint").exists()
