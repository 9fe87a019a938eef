"""Loading and sampling a trained fm-pixel run: noise (t = 0) -> images (t = 1) with fm-core's
``sample`` through ``fm_cli.images.sample_images`` (balanced labels, classifier-free guidance).

The network runs on [B, 1, S, S] with S = 28, or 32 when it needs padding; ``to_uint8`` turns the
final states into uint8 images [N, 28, 28] (cropping the padding back off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fm_cli.images import read_run, sample_images
from fm_core import SampleResult
from fm_data.images import to_uint8
from fm_nets import build_net
from fm_train import load_model_for_sampling

from .config import PixelConfig
from .training import APP

__all__ = ["generate", "load_run", "read_run_config"]


def read_run_config(run_dir: str | Path) -> tuple[PixelConfig, dict[str, Any]]:
    """(PixelConfig, the whole config.json) of an fm-pixel run; ValueError naming the file otherwise."""
    return read_run(run_dir, APP, "pixel", PixelConfig)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, PixelConfig]:
    """The run's network with its EMA weights (eval mode, on ``device``) and its PixelConfig."""
    cfg, _ = read_run_config(run_dir)

    def build(config: dict[str, Any]) -> nn.Module:
        net = config.get("net", {})
        return build_net(net["name"], **net["config"])

    model, _ = load_model_for_sampling(run_dir, build, device=device)
    return model, cfg


def generate(model: nn.Module, cfg: PixelConfig, n: int, **options: Any) -> SampleResult:
    """``n`` images uint8 [n, 28, 28] in ``.x`` (labels in ``.labels``) from ``model``; ``options``:
    solver, nfe, guidance, label, seed, batch_size, trajectory, device, progress (defaults: the run's
    sampler, balanced labels; see fm_cli.images.sample_images). ValueError for what the run cannot do.
    A discrete run samples with fm-discrete's CTMC (fm_pixel.discrete.sample_tokens)."""
    if cfg.model == "discrete":
        from .discrete import sample_tokens

        return sample_tokens(model, cfg, n, **options)
    return sample_images(model, cfg, n, (1, cfg.model_size, cfg.model_size), decode=to_uint8, **options)
