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


def grid(rows: list[list[tuple[Image.Image, str]]], size: int, highlight_first: bool = True) -> bytes:
    """Rows of (tile, caption) -> PNG bytes; the first tile of each row framed (the query)."""
    cols = max((len(r) for r in rows), default=1)
    pad = 4
    canvas = Image.new("RGB", (cols * (size + pad) + pad, len(rows) * (size + CAPTION + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, (tile, caption) in enumerate(row):
            x, y = pad + c * (size + pad), pad + r * (size + CAPTION + pad)
            canvas.paste(tile.resize((size, size)) if tile.size != (size, size) else tile, (x, y))
            if highlight_first and c == 0:
                draw.rectangle([x - 2, y - 2, x + size + 1, y + size + 1], outline=(220, 30, 30), width=2)
            draw.text((x + 1, y + size + 1), caption[: max(4, size // 6)], fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, "PNG", optimize=True)
    return buf.getvalue()
