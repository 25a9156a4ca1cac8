"""Pixels: every image's model-input crop shrunk to a tiny RGB vector (32x32x3 by default).

The lecture's "nearest neighbours in pixel space" answer from an index over these vectors,
next to the neighbours in feature space.  A pipeline stage, so the dataset is decoded once
for features and pixels alike (the model's forward pass runs anyway when this stage runs alone).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from deepscope.algos.embed import downsample_pixels
from deepscope.io import schemas
from deepscope.stages.base import Stage, StageConfig


class PixelsConfig(StageConfig):
    size: int = Field(32, ge=4, le=128)  # side of the tiny image; the vector has 3 * size * size values


class Pixels(Stage):
    name = "pixels"
    Config = PixelsConfig

    def map_batch(self, model, x, taps, rows):
        return {"pixels": downsample_pixels(model.transform.denormalize(x), self.config.size)}

    def part_table(self, rows):
        dim = 3 * self.config.size ** 2
        values = np.ascontiguousarray(rows.get("pixels", np.zeros((0, dim), np.uint8)), np.uint8).reshape(-1)
        return pa.table({
            "id": pa.array(rows["id"], pa.string()),
            "path": pa.array(rows["path"], pa.string()),
            "label": pa.array([None if lab is None or lab == "" else str(lab) for lab in rows["label"]], pa.string()),
            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(values, pa.uint8()), dim),
        }, schema=schemas.pixels(self.config.size))

    def finish(self, ctx):
        store = ctx.store
        rows = sum(e["rows"] for e in store.parts(self.name).values())
        return {"rows": rows, "size": self.config.size, "dim": 3 * self.config.size ** 2}

    def report(self, store):
        s = store.summary(self.name) or {}
        return (f"<p>{s.get('rows', 0)} images as {s.get('size')}x{s.get('size')} RGB vectors "
                f"(the model-input crop, area-averaged) in <code>pixels/*.parquet</code>: the pixel space "
                f"of the nearest-neighbour comparison.</p>")
