"""A mistyped data folder with downloads on (``FM_DATA_DIR=/data/dataa fm-pixel train``): one line naming
it, exit 1, nothing created under the typo, torchvision never asked to download. No data files needed."""

from __future__ import annotations

import sys
import types

import pytest

from fm_pixel.cli import main


@pytest.fixture
def no_torchvision_download(monkeypatch):
    """torchvision's dataset classes replaced by one that fails the test if used."""

    class Forbidden:
        mirrors = ["https://example.invalid/"]

        def __init__(self, *a, **k):
            raise AssertionError("download attempted")

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = datasets.FashionMNIST = Forbidden
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    monkeypatch.setenv("FM_DATA_DOWNLOAD", "1")


def test_mistyped_fm_data_dir_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys, no_torchvision_download):
    typo = tmp_path / "dataa"
    monkeypatch.setenv("FM_DATA_DIR", str(typo))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "fashion-mnist", "--net", "mlp", "--hidden", "8", "--depth", "1", "--steps", "1",
            "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"fm-pixel train: error: FM_DATA_DIR {str(typo)!r} does not exist: give the folder that holds mnist/ and "
        "fashion-mnist/ (nothing was created or downloaded)"
    ], err
    assert not typo.exists()
