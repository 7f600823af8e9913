"""Report figures: matplotlib plots and image thumbnails, each as a data URI (byte-stable PNG/JPEG)."""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from curate.report.stats import Histogram, funnel, written

THUMB_PX = 96


def png(fig: Figure) -> str:
    """A data URI of the figure as PNG (no timestamp in its metadata, so reruns give the same bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_funnel(manifest: dict) -> str:
    """Rows remaining after each drop step, and what the step dropped (PNG data URI)."""
    steps = funnel(manifest)
    total = int(manifest.get("total_rows", 0))
    labels = ["input rows"] + [s["status"] for s in steps] + ["written samples"]
    left = [total] + [s["remaining"] for s in steps] + [written(manifest)]
    dropped = [0] + [s["dropped"] for s in steps] + [0]
    fig = Figure(figsize=(8, 0.35 * len(labels) + 1), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, left, color="#4c72b0", label="rows remaining")
    ax.barh(y, dropped, left=left, color="#dd8452", label="dropped at this step")
    for yi, d in zip(y, dropped):
        if d:
            ax.text(total, yi, f" -{d:,}", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max(total, 1) * 1.12)  # room for the drop labels right of the bars
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8)
    return png(fig)


def plot_hist(hist: Histogram, title: str, xlabel: str, labels=("all", "kept"), vline=None, ax=None) -> Figure:
    """All rows and kept rows of one histogram; drawn on `ax` when given, else on a new figure (returned)."""
    fig = None
    if ax is None:
        fig = Figure(figsize=(7, 3), layout="constrained")
        ax = fig.subplots()
    edges, all_, kept = hist.coarse()
    # stairs draws one patch per series (bar would draw one per bin): much faster to render
    ax.stairs(all_, edges, fill=True, color="#4c72b0", alpha=0.6, label=labels[0])
    ax.stairs(kept, edges, fill=True, color="#55a868", alpha=0.8, label=labels[1])
    if vline is not None:
        ax.axvline(vline, color="#c44e52", linestyle="--", label=f"threshold {vline:g}")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return fig


def plot_size_hists(width: Histogram, height: Histogram) -> str:
    """Original widths and heights side by side (PNG data URI)."""
    fig = Figure(figsize=(10, 3), layout="constrained")
    ax_w, ax_h = fig.subplots(1, 2)
    plot_hist(width, "original width", "pixels (4096 = 4096 or more)", ("decoded", "kept"), ax=ax_w)
    plot_hist(height, "original height", "pixels (4096 = 4096 or more)", ("decoded", "kept"), ax=ax_h)
    return png(fig)


def plot_pairs(names: list[str], a: list[int], b: list[int], labels: tuple[str, str], xlabel: str) -> str:
    """Two bars per name (e.g. input vs kept rows per language) (PNG data URI)."""
    fig = Figure(figsize=(7, 0.3 * len(names) + 1), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y + 0.2, a, height=0.4, color="#4c72b0", label=labels[0])
    ax.barh(y - 0.2, b, height=0.4, color="#55a868", label=labels[1])
    ax.set_yticks(y, names)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    return png(fig)


def thumbnail(data: bytes | None) -> str | None:
    """A small JPEG data URI of encoded image bytes; None when they do not decode."""
    if data is None:
        return None
    from PIL import UnidentifiedImageError

    from curate.imageproc import open_image
    try:
        with open_image(data) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
