"""Thumbnails and thumbnail grids (PNG): query results and the report's neighbour figures."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageOps

from deepscope.io.decode import DecodeLimits, decode
from deepscope.io.sources import read_bytes

CAPTION = 14  # pixels under each tile for its caption


def thumbnail(source: str | bytes, size: int, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """The centre square of an image (path or bytes) at size x size; a grey tile if it can't be read."""
    try:
        data = source if isinstance(source, bytes) else read_bytes(source, limits.max_bytes)
        img, _, _ = decode(data, limits, draft_size=size)
        return ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
    except Exception:  # a thumbnail is decoration: a missing file must not break the figure
        return Image.new("RGB", (size, size), (200, 200, 200))


def grid(rows: list[list[tuple[Image.Image, str]]], size: int, highlight_first: bool = True,
         framed: list[list[bool]] | None = None) -> bytes:
    """Rows of (tile, caption) -> PNG bytes; the first tile of each row framed (the query), or those `framed` says."""
    cols = max((len(r) for r in rows), default=1)
    pad = 4
    canvas = Image.new("RGB", (cols * (size + pad) + pad, len(rows) * (size + CAPTION + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, (tile, caption) in enumerate(row):
            x, y = pad + c * (size + pad), pad + r * (size + CAPTION + pad)
            canvas.paste(tile.resize((size, size)) if tile.size != (size, size) else tile, (x, y))
            if (framed[r][c] if framed is not None else highlight_first and c == 0):
                draw.rectangle([x - 2, y - 2, x + size + 1, y + size + 1], outline=(220, 30, 30), width=2)
            draw.text((x + 1, y + size + 1), caption[: max(4, size // 6)], fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def empty_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), "white").save(buf, "PNG")
    return buf.getvalue()


def distance_plot(nearest, threshold: float, feat=None, pix=None, dup=None) -> bytes:
    """Left: the histogram of each image's nearest duplicate distance (log scale) with the threshold;
    right: every candidate pair's feature and pixel distance (scaled), duplicates in red."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if pix is not None else 1
    fig = Figure(figsize=(6 * panels, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    pos = np.asarray(nearest)[np.asarray(nearest) > 0]
    lo = max(pos.min() if len(pos) else 1e-3, 1e-4)
    hi = max(pos.max() if len(pos) else 1.0, lo * 10, threshold * 2)
    bins = np.geomspace(lo, hi, 60)
    ax.hist(np.clip(nearest, lo, None), bins=bins, color="#4a7ab5")
    ax.axvline(threshold, color="#c00", lw=2, label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("nearest image's duplicate distance (feature x pixel evidence, scaled)")
    ax.set_ylabel("images")
    ax.legend(loc="upper left", fontsize=8)
    if pix is not None:
        ax = fig.add_subplot(1, 2, 2)
        dup = np.zeros(len(feat), bool) if dup is None else dup
        ax.scatter(feat[~dup], pix[~dup], s=2, color="#999", label="pairs")
        ax.scatter(feat[dup], pix[dup], s=8, color="#c00", label="duplicates")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("feature distance / median")
        ax.set_ylabel("pixel distance / median")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def group_grid(groups: list[list[tuple[str, str, bool]]], size: int = 80) -> bytes:
    """One row per near-duplicate group: its members' thumbnails (path or bytes, id, kept), captioned by
    id, the images to keep framed."""
    return grid([[(thumbnail(p, size), cap.rsplit("/", 1)[-1]) for p, cap, _ in g] for g in groups], size,
                framed=[[kept for *_, kept in g] for g in groups])


def rows_grid(rows: list[tuple[str, list[tuple[str, str]]]], size: int = 80, first_framed: bool = False) -> bytes:
    """Rows of thumbnails with a title line each: (title, [(path, caption)])."""
    from PIL import ImageDraw

    body = Image.open(io.BytesIO(grid([[(thumbnail(p, size), c) for p, c in tiles] for _, tiles in rows], size,
                                      highlight_first=first_framed)))
    line = 14
    out = Image.new("RGB", (max(body.width, 400), body.height + line * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    row_h = size + CAPTION + 4
    for r, (title, _) in enumerate(rows):
        y = r * (row_h + line)
        draw.text((4, y + 1), title[:90], fill=(0, 0, 0))
        out.paste(body.crop((0, 4 + r * row_h, body.width, 4 + (r + 1) * row_h)), (0, y + line))
    buf = io.BytesIO()
    out.save(buf, "PNG", optimize=True)
    return buf.getvalue()
