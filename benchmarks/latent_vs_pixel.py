"""Latent generation (VAE + DiT, fm-latentgen) against pixel generation (U-Net, fm-pixel) on MNIST,
in one run and one process (issue 6).

    python benchmarks/latent_vs_pixel.py                        # VAE 4 min, DiT 10 min, pixel at the same total
    python benchmarks/latent_vs_pixel.py --steps 3 --n 100 --encode-n 500 --rate-steps 2 --no-write   # smoke test

Phases, each timed in CPU seconds of this process (``time.process_time``; run it with
OMP_NUM_THREADS=1 so that CPU time and wall time agree and the numbers compare across machines):

1. ``train-vae``: the small AutoencoderKL (fm_latentgen.config.VAE_DEFAULTS) for ``--vae-minutes``,
   its scale and shift fitted on 10,000 training images (counted); then, not counted, its reconstruction FID: 1,000 test
   images encoded and decoded, against the 10,000 test images (and the FID of the 1,000 originals,
   the floor of this evaluator at that count).
2. ``encode``: the 60,000 training images once into the latent cache.
3. ``train``: the DiT (class-conditional, the latent recipe) on the cache for ``--minutes``.
4. pixel: fm-pixel's default recipe (class-conditional U-Net) trained for as many minutes as
   phases 1-3 took together, so that both reach their FID with the same total CPU time.
5. Both sampled at NFE 10 (1,000 images, balanced labels, each recipe's solver and guidance) and
   scored with fm-eval: FID against the 10,000 test images in the shipped classifier's features,
   label accuracy.

Also: training images per second of each network, measured in the same conditions right before
training (median CPU time of ``--rate-steps`` optimizer steps at each recipe's batch size, after
two warm-up steps), and the FLOPs of one training image (forward + backward, FlopCounterMode).

Results go to ``--out`` (results.json, runs, sample grids) and, unless ``--no-write``, to the
"Latent vs pixel" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_recipes  # noqa: E402  (the RESULTS.md section writer and the load average)

from fm_cli import save_grid  # noqa: E402
from fm_cli.images import flow_loss  # noqa: E402
from fm_data.images import load_images  # noqa: E402
from fm_eval import image_scores  # noqa: E402
from fm_latent import load_latent_cache  # noqa: E402
from fm_latentgen.config import VAEConfig  # noqa: E402
from fm_latentgen.config import make_config as latent_config
from fm_latentgen.training import generate as latent_generate  # noqa: E402
from fm_latentgen.training import latent_batches, train_latent
from fm_latentgen.training import load_run as latent_load_run
from fm_latentgen.vae import CACHE_FILE, VAE_DIR, encode_dataset, load_vae, score_vae_run, train_vae  # noqa: E402
from fm_nets import build_net  # noqa: E402
from fm_pixel.config import make_config as pixel_config  # noqa: E402
from fm_pixel.sampling import generate as pixel_generate  # noqa: E402
from fm_pixel.sampling import load_run as pixel_load_run
from fm_pixel.training import build_model, make_batch_fn, train  # noqa: E402
from fm_train import StepContext  # noqa: E402

SECTION = "## Latent vs pixel (fm-latentgen against fm-pixel, MNIST)"


def train_rate(cfg, batch_fn, steps: int) -> tuple[float, float]:
    """(training images per CPU-second, training FLOPs per image) of ``cfg``'s network and loss."""
    torch.manual_seed(0)
    model = build_net(cfg.net, num_classes=cfg.num_classes, **cfg.net_config) if cfg.net == "dit" else build_model(cfg)
    loss_fn = flow_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)
    g = torch.Generator().manual_seed(0)
    ctx = StepContext(generator=g)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch_fn(0, g), ctx).backward()
    times = []
    for i in range(steps + 2):
        batch = batch_fn(i, g)
        t0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch, ctx).backward()
        opt.step()
        times.append(time.process_time() - t0)
    b = cfg.train.batch_size
    return b / statistics.median(times[2:]), counter.get_total_flops() / b


def budget(cfg, args, minutes: float, **train):
    """``cfg`` with the phase's budget (--steps, or ``minutes``) and ``train`` settings."""
    when = {"steps": args.steps, "minutes": None} if args.steps else {"minutes": minutes, "steps": None}
    return cfg.replace(train=cfg.train.replace(device="cpu", progress=False, **when, **train))


def timed(fn, *a, **kw):
    t0, w0 = time.process_time(), time.perf_counter()
    out = fn(*a, **kw)
    return out, time.process_time() - t0, time.perf_counter() - w0


def score(res, cfg, run_dir: Path, name: str) -> dict:
    s = image_scores(res.x, cfg.dataset, labels=res.labels, classes=cfg.classes)
    save_grid(res.x[:100], run_dir / f"samples_nfe{res.nfe}.png", 10)
    out = {
        "fid": round(s["fid"], 2),
        "n": s["fid_n_samples"],
        "n_reference": s["fid_n_reference"],
        "label_accuracy": s.get("label_accuracy"),
        "nfe": res.nfe,
        "sampling_seconds": round(res.seconds, 1),
    }
    print(
        f"  {name}: FID {out['fid']:.2f} ({out['n']} vs {out['n_reference']} test), label accuracy {out['label_accuracy']:.3f}",
        flush=True,
    )
    return out


def run(args) -> dict:
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it or choose another --out")
    meta = {
        "time": time.strftime("%Y-%m-%d %H:%M"),
        "threads": torch.get_num_threads(),
        "load_start": pixel_recipes.load(),
        "vae_minutes": args.vae_minutes,
        "minutes": args.minutes,
        "steps": args.steps,
        "n": args.n,
        "nfe": args.nfe,
    }
    data = load_images("mnist", "train")

    print("1. train-vae", flush=True)
    vcfg = budget(VAEConfig(dataset="mnist"), args, args.vae_minutes)
    _, vae_cpu, vae_wall = timed(train_vae, vcfg, out / "vae", eval_n=None)
    vae_rec = score_vae_run(out / "vae", vcfg, args.n)  # not counted: scoring is not part of generation
    print(
        f"  {vae_rec['steps']} steps; reconstruction FID {vae_rec['reconstruction']['fid_reconstructions']:.2f} "
        f"(originals {vae_rec['reconstruction']['fid_originals']:.2f}), MSE {vae_rec['reconstruction']['mse']:.4f}",
        flush=True,
    )

    print("2. encode", flush=True)
    to_encode = (
        data
        if args.encode_n is None
        else dataclasses.replace(data, images=data.images[: args.encode_n], labels=data.labels[: args.encode_n])
    )
    enc, enc_cpu, enc_wall = timed(
        encode_dataset, load_vae(out / "vae" / VAE_DIR), to_encode, out / "latents", dataset="mnist"
    )

    print("3. latent DiT", flush=True)
    lcfg = latent_config("mnist", enc["latent_shape"], conditional=True)
    cache = load_latent_cache(out / "latents" / CACHE_FILE)
    lat_rate, lat_flops = train_rate(
        lcfg, latent_batches(cache.latents, cache.labels, lcfg.train.batch_size, torch.device("cpu")), args.rate_steps
    )
    lcfg = budget(lcfg, args, args.minutes)
    lat_sum, lat_cpu, lat_wall = timed(train_latent, lcfg, out / "latent", latents_dir=out / "latents")
    model, _, vae = latent_load_run(out / "latent")
    lat_eval = score(latent_generate(model, vae, lcfg, args.n, nfe=args.nfe, seed=0), lcfg, out / "latent", "latent")
    latent_total = vae_cpu + enc_cpu + lat_cpu

    print("4. pixel U-Net", flush=True)
    pcfg = pixel_config("mnist", "default", conditional=True)
    pix_rate, pix_flops = train_rate(pcfg, make_batch_fn(data, pcfg, torch.device("cpu")), args.rate_steps)
    pcfg = budget(pcfg, args, latent_total / 60)
    pix_sum, pix_cpu, pix_wall = timed(train, pcfg, out / "pixel", data=data)
    pmodel, _ = pixel_load_run(out / "pixel")
    pix_eval = score(pixel_generate(pmodel, pcfg, args.n, nfe=args.nfe, seed=0), pcfg, out / "pixel", "pixel")

    rows = {
        "latent": {"net": f"DiT {lcfg.net_config['hidden_size']}x{lcfg.net_config['depth']}, patch {lcfg.net_config['patch_size']}, "
                          f"on {'x'.join(map(str, enc['latent_shape']))} latents", "params": lat_sum.num_params,
                   "images_per_cpu_s": round(lat_rate, 1), "train_mflop_per_image": round(lat_flops / 1e6, 1),
                   "steps": lat_sum.result.steps, "images_per_s_in_training": round(lat_sum.images_per_s, 1),
                   "cpu_s": {"vae": round(vae_cpu, 1), "encode": round(enc_cpu, 1), "train": round(lat_cpu, 1), "total": round(latent_total, 1)},
                   "wall_s_total": round(vae_wall + enc_wall + lat_wall, 1), "eval": lat_eval},
        "pixel": {"net": "U-Net " + "-".join(map(str, pcfg.net_config["channels"])) + f", patch {pcfg.net_config['patch_size']}",
                  "params": pix_sum.num_params, "images_per_cpu_s": round(pix_rate, 1), "train_mflop_per_image": round(pix_flops / 1e6, 1),
                  "steps": pix_sum.result.steps, "images_per_s_in_training": round(pix_sum.images_per_s, 1),
                  "cpu_s": {"train": round(pix_cpu, 1), "total": round(pix_cpu, 1)}, "wall_s_total": round(pix_wall, 1), "eval": pix_eval},
        "vae": {"steps": vae_rec["steps"], "params": vae_rec["num_params"], "latent_shape": vae_rec["latent_shape"],
                "reconstruction": vae_rec["reconstruction"]},
    }  # fmt: skip
    meta["load_end"] = pixel_recipes.load()
    result = {"meta": meta, **rows}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(r: dict) -> str:
    m, lat, pix, vae = r["meta"], r["latent"], r["pixel"], r["vae"]
    rec = vae["reconstruction"]
    budget_txt = (
        f"{m['steps']} steps each (smoke test)"
        if m["steps"]
        else f"VAE {m['vae_minutes']:g} min, DiT {m['minutes']:g} min"
    )
    lines = [
        f"Run {m['time']}, {m['threads']} torch thread(s), load average {m['load_start']} at the start and {m['load_end']} "
        f"at the end; {budget_txt}{'' if m['steps'] else '; pixel trained for the latent pipeline total CPU time'}. FID of {m['n']} samples at "
        f"NFE {m['nfe']} (each recipe's solver and guidance) against the 10,000 MNIST test images in fm-eval's classifier "
        "features; `python benchmarks/latent_vs_pixel.py`.",
        "",
        "| generator | network (params) | train images per CPU-s | train MFLOP/image | CPU s (VAE + encode + train) | steps | FID | label acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("latent", lat), ("pixel", pix)):
        c = row["cpu_s"]
        parts = f"{c['vae']} + {c['encode']} + {c['train']} = {c['total']}" if "vae" in c else f"{c['total']}"
        lines.append(
            f"| {name} | {row['net']} ({row['params'] / 1e6:.2f}M) | {row['images_per_cpu_s']} | {row['train_mflop_per_image']} | "
            f"{parts} | {row['steps']} | {row['eval']['fid']:.2f} | {row['eval']['label_accuracy']:.3f} |"
        )
    lines += [
        "",
        f"VAE ({vae['params'] / 1e6:.2f}M parameters, latents {'x'.join(map(str, vae['latent_shape']))}, {vae['steps']} steps): "
        f"{rec['n']} test images reconstructed score FID {rec['fid_reconstructions']:.2f} (the originals {rec['fid_originals']:.2f}), "
        f"MSE {rec['mse']:.4f} in [-1, 1], PSNR {rec['psnr_db']:.1f} dB. The reconstruction FID is the floor for latent samples.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae-minutes", type=float, default=4.0, help="VAE training time (default 4)")
    p.add_argument("--minutes", type=float, default=10.0, help="DiT training time (default 10, the issue's)")
    p.add_argument("--steps", type=int, default=None, help="train every phase this many steps instead (smoke test)")
    p.add_argument("--n", type=int, default=1000, help="samples scored (default 1000)")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument(
        "--encode-n", type=int, default=None, help="encode only the first N training images (smoke test; default all)"
    )
    p.add_argument("--rate-steps", type=int, default=10, help="timed steps of the throughput measurement")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice; use 1 on a shared machine)"
    )
    p.add_argument("--out", type=Path, default=Path("runs") / f"bench-latent-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = table(result)
    print(text)
    if not args.no_write:
        pixel_recipes.write_section(text, section=SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
