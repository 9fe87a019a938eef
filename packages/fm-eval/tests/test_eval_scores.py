"""Tests of fm_eval.scores: image_scores on real images (a set scored against itself has FID 0,
counts and reference words as stated) and reconstruction_scores' MSE / PSNR against hand-computed
values. Real data comes from the ``data_dir`` fixture (conftest.py; skipped when absent)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fm_data.images import load_images
from fm_eval.classifier import classify
from fm_eval.fid import fid
from fm_eval.scores import image_scores, reconstruction_scores

COVERAGE_KEYS = {"min_ratio", "max_ratio", "classes_present", "shares"}
FEATURES = "fm_eval mnist classifier, 128-dim penultimate layer"


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return load_images("mnist", "test", data_dir)


def test_image_scores_on_a_class_subset_scored_against_itself(mnist_test, data_dir):
    # the samples are exactly the test images of classes 3 and 5, the reference of classes=[3, 5]:
    # FID 0, both counts the number of such test images, coverage over the two classes only
    keep = (mnist_test.labels == 3) | (mnist_test.labels == 5)
    images, labels = mnist_test.images[keep], mnist_test.labels[keep]
    n = int(keep.sum())
    s = image_scores(images, "mnist", labels=labels, classes=[5, 3, 3], data_dir=data_dir)
    assert set(s) == {"fid", "fid_n_samples", "fid_n_reference", "fid_reference", "fid_features", "label_accuracy",
                      "coverage", "scoring_seconds"}  # fmt: skip
    assert s["fid"] == pytest.approx(0.0, abs=1e-4)
    assert (s["fid_n_samples"], s["fid_n_reference"]) == (n, n)
    assert s["fid_reference"] == "test split, classes [3, 5]" and s["fid_features"] == FEATURES
    pred = classify(images, "mnist").logits.argmax(1)
    assert s["label_accuracy"] == round(float((pred == labels).float().mean()), 4) and s["label_accuracy"] > 0.98
    cov = s["coverage"]
    assert set(cov) == COVERAGE_KEYS and cov["classes_present"] == 2 and len(cov["shares"]) == 10
    share3, share5 = (float((pred == c).float().mean()) for c in (3, 5))
    assert cov["shares"][3] == round(share3, 4) and cov["shares"][5] == round(share5, 4)
    # ratio = share / (1 / 2): the uniform share over the two trained classes
    assert cov["min_ratio"] == pytest.approx(2 * min(share3, share5), abs=1e-4)
    assert cov["max_ratio"] == pytest.approx(2 * max(share3, share5), abs=1e-4)
    assert s["scoring_seconds"] >= 0


def test_image_scores_all_classes_without_labels(data_dir):
    train = load_images("mnist", "train", data_dir)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:1000]
    images = train.images[idx]
    s = image_scores(images[:, None], "mnist", data_dir=data_dir)  # [N, 1, 28, 28] is accepted too
    assert "label_accuracy" not in s
    assert (s["fid_n_samples"], s["fid_n_reference"], s["fid_reference"]) == (1000, 10_000, "test split, all classes")
    assert s["fid"] == round(fid(images, "mnist", "test", data_dir=data_dir).fid, 4) and s["fid"] < 5.0
    cov = s["coverage"]
    assert cov["classes_present"] == 10 and sum(cov["shares"]) == pytest.approx(1.0, abs=1e-3)
    assert 0.5 < cov["min_ratio"] <= 1.0 <= cov["max_ratio"] < 1.5


def test_image_scores_refuses_bad_input_before_scoring():
    imgs = torch.zeros(20, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        image_scores(imgs.float(), "mnist")
    with pytest.raises(ValueError, match="classes"):
        image_scores(imgs, "mnist", classes=[3, 10])
    with pytest.raises(ValueError, match="classes"):
        image_scores(imgs, "mnist", classes="3,5")
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        image_scores(imgs, "mnist", labels=torch.zeros(19, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown data set 'cifar10'"):
        image_scores(imgs, "cifar10")


def test_reconstruction_mse_and_psnr_by_hand(data_dir):
    # 4 images: two black (x = -1) reconstructed exactly, two white (x = +1) reconstructed as 0:
    # squared error 0 on half the pixels and 1 on the other half -> MSE 0.5, PSNR 10 log10(4 / 0.5)
    originals = torch.zeros(4, 28, 28, dtype=torch.uint8)
    originals[2:] = 255
    rec = torch.full((4, 1, 28, 28), -1.0)
    rec[2:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FID of 4 images: rank-deficient, expected here
        s = reconstruction_scores(originals, rec, "mnist", data_dir=data_dir)
        s2 = reconstruction_scores(originals[:, None], rec[:, 0] * 0.5 - 0.5, "mnist", data_dir=data_dir)
    assert set(s) == {"n", "mse", "psnr_db", "fid_reconstructions", "fid_originals", "fid_reference"}
    assert s["n"] == 4 and s["mse"] == 0.5 and s["psnr_db"] == round(10 * math.log10(8.0), 2) == 9.03
    assert s["fid_reference"] == "mnist test split (10000 images)"
    assert s["fid_reconstructions"] >= 0 and s["fid_originals"] >= 0
    # rec * 0.5 - 0.5: -1 stays -1 (error 0), 0 becomes -0.5 (error 1.5 against +1): MSE 1.125
    assert s2["mse"] == 1.125 and s2["psnr_db"] == round(10 * math.log10(4.0 / 1.125), 2) == 5.51
    assert s2["fid_originals"] == s["fid_originals"]  # the same originals, [N, 1, 28, 28] or [N, 28, 28]


def test_reconstruction_scores_refuses_mismatched_input():
    originals = torch.zeros(4, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="must match the originals"):
        reconstruction_scores(originals, torch.zeros(3, 1, 28, 28), "mnist")
    with pytest.raises(ValueError, match="must match the originals"):
        reconstruction_scores(originals, torch.zeros(4, 1, 32, 32), "mnist")
    with pytest.raises(ValueError, match="float tensor"):
        reconstruction_scores(originals, originals, "mnist")
    with pytest.raises(ValueError, match="NaN"):
        reconstruction_scores(originals, torch.full((4, 1, 28, 28), float("nan")), "mnist")
    with pytest.raises(ValueError, match="uint8"):
        reconstruction_scores(originals.float(), torch.zeros(4, 1, 28, 28), "mnist")
