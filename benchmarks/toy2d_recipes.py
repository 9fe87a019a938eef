"""The blog post's recipe against fm-toy2d's defaults on the 8x8 checkerboard, side by side, in one run.

    .venv/bin/python benchmarks/toy2d_recipes.py            # ~6-10 minutes on an idle 2-core CPU

Trains three runs with fm-toy2d's wiring (fm_toy2d.training.train):

1. ``default``: this project's default recipe with its default budget (steps);
2. ``post, same time``: the post's recipe (5x512 ReLU MLP on raw t, uniform t, independent
   coupling, batch 256, AdamW 1e-3, constant lr) for the same training seconds as (1);
3. ``post, 2,000 steps``: the post's recipe as published (skip with ``--no-post-2000``);

then samples 20,000 points from each (EMA weights; the post's recipe has no EMA, its decay is 0)
with the midpoint solver (this project's default) and with Euler (the post's) at NFE 4, 8 and 100,
all from the same noise, and reports fm_eval's checkerboard quality: the fraction of samples in
filled cells (in_support) and the smallest filled cell's share relative to its expected share
(min_cell_ratio, over all samples). The table replaces the "## toy2d" section of
benchmarks/RESULTS.md (other sections are kept). Time convention: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fm_eval.metrics2d import checkerboard_quality
from fm_toy2d.config import make_config
from fm_toy2d.training import load_run, train

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## toy2d"
NFES = (4, 8, 100)
SOLVERS = ("midpoint", "euler")


def quality_table(run_dir: Path, n: int, seed: int) -> dict[tuple[str, int], dict]:
    run = load_run(run_dir, device="cpu")
    out = {}
    for solver in SOLVERS:
        for nfe in NFES:
            s = run.sample(n, seed=seed, solver=solver, nfe=nfe)
            out[(solver, nfe)] = checkerboard_quality(s.x, 8)
    return out


def replace_section(text: str, section: str) -> str:
    """Replace the '## toy2d' section (up to the next '## ' heading) or append it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(SECTION)), None)
    if start is None:
        body = text.rstrip() + ("\n\n" if text.strip() else "# Benchmark results\n\n") + section
        return body.rstrip() + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:start] + section.rstrip().splitlines() + ([""] if end < len(lines) else []) + lines[end:]
    return "\n".join(new).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="steps of the default recipe (default: its budget)")
    p.add_argument("--n", type=int, default=20000, help="samples per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=None, help="keep the run directories here (default: a temporary directory)"
    )
    p.add_argument(
        "--no-post-2000", dest="post2000", action="store_false", help="skip the post's recipe at 2,000 steps"
    )
    p.add_argument("--no-write", action="store_true", help="print only, do not touch RESULTS.md")
    args = p.parse_args(argv)

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="toy2d-bench-")
        root = Path(tmp.name)
    else:
        root = args.out
        root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")

    rows = []
    default = make_config("checkerboard", "default", grid=8, steps=args.steps, seed=args.seed, device="cpu")
    print(f"[1] default recipe, {default.steps} steps", flush=True)
    res = train(default, root / "default", progress=True)
    t_default = res.seconds
    rows.append(("default", res.steps, res.seconds, quality_table(root / "default", args.n, args.seed)))

    post_same = make_config("checkerboard", "post", grid=8, minutes=t_default / 60.0, seed=args.seed, device="cpu")
    print(f"[2] post recipe, same time ({t_default:.0f} s)", flush=True)
    res = train(post_same, root / "post-same-time", progress=True)
    rows.append(("post, same time", res.steps, res.seconds, quality_table(root / "post-same-time", args.n, args.seed)))

    if args.post2000:
        post = make_config("checkerboard", "post", grid=8, seed=args.seed, device="cpu")
        print("[3] post recipe, 2,000 steps", flush=True)
        res = train(post, root / "post-2000", progress=True)
        rows.append(("post, 2,000 steps", res.steps, res.seconds, quality_table(root / "post-2000", args.n, args.seed)))
    load_after = os.getloadavg()

    head = "| recipe | steps | train s | solver | " + " | ".join(f"NFE {k}: in cells / min cell" for k in NFES) + " |"
    sep = "|" + "---|" * (4 + len(NFES))
    table = [head, sep]
    for name, steps, secs, q in rows:
        for solver in SOLVERS:
            cells = " | ".join(
                f"{q[(solver, k)]['in_support']:.1%} / {q[(solver, k)]['min_cell_ratio']:.2f}" for k in NFES
            )
            table.append(f"| {name} | {steps:,} | {secs:.0f} | {solver} | {cells} |")
    given = sys.argv[1:] if argv is None else argv
    cmd = ".venv/bin/python benchmarks/toy2d_recipes.py" + ("" if not given else " " + " ".join(given))
    section = "\n".join([
        f"{SECTION}: the blog post's recipe against fm-toy2d's defaults (8x8 checkerboard)",
        "",
        f"Command: `{cmd}` (run {started}; {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after: the machine was shared, so seconds are inflated, but all runs saw the same load).",
        "",
        f"Quality of {args.n:,} samples (EMA weights, same noise for every row) by fm_eval.metrics2d.checkerboard_quality:",
        "fraction in filled cells / smallest filled cell's share relative to its expected share (target: >= 95% / >= 0.80",
        "at midpoint NFE 8). \"post, same time\" trains the post's recipe for the default recipe's seconds.",
        "",
        *table,
        "",
    ])  # fmt: skip
    print("\n" + section)
    if not args.no_write:
        RESULTS.write_text(replace_section(RESULTS.read_text() if RESULTS.exists() else "", section))
        print(f"wrote the toy2d section of {RESULTS}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
