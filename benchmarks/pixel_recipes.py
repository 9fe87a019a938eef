"""Pixel-space recipes side by side, each with the same training-time budget (issue 5).

    python benchmarks/pixel_recipes.py                    # 10 minutes per recipe (the issue's setting)
    python benchmarks/pixel_recipes.py --minutes 2        # a shorter budget on a busy machine

Recipes (fm_pixel.config.RECIPES): ``mit`` (MIT 6.S184 lab: U-Net 32-64-128 with two residual
layers per level, batch 250, Adam 1e-3, uniform t, independent coupling, label dropout 0.1, Euler,
guidance 3), ``post`` (the blog post's 5 x 512 ReLU MLP on flattened pixels, uniform t, Euler) and
``default`` (this project's). Each is trained class-conditionally on Fashion-MNIST for
``--minutes`` of training time in this one process, then sampled (1,000 images, balanced labels)
at NFE 10 and 50 with its own solver and guidance scale and scored with fm-eval: FID against the
10,000 test images in the shipped classifier's features, and label accuracy.

Also reported: training images per second; training FLOPs per image, counted with
``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward pass of the loss (it
counts matrix multiplies and convolutions, not element-wise work); and the fraction of the
machine's fp32 matmul peak that training reaches, where the peak is measured in the same run
with a large ``torch.mm`` on the same number of threads. The 1-minute load average is recorded
at each phase, because on a shared machine every timing depends on it.

Results go to ``--out`` (JSON, runs, sample grids) and, unless ``--no-write``, to the
"Pixel recipes" section of benchmarks/RESULTS.md (other sections are kept as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fm_cli import save_grid
from fm_data.images import load_images
from fm_pixel.config import make_config
from fm_pixel.sampling import generate, load_run
from fm_pixel.training import build_model, make_batch_fn, make_loss_fn, train
from fm_train import StepContext

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "RESULTS.md"
SECTION = "## Pixel recipes (fm-pixel)"
RECIPE_NOTES = {
    "mit": "MIT 6.S184 lab: U-Net 32-64-128, 2 res layers/level, batch 250, Adam 1e-3, uniform t, Euler, guidance 3",
    "post": "blog post: 5x512 ReLU MLP on flattened pixels, uniform t, Euler, no guidance",
    "default": "this project's defaults (fm-pixel train with no options)",
}


def load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def matmul_peak(n: int = 2048, seconds: float = 3.0, repeats: int = 3) -> float:
    """Best fp32 GFLOP/s of an n x n x n torch.mm over ``repeats`` timed windows."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            k += 1
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0) / 1e9)
    return best


def train_flops_per_image(cfg, data) -> float:
    """FLOPs of one forward + backward pass of the loss, per training image (FlopCounterMode)."""
    model = build_model(cfg)
    batch_fn = make_batch_fn(data, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    loss_fn = make_loss_fn(cfg)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch_fn(1, g), StepContext(generator=g)).backward()
    return counter.get_total_flops() / cfg.train.batch_size


def run_recipe(name: str, args, data, peak: float) -> dict:
    cfg = make_config(args.dataset, name, conditional=True)
    run_dir = args.out / name
    if (run_dir / "checkpoint").exists():
        raise SystemExit(f"{run_dir} already holds a run; remove it or choose another --out")
    flops = train_flops_per_image(cfg, data)
    cfg = cfg.replace(train=cfg.train.replace(minutes=args.minutes, device=args.device, progress=not args.quiet))
    load_start = load()
    summary = train(cfg, run_dir, data=data)
    model, _ = load_run(run_dir, device=args.device)
    row = {
        "recipe": name, "note": RECIPE_NOTES[name], "net": cfg.net, "net_config": cfg.net_config,
        "params": summary.num_params, "batch_size": cfg.train.batch_size, "steps": summary.result.steps,
        "train_seconds": round(summary.result.seconds, 1), "images_per_s": round(summary.images_per_s, 1),
        "train_gflop_per_image": round(flops / 1e9, 4),
        "peak_fraction": round(summary.images_per_s * flops / 1e9 / peak, 4),
        "solver": cfg.solver, "guidance": cfg.guidance, "load_train_start": load_start, "load_train_end": load(),
        "eval": {},
    }  # fmt: skip
    from fm_eval.classifier import label_accuracy
    from fm_eval.fid import fid

    for nfe in args.nfe:
        res = generate(model, cfg, args.n, nfe=nfe, seed=0, device=args.device)
        f = fid(res.x, cfg.dataset, "test")
        acc = label_accuracy(res.x, res.labels, cfg.dataset)
        save_grid(res.x[:100], run_dir / f"samples_nfe{nfe}.png", 10)
        row["eval"][str(nfe)] = {
            "fid": round(f.fid, 2),
            "n": f.n_samples,
            "n_reference": f.n_reference,
            "label_accuracy": round(acc, 4),
            "sampling_seconds": round(res.seconds, 1),
            "load": load(),
        }
        print(
            f"  {name} NFE {nfe}: FID {f.fid:.2f} ({f.n_samples} vs {f.n_reference} test), label accuracy {acc:.3f}",
            flush=True,
        )
    return row


def table(rows: list[dict], meta: dict) -> str:
    nfes = meta["nfe"]
    head = ["recipe", "net (params)", "batch", "steps", "images/s", "train GFLOP/image", "% of fp32 matmul peak"]
    for k in nfes:
        head += [f"FID @NFE {k}", f"label acc @NFE {k}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["recipe"],
            f"{r['net']} ({r['params'] / 1e6:.2f}M)",
            str(r["batch_size"]),
            str(r["steps"]),
            f"{r['images_per_s']:.1f}",
            f"{r['train_gflop_per_image']:.3f}",
            f"{100 * r['peak_fraction']:.1f}%",
        ]
        for k in nfes:
            e = r["eval"][str(k)]
            cells += [f"{e['fid']:.1f}", f"{e['label_accuracy']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(text: str, section: str = SECTION) -> None:
    """Replace (or append) ``section`` of benchmarks/RESULTS.md; the other sections are kept."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new_block = f"{section}\n\n{text.strip()}\n\n"
    new = pattern.sub(lambda m: new_block, old) if pattern.search(old) else old.rstrip() + "\n\n" + new_block
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(RESULTS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time per recipe (default 10, the issue's)")
    p.add_argument("--recipes", default="mit,post,default")
    p.add_argument("--dataset", default="fashion-mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--n", type=int, default=1000, help="samples scored per NFE (default 1000)")
    p.add_argument("--nfe", default="10,50")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs") / f"bench-pixel-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.nfe = [int(k) for k in args.nfe.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/pixel_recipes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_images(args.dataset, "train")
    peak = matmul_peak()
    meta = {
        "command": command,
        "minutes": args.minutes,
        "nfe": args.nfe,
        "n": args.n,
        "dataset": args.dataset,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "matmul_peak_gflops": round(peak, 1),
        "load_start": load(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s on {meta['threads']} thread(s), load {meta['load_start']}", flush=True)
    rows = []
    for name in args.recipes.split(","):
        print(f"recipe {name}: training {args.minutes:g} min", flush=True)
        rows.append(run_recipe(name, args, data, peak))
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    meta["load_end"] = load()
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = table(rows, meta)
    print(text)
    if not args.no_write:
        loads = ", ".join(f"{r['recipe']} {r['load_train_start']}->{r['load_train_end']}" for r in rows)
        body = (
            f"Command: `{command}` (started {meta['started']}; torch {meta['torch']}; {meta['threads']} torch thread(s) "
            f"on {meta['cpus']} CPUs).\n\n"
            f"Each recipe trained class-conditionally on {args.dataset} for {args.minutes:g} minutes of training time "
            f"in one process, then {args.n} samples (balanced labels) at each NFE with the recipe's own solver and "
            f"guidance, scored with fm-eval (FID vs the 10,000 test images in the shipped classifier's features; "
            f"label accuracy). fp32 matmul peak measured in the same run: {peak:.1f} GFLOP/s "
            f"(2048^3 torch.mm). FLOPs per image from FlopCounterMode (matmuls and convolutions of one forward + "
            f"backward pass). 1-minute load average (start->end of training): {loads}.\n\n{text}\n"
        )
        write_section(body)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
