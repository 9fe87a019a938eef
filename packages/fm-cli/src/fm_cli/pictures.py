"""Pictures for people: image grids (PNG), optionally labelled, and the noise-to-images animation (GIF).

Images come in as uint8 [N, H, W] (torch tensors or numpy arrays; what the sample commands write).
A grid has ``ncol`` images per row (default: about square) on a black background with a ``gap``
of 2 pixels around each image, everything scaled up ``scale`` times with nearest-neighbour so
single pixels stay visible: ``(rows (H + gap) + gap) scale`` by ``(ncol (W + gap) + gap) scale`` pixels.

With ``labels`` (class ids or names) a black strip of ``LABEL_HEIGHT`` pixels with white text is
added: one above every row when there is a label per image, one above the first row when there is
a label per column; a ``caption`` (e.g. the sampler: guidance, NFE, solver) adds a strip of
``CAPTION_HEIGHT`` pixels below the grid. Files are written atomically (:func:`fm_train.atomic_file`).

Charts (matplotlib, imported only when one is drawn): :func:`plot_loss` (loss and learning rate
against step, from a run's loss.csv) and :func:`plot_guidance_sweep` (FID, precision and recall
against the classifier-free guidance scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CAPTION_HEIGHT",
    "LABEL_HEIGHT",
    "grid_array",
    "grid_image",
    "plot_guidance_sweep",
    "plot_loss",
    "save_gif",
    "save_grid",
    "save_reconstructions",
    "save_titled_rows",
    "title_margin",
]

#: Height in pixels (after scaling) of the strip that holds a row's labels.
LABEL_HEIGHT = 14
#: Height in pixels of the strip below a grid that holds its caption.
CAPTION_HEIGHT = 16
#: The row titles of :func:`save_reconstructions`.
RECONSTRUCTION_TITLES = ("original", "reconstruction")


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _images(images: Any, what: str = "grid_array") -> np.ndarray:
    arr = _numpy(images)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] == 0:
        dtype, shape = getattr(images, "dtype", arr.dtype), tuple(getattr(images, "shape", arr.shape))
        raise ValueError(f"{what} expects uint8 images [N, H, W], got {dtype} {shape}")
    return arr


def grid_array(images: Any, ncol: int | None = None, *, gap: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 [N, H, W] -> one uint8 image [(rows (H + gap) + gap) scale, (ncol (W + gap) + gap) scale]
    holding them row by row (rows = ceil(N / ncol); ncol defaults to ceil(sqrt(N)))."""
    arr = _images(images)
    n, h, w = arr.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    out = np.zeros((nrow * (h + gap) + gap, ncol * (w + gap) + gap), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = arr[i]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def _text_width(text: str) -> int:
    """Width in pixels of ``text`` as drawn crisp (fontmode "1") with the default font; measured on
    the drawn pixels, since crisp glyphs come out wider than ``textlength`` says."""
    if not text:
        return 0
    font = ImageFont.load_default()
    probe = Image.new("L", (int(2 * ImageDraw.Draw(Image.new("L", (1, 1))).textlength(text, font=font)) + 16, 24))
    draw = ImageDraw.Draw(probe)
    draw.fontmode = "1"
    draw.text((0, 4), text, fill=255, font=font)
    cols = np.nonzero(np.asarray(probe).any(0))[0]
    return int(cols.max()) + 1 if cols.size else 0


def _text_strip(text: str, width: int, height: int) -> Image.Image:
    """White text centred on a black strip [height, width], cut to the width."""
    strip = Image.new("L", (width, height))
    draw = ImageDraw.Draw(strip)
    draw.fontmode = "1"  # crisp, not antialiased: white on black like the pixels
    while text and _text_width(text) > width - 4:
        text = text[:-1]
    draw.text(((width - _text_width(text)) // 2, (height - 11) // 2), text, fill=255, font=ImageFont.load_default())
    return strip


def _with_caption(img: Image.Image, caption: str | None) -> Image.Image:
    if caption is None:
        return img
    out = Image.new("L", (img.width, img.height + CAPTION_HEIGHT))
    out.paste(img, (0, 0))
    out.paste(_text_strip(caption, img.width, CAPTION_HEIGHT), (0, img.height))
    return out


def grid_image(
    images: Any,
    ncol: int | None = None,
    *,
    labels: Sequence[str | int] | None = None,
    caption: str | None = None,
    gap: int = 2,
    scale: int = 2,
) -> Image.Image:
    """The grid of :func:`grid_array` as a grayscale PIL image, with labels drawn above the images.

    ``labels``: one per image (a strip above every row, each image's label above it) or one per
    column (a strip above the first row); each label is centred over its image and cut to its width.
    The height grows by ``LABEL_HEIGHT`` per strip; the width is unchanged. ``caption``: one line
    centred in a strip of ``CAPTION_HEIGHT`` pixels below the grid (cut to the grid's width).
    """
    base = grid_array(images, ncol, gap=gap, scale=scale)
    if labels is None:
        return _with_caption(Image.fromarray(base), caption)
    n, h, w = _images(images).shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    texts = [str(v) for v in labels]
    if len(texts) == n:
        rows = [texts[r * ncol : (r + 1) * ncol] for r in range(nrow)]
    elif len(texts) == ncol:
        rows = [texts]
    else:
        raise ValueError(f"labels: expected one per image ({n}) or one per column ({ncol}), got {len(texts)}")
    band = (h + gap) * scale  # a row of images with the gap above it
    pieces = []
    for r in range(nrow):
        if r < len(rows):
            pieces.append(np.zeros((LABEL_HEIGHT, base.shape[1]), dtype=np.uint8))
        pieces.append(base[r * band : (r + 1) * band])
    pieces.append(base[nrow * band :])  # the bottom gap
    img = Image.fromarray(np.concatenate(pieces))
    font = ImageFont.load_default()
    cell = w * scale
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            label = Image.new("L", (cell, LABEL_HEIGHT))  # drawn apart, then pasted: text never leaves its cell
            draw = ImageDraw.Draw(label)
            draw.fontmode = "1"  # crisp, not antialiased: white on black like the pixels below
            text = _fit(draw, text, font, cell)
            draw.text(((cell - draw.textlength(text, font=font)) / 2, 1), text, fill=255, font=font)
            img.paste(label, ((gap + c * (w + gap)) * scale, r * (LABEL_HEIGHT + band)))
    return _with_caption(img, caption)


def save_grid(
    images: Any,
    path: str | Path,
    ncol: int | None = None,
    *,
    labels: Sequence[str | int] | None = None,
    caption: str | None = None,
    scale: int = 2,
) -> Path:
    """Write uint8 images [N, H, W] as one PNG grid (see :func:`grid_image`); returns the path."""
    path = Path(path)
    img = grid_image(images, ncol, labels=labels, caption=caption, scale=scale)
    from fm_train.checkpoint import atomic_file

    with atomic_file(path) as f:
        img.save(f, format="PNG")
    return path


def save_gif(
    frames: Any,
    path: str | Path,
    ncol: int | None = None,
    *,
    labels: Sequence[str | int] | None = None,
    scale: int = 2,
    frame_ms: int = 250,
    hold_ms: int = 1500,
) -> Path:
    """Write uint8 frames [T, G, H, W] (the grid at each solver time, noise first) as a looping GIF.

    The first and last frames are held for ``hold_ms``; the others last ``frame_ms`` each.
    """
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"save_gif expects uint8 frames [T, N, H, W], got {tuple(frames.shape)}")
    pics = [grid_image(f, ncol, labels=labels, scale=scale) for f in frames]
    durations = [frame_ms] * len(pics)
    durations[0] = durations[-1] = hold_ms
    path = Path(path)
    from fm_train.checkpoint import atomic_file

    with atomic_file(path) as f:
        pics[0].save(f, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0)
    return path


def title_margin(titles: Sequence[str] = RECONSTRUCTION_TITLES) -> int:
    """Width in pixels of the margin that holds row ``titles`` (the longest title plus 8 pixels)."""
    return max(_text_width(str(t)) for t in titles) + 8


def save_reconstructions(
    originals: Any,
    reconstructions: Any,
    path: str | Path,
    ncol: int = 10,
    *,
    titles: Sequence[str] | None = RECONSTRUCTION_TITLES,
) -> Path:
    """uint8 [N, H, W] twice -> one PNG: a row of ``ncol`` originals, below it their reconstructions,
    and so on (a short last row is padded with black). ``titles`` (default "original" and
    "reconstruction") are written left of each row, in a margin of :func:`title_margin` pixels;
    None leaves the grid as it is."""
    a_all, b_all = _numpy(originals), _numpy(reconstructions)
    if a_all.shape != b_all.shape:
        raise ValueError(f"originals {tuple(a_all.shape)} and reconstructions {tuple(b_all.shape)} differ in shape")
    rows = []
    for start in range(0, a_all.shape[0], ncol):
        a, b = a_all[start : start + ncol], b_all[start : start + ncol]
        pad = ncol - a.shape[0]
        if pad:
            blank = np.zeros((pad, *a.shape[1:]), dtype=a.dtype)
            a, b = np.concatenate([a, blank]), np.concatenate([b, blank])
        rows += [a, b]
    if titles is None:
        return save_grid(np.concatenate(rows), path, ncol)
    if len(titles) != 2:
        raise ValueError(f"titles must be two strings (originals, reconstructions) or None, got {list(titles)}")
    scale, gap = 2, 2
    grid = grid_image(np.concatenate(rows), ncol, gap=gap, scale=scale)
    h = a_all.shape[1] * scale
    margin = title_margin(titles)
    img = Image.new("L", (grid.width + margin, grid.height))
    img.paste(grid, (margin, 0))
    for r in range(len(rows)):
        top = (gap + r * (a_all.shape[1] + gap)) * scale
        img.paste(_text_strip(str(titles[r % 2]), margin, h), (0, top))
    from fm_train.checkpoint import atomic_file

    path = Path(path)
    with atomic_file(path) as f:
        img.save(f, format="PNG")
    return path


def save_titled_rows(
    groups: Sequence[tuple[str, Any]],
    path: str | Path,
    ncol: int,
    *,
    labels: Sequence[str | int] | None = None,
    caption: str | None = None,
    scale: int = 2,
) -> Path:
    """Blocks of uint8 images [N_i, H, W] (``groups``: (title, images)) one under the other, each in rows
    of ``ncol`` (a short last row padded with black) with its title left of its first row, e.g. one-step
    samples above a teacher's. ``labels``: one per column, above the first row; ``caption`` below
    (:func:`grid_image`). Returns the path of the PNG (written atomically)."""
    if not groups:
        raise ValueError("save_titled_rows needs at least one (title, images) group")
    blocks, starts, row = [], [], 0
    for title, images in groups:
        a = _images(images, "save_titled_rows")
        pad = (-a.shape[0]) % ncol
        if pad:
            a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), dtype=a.dtype)])
        starts.append((row, str(title)))
        row += a.shape[0] // ncol
        blocks.append(a)
    shapes = {b.shape[1:] for b in blocks}
    if len(shapes) != 1:
        raise ValueError(f"save_titled_rows: the groups' images differ in size: {sorted(shapes)}")
    every, gap = np.concatenate(blocks), 2
    if labels is not None and len(labels) != ncol:
        raise ValueError(f"labels: expected one per column ({ncol}), got {len(labels)}")
    grid = grid_image(every, ncol, labels=labels, caption=caption, gap=gap, scale=scale)
    h, margin = every.shape[1], title_margin([t for _, t in starts])
    img = Image.new("L", (grid.width + margin, grid.height))
    img.paste(grid, (margin, 0))
    top0 = LABEL_HEIGHT if labels is not None else 0
    for r, title in starts:
        img.paste(_text_strip(title, margin, h * scale), (0, top0 + (gap + r * (h + gap)) * scale))
    from fm_train.checkpoint import atomic_file

    path = Path(path)
    with atomic_file(path) as f:
        img.save(f, format="PNG")
    return path


# ----------------------------------------------------------------------------- charts (matplotlib)
def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure (no pyplot: no global state, no display); ImportError naming the package."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("charts (loss.png, guidance.png) need matplotlib: pip install matplotlib") from None
    return Figure(figsize=figsize)


def _save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    from fm_train.checkpoint import atomic_file

    path = Path(path)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_loss(
    path: str | Path, history: dict[str, list[float]], *, title: str = "", ylabel: str = "loss (MSE of the velocity)"
) -> Path:
    """Training loss (mean over each logging interval, log scale) and, when ``history`` has "lr",
    the learning rate (dashed, right axis) against step; ``history`` as ``RunDir.read_history``
    gives it ({"step": [...], "loss": [...], "lr": [...]}). Writes a PNG; returns its path."""
    steps, loss = np.asarray(history.get("step", []), float), np.asarray(history.get("loss", []), float)
    if steps.size == 0 or steps.shape != loss.shape:
        raise ValueError(f"plot_loss needs equal, non-empty step and loss columns, got {steps.size} and {loss.size}")
    fig = _figure((6.4, 3.8))
    ax = fig.subplots()
    ax.plot(steps, loss, color="#1f77b4", lw=1.5, label="flow-matching loss")
    if (loss > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if history.get("lr"):
        ax2 = ax.twinx()
        ax2.plot(steps, history["lr"], color="#ff7f0e", lw=1.0, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="#ff7f0e")
        ax2.tick_params(axis="y", colors="#ff7f0e")
        ax2.set_ylim(bottom=0)
    ax.set_title(title or "training loss")
    return _save_figure(fig, path)


def plot_guidance_sweep(path: str | Path, rows: Sequence[dict[str, Any]], *, title: str = "") -> Path:
    """FID (left) and precision / recall (right) against the guidance scale, one point per row
    ({"guidance", "fid", "precision", "recall"}); the row with the lowest FID is marked on both
    panels and named in the legend. Writes a PNG; returns its path."""
    if not rows:
        raise ValueError("plot_guidance_sweep needs at least one row")
    g = np.asarray([r["guidance"] for r in rows], float)
    order = np.argsort(g)
    g = g[order]
    col = {k: np.asarray([rows[i][k] for i in order], float) for k in ("fid", "precision", "recall")}
    best = int(np.argmin(col["fid"]))
    fig = _figure((10.0, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(g, col["fid"], "o-", color="#1f77b4", lw=1.6, label="FID (lower is better)")
    ax1.plot(g[best], col["fid"][best], "*", color="#d62728", ms=16, label=f"best FID {col['fid'][best]:.2f} "
             f"at guidance {g[best]:g}")  # fmt: skip
    ax1.set_ylabel("FID (classifier features)")
    ax2.plot(g, col["precision"], "o-", color="#2ca02c", lw=1.6, label="precision (fidelity)")
    ax2.plot(g, col["recall"], "s-", color="#9467bd", lw=1.6, label="recall (diversity)")
    ax2.axvline(g[best], color="#d62728", ls=":", lw=1.2, label=f"best FID (guidance {g[best]:g})")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("precision / recall (k-NN, k = 3)")
    for ax in (ax1, ax2):
        ax.set_xlabel("guidance scale (1 = no guidance)")
        ax.set_xticks(g)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "classifier-free guidance sweep", fontsize=11)
    return _save_figure(fig, path)
