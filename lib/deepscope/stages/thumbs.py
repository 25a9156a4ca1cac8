"""Thumbnails: every WHOLE image (not the model's crop) as a small JPEG or WebP, with a hash of its
decoded pixels, made by the decode task that holds the full upright image anyway (io/decode.py).

The explorer's gallery draws these without decoding originals, and `knn` verifies its duplicate
candidates on them (algos/verify.py), so post stages never need the dataset.  A pass of this stage
alone runs no model.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from deepscope.io import schemas
from deepscope.stages.base import Stage, StageConfig


class ThumbsConfig(StageConfig):
    size: int = Field(256, ge=32, le=1024)  # longest side in pixels (smaller images are kept as they are)
    quality: int = Field(85, ge=1, le=100)
    format: Literal["jpeg", "webp"] = "jpeg"


class Thumbs(Stage):
    name = "thumbs"
    Config = ThumbsConfig
    uses_model = False

    def thumb_spec(self):
        """What the decode task makes for this stage (runner.read_kwargs hands it over)."""
        from deepscope.io.decode import ThumbSpec

        return ThumbSpec(self.config.size, self.config.quality, self.config.format.upper())

    def map_batch(self, model, x, taps, rows):
        return {"thumb": rows["thumb"], "pixel_hash": rows["pixel_hash"], "file_bytes": rows["file_bytes"]}

    def part_table(self, rows):
        n = len(rows["id"])
        return pa.table({
            "id": pa.array(rows["id"], pa.string()),
            "path": pa.array(rows["path"], pa.string()),
            "thumb": pa.array(list(rows.get("thumb", [])), pa.binary()),
            "width": pa.array(np.asarray(rows["width"][:n], np.int32)),
            "height": pa.array(np.asarray(rows["height"][:n], np.int32)),
            "pixel_hash": pa.array(list(rows.get("pixel_hash", [])), pa.string()),
            "file_bytes": pa.array(np.asarray(rows.get("file_bytes", np.zeros(n))[:n], np.int64)),
        }, schema=schemas.THUMBS)

    def finish(self, ctx):
        store = ctx.store
        entries = store.parts(self.name).values()
        rows, nbytes = sum(e["rows"] for e in entries), sum(e.get("bytes", 0) for e in entries)
        hashes: dict[str, int] = {}
        for _, t in store.iter_parts(self.name, columns=["pixel_hash"]):  # not the pictures: 16 bytes an image
            for h in t.column("pixel_hash").to_pylist():
                hashes[h] = hashes.get(h, 0) + 1
        exact = sum(c for c in hashes.values() if c > 1)
        return {"rows": rows, "size": self.config.size, "format": self.config.format,
                "mean_kb": round(nbytes / max(rows, 1) / 1024, 1), "exact_duplicate_images": exact}

    def report(self, store):
        s = store.summary(self.name) or {}
        return (f"<p>{s.get('rows', 0)} thumbnails ({s.get('format')}, longest side {s.get('size')} px, "
                f"{s.get('mean_kb')} KB an image, part files included) of the whole images in <code>thumbs/*.parquet</code>, "
                f"with a hash of the decoded pixels: {s.get('exact_duplicate_images', 0)} images share "
                f"their pixels with another.</p>")
