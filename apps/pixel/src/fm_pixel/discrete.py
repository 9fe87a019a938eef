"""Discrete runs of fm-pixel (``train --model discrete --levels L``): grey levels as tokens (fm-discrete).

Each pixel's uint8 value v becomes the token floor(v L / 256) (fm_discrete.UniformQuantizer over
[0, 256)), so an image is 28 x 28 tokens of L levels. The network is fm-nets' ``TokenDiT`` (embedding
in, logits over the L levels per pixel out), trained with fm-discrete's loss on the mixture path
(t = 0 source: every pixel masked, or uniform levels; t = 1 data) with the run's time sampler and label
dropout. Sampling is fm-discrete's CTMC Euler sampler, one network call per step (``nfe`` steps), with
classifier-free guidance on the logits; a token becomes the centre of its grey-level bin, rounded down (uint8; with 256 levels the value itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fm_cli.images import check_label_guidance
from fm_core import SampleResult, get_time_sampler
from fm_discrete import DiscreteFlowMatchingLoss, MixturePath, UniformQuantizer, ctmc_sample
from fm_train import StepContext

from .config import IMAGE_SIZE, PixelConfig

__all__ = [
    "build_path",
    "discrete_loss_fn",
    "export_discrete",
    "quantizer",
    "sample_tokens",
    "to_tokens",
    "to_uint8_images",
]


def quantizer(cfg: PixelConfig) -> UniformQuantizer:
    """uint8 grey values [0, 256) to ``cfg.levels`` tokens and back."""
    return UniformQuantizer(cfg.levels, 0.0, 256.0)


def build_path(cfg: PixelConfig) -> MixturePath:
    return MixturePath(cfg.levels, source=cfg.source, scheduler=cfg.kappa)


def to_tokens(cfg: PixelConfig) -> Callable[[Tensor], Tensor]:
    """uint8 images [B, 28, 28] -> int64 tokens [B, 28, 28] (one table lookup on the images' device)."""
    table = quantizer(cfg).encode(torch.arange(256))

    def convert(images: Tensor) -> Tensor:
        return table.to(images.device)[images.long()]

    return convert


def to_uint8_images(cfg: PixelConfig) -> Callable[[Tensor], Tensor]:
    """int64 tokens [B, 28, 28] -> uint8 images [B, 28, 28] at the centres of the grey-level bins."""
    centres = quantizer(cfg).decode(torch.arange(cfg.levels)).floor().clamp(0, 255).to(torch.uint8)  # stays in its bin

    def convert(tokens: Tensor) -> Tensor:
        return centres.to(tokens.device)[tokens]

    return convert


def discrete_loss_fn(cfg: PixelConfig) -> Callable[[nn.Module, tuple[Tensor, Tensor | None], StepContext], Tensor]:
    """fm-train's ``loss_fn(model, (tokens [B, 28, 28], y [B] | None), ctx)``: fm-discrete's loss with the
    run's source, kappa, loss, time sampler and label dropout; randomness from ``ctx.generator``."""
    loss = DiscreteFlowMatchingLoss(build_path(cfg), time_sampler=get_time_sampler(cfg.time), loss=cfg.discrete_loss,
                                    label_dropout=cfg.label_dropout, num_classes=cfg.num_classes)  # fmt: skip

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor | None], ctx: StepContext) -> Tensor:
        tokens, y = batch
        return loss(model, tokens, y, generator=ctx.generator)

    return loss_fn


def sample_tokens(
    model: nn.Module,
    cfg: PixelConfig,
    n: int,
    *,
    solver: str | None = None,
    nfe: int | None = None,
    guidance: float | None = None,
    label: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    trajectory: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    precision: str | None = None,
) -> SampleResult:
    """``n`` uint8 images [n, 28, 28] from a discrete run's token model with the CTMC Euler sampler (the
    options of fm_cli.images.sample_images: the run's NFE and guidance by default, balanced labels over the
    trained classes unless ``label``). ``solver`` may only be "euler"; ``precision`` is not used (the
    sampler runs in float32). ValueError for what the run cannot do."""
    if solver not in (None, "euler"):
        raise ValueError(f"--solver {solver} does not apply to a discrete run: it samples with the CTMC Euler "
                         "sampler (--nfe sets its steps)")  # fmt: skip
    guidance = cfg.guidance if guidance is None else float(guidance)
    check_label_guidance(cfg, label, guidance)
    labels = torch.full((n,), label, dtype=torch.long) if label is not None else None
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    res = ctmc_sample(model, build_path(cfg), n, (IMAGE_SIZE, IMAGE_SIZE), steps=nfe or cfg.nfe, seed=seed,
                      labels=labels, num_classes=cfg.num_classes,
                      classes=cfg.sample_classes if cfg.conditional and labels is None else None, guidance=guidance,
                      batch_size=batch_size, decode=to_uint8_images(cfg), trajectory=trajectory, device=dev,
                      progress=progress)  # fmt: skip
    if res.trajectory is not None:  # tokens at every step -> images; masked pixels drawn mid-grey
        frames = res.trajectory.clamp(max=cfg.levels - 1)
        images = to_uint8_images(cfg)(frames)
        if cfg.source == "mask":
            images = torch.where(res.trajectory == cfg.levels, torch.full_like(images, 128), images)
        res.trajectory = images
    return res


def export_discrete(run_dir, out_dir, *, model: nn.Module, cfg: PixelConfig, config: dict[str, Any], prog: str,
                    fields: Sequence[str], net_flags: dict[str, Any], push: str | None = None) -> Any:  # fmt: skip
    """``fm-pixel export`` of a discrete run (fm_cli.export.export): the TokenDiT, the training command, and
    how to sample it with fm-discrete's CTMC sampler and turn tokens into uint8 images."""
    from fm_cli.export import export, training_command

    where = str(out_dir) if push is None else push
    labels = f", num_classes={cfg.num_classes}, classes={cfg.sample_classes}, guidance={cfg.guidance}"
    labels = labels if cfg.conditional else ""
    width = 256 / cfg.levels
    sampling = dict(network="fm_nets.TokenDiT", shape=[IMAGE_SIZE, IMAGE_SIZE], sampler="fm_discrete.ctmc_sample (euler)",
                    nfe=cfg.nfe, guidance=cfg.guidance, num_classes=cfg.num_classes, levels=cfg.levels,
                    source=cfg.source, kappa=cfg.kappa, classes=cfg.sample_classes if cfg.conditional else None,
                    decode=f"token k -> uint8 floor((k + 0.5) * {width:g})")  # fmt: skip
    lines = ["import torch", "from fm_discrete import MixturePath, ctmc_sample", "from fm_nets import TokenDiT",
             f"net = TokenDiT.from_pretrained({where!r})",
             f"path = MixturePath({cfg.levels}, source={cfg.source!r}, scheduler={cfg.kappa!r})",
             f"tokens = ctmc_sample(net, path, 16, ({IMAGE_SIZE}, {IMAGE_SIZE}), steps={cfg.nfe}{labels}).x",
             f"images = torch.floor((tokens + 0.5) * {width:g}).to(torch.uint8)  # [16, 28, 28]"]  # fmt: skip
    command = training_command(prog, config, "pixel", fields, net_flags)
    return export(
        run_dir,
        out_dir,
        model=model,
        command=command,
        sampling=sampling,
        load_lines="\n".join(lines),
        library="fm-nets",
        tags=[prog, cfg.dataset, "discrete-flow-matching"],
        datasets=[cfg.dataset],
        push=push,
    )
