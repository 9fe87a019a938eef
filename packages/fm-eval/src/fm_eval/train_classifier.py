"""Train the small CNN classifier that the image metrics use, and ship its weights.

    python -m fm_eval.train_classifier --dataset mnist|fashion-mnist [--data-dir DIR]
        [--epochs 3] [--seed 0] [--batch-size 128] [--lr 3e-3] [--threads N] [--out DIR]

Whole-tensor batching (the data set is one tensor; a batch is one index gather), AdamW with a
one-cycle learning rate, seeded init and batch order. Writes ``<out>/<dataset>.safetensors``
(atomically: write beside, then rename) and ``<out>/<dataset>.json`` with the test accuracy on the
full 10,000-image test split, the FID of 1,000 train images against the test split (the floor a
perfect generator reaches at that count), the command line and the timings. ``--out`` defaults to the
package's own ``weights/`` folder, i.e. this command regenerates the shipped weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fm_data.images import IMAGE_DATASETS, load_images, to_model

from .classifier import WEIGHTS_DIR, SmallCNN
from .fid import feature_stats, frechet_distance


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@torch.no_grad()
def _features(net: SmallCNN, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def calibration_fid(net: SmallCNN, train_images: torch.Tensor, test_images: torch.Tensor, n: int = 1000) -> float:
    """FID of n random train images (seed 0) against the whole test split, with ``net``'s features.

    The floor a perfect generator would reach at n samples: what "good" means on this scale.
    """
    idx = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    net.eval()
    a = feature_stats(_features(net, to_model(train_images[idx])))
    b = feature_stats(_features(net, to_model(test_images)))
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


@torch.no_grad()
def evaluate(net: SmallCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Accuracy of ``net`` on float images x [N, 1, 28, 28] in [-1, 1] with labels y [N]."""
    net.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


def train(
    dataset: str,
    *,
    data_dir: str | None = None,
    epochs: int = 3,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    log=print,
) -> tuple[SmallCNN, dict]:
    """Train a SmallCNN on the train split; return it (eval mode) and a record with the test accuracy."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    t_start, cpu_start = time.perf_counter(), time.process_time()
    train_data = load_images(dataset, "train", data_dir)
    test_data = load_images(dataset, "test", data_dir)
    x_tr, y_tr = to_model(train_data.images), train_data.labels
    x_te, y_te = to_model(test_data.images), test_data.labels

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = SmallCNN()
    steps_per_epoch = x_tr.shape[0] // batch_size  # drop the last partial batch
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    history = []
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(x_tr.shape[0], generator=gen)
        t0, loss_sum = time.perf_counter(), 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
        acc = evaluate(net, x_te, y_te)
        history.append(
            dict(
                epoch=epoch + 1,
                train_loss=loss_sum / steps_per_epoch,
                test_accuracy=acc,
                seconds=round(time.perf_counter() - t0, 1),
            )
        )
        log(
            f"[{dataset}] epoch {epoch + 1}/{epochs}: loss {loss_sum / steps_per_epoch:.4f}, "
            f"test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
    net.eval()
    record = dict(
        dataset=dataset,
        arch="SmallCNN",
        widths=list(net.widths),
        feature_dim=net.feature_dim,
        params=sum(p.numel() for p in net.parameters()),
        test_accuracy=history[-1]["test_accuracy"],
        n_test=int(x_te.shape[0]),
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        history=history,
        fid_1000_train_vs_test=round(calibration_fid(net, train_data.images, test_data.images), 4),
        train_seconds=round(time.perf_counter() - t_start, 1),
        cpu_seconds=round(time.process_time() - cpu_start, 1),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    return net, record


def save(net: SmallCNN, record: dict, out: Path) -> Path:
    """Write ``<dataset>.safetensors`` and ``<dataset>.json`` into ``out``; return the weights path."""
    from safetensors.torch import save as save_bytes

    out.mkdir(parents=True, exist_ok=True)
    dataset = record["dataset"]
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {
        "dataset": dataset,
        "test_accuracy": f"{record['test_accuracy']:.4f}",
        "widths": json.dumps(record["widths"]),
    }
    data = save_bytes(state, metadata=meta)
    wpath = out / f"{dataset}.safetensors"
    _atomic_write_bytes(wpath, data)
    record = dict(record, weights=wpath.name, weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    _atomic_write_bytes(out / f"{dataset}.json", (json.dumps(record, indent=2) + "\n").encode())
    return wpath


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fm_eval.train_classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=IMAGE_DATASETS)
    p.add_argument(
        "--data-dir", default=None, help="folder with mnist/ and fashion-mnist/ (default: $FM_DATA_DIR, ...)"
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"output folder (default: {WEIGHTS_DIR})")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    net, record = train(
        args.dataset, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr
    )
    argv_used = sys.argv[1:] if argv is None else argv
    record["command"] = "python -m fm_eval.train_classifier " + " ".join(argv_used)
    wpath = save(net, record, args.out)
    print(f"test accuracy {record['test_accuracy']:.4f} on {record['n_test']} test images; wrote {wpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
