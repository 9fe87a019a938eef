"""fm-nflows' flow against zuko's RealNVP and the flow-matching model's ODE likelihood, in one run.

    uv run --group bench python benchmarks/nflows.py            # about 10 minutes on one thread of the 2-core CPU
    uv run --group bench python benchmarks/nflows.py --quick    # a smoke test (about 2 minutes)

For each of three 2D data sets (4x4 checkerboard, entropy log 32 = 3.466; Olympic rings, entropy
1.7665 in closed form, overlaps included, fm_data.toy.OlympicRings.entropy; two moons, entropy by
quadrature, fm_data.toy.Moons.entropy) it trains, unconditionally, with the same number of steps
and the same batch size, drawing the same training batches:

1. ``fm-nflows``: ``fm_toy2d.nf.train`` with the app's nf defaults (``fm_toy2d.nf.NF_NET``: 10
   affine couplings with alternating masks and 3 x 128 ReLU conditioners, no ActNorm, no LU
   mixing, scale bound 7, conditioners' last layer not zeroed; AdamW lr 5e-3, 100 warmup steps,
   cosine decay to 0, clipping at 1, EMA 0.99 through fm_train.Trainer);
2. ``zuko RealNVP``: ``zuko.flows.RealNVP(2, transforms=10, hidden_features=(128,) * 3)``, the
   same parameter count (+-0.1 %), trained by the very same loop and settings (fm_train.Trainer,
   same TrainConfig, same batches, EMA weights evaluated);
3. ``flow matching``: ``fm_toy2d.training.train`` with the app's default recipe (named in the
   output), its MLP width chosen to match the flows' parameter count; its
   likelihood is the exact ODE likelihood (fm_core.log_likelihood, dopri5, atol = rtol = 1e-5,
   exact divergence) as in ``fm-toy2d eval``;

and reports the test NLL (nats per point) on the same held-out points (fm_toy2d.evaluation
.heldout_data, seed 0), its gap to the true entropy, the training seconds and the parameter
counts. The table replaces the "## nflows" section of benchmarks/RESULTS.md (other sections
are kept). Time convention: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## nflows"
DATASETS = (("checkerboard", {"grid": 4}), ("olympic-rings", {}), ("moons", {}))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def replace_section(text: str, section: str, heading: str = SECTION) -> str:
    """Replace the section starting with ``heading`` (up to the next '## ' heading) or append it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        body = text.rstrip() + ("\n\n" if text.strip() else "# Benchmark results\n\n") + section
        return body.rstrip() + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:start] + section.rstrip().splitlines() + ([""] if end < len(lines) else []) + lines[end:]
    return "\n".join(new).rstrip() + "\n"


def nll_stats(log_p: torch.Tensor) -> tuple[float, float]:
    nll = -log_p.double()
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))


# ----------------------------------------------------------------------------- the three models
def run_ours(dataset: str, kw: dict, steps: int, batch: int, root: Path, x_test: torch.Tensor) -> dict:
    from fm_toy2d import nf

    cfg = nf.make_nf_config(dataset, steps=steps, batch_size=batch, seed=0, device="cpu", **kw)
    res = nf.train(cfg, root / f"{dataset}-nf", progress=False)
    run = nf.load_nf_run(root / f"{dataset}-nf")
    with torch.no_grad():
        log_p = run.flow.double().log_prob(x_test.double())
    mean, se = nll_stats(log_p)
    return {"model": "fm-nflows", "params": n_params(run.flow), "seconds": res.seconds, "nll": mean, "se": se}


class ZukoModule(torch.nn.Module):
    """A zuko flow as an nn.Module for fm_train.Trainer (its loss: -mean log_prob)."""

    def __init__(self, flow: torch.nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)


def run_zuko(
    dataset: str,
    kw: dict,
    steps: int,
    batch: int,
    root: Path,
    x_test: torch.Tensor,
    transforms: int = 10,
    hidden: int = 128,
) -> dict:
    import zuko

    from fm_toy2d import nf
    from fm_toy2d.training import build_distribution
    from fm_train import StepContext, Trainer

    cfg = nf.make_nf_config(
        dataset, steps=steps, batch_size=batch, seed=0, device="cpu", **kw
    )  # the same loop settings
    dist = build_distribution(cfg)
    torch.manual_seed(cfg.seed)
    model = ZukoModule(zuko.flows.RealNVP(2, transforms=transforms, hidden_features=(hidden,) * 3))

    def batch_fn(step: int, gen: torch.Generator):
        return dist.sample(cfg.batch_size, generator=gen)  # the same stream as fm_toy2d.nf.train

    def loss_fn(m: ZukoModule, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return -m.log_prob(x).mean()

    trainer = Trainer(
        model,
        loss_fn,
        batch_fn,
        cfg.train_config(progress=False),
        root / f"{dataset}-zuko",
        extra_config={"model": f"zuko.flows.RealNVP(2, transforms={transforms}, hidden_features=({hidden},) * 3)"},
    )
    res = trainer.train()
    ema = trainer.ema.module.double().eval()
    with torch.no_grad():
        log_p = ema.log_prob(x_test.double())
    mean, se = nll_stats(log_p)
    return {"model": "zuko RealNVP", "params": n_params(model), "seconds": res.seconds, "nll": mean, "se": se}


def fm_hidden_for(target: int) -> int:
    """MLP width (a multiple of 16) of the default flow-matching recipe closest to ``target`` parameters."""
    from fm_nets.mlp import MLPVelocity
    from fm_toy2d.config import make_config

    net = make_config("moons").net
    return min(range(64, 513, 16), key=lambda h: abs(n_params(MLPVelocity(2, **{**net, "hidden": h})) - target))


def run_fm(dataset: str, kw: dict, steps: int, batch: int, root: Path, n_test: int, hidden: int) -> dict:
    from fm_toy2d.config import make_config
    from fm_toy2d.evaluation import likelihood
    from fm_toy2d.training import load_run, train

    cfg = make_config(
        dataset, "default", steps=steps, batch_size=batch, seed=0, device="cpu", net={"hidden": hidden}, **kw
    )
    res = train(cfg, root / f"{dataset}-fm", progress=False)
    run = load_run(root / f"{dataset}-fm", device="cpu")
    t0 = time.perf_counter()
    lik = likelihood(run, n_test)  # the same held-out points (heldout_data with seed 0)
    recipe = (
        f"{cfg.coupling} coupling, {getattr(cfg, 'target', 'conditional')} target, {cfg.time} t, lr {cfg.lr:g}, "
        f"EMA {cfg.ema_decay:g}"
    )
    return {
        "model": "flow matching (ODE)",
        "params": n_params(run.model),
        "seconds": res.seconds,
        "nll": lik["mean"],
        "se": lik["stderr"],
        "nfe": lik["nfe"],
        "eval_s": time.perf_counter() - t0,
        "recipe": recipe,
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 150 steps, batch 256, 500 test points")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (default 1,000; quick 150)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of every model (default 256; quick 256)")
    p.add_argument("--n-test", type=int, default=None, help="held-out points (default 2,000; quick 500)")
    p.add_argument("--datasets", nargs="+", default=[d for d, _ in DATASETS], choices=[d for d, _ in DATASETS])
    p.add_argument("--no-fm", dest="fm", action="store_false", help="skip the flow-matching model")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine two threads oversubscribe it)",
    )
    p.add_argument("--no-write", action="store_true", help="print only, do not touch RESULTS.md")
    args = p.parse_args(argv)
    steps = args.steps or (150 if args.quick else 1000)
    batch = args.batch_size or 256
    n_test = args.n_test or (500 if args.quick else 2000)
    torch.set_num_threads(args.threads)

    from fm_toy2d.evaluation import heldout_data, true_entropy
    from fm_toy2d.nf import NF_DEFAULTS as d
    from fm_toy2d.nf import NF_NET, build_nf, make_nf_config
    from fm_toy2d.training import build_distribution

    ours_params = n_params(build_nf(make_nf_config("moons")))
    hidden = fm_hidden_for(ours_params)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nflows-bench-") as tmp:
        root = Path(tmp)
        for dataset, kw in DATASETS:
            if dataset not in args.datasets:
                continue
            cfg = make_nf_config(dataset, seed=0, **kw)
            dist = build_distribution(cfg)
            entropy = true_entropy(cfg, dist)
            x_test, _ = heldout_data(cfg, dist, n_test)
            runs = [
                ("fm-nflows", partial(run_ours, dataset, kw, steps, batch, root, x_test)),
                ("zuko", partial(run_zuko, dataset, kw, steps, batch, root, x_test)),
            ]
            if args.fm:
                runs.append(("fm", partial(run_fm, dataset, kw, steps, batch, root, n_test, hidden)))
            for name, fn in runs:
                print(f"[{dataset}] {name}: training {steps} steps, batch {batch} ...", flush=True)
                r = fn()
                r.update(dataset=dataset, entropy=entropy)
                print(
                    f"[{dataset}] {r['model']}: NLL {r['nll']:.4f} +- {r['se']:.4f} (entropy {entropy:.4f}, "
                    f"gap {r['nll'] - entropy:+.4f}), {r['params']:,} parameters, {r['seconds']:.0f} s",
                    flush=True,
                )
                rows.append(r)
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()

    fm_recipe = next((r["recipe"] for r in rows if "recipe" in r), "not run")
    names = {"checkerboard": "checkerboard 4x4", "olympic-rings": "olympic rings", "moons": "moons"}
    table = [
        "| data | entropy | model | parameters | test NLL | gap to entropy | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = f" (+{r['eval_s']:.0f} s ODE NLL, {r['nfe']} NFE)" if "nfe" in r else ""
        table.append(
            f"| {names[r['dataset']]} | {r['entropy']:.3f} | {r['model']} | {r['params']:,} | "
            f"{r['nll']:.3f} +- {r['se']:.3f} | {r['nll'] - r['entropy']:+.3f} | {r['seconds']:.0f}{extra} |"
        )
    given = sys.argv[1:] if argv is None else argv
    cmd = "uv run --group bench python benchmarks/nflows.py" + ("" if not given else " " + " ".join(given))
    section = "\n".join([
        f"{SECTION}: fm-nflows against zuko's RealNVP and flow matching's ODE likelihood",
        "",
        f"Command: `{cmd}` (run {started}, {total / 60:.1f} minutes in all; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after: the machine was shared with other jobs, so seconds are inflated, and only "
        "comparable within this table).",
        "",
        f"Unconditional models, {steps:,} steps of batch {batch} each, the same training batches; test NLL in nats per point "
        f"(+- standard error) on the same {n_test:,} held-out points; entropy: the data's true entropy (checkerboard and "
        "rings in closed form, moons by quadrature), so the gap is the KL divergence from the data to the model. Seed 0 "
        "for every model (weights and training batches); one seed only, see apps/toy2d/README.md (\"Against zuko\") for "
        "three seeds. fm-nflows: fm_toy2d.nf.NF_NET = "
        + ", ".join(f"{k}={v}" for k, v in NF_NET.items() if k != "embed_dim") + ". Both flows: "
        f"EMA weights, fm_train.Trainer with fm-toy2d's nf defaults: AdamW lr {d['lr']:g}, {d['warmup_steps']} warmup steps, "
        f"cosine decay to 0, clipping {d['grad_clip']:g}, EMA {d['ema_decay']:g}. "
        f"Flow matching: the app's default recipe ({fm_recipe}; MLP width {hidden} to match the parameter count), "
        "NLL by the exact ODE likelihood (dopri5, atol = rtol = 1e-5, exact divergence).",
        "",
        *table,
        "",
    ])  # fmt: skip
    print("\n" + section)
    if not args.no_write:
        RESULTS.write_text(replace_section(RESULTS.read_text() if RESULTS.exists() else "", section))
        print(f"wrote the {SECTION} section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
