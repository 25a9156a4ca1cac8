"""Image grids and image bytes for figures (patches, filters, activation maps, saliency, ...).

Tiles are numpy arrays (H, W) grey, (H, W, 3) RGB, floats or uint8, or PIL images; None is an
empty cell. Pure functions: callers write the bytes through the store.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont


NEAREST = Image.Resampling.NEAREST  # for weights and activation maps: keep each value a visible square
SMOOTH = Image.Resampling.LANCZOS  # for photos


def to_uint8(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Floats scaled from [lo, hi] (default the array's own min and max) to 0..255; a constant array is mid-grey."""
    a = np.asarray(a, np.float64)
    lo = float(np.nanmin(a)) if lo is None else lo
    hi = float(np.nanmax(a)) if hi is None else hi
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return np.full(a.shape, 128, np.uint8)
    return np.clip(np.rint((np.nan_to_num(a, nan=lo) - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def normalize_per_tile(tiles) -> list[np.ndarray]:
    """Each tile scaled to 0..255 by its own min and max (filters of very different norms stay visible)."""
    return [None if t is None else to_uint8(t) for t in tiles]


def normalize_together(tiles) -> list[np.ndarray]:
    """All tiles scaled by one shared min and max (a weak map stays dark next to a strong one)."""
    real = [np.asarray(t, np.float64) for t in tiles if t is not None]
    lo = min((float(np.nanmin(t)) for t in real), default=0.0)
    hi = max((float(np.nanmax(t)) for t in real), default=1.0)
    return [None if t is None else to_uint8(t, lo, hi) for t in tiles]


def to_image(tile) -> Image.Image:
    """A tile as an RGB PIL image: arrays (H, W) grey or (H, W, 3), uint8 as is and floats min-max scaled."""
    if isinstance(tile, Image.Image):
        return tile.convert("RGB")
    a = np.asarray(tile)
    if a.dtype != np.uint8:
        a = to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def fit(img: Image.Image, side: int, resample=SMOOTH, background=(255, 255, 255)) -> Image.Image:
    """img scaled (up or down, aspect kept) to fit a side x side square, centred on background."""
    w, h = img.size
    scale = side / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    out = Image.new("RGB", (side, side), background)
    out.paste(img, ((side - img.size[0]) // 2, (side - img.size[1]) // 2))
    return out


def grid(tiles, rows: int, cols: int, pad: int = 2, tile: int | None = None, resample=SMOOTH,
         background=(255, 255, 255), row_labels: list[str] | None = None) -> Image.Image:
    """tiles in row-major order (None: an empty cell) -> one image of rows x cols cells of tile x tile px
    (default: the largest tile's side), pad px apart; row_labels are written left of each row."""
    images = [None if t is None else to_image(t) for t in tiles]
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} tiles do not fit a {rows} x {cols} grid")
    side = tile or max((max(im.size) for im in images if im is not None), default=1)
    font = ImageFont.load_default()
    label_w = 0
    if row_labels:
        label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(s, font=font)) for s in row_labels) + 2 * pad
    out = Image.new("RGB", (label_w + cols * (side + pad) + pad, rows * (side + pad) + pad), background)
    draw = ImageDraw.Draw(out)
    for r, label in enumerate(row_labels or []):
        draw.text((pad, pad + r * (side + pad) + side // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    for i, im in enumerate(images):
        if im is not None:
            r, c = divmod(i, cols)
            out.paste(fit(im, side, resample, background), (label_w + pad + c * (side + pad), pad + r * (side + pad)))
    return out


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for n tiles."""
    cols = max(1, int(np.ceil(np.sqrt(n))))
    return max(1, int(np.ceil(n / cols))), cols


def to_png_bytes(img: Image.Image, level: int = 6) -> bytes:
    """level: zlib effort 0-9; photos barely shrink past 1, which encodes 3x faster than 6."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def to_jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    """For large photo grids, where PNG would be ten times bigger."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def grid_png(images: list[np.ndarray], captions: list[str], cols: int = 8) -> bytes:
    """A captioned grid of uint8 (3, H, W) pictures (matplotlib)."""
    from matplotlib.figure import Figure

    cols = min(cols, max(1, len(images)))
    rows = (len(images) + cols - 1) // cols
    fig = Figure(figsize=(1.5 * cols, 1.7 * rows), dpi=100, layout="constrained")
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
            ax.set_title(captions[i], fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
