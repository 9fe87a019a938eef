"""The guidance sweep (fm_cli.images.sweep, ``eval --guidance-sweep``), the eval line with precision
and recall, captions under sample grids, titled reconstructions and the charts (loss.png,
guidance.png). Scores on real images need MNIST (FM_DATA_DIR or ../shared/data; skipped without)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from fm_cli.images import (
    CONFIG_LAYOUT,
    ImageRunConfig,
    add_eval_parser,
    build_config,
    config_section,
    eval_command,
    eval_line,
    guidance_sweep,
    read_run,
    record_sweep,
    sampler_caption,
    sweep_table,
)
from fm_cli.pictures import (
    CAPTION_HEIGHT,
    grid_array,
    grid_image,
    plot_guidance_sweep,
    plot_loss,
    save_reconstructions,
    title_margin,
)
from fm_core import SampleResult
from fm_data.images import CLASS_NAMES, IMAGE_DATASETS, load_images, parse_classes

_ROOT = Path(__file__).resolve().parents[3]


def _data_dir() -> Path:
    env = os.environ.get("FM_DATA_DIR")
    for d in ([Path(env)] if env else []) + [(_ROOT / ".." / "shared" / "data").resolve()]:
        if (d / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return d
    pytest.skip("MNIST not found (set FM_DATA_DIR to the folder holding mnist/)")


@dataclass
class Img(ImageRunConfig):
    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS
    class_names: ClassVar[dict[str, tuple[str, ...]]] = CLASS_NAMES
    parse_classes = staticmethod(parse_classes)


def cond(**kw) -> Img:
    return build_config(Img, {"dataset": "mnist", "conditional": True, "label_dropout": 0.1, "guidance": 2.0, **kw})


def result(x: torch.Tensor, labels: torch.Tensor | None, guidance: float) -> SampleResult:
    return SampleResult(x=x, labels=labels, nfe=10, method="euler", guidance=guidance, seconds=0.5, times=None,
                        trajectory=None)  # fmt: skip


# ----------------------------------------------------------------------------- the sweep
def test_sweep_ranks_real_images_above_noise(tmp_path):
    # guidance 1 "draws" 300 real test images, guidance 3 uniform noise: real images lie on the real
    # manifold (precision and recall well above 0), noise on none of it (0 and 0), and the best FID is 1
    data_dir = _data_dir()
    test = load_images("mnist", "test", data_dir, classes=[5])  # a small FID reference: fast
    real, labels = test.images[-300:], test.labels[-300:]
    noise = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    calls = []

    def draw(n, *, solver, nfe, guidance, seed, progress):
        calls.append((n, solver, nfe, guidance, seed))
        return result(real if guidance == 1.0 else noise, labels, guidance)

    seen = []
    sweep = guidance_sweep(draw, cond(classes=[5]), [3.0, 1.0], n=300, solver="euler", nfe=10, seed=5,
                           data_dir=data_dir, report=seen.append)  # fmt: skip
    assert calls == [(300, "euler", 10, 3.0, 5), (300, "euler", 10, 1.0, 5)]  # one seed for every guidance
    assert [r["guidance"] for r in sweep.rows] == [3.0, 1.0] and seen == sweep.rows
    noisy, good = sweep.rows
    assert (noisy["precision"], noisy["recall"], noisy["density"], noisy["coverage"]) == (0.0, 0.0, 0.0, 0.0)
    assert good["precision"] > 0.5 and good["recall"] > 0.5 and good["label_accuracy"] > 0.95
    assert good["fid"] < noisy["fid"] and sweep.best_guidance == 1.0
    assert sweep.manifold_reference == "random 300 of the test split (seed 0), classes [5]"
    assert sweep.fid_reference == f"{len(test.images)} images, test split, classes [5]" and sweep.seconds > 0

    metrics, chart = record_sweep(tmp_path, sweep, dataset="mnist")
    rec = json.loads(metrics.read_text())["guidance_sweep"]
    assert rec["best_guidance"] == 1.0 and rec["rows"] == sweep.rows and rec["n"] == 300 and "machine" in rec
    with Image.open(chart) as im:
        assert im.format == "PNG" and chart == tmp_path / "guidance.png"
    table = sweep_table(sweep.rows, sweep.best_guidance).splitlines()
    assert table[0].split() == ["guidance", "FID", "precision", "recall", "density", "coverage", "label", "acc.",
                                "seconds"]  # fmt: skip
    assert table[1].split()[0] == "3" and not table[1].endswith("*") and table[2].endswith(" *")


def test_sweep_table_by_hand():
    rows = [{"guidance": 1.0, "fid": 2.5, "precision": 0.5, "recall": 0.25, "density": 1.0, "coverage": 0.75,
             "label_accuracy": None, "seconds": 3.0},
            {"guidance": 1.25, "fid": 1.0, "precision": 0.75, "recall": 0.125, "density": 1.5, "coverage": 0.5,
             "label_accuracy": None, "seconds": 12.25}]  # fmt: skip
    assert sweep_table(rows, 1.25) == (
        "guidance    FID  precision  recall  density  coverage  seconds\n"
        "       1  2.500      0.500   0.250    1.000     0.750      3.0\n"
        "    1.25  1.000      0.750   0.125    1.500     0.500     12.2 *"
    )


def _fake_app(tmp_path: Path, cfg: Img):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").mkdir()
    data = {"format": "fm-train-run", "train": cfg.train.to_dict(), "app": "fm-x", "layout": CONFIG_LAYOUT,
            "img": config_section(cfg)}  # fmt: skip
    (run / "config.json").write_text(json.dumps(data))

    def read(path):
        return read_run(path, "fm-x", "img", Img)

    def load(args, c):
        raise AssertionError("a usage error must come before the run is loaded")

    return run, read, load


@pytest.mark.parametrize(
    "cfg, extra, needle",
    [
        (Img(dataset="mnist"), [], "--guidance-sweep 1,2: guidance=2: the run is unconditional; guidance needs a "
                                   "conditional run"),
        (cond(label_dropout=0.0, guidance=1.0), [], "--guidance-sweep 1,2: guidance=2: the run was trained without "
                                                    "label dropout, so it has no null label; use guidance=1"),
        (cond(), ["--guidance", "2"], "--guidance 2 and --guidance-sweep: give one of them"),
    ],
)  # fmt: skip
def test_sweep_refused_where_guidance_cannot_work(tmp_path, capsys, cfg, extra, needle):
    p = argparse.ArgumentParser(prog="fm-x")
    sub = p.add_subparsers(dest="command")
    add_eval_parser(sub, "eval")
    run, read, load = _fake_app(tmp_path, cfg)
    args = p.parse_args(["eval", "--run", str(run), "--guidance-sweep", "1,2", *extra])
    with pytest.raises(SystemExit) as e:
        eval_command("fm-x", sub.choices["eval"], args, read=read, load=load)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_sweep_values_must_be_numbers(capsys):
    p = argparse.ArgumentParser(prog="fm-x")
    add_eval_parser(p.add_subparsers(dest="command"), "eval")
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "--run", "r", "--guidance-sweep", "1,two"])
    assert "must be comma-separated finite numbers like 1,1.5,2, got '1,two'" in capsys.readouterr().err


def test_eval_line_shows_precision_and_recall_with_their_reference():
    res = result(torch.zeros(4, 28, 28, dtype=torch.uint8), None, 1.5)
    scores = {"fid": 1.5, "fid_n_samples": 4, "fid_n_reference": 10, "fid_reference": "test split, all classes",
              "coverage": {"classes_present": 3, "min_ratio": 0.0},
              "manifold": {"precision": 0.75, "recall": 0.5, "density": 0.875, "coverage": 0.625, "k": 3,
                           "n_samples": 4, "n_reference": 4,
                           "reference": "random 4 of the test split (seed 0), all classes"}}  # fmt: skip
    assert eval_line(res, scores, "m.json").startswith(
        "FID 1.50 (4 samples vs 10 test split, all classes); precision 0.750, recall 0.500, density 0.875, "
        "coverage 0.625 (k=3, 4 samples vs random 4 of the test split (seed 0), all classes), classes present 3"
    )


# ----------------------------------------------------------------------------- pictures
def test_caption_strip_below_the_grid():
    imgs = torch.full((6, 28, 28), 100, dtype=torch.uint8)
    res = result(imgs, None, 2.0)
    assert sampler_caption(res) == "guidance 2, NFE 10 (euler)"
    assert sampler_caption(res, "step 500") == "step 500: guidance 2, NFE 10 (euler)"
    plain = grid_array(imgs, 3)
    img = np.asarray(grid_image(imgs, 3, caption=sampler_caption(res)))
    assert img.shape == (plain.shape[0] + CAPTION_HEIGHT, plain.shape[1])
    assert np.array_equal(img[: plain.shape[0]], plain)  # the grid itself is untouched
    strip = img[plain.shape[0] :]
    assert set(np.unique(strip)) == {0, 255} and (strip == 255).sum() > 50  # white text on black


def test_reconstructions_have_row_titles(tmp_path):
    a = torch.full((3, 28, 28), 50, dtype=torch.uint8)
    b = torch.full((3, 28, 28), 150, dtype=torch.uint8)
    with Image.open(save_reconstructions(a, b, tmp_path / "r.png", ncol=3)) as im:
        g = np.asarray(im)
    m = title_margin()
    assert m > 40 and g.shape == (2 * (2 * 30 + 2), m + 2 * (3 * 30 + 2))
    assert np.array_equal(g[:, m:], grid_array(torch.cat([a, b]), 3))  # the untitled grid, shifted right
    top, bottom = g[4 : 4 + 56, :m], g[64 : 64 + 56, :m]  # the margins of row 0 and row 1
    assert (top == 255).sum() > 20 and (bottom == 255).sum() > (top == 255).sum()  # "reconstruction" is longer
    with pytest.raises(ValueError, match="titles must be two strings"):
        save_reconstructions(a, b, tmp_path / "x.png", titles=["only one"])


def test_charts(tmp_path):
    pytest.importorskip("matplotlib")
    hist = {"step": [25.0, 50.0, 75.0], "loss": [1.0, 0.5, 0.4], "lr": [1e-3, 2e-3, 2e-3]}
    with Image.open(plot_loss(tmp_path / "loss.png", hist, title="t")) as im:
        assert im.format == "PNG" and im.size[0] > 300
    with pytest.raises(ValueError, match="equal, non-empty step and loss columns, got 0 and 0"):
        plot_loss(tmp_path / "x.png", {"step": [], "loss": []})
    rows = [{"guidance": g, "fid": f, "precision": p, "recall": r}
            for g, f, p, r in ((1.0, 3.0, 0.6, 0.7), (2.0, 2.0, 0.8, 0.5), (1.5, 2.5, 0.7, 0.6))]  # fmt: skip
    with Image.open(plot_guidance_sweep(tmp_path / "guidance.png", rows)) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
