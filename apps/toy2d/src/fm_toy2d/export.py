"""``fm-toy2d export``: a run's EMA MLP or token MLP (fm-nets) or flow (fm-nflows) as a save_pretrained folder with
a model card (fm_cli.export does the writing; this module says what the toy-2D model is and how to
load and sample it)."""

from __future__ import annotations

import argparse
from typing import Any

from .cli_train import PROG

__all__ = ["cmd_export"]


def cmd_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The run's EMA MLP (fm-nets) or flow (fm-nflows) as a save_pretrained folder with a model card."""
    from fm_cli.export import export, training_command

    from . import training
    from .cli_train import DISCRETE_ONLY, DISCRETE_REFUSED, NF_REFUSED, RESUME_FIELDS

    config, cfg = training.read_run(args.run)
    kind = config.get("model", cfg.model)
    nf = kind == "nf"
    refused = NF_REFUSED if nf else DISCRETE_REFUSED if kind == "discrete" else {}
    only = () if kind == "discrete" else DISCRETE_ONLY  # discrete options are not flags of fm or nf runs
    skip = {"minutes", "device", "steps", "cells", "dim"} | {f[2:].replace("-", "_") for f in (*refused, *only)}
    fields = [d for d in RESUME_FIELDS if d not in skip]
    extra: dict[str, Any] = {"cells": cfg.grid, "dim": cfg.dim} if cfg.dataset == "checkerboard" else {}
    if kind != "nf" and isinstance(config["toy2d"].get("net"), dict):
        extra.update({k: config["toy2d"]["net"].get(k) for k in ("hidden", "depth")})
    command = training_command(PROG, config, "toy2d", fields, extra)
    where, k = str(args.out) if args.push is None else args.push, None
    if kind == "discrete":
        from .discrete import LATTICE_RANGE, load_discrete_run

        run_d = load_discrete_run(args.run)
        model, library, k = run_d.model, "fm-nets", run_d.num_classes
        sampling = {"network": "fm_nets.TokenMLP", "shape": [cfg.data_dim], "sampler": "fm_discrete.ctmc_sample (euler)",
                    "nfe": cfg.nfe, "num_classes": k, "lattice": cfg.lattice, "range": list(LATTICE_RANGE),
                    "source": cfg.source, "kappa": cfg.kappa}  # fmt: skip
        labels = f", num_classes={k}, random_labels=True" if k else ""
        lines = ["from fm_discrete import MixturePath, UniformQuantizer, ctmc_sample", "from fm_nets import TokenMLP",
                 f"net = TokenMLP.from_pretrained({where!r})",
                 f"path = MixturePath({cfg.lattice}, source={cfg.source!r}, scheduler={cfg.kappa!r})",
                 f"tokens = ctmc_sample(net, path, 1000, ({cfg.data_dim},), steps={cfg.nfe}{labels}).x",
                 f"x = UniformQuantizer({cfg.lattice}, {LATTICE_RANGE[0]}, {LATTICE_RANGE[1]}).decode(tokens)  # bin centres",
                 ]  # fmt: skip
    elif nf:
        from .nf_run import load_nf_run

        run = load_nf_run(args.run)
        model, library, k = run.flow, "fm-nflows", run.num_classes
        sampling: dict[str, Any] = {"network": "fm_nflows.Flow", "dim": cfg.data_dim, "num_classes": k}
        lines = ["from fm_nflows import Flow", f"flow = Flow.from_pretrained({where!r})",
                 f"x = flow.sample(1000{', y=0' if k else ''})  # [1000, {cfg.data_dim}]"]  # fmt: skip
    else:
        run = training.load_run(args.run)
        model, library, k = getattr(run.model, "net", run.model), "fm-nets", run.num_classes
        scale = float(getattr(run.model, "scale", 1.0))
        sampling = {"network": "fm_nets.MLPVelocity", "shape": [cfg.data_dim], "solver": cfg.solver, "nfe": cfg.nfe,
                    "num_classes": k, "labels": "uniform random" if k else None, "input_scale": scale}  # fmt: skip
        v = "net" if scale == 1.0 else f"lambda x, t, y=None: net({scale} * x, t, y)"
        labels = f", num_classes={k}, random_labels=True" if k else ""
        lines = ["from fm_core import sample", "from fm_nets import MLPVelocity",
                 f"net = MLPVelocity.from_pretrained({where!r})",
                 f"x = sample({v}, 1000, ({cfg.data_dim},), method={cfg.solver!r}, nfe={cfg.nfe}{labels}).x",
                 ]  # fmt: skip
    res = export(args.run, args.out, model=model, command=command, sampling=sampling, load_lines="\n".join(lines),
                 library=library, tags=[PROG, cfg.dataset], push=args.push)  # fmt: skip
    print(f"{PROG}: exported {type(model).__name__} ({', '.join(res.files)}) -> {res.folder}"
          + (f"; pushed: {res.url}" if res.url else ""))  # fmt: skip
    return 0
