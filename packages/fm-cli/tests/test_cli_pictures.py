"""Grids, labelled grids, GIFs and reconstructions: pixel sizes computed by hand, pixels checked
where they must be (an image's cell, the black gaps, a label strip with white text)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fm_cli import LABEL_HEIGHT, grid_array, grid_image, save_gif, save_grid, save_reconstructions


def five() -> torch.Tensor:
    imgs = torch.zeros(5, 28, 28, dtype=torch.uint8)
    imgs[3] = 200
    return imgs


def test_grid_layout():
    g = grid_array(five(), ncol=3, gap=2, scale=1)
    assert g.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert (g[32:60, 2:30] == 200).all() and g[:32].max() == 0 and g[32:60, 32:].max() == 0  # image 3: row 1, col 0
    assert np.array_equal(grid_array(five().numpy(), 3, scale=1), g)  # numpy in, same grid
    assert grid_array(five(), 3).shape == (2 * 62, 2 * 92)  # scale 2


def test_grid_refuses_wrong_input():
    with pytest.raises(
        ValueError, match=r"grid_array expects uint8 images \[N, H, W\], got torch.float32 \(5, 28, 28\)"
    ):
        grid_array(torch.zeros(5, 28, 28))
    with pytest.raises(ValueError, match="uint8 images"):
        grid_array(np.zeros((0, 28, 28), np.uint8))


def test_save_grid_unlabelled(tmp_path):
    p = save_grid(five(), tmp_path / "sub" / "g.png", 3)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (2 * (3 * 30 + 2), 2 * (2 * 30 + 2))
        assert np.array_equal(np.asarray(im), grid_array(five(), 3))
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["g.png"]  # no temporary file left


def test_labelled_grid_one_label_per_image(tmp_path):
    # 5 images of 28x28, 3 per row, gap 2, scale 2: width (3*30 + 2)*2 = 184; two rows of
    # (2*30 + 2)*2 = 124 pixels plus a label strip above each of the 2 rows.
    p = save_grid(five(), tmp_path / "g.png", 3, labels=["T-shirt", "Trouser", 2, 3, "Bag"])
    with Image.open(p) as im:
        assert im.size == (184, 124 + 2 * LABEL_HEIGHT)
        a = np.asarray(im)
    band = 30 * 2  # (28 + gap) * scale
    # the strips hold white text and only there
    strip0, strip1 = a[:LABEL_HEIGHT], a[LABEL_HEIGHT + band : 2 * LABEL_HEIGHT + band]
    assert strip0.max() == 255 and strip1.max() == 255
    # each image sits below its strip and the gap: image 3 (value 200) at row 1, column 0
    top = 2 * LABEL_HEIGHT + band + 2 * 2
    assert (a[top : top + 56, 4 : 4 + 56] == 200).all()
    # the grid below the strips is the unlabelled grid cut in bands
    plain = grid_array(five(), 3)
    assert np.array_equal(a[LABEL_HEIGHT : LABEL_HEIGHT + band], plain[:band])
    assert np.array_equal(a[2 * LABEL_HEIGHT + band :], plain[band:])
    # text is drawn inside its own cell: nothing over the gaps between columns
    for c in range(4):
        x = c * 60  # the gap columns at x = 60c .. 60c + 3
        assert strip0[:, x : x + 4].max() == 0


def test_labelled_grid_one_label_per_column(tmp_path):
    imgs = torch.full((8, 28, 28), 9, dtype=torch.uint8)
    p = save_grid(imgs, tmp_path / "g.png", 4, labels=[0, 1, 2, 3], scale=1)
    with Image.open(p) as im:
        # 4 columns: 4*30 + 2 = 122 wide; 2 rows: 2*30 + 2 = 62 high, plus one strip
        assert im.size == (122, 62 + LABEL_HEIGHT)
        a = np.asarray(im)
    assert a[:LABEL_HEIGHT].max() == 255 and np.array_equal(a[LABEL_HEIGHT:], grid_array(imgs, 4, scale=1))


def test_a_label_sits_over_its_own_column():
    imgs = torch.zeros(3, 28, 28, dtype=torch.uint8)
    a = np.asarray(grid_image(imgs, 3, labels=["", "7", ""], scale=2))
    strip = a[:LABEL_HEIGHT]
    assert set(np.unique(strip).tolist()) == {0, 255}  # crisp white text on black
    cols = np.nonzero(strip.max(axis=0))[0]
    assert cols.min() >= 2 * 32 and cols.max() < 2 * 32 + 56  # inside column 1: x in [64, 120)
    assert abs((cols.min() + cols.max()) / 2 - (64 + 56 / 2)) <= 2  # and centred over it


def test_labels_must_match_images_or_columns():
    with pytest.raises(ValueError, match=r"labels: expected one per image \(5\) or one per column \(3\), got 2"):
        grid_image(five(), 3, labels=[1, 2])


def test_long_labels_are_cut_to_their_cell():
    img = grid_image(torch.zeros(2, 28, 28, dtype=torch.uint8), 2, labels=["a very long class name"] * 2, scale=1)
    a = np.asarray(img)
    assert a[:LABEL_HEIGHT, 30:32].max() == 0  # the gap between the two cells stays black


def test_save_gif(tmp_path):
    frames = torch.stack([five(), 255 - five(), five()])
    p = save_gif(frames, tmp_path / "a.gif", 3, labels=[0, 1, 2, 3, 4])
    with Image.open(p) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.size == (184, 124 + 2 * LABEL_HEIGHT)
    with pytest.raises(ValueError, match=r"save_gif expects uint8 frames \[T, N, H, W\]"):
        save_gif(five(), tmp_path / "b.gif")


def test_save_reconstructions(tmp_path):
    a = torch.full((3, 28, 28), 50, dtype=torch.uint8)
    b = torch.full((3, 28, 28), 150, dtype=torch.uint8)
    p = save_reconstructions(a, b, tmp_path / "r.png", ncol=2, titles=None)
    with Image.open(p) as im:
        g = np.asarray(im)
    # rows: a0 a1 / b0 b1 / a2 blank / b2 blank -> 4 rows of 2 columns at scale 2
    assert g.shape == (2 * (4 * 30 + 2), 2 * (2 * 30 + 2))

    def cell(r: int, c: int) -> np.ndarray:
        return g[2 * (2 + r * 30) : 2 * (2 + r * 30 + 28), 2 * (2 + c * 30) : 2 * (2 + c * 30 + 28)]

    assert (cell(0, 1) == 50).all() and (cell(1, 0) == 150).all() and (cell(2, 0) == 50).all()
    assert (cell(3, 0) == 150).all() and (cell(2, 1) == 0).all() and (cell(3, 1) == 0).all()
    with pytest.raises(ValueError, match="differ in shape"):
        save_reconstructions(a, b[:2], tmp_path / "x.png")
