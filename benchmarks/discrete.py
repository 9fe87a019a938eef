"""Discrete flow matching beside the continuous models (issue 20): the lattice checkerboard and MNIST.

    python benchmarks/discrete.py                 # train and score everything (about 45 minutes on 2 CPU cores)
    python benchmarks/discrete.py --table-only    # rebuild the table from the run directories

Every step is the apps' own command line, run one at a time (``OMP_NUM_THREADS`` as set, 2 here):

* ``fm-toy2d train --model discrete --lattice 64`` (8x8 checkerboard, the default budget: 1,000 steps),
  then ``fm-toy2d eval`` (20,000 samples at the run's 64 CTMC steps, and the quality against NFE);
* ``fm-pixel train --model discrete --levels 16 --dataset mnist --conditional --minutes 10`` and the
  continuous ``fm-pixel train --dataset mnist --conditional --minutes 10`` (the default recipe), then
  ``fm-pixel eval --n 1000`` of each at NFE 32 and 64 (and the continuous run's own NFE 10): FID in
  fm-eval's classifier features against the 10,000 test images, label accuracy.

The table goes to stdout and, unless ``--no-write``, to the "Discrete flow matching" section of
benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "RESULTS.md"
SECTION = "## Discrete flow matching (issue 20)"
LATTICE = ["fm-toy2d", "train", "--model", "discrete", "--lattice", "64", "--quiet", "--no-pictures"]
DISCRETE = ["fm-pixel", "train", "--model", "discrete", "--levels", "16", "--dataset", "mnist", "--conditional",
            "--minutes", "10", "--quiet"]  # fmt: skip
CONTINUOUS = ["fm-pixel", "train", "--dataset", "mnist", "--conditional", "--minutes", "10", "--quiet"]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(["uv", "run", *cmd], check=True)


def run_all(out: Path) -> None:
    lattice, disc, cont = out / "lattice", out / "mnist16-discrete", out / "mnist-continuous"
    _run([*LATTICE, "--out", str(lattice)])
    _run(["fm-toy2d", "eval", "--run", str(lattice), "--quiet"])
    _run([*DISCRETE, "--out", str(disc)])
    _run([*CONTINUOUS, "--out", str(cont)])
    for nfe in (32, 64):
        _run(["fm-pixel", "eval", "--run", str(disc), "--n", "1000", "--nfe", str(nfe), "--quiet"])
    _run(["fm-pixel", "eval", "--run", str(disc), "--n", "1000", "--nfe", "32", "--guidance", "1", "--quiet"])
    for nfe in (10, 32, 64):
        _run(["fm-pixel", "eval", "--run", str(cont), "--n", "1000", "--nfe", str(nfe), "--quiet"])


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def table(lattice: Path, disc: Path, cont: Path) -> str:
    lines = [
        "Commands (one at a time, `OMP_NUM_THREADS=2`; `python benchmarks/discrete.py` runs them all):",
        "",
        "```bash",
        " ".join(["uv run", *LATTICE, "--out", str(lattice)]) + f"; uv run fm-toy2d eval --run {lattice}",
        " ".join(["uv run", *DISCRETE, "--out", str(disc)]),
        " ".join(["uv run", *CONTINUOUS, "--out", str(cont)]),
        f"uv run fm-pixel eval --run RUN --n 1000 --nfe NFE [--guidance 1]   # RUN: {disc}, {cont}",
        "```",
        "",
    ]
    m = _metrics(lattice)
    cfg = json.loads((lattice / "config.json").read_text())
    q, tr = m["quality"], m.get("train", {})
    hist = (lattice / "loss.csv").read_text().strip().splitlines()
    seconds = float(hist[-1].split(",")[3]) if len(hist) > 1 else float("nan")
    lines += [
        "Lattice checkerboard (8x8 cells on a 64x64 lattice, two tokens of 64 levels, mask source, linear kappa, "
        "cross-entropy; fm-nets' TokenMLP 4x256):",
        "",
        "| steps | training s | CTMC NFE | in filled cells | smallest cell / share | energy distance | samples |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {cfg['train']['steps'] or tr.get('steps')} | {seconds:.0f} | {m['samples']['nfe']} | {q['in_support']:.1%} | "
        f"{q['min_cell_ratio']:.2f} | {m['energy_distance']:.4f} | {m['samples']['n']} |",
        "",
        "Quality against NFE (5,000 samples each): "
        + ", ".join(f"NFE {r['nfe']}: {r['in_support']:.1%} / {r['min_cell_ratio']:.2f}" for r in m["quality_vs_nfe"]),
        "",
        "MNIST, conditional, 10 minutes of training each, `fm-pixel eval --n 1000` (FID in fm-eval's classifier "
        "features against the 10,000 test images):",
        "",
        "| model | steps | sampler | NFE | guidance | FID | label accuracy | precision | recall |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in (
        ("discrete, 16 levels (TokenDiT, 4x4 patches)", disc),
        ("continuous (U-Net, default recipe)", cont),
    ):
        mm = _metrics(run)
        for ev in mm.get("eval", []):
            man = ev.get("manifold") or {}
            lines.append(f"| {name} | {mm['train']['steps']} | {ev['solver']} | {ev['nfe']} | {ev['guidance']:g} | "
                         f"{ev['fid']:.2f} | {ev['label_accuracy']:.3f} | {man.get('precision', float('nan')):.3f} | "
                         f"{man.get('recall', float('nan')):.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    body = RESULTS.read_text()
    block = f"{SECTION}\n\n{text}"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = pattern.sub(lambda _: block + "\n", body) if pattern.search(body) else body.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, default=Path("runs/bench-discrete"), help="run directories (default: %(default)s)"
    )
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from --out")
    p.add_argument("--lattice", type=Path, default=None, help="the lattice run (default: OUT/lattice)")
    p.add_argument("--discrete", type=Path, default=None, help="the discrete MNIST run (default: OUT/mnist16-discrete)")
    p.add_argument("--continuous", type=Path, default=None, help="the continuous run (default: OUT/mnist-continuous)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    t0 = time.time()
    if not args.table_only:
        run_all(args.out)
    text = table(args.lattice or args.out / "lattice", args.discrete or args.out / "mnist16-discrete",
                 args.continuous or args.out / "mnist-continuous")  # fmt: skip
    machine = _metrics(args.discrete or args.out / "mnist16-discrete")["train"].get("machine", {})
    text += f"\nMachine: {machine.get('cpus', os.cpu_count())} CPUs, {machine.get('torch_threads', '?')} torch threads "
    text += f"in training; table written {time.strftime('%Y-%m-%d')}.\n"
    print(text)
    if not args.no_write:
        write_section(text)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
