"""Bad arguments are usage errors (exit 2) naming the value; data problems exit 1 naming the paths.

None of these tests needs the real data: every bad argument is caught before data is loaded,
and the data-error tests point the lookup at temporary folders (downloads disabled).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from fm_pixel.cli import main

torch_threads = pytest.importorskip("torch").set_num_threads(1)


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--classes", "12"], "12"),
        (["train", "--classes", "3,x"], "3,x"),
        (["train", "--dataset", "cifar10"], "cifar10"),
        (["train", "--steps", "0"], "'0'"),
        (["train", "--steps", "5", "--minutes", "1"], "not allowed with"),
        (["train", "--minutes", "-2"], "'-2'"),
        (["train", "--lr", "nan"], "'nan'"),
        (["train", "--solver", "midpoint", "--nfe", "7"], "nfe=7"),
        (["train", "--guidance", "2"], "guidance"),  # unconditional
        (["train", "--net", "mlp", "--channels", "8,16"], "--channels"),
        (["train", "--net", "dit", "--res-blocks", "2"], "--res-blocks"),
        (["train", "--net", "dit", "--patch-size", "3"], "patch"),
        (["train", "--device", "tpu"], "tpu"),
        (["train", "--bf16", "--precision", "fp32"], "--bf16"),  # the old switch against the new flag
        (["train", "--resume"], "--resume needs --out"),
        (["sample", "--run", "x", "--n", "0", "--out", "s.npz"], "'0'"),
        (["sample", "--run", "x", "--n", "4", "--solver", "rk5", "--out", "s.npz"], "rk5"),
        (["eval", "--run", "x", "--n", "-3"], "'-3'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(argv, needle, capsys, tmp_path):
    code, err = run(
        argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" and "--resume" not in argv else []), capsys
    )
    assert code == 2, err
    assert needle in err, err


def test_missing_data_dir_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, err = run(["train", "--data-dir", str(missing), "--steps", "1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and str(missing) in err


def test_data_not_found_names_the_paths_tried(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FM_DATA_DIR", str(tmp_path / "also-empty"))
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "0")
    code, err = run(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(empty),
            "--steps",
            "1",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 1
    assert err.startswith("fm-pixel train: error:")
    for path in (
        empty / "fashion-mnist",
        tmp_path / "also-empty" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ):
        assert str(path) in err, err
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_corrupt_data_file_is_named(tmp_path, capsys, monkeypatch):
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (d / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03 not an image file"))
    monkeypatch.delenv("FM_DATA_DIR", raising=False)
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "0")
    code, err = run(
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--steps",
            "1",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 1
    assert "train-images-idx3-ubyte.gz" in err and "MD5" in err, err


def test_sample_needs_a_run(tmp_path, capsys):
    code, err = run(["sample", "--run", str(tmp_path), "--n", "4", "--out", str(tmp_path / "s.npz")], capsys)
    assert code == 2 and "config.json" in err
    code, err = run(["sample", "--run", str(tmp_path), "--n", "4", "--out", str(tmp_path / "s.txt")], capsys)
    assert code == 2 and "s.txt" in err


def _fake_run(tmp_path: Path, **pixel) -> Path:
    """A run directory with a config.json and an (empty) checkpoint folder: enough for argument checks."""
    from fm_pixel.config import make_config
    from fm_pixel.training import run_config

    run_dir = tmp_path / "run"
    (run_dir / "checkpoint").mkdir(parents=True)
    cfg = make_config("mnist", net_config={"channels": [8, 16]}, **pixel)
    (run_dir / "config.json").write_text(json.dumps({"format": "fm-train-run", "train": {}, **run_config(cfg, {})}))
    return run_dir


def test_sample_options_checked_against_the_run(tmp_path, capsys):
    uncond = _fake_run(tmp_path)
    out = str(tmp_path / "s.npz")
    code, err = run(["sample", "--run", str(uncond), "--n", "4", "--label", "3", "--out", out], capsys)
    assert code == 2 and "--label 3" in err and "unconditional" in err
    code, err = run(["sample", "--run", str(uncond), "--n", "4", "--guidance", "2", "--out", out], capsys)
    assert code == 2 and "--guidance 2" in err
    code, err = run(
        ["sample", "--run", str(uncond), "--n", "4", "--solver", "rk4", "--nfe", "10", "--out", out], capsys
    )
    assert code == 2 and "--nfe 10" in err


def test_sample_label_must_be_a_trained_class(tmp_path, capsys):
    cond = _fake_run(tmp_path, conditional=True, classes=[3, 5])
    code, err = run(
        ["sample", "--run", str(cond), "--n", "4", "--label", "4", "--out", str(tmp_path / "s.npz")], capsys
    )
    assert code == 2 and "--label 4" in err and "[3, 5]" in err


def test_out_holding_a_run_needs_resume(tmp_path, capsys):
    run_dir = _fake_run(tmp_path)
    code, err = run(["train", "--out", str(run_dir), "--steps", "1"], capsys)
    assert code == 2 and "--resume" in err
    # --resume with a setting that differs from the stored run is refused, naming both values
    code, err = run(["train", "--out", str(run_dir), "--resume", "--lr", "0.5"], capsys)
    assert code == 2 and "--lr 0.5" in err


def test_a_run_of_the_old_layout_is_one_clear_line(tmp_path, capsys):
    """A run written by fm-pixel 0.1 (its optimisation inside "pixel", no "layout"): sample, eval and
    --resume refuse it in one line naming config.json, not with a traceback."""
    run_dir = tmp_path / "old"
    (run_dir / "checkpoint").mkdir(parents=True)
    old = {"dataset": "mnist", "classes": None, "conditional": False, "recipe": "default", "net": "unet",
           "net_config": {}, "time": "logit-normal", "coupling": "independent", "label_dropout": 0.0,
           "batch_size": 64, "lr": 0.002, "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 100,
           "grad_clip": 1.0, "ema_decay": 0.999, "seed": 0, "solver": "euler", "nfe": 10, "guidance": 1.0}  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps({"format": "fm-train-run", "app": "fm-pixel", "pixel": old,
                                                     "net": {"name": "unet", "config": {}}, "train": {}}))  # fmt: skip
    for argv in (["sample", "--run", str(run_dir), "--n", "4", "--out", str(tmp_path / "s.npz")],
                 ["eval", "--run", str(run_dir)], ["train", "--out", str(run_dir), "--resume"]):  # fmt: skip
        code, err = run(argv, capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err, err
        assert str(run_dir / "config.json") in last and "before 0.2.0" in last and "train the run again" in last, err
