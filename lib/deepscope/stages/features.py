"""Features: a layer's activations (FC7, penultimate, ...) for every image, in Parquet."""
from __future__ import annotations

import html
from typing import Literal

import numpy as np
import pyarrow as pa

from deepscope.io import schemas
from deepscope.stages.base import Stage, StageConfig


class FeaturesConfig(StageConfig):
    layer: str = "penultimate"  # fc7 (AlexNet, VGG), penultimate, logits, or any module name
    dtype: Literal["float32", "float16"] = "float32"


class Features(Stage):
    name = "features"
    Config = FeaturesConfig

    def layers(self):
        return [self.config.layer]

    def map_batch(self, model, x, taps, rows):
        feats = taps[self.config.layer].flatten(1).float().cpu().numpy()
        return {"feature": feats.astype(np.float16 if self.config.dtype == "float16" else np.float32)}

    def part_table(self, rows):
        # a partition whose every image failed has no feature column: an empty part
        feats = np.ascontiguousarray(rows.get("feature", np.zeros((0, 0), np.float32)))
        dim = max(feats.shape[1], 1)
        schema = schemas.features(dim, self.config.dtype)
        values = pa.array(feats.reshape(-1), type=schemas.FEATURE_DTYPES[self.config.dtype])
        return pa.table({
            "id": pa.array(rows["id"], pa.string()),
            "path": pa.array(rows["path"], pa.string()),
            "label": pa.array([None if lab is None or lab == "" else str(lab) for lab in rows["label"]], pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(values, dim),
        }, schema=schema)

    def finish(self, ctx):
        store = ctx.store
        rows, dim = 0, None
        labels: dict[str, int] = {}
        for _, t in store.iter_parts(self.name, columns=["label", "feature"]):
            rows += t.num_rows
            if t.num_rows and dim is None:
                dim = t.schema.field("feature").type.list_size
            for lab in t.column("label").to_pylist():
                labels[lab or "(none)"] = labels.get(lab or "(none)", 0) + 1
        return {"rows": rows, "dim": dim, "layer": self.config.layer, "dtype": self.config.dtype, "labels": labels}

    def report(self, store):
        s = store.summary(self.name) or {}
        lab = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(s.get("labels", {}).items()))
        return (f"<p>{s.get('rows', 0)} feature vectors of dimension {s.get('dim')} from layer "
                f"<code>{html.escape(str(s.get('layer')))}</code> ({s.get('dtype')}), in <code>features/*.parquet</code>.</p>"
                f"<table><tr><th>label</th><th>images</th></tr>{lab}</table>")
