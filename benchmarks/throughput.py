"""Training throughput of the default networks in float32, bf16 autocast and bf16 + torch.compile (issue 21).

    python benchmarks/throughput.py                  # the full run (minutes; on a quiet machine)
    python benchmarks/throughput.py --quick          # smoke run: tiny batches, one timed step, compile on the MLP only
    python benchmarks/throughput.py --threads 2 --device cuda

Networks, each at its app's default batch (read from the apps' recipes, not copied):

- toy MLP: fm-toy2d's default recipe on the checkerboard (points/s);
- pixel U-Net: fm-pixel's default recipe, conditional MNIST (images/s);
- pixel DiT: fm-pixel's ``--net dit``;
- latent DiT: fm-latentgen's DiT on the latent shape its default VAE gives (latents/s).

A step is what fm-train's Trainer does: the app's loss under the precision's autocast, backward,
gradient clipping (where the recipe clips), the fused AdamW step and the EMA update. After warm-up
(the first step of a compiled network compiles it; its time is reported as compile seconds), steps
are timed for ``--seconds`` (at least ``--min-steps``). Also: the machine's 2048x2048 matrix-product
GFLOP/s in float32 and bf16, the training FLOPs of one step (torch's FlopCounterMode, float32: matrix
products and convolutions only) and the achieved FLOP/s as a fraction of the peak of the step's precision.

Writes the "Throughput" section of benchmarks/RESULTS.md unless ``--no-write`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_recipes  # noqa: E402  (the RESULTS.md section writer and the load average)

SECTION = "## Throughput: fp32, bf16 and bf16 + compile (issue 21)"
NETS = ("toy MLP", "pixel U-Net", "pixel DiT", "latent DiT")
MODES = ("fp32", "bf16", "bf16+compile")


@dataclass
class Workload:
    """One network at its app's default batch: ``loss(model) -> 0-d loss`` on a fixed batch."""

    name: str
    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    batch: int
    unit: str
    grad_clip: float | None


def workload(name: str, device: torch.device, batch: int | None = None) -> Workload:
    """The app's network, loss and default batch (``batch`` overrides the batch: --quick)."""
    from fm_train import StepContext

    torch.manual_seed(0)
    g = torch.Generator(device=device).manual_seed(0)
    ctx = StepContext(generator=g)
    if name == "toy MLP":
        from fm_toy2d.config import make_config as toy_config
        from fm_toy2d.training import build_distribution, build_loss, build_model

        cfg = toy_config("checkerboard")
        b = batch or cfg.batch_size
        dist = build_distribution(cfg)
        model = build_model(cfg, dist).to(device)
        x = dist.sample(b, generator=torch.Generator().manual_seed(0)).to(device)
        fm = build_loss(cfg)
        return Workload(name, model, lambda m: fm(m, x, None, generator=g), b, "points/s", cfg.grad_clip)
    if name in ("pixel U-Net", "pixel DiT"):
        from fm_pixel.config import make_config as pixel_config
        from fm_pixel.training import build_model as pixel_model
        from fm_pixel.training import make_loss_fn

        pcfg = pixel_config("mnist", conditional=True, net="dit" if name == "pixel DiT" else None)
        b = batch or pcfg.train.batch_size
        model = pixel_model(pcfg).to(device)
        x = torch.rand(b, 1, pcfg.model_size, pcfg.model_size, device=device) * 2 - 1
        y = torch.randint(0, 10, (b,), device=device)
        loss_fn = make_loss_fn(pcfg)
        return Workload(name, model, lambda m: loss_fn(m, (x, y), ctx), b, "images/s", pcfg.train.grad_clip)
    if name == "latent DiT":
        from fm_cli.images import flow_loss
        from fm_latentgen.config import VAE_DEFAULTS
        from fm_latentgen.config import make_config as latent_config
        from fm_nets import build_net

        size = 32 // 2 ** (len(VAE_DEFAULTS["block_out_channels"]) - 1)  # 28x28 padded to 32, then downsampled
        lcfg = latent_config("mnist", [VAE_DEFAULTS["latent_channels"], size, size], conditional=True)
        b = batch or lcfg.train.batch_size
        model = build_net(lcfg.net, num_classes=lcfg.num_classes, **lcfg.net_config).to(device)
        z = torch.randn(b, *lcfg.latent_shape, device=device)
        y = torch.randint(0, 10, (b,), device=device)
        loss_fn = flow_loss(lcfg)
        return Workload(name, model, lambda m: loss_fn(m, (z, y), ctx), b, "latents/s", lcfg.train.grad_clip)
    raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETS)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(w: Workload) -> float:
    """FLOPs of one forward + backward pass (float32, FlopCounterMode)."""
    model = copy.deepcopy(w.model)
    with FlopCounterMode(display=False) as counter:
        w.loss(model).backward()
    return float(counter.get_total_flops())


def measure(w: Workload, mode: str, device: torch.device, seconds: float, min_steps: int, warmup: int) -> dict:
    """Steps of the Trainer's kind on a copy of the network: rate (items/s), compile seconds, steps timed."""
    from fm_train import EMA, maybe_compile
    from fm_train.precision import precision_autocast

    model = copy.deepcopy(w.model).train()
    ema = EMA(model, decay=0.999)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type in ("cpu", "cuda") else {}))
    run = maybe_compile(model, mode.endswith("+compile"))
    amp = precision_autocast(device, "bf16" if mode.startswith("bf16") else "fp32")

    def step() -> None:
        with amp:
            loss = w.loss(run)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        if w.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, w.grad_clip)
        opt.step()
        ema.update(model)

    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        step()
        n += 1
        _sync(device)
    spent = time.perf_counter() - t0
    return {
        "rate": w.batch * n / spent,
        "step_s": spent / n,
        "steps": n,
        "compile_s": first if mode.endswith("+compile") else None,
    }


def _rate(v: float) -> str:
    """1,050 / 66.2 / 0.413: whole numbers from 100 up, three significant digits below."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def table(rows: list[dict], peaks: dict[str, float], args: argparse.Namespace, load_before: Any) -> str:
    modes = [m for m in MODES if any(m in r["modes"] for r in rows)]
    head = " | ".join(f"{m} rate (% of peak)" for m in modes)
    lines = [
        f"`python benchmarks/throughput.py{''.join(' ' + a for a in args.argv)}` ({time.strftime('%Y-%m-%d')}, device "
        f"{args.device_resolved}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average before {load_before}, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}).",
        "",
        f"Matrix product (n x n, n = {args.matmul_sizes['fp32']} in float32, {args.matmul_sizes['bf16']} in bf16): "
        f"{peaks['fp32']:.1f} GFLOP/s in float32, {peaks['bf16']:.1f} GFLOP/s in bf16 (ratio "
        f"{peaks['bf16'] / peaks['fp32']:.2f}).",
        "",
        "Rates are items per second of full training steps (autocast forward and loss, backward, clipping, fused "
        "AdamW, EMA); % of peak: training FLOP/s (FlopCounterMode, matrix products and convolutions only) over the "
        "matrix-product rate of the step's precision above. Compile: the first compiled step, compilation included.",
        "",
        f"| network (params) | batch | training GFLOP / step | {head} | compile s |",
        "|---|---|---|" + "---|" * len(modes) + "---|",
    ]
    for r in rows:
        cells = []
        for m in modes:
            res = r["modes"].get(m)
            if res is None:
                cells.append("skipped")
                continue
            peak = peaks["fp32" if m == "fp32" else "bf16"] * 1e9
            frac = r["flops"] * res["rate"] / r["batch"] / peak
            cells.append(f"{_rate(res['rate'])} {r['unit']} ({100 * frac:.1f}%)")
        comp = r["modes"].get("bf16+compile")
        comp_s = f"{comp['compile_s']:.1f}" if comp and comp["compile_s"] is not None else "-"
        lines.append(
            f"| {r['name']} ({r['params']:,}) | {r['batch']} | {r['flops'] / 1e9:.3f} | {' | '.join(cells)} | {comp_s} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 4, one timed step, compile on the toy MLP only, 512x512 matmul, no write")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")
    p.add_argument("--nets", default=",".join(NETS), help=f"comma-separated subset of: {', '.join(NETS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of: {', '.join(MODES)}")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per cell (default 5, --quick 0)")
    p.add_argument("--min-steps", type=int, default=None, help="timed steps per cell at least (default 3, --quick 1)")
    p.add_argument("--matmul", type=int, default=None, help="matrix size of the peak (default 2048, --quick 512)")
    p.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the table's command line
    from fm_train import resolve_device
    from fm_train.precision import matmul_gflops

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device_resolved = str(device)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for n in nets:
        if n not in NETS:
            p.error(f"--nets: unknown network {n!r}; choose from {', '.join(NETS)}")
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
    seconds = args.seconds if args.seconds is not None else (0.0 if args.quick else 5.0)
    min_steps = args.min_steps or (1 if args.quick else 3)
    args.matmul = args.matmul or (512 if args.quick else 2048)
    load_before = pixel_recipes.load()

    peak_s = 0.2 if args.quick else 2.0
    peaks, args.matmul_sizes = {}, {}
    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        # a 512 probe first: where a precision crawls (bf16 without AVX512-BF16 runs at ~0.1 GFLOP/s, so one
        # 2048 product takes minutes) the probe is its peak, measured at 512 and said so in the table
        probe = matmul_gflops(device, dtype, n=512, seconds=0.2)
        slow = probe < 5.0 and args.matmul > 512
        args.matmul_sizes[prec] = 512 if slow else args.matmul
        peaks[prec] = probe if slow else matmul_gflops(device, dtype, n=args.matmul, seconds=peak_s)
    print(f"matmul: fp32 {peaks['fp32']:.1f} GFLOP/s ({args.matmul_sizes['fp32']}), bf16 {peaks['bf16']:.1f} GFLOP/s "
          f"({args.matmul_sizes['bf16']})", flush=True)  # fmt: skip
    rows = []
    for name in nets:
        w = workload(name, device, batch=4 if args.quick else None)
        row = {"name": name, "batch": w.batch, "unit": w.unit, "modes": {},
               "params": sum(p.numel() for p in w.model.parameters()), "flops": step_flops(w)}  # fmt: skip
        for mode in modes:
            if args.quick and mode.endswith("+compile") and name != "toy MLP":
                continue
            # the first compiled step compiles, the second may still recompile; an eager step needs one warm-up
            res = measure(
                w, mode, device, seconds, min_steps, warmup=2 if mode.endswith("+compile") and not args.quick else 1
            )
            row["modes"][mode] = res
            comp = f", compile {res['compile_s']:.1f} s" if res["compile_s"] is not None else ""
            print(f"{name} {mode}: {res['rate']:,.1f} {w.unit} ({res['steps']} steps, {res['step_s'] * 1e3:.1f} ms "
                  f"a step{comp})", flush=True)  # fmt: skip
        rows.append(row)
    text = table(rows, peaks, args, load_before)
    print(text)
    if not (args.no_write or args.quick):
        pixel_recipes.write_section(text, section=SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
