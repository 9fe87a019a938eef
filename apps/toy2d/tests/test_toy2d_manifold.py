"""fm-toy2d's sample metrics report precision / recall / density / coverage on raw coordinates
(fm_eval.manifold_scores against the held-out points): the held-out points scored against
themselves give 1, 1, 4/3, 1; points far from the board give 0."""

from __future__ import annotations

import pytest

from fm_toy2d.config import make_config
from fm_toy2d.evaluation import heldout_data, sample_metrics
from fm_toy2d.training import build_distribution


def test_heldout_points_against_themselves_and_far_points():
    cfg = make_config("checkerboard", grid=4)
    dist = build_distribution(cfg)
    x, _ = heldout_data(cfg, dist, 600)  # the same points sample_metrics compares with
    m = sample_metrics(cfg, dist, x, None, w2_n=100, ed_n=100)["manifold"]
    assert (m["precision"], m["recall"], m["coverage"]) == (1.0, 1.0, 1.0)
    assert m["density"] == pytest.approx(4 / 3) and (m["k"], m["n_samples"], m["n_reference"]) == (3, 600, 600)
    far = sample_metrics(cfg, dist, x + 100.0, None, w2_n=100, ed_n=100, pr_n=200)["manifold"]
    assert (far["precision"], far["recall"], far["density"], far["coverage"]) == (0.0, 0.0, 0.0, 0.0)
    assert far["n_samples"] == 200 and far["reference"] == "held-out data"
