"""What DDP costs on this machine, and what the default networks should do on one H100 (issue 7).

    python benchmarks/ddp.py                 # about 4 minutes on the 2-core machine; run it on an idle machine
    python benchmarks/ddp.py --steps 4 --no-write   # smoke test

Part 1, measured, in one run: fm-toy2d's default (MLP, batch 1,024) and fm-pixel's default
(U-Net, batch 64, MNIST) trained for ``--steps`` optimizer steps through their own CLIs, with the
same global batch, as

- one process, one thread;
- one process, two threads (the usual way to use both cores);
- two processes with one thread each under torchrun (gloo, DDP): the batch split in two.

Throughput is the Trainer's own count (steps in its loop over its wall time, which includes the
DDP all-reduce, the per-step clock broadcast and the final checkpoint).

Part 2, on paper: training FLOPs per image (forward + backward, torch's FlopCounterMode) of the
default U-Net, the pixel DiT (``fm-pixel --net dit``) and fm-latentgen's latent DiT, and the
H100 throughput they imply under stated assumptions (see ``H100_*`` below and the printed table).
Also the number of operators a training step launches (torch's profiler on the CPU), which bounds
small-batch GPU steps from below: each operator is at least one kernel launch.

Results go to the "DDP" section of benchmarks/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_recipes  # noqa: E402  (the RESULTS.md section writer and the load average)

SECTION = "## DDP: one process against two (issue 7)"
#: H100 SXM dense BF16 tensor-core peak (NVIDIA's datasheet, without sparsity), FLOP/s.
H100_PEAK = 989e12
#: Model FLOP utilisation assumed for these small networks: 10% (small convolutions, GroupNorm,
#: attention over few tokens are memory-bound) to 30% (what well-tuned mid-size training reaches).
H100_MFU = (0.10, 0.30)
#: Assumed cost of one kernel launch with the CPU side of PyTorch's eager mode, seconds.
LAUNCH_S = 8e-6


def _run(cmd: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _launch(module: str, args: list[str], procs: int, threads: int) -> str:
    if procs == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            "-m",
            module,
            *args,
        ]
    return _run(cmd, threads)


def measure(app: str, steps: int, procs: int, threads: int, tmp: Path) -> float:
    """Training steps per second of ``app``'s default recipe."""
    out = tmp / f"{app}-{procs}x{threads}"
    if app == "toy2d":
        text = _launch(
            "fm_toy2d.cli",
            ["train", "--steps", str(steps), "--no-pictures", "--quiet", "--device", "cpu", "--out", str(out)],
            procs,
            threads,
        )
        m = re.search(r"trained (\d+) steps in ([\d.]+) s \(([\d.]+) steps/s\)", text)
        if m is None:
            raise RuntimeError(f"unexpected fm-toy2d output:\n{text[-2000:]}")
        return float(m.group(3))
    _launch(
        "fm_pixel.cli",
        [
            "train",
            "--dataset",
            "mnist",
            "--conditional",
            "--steps",
            str(steps),
            "--sample-every",
            str(10 * steps),
            "--quiet",
            "--device",
            "cpu",
            "--threads",
            str(threads),
            "--out",
            str(out),
        ],
        procs,
        threads,
    )
    rec = json.loads((out / "metrics.json").read_text())["train"]
    assert rec.get("processes", 1) == procs, rec
    return rec["steps_this_call"] / rec["seconds"]


def flops_and_ops(name: str) -> dict:
    """Training FLOPs per image and operators per step of one default network (CPU, float32)."""
    from fm_pixel.config import make_config
    from fm_pixel.training import build_model, make_loss_fn
    from fm_train import StepContext

    torch.manual_seed(0)
    if name == "latent DiT":
        from fm_latentgen.config import dit_defaults
        from fm_nets import build_net

        model = build_net("dit", num_classes=10, **dit_defaults([8, 4, 4]))
        cfg = make_config("mnist", conditional=True)
        x = torch.randn(cfg.train.batch_size * 2, 8, 4, 4)  # the latent recipe's batch is 128
    else:
        cfg = make_config("mnist", conditional=True, net="dit" if "DiT" in name else "unet")
        model = build_model(cfg)
        x = torch.randn(cfg.train.batch_size, 1, cfg.model_size, cfg.model_size)
    y = torch.randint(0, 10, (x.shape[0],))
    loss_fn = make_loss_fn(cfg)
    g = torch.Generator().manual_seed(0)
    ctx = StepContext(generator=g)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, (x, y), ctx).backward()
    flops = counter.get_total_flops() / x.shape[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, (x, y), ctx).backward()
        opt.step()
    # outermost aten operators (forward, backward under autograd's nodes, optimizer): each is at
    # least one kernel on a GPU
    ops = sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )
    return {
        "net": name,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": x.shape[0],
        "gflop_per_image": flops / 1e9,
        "ops_per_step": ops,
    }


def table(speed: dict, paper: list[dict], steps: int, load_before) -> str:
    lines = [
        f"`python benchmarks/ddp.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average before "
        f"{load_before}); each row trains the app's default recipe for {steps} steps with the same global batch; "
        "steps/s as fm-train counts them (loop wall time, DDP communication included).",
        "",
        "| app (global batch) | 1 process, 1 thread | 1 process, 2 threads | 2 processes x 1 thread (DDP, gloo) | DDP / 1x2 threads |",
        "|---|---|---|---|---|",
    ]
    for app, label in (("toy2d", "fm-toy2d MLP (1,024)"), ("pixel", "fm-pixel U-Net (64)")):
        s = speed[app]
        lines.append(f"| {label} | {s['1x1']:.2f} | {s['1x2']:.2f} | {s['2x1']:.2f} | {s['2x1'] / s['1x2']:.2f} |")
    lines += [
        "",
        "On paper, one H100 (SXM, bf16 autocast): throughput = peak x MFU / training FLOPs per image, with the peak "
        f"{H100_PEAK / 1e12:.0f} TFLOP/s (dense BF16) and an assumed MFU of {H100_MFU[0]:.0%} to {H100_MFU[1]:.0%}; the "
        f"launch floor is operators per step x {LAUNCH_S * 1e6:.0f} us (eager mode, one kernel per operator at least), "
        "which caps images/s at batch / floor however fast the GPU is. FLOPs counted by torch's FlopCounterMode "
        "(matrix products and convolutions; element-wise work is not counted).",
        "",
        "| network (params) | batch | training GFLOP / image | images/s at 10-30% MFU | operators / step | launch-bound cap at this batch |",
        "|---|---|---|---|---|---|",
    ]
    for r in paper:
        lo, hi = (H100_PEAK * m / (r["gflop_per_image"] * 1e9) for m in H100_MFU)
        cap = r["batch"] / (r["ops_per_step"] * LAUNCH_S)
        lines.append(
            f"| {r['net']} ({r['params']:,}) | {r['batch']} | {r['gflop_per_image']:.3f} | {lo:,.0f} - {hi:,.0f} | "
            f"{r['ops_per_step']} | {cap:,.0f} images/s |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps", type=int, default=None, help="steps per measurement (default 300 for fm-toy2d, 60 for fm-pixel)"
    )
    p.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    load_before = pixel_recipes.load()
    speed: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for app, default_steps in (("toy2d", 300), ("pixel", 60)):
            steps = args.steps or default_steps
            speed[app] = {}
            for key, procs, threads in (("1x1", 1, 1), ("1x2", 1, 2), ("2x1", 2, 1)):
                speed[app][key] = measure(app, steps, procs, threads, Path(tmp))
                print(f"{app} {procs} process(es) x {threads} thread(s): {speed[app][key]:.2f} steps/s", flush=True)
    torch.set_num_threads(1)
    paper = [flops_and_ops(n) for n in ("pixel U-Net", "pixel DiT", "latent DiT")]
    text = table(speed, paper, args.steps or 0, load_before)
    text = text.replace(
        f"for {args.steps or 0} steps",
        f"for {args.steps} steps" if args.steps else "for 300 (fm-toy2d) / 60 (fm-pixel) steps",
    )
    print(text)
    if not args.no_write:
        pixel_recipes.write_section(text, section=SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
