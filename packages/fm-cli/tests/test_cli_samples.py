"""Sample files: round trips through numpy.load, concurrent writers, the summary line."""

from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fm_cli import describe_labels, sample_summary, write_samples


def test_images_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(12) % 3
    written = write_samples(tmp_path / "out" / "s.npz", images, labels)
    assert written == [tmp_path / "out" / "s.npz"]
    with np.load(written[0]) as f:
        assert sorted(f.files) == ["images", "labels"]
        assert f["images"].dtype == np.uint8 and np.array_equal(f["images"], images.numpy())
        assert f["labels"].dtype == np.int64 and f["labels"].tolist() == [0, 1, 2] * 4


def test_points_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2))  # float64 in, float32 out
    write_samples(tmp_path / "p.npz", x, None)
    with np.load(tmp_path / "p.npz") as f:
        assert f.files == ["x"] and f["x"].dtype == np.float32 and np.allclose(f["x"], x, atol=1e-6)
    write_samples(tmp_path / "q.npz", torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    with np.load(tmp_path / "q.npz") as f:
        assert sorted(f.files) == ["x", "y"] and f["y"].dtype == np.int64 and f["y"].tolist() == [0, 1, 0, 1]


def test_grid_and_gif_files(tmp_path):
    images = torch.zeros(150, 28, 28, dtype=torch.uint8)
    frames = torch.stack([torch.full((20, 28, 28), v, dtype=torch.uint8) for v in (0, 100, 200)])  # distinct frames
    written = write_samples(
        tmp_path / "s.npz",
        images,
        None,
        grid=tmp_path / "g.png",
        gif=tmp_path / "f.gif",
        gif_frames=frames,
        ncol=10,
        n_grid=100,
    )
    assert written == [tmp_path / "s.npz", tmp_path / "g.png", tmp_path / "f.gif"]
    with Image.open(tmp_path / "g.png") as im:  # 100 of the 150: 10 x 10 cells of 30 + 2, scale 2
        assert im.size == (2 * (10 * 30 + 2), 2 * (10 * 30 + 2))
    with Image.open(tmp_path / "f.gif") as im:  # 20 images in rows of 10
        assert im.n_frames == 3 and im.size == (2 * (10 * 30 + 2), 2 * (2 * 30 + 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples": torch.zeros(3, 28, 28)}, "uint8 images"),  # float images
        ({"samples": np.zeros((3, 2), np.int64)}, "float points"),
        ({"samples": torch.zeros(3, 2), "grid": "g.png"}, "need images"),
        (
            {"samples": torch.zeros(3, 28, 28, dtype=torch.uint8), "labels": torch.zeros(4)},
            r"labels must have shape \[3\]",
        ),
        ({"samples": torch.zeros(3, 28, 28, dtype=torch.uint8), "gif": "f.gif"}, "gif_frames"),
    ],
)
def test_bad_combinations_write_nothing(tmp_path, kwargs, match):
    samples = kwargs.pop("samples")
    labels = kwargs.pop("labels", None)
    kwargs = {k: tmp_path / v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        write_samples(tmp_path / "s.npz", samples, labels, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    """Two threads (one process id: only a per-writer temporary name keeps them apart) write
    different arrays to the same path many times; the file is always one of the two, complete."""
    out = tmp_path / "s.npz"
    a = np.full((64, 28, 28), 1, np.uint8)
    b = np.full((64, 28, 28), 2, np.uint8)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(images):
        try:
            start.wait()
            for _ in range(30):
                write_samples(out, images, np.zeros(64, np.int64))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert zipfile.is_zipfile(out)
    with np.load(out) as f:
        got = f["images"]
        assert got.shape == (64, 28, 28) and (np.array_equal(got, a) or np.array_equal(got, b))
        assert f["labels"].shape == (64,)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary files left


def test_summary_line():
    labels = torch.tensor([3, 0, 3, 1])
    assert describe_labels(labels) == "labels [0, 1, 3]" and describe_labels(None) == "unconditional"
    line = sample_summary(1000, "labels [0, 1]", "euler", 10, 2.0, 1.234, ["a.npz", "a.png"])
    assert line == "sampled 1000 images (labels [0, 1]; euler, NFE 10, guidance 2) in 1.2 s -> a.npz, a.png"
    line = sample_summary(5, "unconditional", "dopri5", 38, None, 0.04, ["p.npz"], noun="points")
    assert line == "sampled 5 points (unconditional; dopri5, NFE 38) in 0.0 s -> p.npz"
    assert sample_summary(2, "unconditional", "heun", 4, 1.5, 2.0, []).endswith("guidance 1.5) in 2.0 s -> ")
