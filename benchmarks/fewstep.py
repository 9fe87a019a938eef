"""Few-step generation on the 8x8 checkerboard (issue 19), every method side by side in one run.

    uv run --group bench python benchmarks/fewstep.py                 # 5 units: ~95 minutes here (AVX2)
    uv run --group bench python benchmarks/fewstep.py --budget-minutes 5 # 5 wall-clock minutes each

Each method gets the same training budget, *a teacher's training and pair generation included*. The
issue sets 5 minutes on a machine where the default flow-matching recipe trains in about 1; since a
CPU can be 3x faster or slower from one session to the next, the budget is counted in units of the
default recipe's own training time, measured in the same run (``--budget 5`` units; ``--budget-minutes``
for wall-clock minutes instead). All use fm-toy2d's default MLP (3 x 128, sinusoidal time, Fourier
features) and recipe (AdamW 2e-3, warm-up, cosine, batch 1,024, EMA 0.999), through fm-toy2d's own
wiring (fm_toy2d.training.train), except rectified-flow-pytorch, which trains with its own MeanFlow loss:

1. ``flow matching``: the default recipe, its default 3,800 steps (one unit; the teacher of 2 and 3),
   or ``--teacher-minutes`` with ``--budget-minutes``;
2. ``reflow``: one round of rectified flow: ``--pairs`` (noise, teacher endpoint) pairs by the teacher's
   midpoint solver at ``--teacher-nfe``, then flow matching on them, from the teacher's weights, with
   U-shaped training times (Lee et al. 2024), for what is left of the budget;
3. ``MeanFlow, fine-tuned``: MeanFlow (Geng et al. 2025) from the teacher's weights, the rest of the budget;
4. ``MeanFlow, scratch``: MeanFlow from random weights, the whole budget;
5. ``rectified-flow-pytorch MeanFlow``: ``rectified_flow_pytorch.MeanFlow`` (its defaults: logit-normal
   times, half the batches with r = t, adaptive weight p = 0.5) around the same two-time MLP, with the
   same optimizer, schedule, EMA and budget. Its own sampler is one average-velocity step at NFE 1 and
   instantaneous-velocity Euler steps beyond; the row below it samples the same network with
   fm-core's flow-map sampler.

Then 20,000 samples of each (EMA weights, the same noise for every row) at NFE 1, 2, 4 and 8, scored by
fm_eval's checkerboard quality: the fraction in filled cells / the smallest filled cell's share relative
to its expected share. The table replaces the "## Few-step generation" section of benchmarks/RESULTS.md.
Time convention: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from fm_cli.method import REFLOW_TIME, MethodConfig
from fm_core import draw_source, sample
from fm_eval.metrics2d import checkerboard_quality
from fm_toy2d.config import make_config
from fm_toy2d.method_runs import reflow_batches
from fm_toy2d.training import batch_fn_for, build_distribution, build_model, load_run, train
from fm_train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_recipes  # noqa: E402  (the RESULTS.md section writer)

SECTION = "## Few-step generation: 8x8 checkerboard, NFE 1-8 (issue 19)"
NFES = (1, 2, 4, 8)
GRID = 8


class TheirConvention(nn.Module):
    """Our two-time MLP ``net(x, r, t)`` (t = 0 noise, r <= t, u = (x_t - x_r) / (t - r)) as
    rectified-flow-pytorch's MeanFlow model ``model(z, tau, delta)``: noise at tau = 1, the current point
    z at the larger time tau, the average velocity of the data-to-noise direction over [tau - delta, tau].
    With s = 1 - tau: their u = (z_tau - z_(tau - delta)) / delta = -(x_(s + delta) - x_s) / delta."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, tau: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        s = 1.0 - tau
        return -self.net(z, s, s + delta)


def train_theirs(cfg, run_dir: Path, seconds: float):
    """rectified-flow-pytorch's MeanFlow loss on our two-time MLP, in fm-train's loop (same optimizer,
    schedule, EMA, batches and budget as ours). Returns (TrainResult, EMA network)."""
    from rectified_flow_pytorch import MeanFlow

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)  # MeanFlow draws "r = t for this batch" from Python's random
    dist = build_distribution(cfg)
    net = build_model(cfg, dist, two_time=True)
    mf = MeanFlow(TheirConvention(net), data_shape=(dist.dim,))

    def loss_fn(model, batch, ctx):
        x1, _ = batch
        mf.model.net = model  # the Trainer's (maybe compiled / wrapped) network
        return mf(x1)

    trainer = Trainer(net, loss_fn, batch_fn_for(cfg, dist), cfg.train_config(progress=False, minutes=seconds / 60,
                      steps=None), run_dir, extra_config={"app": "benchmarks/fewstep.py"})  # fmt: skip
    res = trainer.train()
    return res, trainer.ema.module


def their_samples(net: nn.Module, x0: torch.Tensor, nfe: int) -> torch.Tensor:
    """rectified-flow-pytorch's own MeanFlow sampling from the noise x0 (its sample(): one step at NFE 1,
    slow_sample(): Euler with delta = 0, the instantaneous velocity, beyond)."""
    from rectified_flow_pytorch import MeanFlow

    mf = MeanFlow(TheirConvention(net), data_shape=tuple(x0.shape[1:]))
    with torch.no_grad():
        if nfe == 1:
            return mf.sample(batch_size=len(x0), noise=x0)
        # slow_sample draws its own noise, so its loop is repeated here on ours (the same steps)
        times = torch.linspace(1.0, 0.0, nfe + 1)[:-1]
        z = x0.clone()
        for tau in times:
            tt = tau.expand(len(z))
            z = z - (1.0 / nfe) * mf.model(z, tt, torch.zeros(len(z)))
        return z


def quality(x: torch.Tensor) -> tuple[float, float]:
    q = checkerboard_quality(x, GRID)
    return q["in_support"], q["min_cell_ratio"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--budget",
        type=float,
        default=5.0,
        help="training budget per method, teacher included, in units of the default recipe's training time",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="the budget in wall-clock minutes instead (the teacher then trains --teacher-minutes)",
    )
    p.add_argument("--teacher-minutes", type=float, default=2.5,
                   help="with --budget-minutes: the flow-matching teacher's minutes")  # fmt: skip
    p.add_argument("--pairs", type=int, default=100_000, help="reflow pairs")
    p.add_argument("--teacher-nfe", type=int, default=8, help="the teacher's midpoint NFE per pair")
    p.add_argument("--n", type=int, default=20_000, help="samples per cell of the table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--skip-theirs", action="store_true", help="leave out rectified-flow-pytorch")
    p.add_argument("--no-write", action="store_true", help="print only, do not touch RESULTS.md")
    args = p.parse_args(argv)
    if args.budget_minutes is not None and not 0 < args.teacher_minutes < args.budget_minutes:
        p.error("--teacher-minutes must be positive and below --budget-minutes")
    if not args.budget > 1:
        p.error("--budget must be more than 1 unit (the teacher's own training)")

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="fewstep-")
        root = Path(tmp.name)
    else:
        root = args.out
        root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")

    def cfg(minutes: float | None, **kw):
        return make_config("checkerboard", "default", grid=GRID, minutes=minutes, seed=args.seed, device="cpu", **kw)

    runs: list[tuple[str, str, float, int]] = []  # (name, run dir or "", total seconds, steps)

    teacher = root / "fm"
    if args.budget_minutes is None:
        print("[1] flow-matching teacher: the default recipe (one budget unit)", flush=True)
        res = train(cfg(None), teacher, progress=True)
        budget_s = args.budget * res.seconds
        budget_text = f"{args.budget:g} units of the default recipe's {res.seconds:.0f} s = {budget_s:.0f} s"
    else:
        print(f"[1] flow-matching teacher, {args.teacher_minutes:g} min", flush=True)
        res = train(cfg(args.teacher_minutes), teacher, progress=True)
        budget_s = args.budget_minutes * 60.0
        budget_text = f"{args.budget_minutes:g} minutes"
    t_teacher = res.seconds
    runs.append(("flow matching", str(teacher), t_teacher, res.steps))

    print(f"[2] reflow: {args.pairs:,} pairs (midpoint NFE {args.teacher_nfe}), then the student", flush=True)
    reflow = MethodConfig(name="reflow", teacher=str(teacher), pairs=args.pairs, teacher_solver="midpoint",
                          teacher_nfe=args.teacher_nfe)  # fmt: skip
    rcfg = cfg(1.0, time=REFLOW_TIME)
    t0 = time.perf_counter()
    reflow_batches(build_model(rcfg, two_time=False), rcfg, reflow, root / "reflow")  # the pairs, into reflow/
    t_pairs = time.perf_counter() - t0
    left = (budget_s - t_teacher - t_pairs) / 60.0
    res = train(cfg(left, time=REFLOW_TIME), root / "reflow", method=reflow, progress=True)
    runs.append(("reflow (1 round)", str(root / "reflow"), t_teacher + t_pairs + res.seconds, res.steps))

    print("[3] MeanFlow fine-tuned from the teacher", flush=True)
    mf_ft = MethodConfig(name="meanflow", init_from=str(teacher))
    res = train(cfg((budget_s - t_teacher) / 60.0), root / "meanflow-ft", method=mf_ft, progress=True)
    runs.append(("MeanFlow, fine-tuned", str(root / "meanflow-ft"), t_teacher + res.seconds, res.steps))

    print("[4] MeanFlow from scratch", flush=True)
    res = train(cfg(budget_s / 60.0), root / "meanflow", method=MethodConfig(name="meanflow"), progress=True)
    runs.append(("MeanFlow, scratch", str(root / "meanflow"), res.seconds, res.steps))

    theirs = None
    if not args.skip_theirs:
        print("[5] rectified-flow-pytorch MeanFlow", flush=True)
        res, theirs = train_theirs(cfg(budget_s / 60.0), root / "theirs", budget_s)
        runs.append(("rectified-flow-pytorch MeanFlow", "", res.seconds, res.steps))
    load_after = os.getloadavg()

    print("scoring", flush=True)
    seed = args.seed + 2000029
    x0, _ = draw_source(args.n, (2,), seed=seed)  # the noise every sample() below starts from
    rows: list[tuple[str, str, int, float, dict[int, tuple[float, float] | None]]] = []
    for name, run_dir, secs, steps in runs:
        if not run_dir:
            continue
        run = load_run(run_dir)
        solvers = ("flow-map",) if run.two_time else ("euler", "midpoint")
        for solver in solvers:
            cells = {}
            for k in NFES:
                if solver == "midpoint" and k % 2:
                    cells[k] = None
                    continue
                model = run.model if solver == "flow-map" else run.velocity
                s = sample(model, args.n, (2,), seed=seed, method=solver, nfe=k)
                cells[k] = quality(s.x)
            rows.append((name, solver, steps, secs, cells))
    if theirs is not None:
        name, _, secs, steps = runs[-1]
        rows.append((name, "their sampler", steps, secs, {k: quality(their_samples(theirs, x0, k)) for k in NFES}))
        rows.append(
            (
                name,
                "flow-map (ours)",
                steps,
                secs,
                {k: quality(sample(theirs, args.n, (2,), seed=seed, method="flow-map", nfe=k).x) for k in NFES},
            )
        )

    head = "| method | sampler | steps | train s (teacher incl.) | " + " | ".join(f"NFE {k}" for k in NFES) + " |"
    table = [head, "|" + "---|" * (4 + len(NFES))]
    for name, solver, steps, secs, cells in rows:
        txt = " | ".join("-" if c is None else f"{c[0]:.1%} / {c[1]:.2f}" for c in (cells[k] for k in NFES))
        table.append(f"| {name} | {solver} | {steps:,} | {secs:.0f} | {txt} |")
    given = sys.argv[1:] if argv is None else argv
    cmd = "uv run --group bench python benchmarks/fewstep.py" + ("" if not given else " " + " ".join(given))
    section = "\n".join([
        f"Command: `{cmd}` (run {started}; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after).",
        f"Budget per method: {budget_text} of training, the teacher's {t_teacher:.0f} s (and the reflow "
        f"pairs' {t_pairs:.0f} s: {args.pairs:,} pairs, midpoint NFE {args.teacher_nfe}) included.",
        "",
        f"Cells: {args.n:,} samples (EMA weights, the same noise in every cell), fraction in filled cells / the",
        "smallest filled cell's share of its expected share (fm_eval checkerboard_quality). Required (issue 19):",
        "NFE 2 >= 90% / 0.6, NFE 1 >= 85% / 0.4.",
        "",
        *table,
        "",
    ])  # fmt: skip
    print(f"\n{SECTION}\n\n{section}")
    if not args.no_write:
        pixel_recipes.write_section(section, section=SECTION)
        print(f"wrote the few-step section of {pixel_recipes.RESULTS}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
