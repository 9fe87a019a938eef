"""``fm-<app> export``: a trained run as a folder people can share (save_pretrained layout + model card).

The folder::

    OUT/config.json          the network's constructor arguments (``Net.from_pretrained(OUT)``)
    OUT/model.safetensors    the EMA weights
    OUT/sampling.json        what sampling needs: shape, classes, solver, NFE, guidance (+ the VAE)
    OUT/README.md            model card: Hub metadata (library, tags, data set), the training
                             command, the metrics of metrics.json, the sample grid, how to sample
    OUT/samples.png          the run's last sample grid (when it has one)
    OUT/vae/                 latent models: the VAE folder (diffusers layout) the latents come from

The app builds the network with its EMA weights (fm-cli knows no network) and says how to sample;
:func:`export` writes the rest, and ``push`` uploads the folder (:func:`fm_cli.hub.push_folder`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .argtypes import nonempty_path

__all__ = ["ExportResult", "SAMPLING_FILE", "add_export_parser", "export", "export_image_run", "training_command"]

SAMPLING_FILE = "sampling.json"
GRID_FILE = "samples.png"


@dataclass
class ExportResult:
    """Where the export went: ``folder`` (the save_pretrained layout), its ``files``, and the commit
    ``url`` when it was pushed to the Hub (None otherwise)."""

    folder: Path
    files: list[str]
    url: str | None


def training_command(
    prog: str, config: Mapping[str, Any], section: str, fields: Sequence[str], extra: Mapping[str, Any] | None = None
) -> str:
    """The ``PROG train ...`` command line that reproduces a run, from its config.json.

    ``fields`` are train flags (``label_dropout`` -> ``--label-dropout``) whose values are in the app
    section or in the ``train`` section; ``extra`` maps more flag names to values (the network's).
    True booleans become bare flags, lists comma-separated values; the budget is ``--steps``.
    """
    values = {**config.get("train", {}), **config.get(section, {}), **(extra or {})}
    parts = [prog, "train"]
    for name in [*fields, *(extra or {})]:
        value = values.get(name)
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    steps = config.get("train", {}).get("steps")
    if steps is not None:
        parts += ["--steps", str(steps)]
    return " ".join(parts)


def _metric_rows(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten metrics.json into (dotted name, number or short string) rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _metric_rows(value, name + ".")
        elif isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) < 80):
            rows.append((name, value))
    return rows


def _card_text(
    *, title: str, command: str, sampling: Mapping[str, Any], load_lines: str, metrics: Mapping[str, Any], grid: bool
) -> str:
    lines = [
        f"# {title}",
        "",
        "A flow-matching model (t = 0 noise, t = 1 data) exported by the fm toolkit.",
        "",
        "## Sample it",
        "",
        "```python",
        load_lines.strip(),
        "```",
        "",
        "What sampling needs (also in `sampling.json`):",
        "",
    ]
    lines += [f"- {k}: `{json.dumps(v)}`" for k, v in sampling.items()]
    lines += ["", "## Training", "", "```bash", command, "```", ""]
    rows = _metric_rows(metrics)
    if rows:
        lines += ["## Metrics (metrics.json)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
        lines.append("")
    if grid:
        lines += ["## Samples", "", f"![samples]({GRID_FILE})", ""]
    return "\n".join(lines)


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    model: Any,
    command: str,
    sampling: Mapping[str, Any],
    load_lines: str,
    library: str,
    tags: Sequence[str] = (),
    datasets: Sequence[str] = (),
    vae_dir: str | Path | None = None,
    push: str | None = None,
) -> ExportResult:
    """Write run ``run_dir`` as a shareable folder ``out_dir`` (see the module docstring); push it if asked.

    model: the network with the weights to share (its ``save_pretrained`` writes config.json and
    model.safetensors). command: the training command line. sampling: what sampling needs (shape,
    classes, solver, nfe, guidance, ...), written to sampling.json and the card. load_lines: the
    few lines of Python that load and sample the export (shown in the card). library: the card's
    ``library_name`` (fm-nets, fm-nflows). vae_dir: a VAE folder to copy into ``OUT/vae``.
    push: a Hub repository id to upload to. ``out_dir`` must be new or empty (ValueError otherwise).
    """
    from huggingface_hub import ModelCard, ModelCardData

    run, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {str(out)!r} exists and is not an empty directory; choose a new one")
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / SAMPLING_FILE).write_text(json.dumps(dict(sampling), indent=2, sort_keys=True) + "\n")
    grid = run / GRID_FILE
    if grid.is_file():
        shutil.copyfile(grid, out / GRID_FILE)
    if vae_dir is not None:
        shutil.copytree(vae_dir, out / "vae")
    data = ModelCardData(
        library_name=library,
        tags=sorted({"flow-matching", "fm-toolkit", *tags}),
        datasets=list(datasets) or None,
        pipeline_tag="unconditional-image-generation" if len(sampling.get("shape", ())) == 3 else None,
    )
    title = f"{type(model).__name__} trained with {command.split()[0]}"
    text = _card_text(title=title, command=command, sampling=sampling, load_lines=load_lines, metrics=metrics,
                      grid=grid.is_file())  # fmt: skip
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(out / "README.md")
    url = None
    if push is not None:
        from .hub import push_folder

        url = push_folder(out, push)
    return ExportResult(folder=out, files=sorted(p.name for p in out.iterdir()), url=url)


def add_export_parser(sub: Any, what: str = "the EMA network") -> Any:
    """The ``export`` sub-command: --run RUN, --out DIR, --push REPO."""
    help = f"write {what} of a run as a shareable folder (save_pretrained layout + model card)"
    e = sub.add_parser("export", help=help, description=help)
    e.add_argument("--run", type=nonempty_path, required=True, help="the run directory (written by train)")
    e.add_argument("--out", type=nonempty_path, required=True, help="a new (or empty) directory to write")
    e.add_argument(
        "--push", default=None, metavar="REPO", help="also upload it to this Hub model repository (org/name)"
    )
    return e


def export_image_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    model: Any,
    cfg: Any,
    config: Mapping[str, Any],
    prog: str,
    section: str,
    fields: Sequence[str],
    net_flags: Mapping[str, Any] | None = None,
    shape: Sequence[int],
    decode: str,
    vae_dir: str | Path | None = None,
    vae_identity: Mapping[str, Any] | None = None,
    push: str | None = None,
) -> ExportResult:
    """:func:`export` for an fm-pixel / fm-latentgen run (an ``ImageRunConfig`` ``cfg``, its config.json).

    fields / net_flags: the train flags for :func:`training_command`. shape: one solver state;
    decode: how samples become images (shown in the card and sampling.json). vae_dir / vae_identity:
    a latent run's VAE folder (copied to OUT/vae) and its identity (class, source, weights SHA-256).
    """
    from .method import DEFAULT_FLOW_MAP_NFE, FLOW_MAP, is_two_time

    net = type(model).__name__
    # a two-time (meanflow) network samples by flow map, in one step unless told otherwise
    solver, nfe = (FLOW_MAP, DEFAULT_FLOW_MAP_NFE) if is_two_time(model) else (cfg.solver, cfg.nfe)
    sampling: dict[str, Any] = dict(
        network=f"fm_nets.{net}", shape=list(shape), solver=solver, nfe=nfe, guidance=cfg.guidance,
        num_classes=cfg.num_classes, classes=cfg.sample_classes if cfg.conditional else None,
        class_names=list(cfg.names) if cfg.conditional else None, decode=decode,
    )  # fmt: skip
    labels = f", num_classes={cfg.num_classes}, classes={cfg.sample_classes}, guidance={cfg.guidance}"
    labels = labels if cfg.conditional else ""
    where = str(out_dir) if push is None else push
    load = [
        "from fm_core import sample",
        f"from fm_nets import {net}",
        f"net = {net}.from_pretrained({where!r})",
        f"x = sample(net, 16, {tuple(shape)}, method={solver!r}, nfe={nfe}{labels}).x  # t = 0 noise -> 1 data",
    ]
    if vae_dir is not None:
        ident = {k: v for k, v in (vae_identity or {}).items() if k != "config"}
        sampling["vae"] = {"folder": "vae (diffusers layout: fm_latent.LatentVAE.from_pretrained)", **ident}
        vae = str(Path(out_dir) / "vae")
        load[1:1] = ["from fm_latent import LatentVAE"]
        load.append(
            f"images = LatentVAE.from_pretrained({vae!r}, image_size=28).decode(x)  # [16, 1, 28, 28] in [-1, 1]"
        )
    command = training_command(prog, config, section, fields, net_flags)
    return export(
        run_dir, out_dir, model=model, command=command, sampling=sampling, load_lines="\n".join(load),
        library="fm-nets", tags=[prog, cfg.dataset], datasets=[cfg.dataset], vae_dir=vae_dir, push=push,
    )  # fmt: skip
