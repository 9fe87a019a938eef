"""The discrete options have one set of choices: fm-cli's flags (which may not import fm-discrete) and the
apps' configs list exactly what fm-discrete accepts."""

from __future__ import annotations

import fm_discrete
from fm_cli import flags
from fm_pixel import config as pixel_config
from fm_toy2d import config as toy_config


def test_choices_match_fm_discrete():
    sources, kappas, losses = fm_discrete.SOURCES, tuple(fm_discrete.KAPPA_SCHEDULERS), fm_discrete.LOSSES
    assert flags.DISCRETE_SOURCES == sources and flags.DISCRETE_KAPPAS == kappas and flags.DISCRETE_LOSSES == losses
    for cfg in (pixel_config, toy_config):
        assert (cfg.SOURCES, cfg.KAPPAS, cfg.LOSSES) == (sources, kappas, losses)
