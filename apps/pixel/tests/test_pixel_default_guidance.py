"""The default guidance per data set (fm_pixel.config.DEFAULT_GUIDANCE, fm_latentgen.config's too):
the one table decides what a new run stores, --guidance overrides it, unconditional runs and the
other recipes keep theirs."""

from __future__ import annotations

import pytest

from fm_pixel import config as pixel_config


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_the_table_sets_the_default_recipes_guidance(dataset, monkeypatch):
    monkeypatch.setitem(pixel_config.DEFAULT_GUIDANCE, dataset, 1.25)
    assert pixel_config.make_config(dataset, conditional=True).guidance == 1.25
    assert pixel_config.make_config(dataset, conditional=True, guidance=3.0).guidance == 3.0  # --guidance wins
    assert pixel_config.make_config(dataset).guidance == 1.0  # unconditional: no guidance
    assert pixel_config.make_config(dataset, "mit", conditional=True).guidance == 3.0  # the lab's own


def test_latentgen_table(monkeypatch):
    latent_config = pytest.importorskip("fm_latentgen.config")
    monkeypatch.setitem(latent_config.DEFAULT_GUIDANCE, "fashion-mnist", 1.5)
    assert latent_config.make_config("fashion-mnist", [8, 4, 4], conditional=True).guidance == 1.5
    assert (
        latent_config.make_config("mnist", [8, 4, 4], conditional=True).guidance
        == latent_config.DEFAULT_GUIDANCE["mnist"]
    )
    assert latent_config.make_config("fashion-mnist", [8, 4, 4], conditional=True, guidance=2.5).guidance == 2.5
