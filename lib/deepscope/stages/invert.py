"""Feature inversion over a dataset: per image and layer, the image its features at that layer
describe (PNG at the model's input size), and how far it is from the real input.
The algorithm is algos/invert.py; `deepscope invert DIR --layers L1,L2 --out OUT` runs it as a job."""
from __future__ import annotations

import html
import re
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator

from deepscope.algos.invert import InvertSettings, invert
from deepscope.io import schemas
from deepscope.io.images import file_stem, item_seed, png_bytes
from deepscope.report.html import images_html
from deepscope.stages.base import Stage, StageConfig, name_list


class InvertConfig(StageConfig):
    layers: list[str]  # e.g. ["_blocks.1", "_blocks.10"]: early layers keep more of the image
    steps: int = Field(200, ge=1)
    lr: float = Field(0.05, gt=0)
    tv: float = Field(0.5, ge=0)
    beta: float = Field(2.0, gt=0)
    seed: int = 0
    param: Literal["pixel", "fourier"] = "fourier"  # fourier: 1/f spectrum, decorrelated colours, transformations
    lr_fourier: float = Field(0.1, gt=0)

    @field_validator("layers", mode="before")
    @classmethod
    def _split(cls, v):
        return name_list(v, "layer")


class Invert(Stage):
    name = "invert"
    Config = InvertConfig
    needs_grad = True

    def layers(self):
        return list(self.config.layers)

    def map_batch(self, model, x, taps, rows):
        cfg = self.config
        settings = InvertSettings(**cfg.model_dump(exclude={"layers"}))
        src = model.transform.denormalize(x.detach().float()).clamp(0, 1)
        seeds = [item_seed(i, cfg.seed) for i in rows["id"]]
        out = {}
        for k, layer in enumerate(cfg.layers):
            rec, err = invert(model, src, layer, settings, seeds=seeds)
            pixels = (rec * 255).round().to(torch.uint8)
            out[f"png{k}"] = np.array([png_bytes(p) for p in pixels.cpu().numpy()], dtype=object)
            out[f"feature_error{k}"] = err.float().cpu().numpy()
            out[f"pixel_rmse{k}"] = (pixels.float() / 255 - src).pow(2).flatten(1).mean(1).sqrt().cpu().numpy()
        return out

    def _rel(self, item_id, layer) -> str:
        return f"{self.name}/images/{file_stem(item_id)}__{re.sub(r'[^A-Za-z0-9._-]+', '_', layer)}.png"

    def part_files(self, part, rows):
        files = {}
        for k, layer in enumerate(self.config.layers):
            for i, p in zip(rows["id"], rows.get(f"png{k}", [])):
                if p is not None:
                    files[self._rel(i, layer)] = bytes(p)
        return files

    def part_table(self, rows):
        layers = self.config.layers
        n = len(rows["id"]) if "png0" in rows else 0
        rec = [(i, path, lab, layer, k) for i, path, lab in zip(rows["id"][:n], rows["path"][:n], rows["label"][:n])
               for k, layer in enumerate(layers)]
        pos = {i: j for j, i in enumerate(rows["id"][:n])}
        return pa.table({
            "id": pa.array([r[0] for r in rec], pa.string()), "path": pa.array([r[1] for r in rec], pa.string()),
            "label": pa.array([str(r[2]) if r[2] not in (None, "") else None for r in rec], pa.string()),
            "layer": pa.array([r[3] for r in rec], pa.string()),
            "image": pa.array([self._rel(r[0], r[3]) for r in rec], pa.string()),
            "feature_error": pa.array([float(rows[f"feature_error{r[4]}"][pos[r[0]]]) for r in rec], pa.float32()),
            "pixel_rmse": pa.array([float(rows[f"pixel_rmse{r[4]}"][pos[r[0]]]) for r in rec], pa.float32()),
        }, schema=schemas.INVERT)

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        t = store.read(self.name, columns=["layer", "feature_error", "pixel_rmse"]).to_pylist()
        per = {}
        for layer in self.config.layers:
            mine = [r for r in t if r["layer"] == layer]
            per[layer] = {"images": len(mine),
                          "feature_error": float(np.mean([r["feature_error"] for r in mine])) if mine else None,
                          "pixel_rmse": float(np.mean([r["pixel_rmse"] for r in mine])) if mine else None}
        log("invert: " + ", ".join(f"{k} pixel RMSE {v['pixel_rmse'] or 0:.3f}" for k, v in per.items()))
        return {"layers": per}

    def report(self, store):
        s = store.summary(self.name) or {}
        rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{v['images']}</td><td>{(v['feature_error'] or 0):.3f}</td>"
                       f"<td>{(v['pixel_rmse'] or 0):.3f}</td></tr>" for k, v in (s.get("layers") or {}).items())
        t = store.read(self.name, columns=["id", "layer", "image"]).slice(0, 8 * len(self.config.layers)).to_pylist() \
            if store.parts(self.name) else []
        return (f"<p>Feature inversion with a total-variation prior ({html.escape(str(self.config.model_dump(exclude={'layers'})))}); "
                "PNGs in <code>invert/images/</code>.</p><table><tr><th>layer</th><th>images</th><th>feature error</th>"
                f"<th>pixel RMSE</th></tr>{rows}</table>"
                + images_html([r["image"] for r in t], [f"{r['id'][-16:]} {r['layer']}" for r in t]))
