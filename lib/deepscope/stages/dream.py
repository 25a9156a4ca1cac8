"""DeepDream over a dataset: one dreamed picture (PNG, the model's input size) per image.
The algorithm is algos/dream.py; `deepscope dream DIR --layer L --out OUT` runs it as a job."""
from __future__ import annotations

import html

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from deepscope.algos.dream import DreamSettings, dream, dream_energy
from deepscope.io import schemas
from deepscope.io.images import file_stem, item_seed, png_bytes
from deepscope.report.html import images_html
from deepscope.stages.base import Stage, StageConfig


class DreamConfig(StageConfig):
    layer: str  # the layer whose activations are amplified, e.g. _blocks.6 of lite0
    octaves: int = Field(4, ge=1)
    octave_scale: float = Field(1.4, gt=1)
    steps: int = Field(10, ge=1)  # per octave
    lr: float = Field(0.01, gt=0)
    jitter: int = Field(32, ge=0)
    seed: int = 0


class Dream(Stage):
    name = "dream"
    Config = DreamConfig
    needs_grad = True

    def layers(self):
        return [self.config.layer]

    def map_batch(self, model, x, taps, rows):
        cfg = self.config
        settings = DreamSettings(**cfg.model_dump(exclude={"layer"}))
        src = model.transform.denormalize(x.detach().float())
        seeds = [item_seed(i, cfg.seed) for i in rows["id"]]
        out = dream(model, src, cfg.layer, settings, seeds=seeds)
        pixels = (out.clamp(0, 1) * 255).round().to(torch.uint8)
        with torch.no_grad():
            e0 = dream_energy(model, src, cfg.layer)
            e1 = dream_energy(model, pixels.float() / 255, cfg.layer)
        return {"png": np.array([png_bytes(p) for p in pixels.cpu().numpy()], dtype=object),
                "energy_start": e0.float().cpu().numpy(), "energy_end": e1.float().cpu().numpy()}

    def _rel(self, item_id) -> str:
        return f"{self.name}/images/{file_stem(item_id)}.png"

    def part_files(self, part, rows):
        return {self._rel(i): bytes(p) for i, p in zip(rows["id"], rows.get("png", [])) if p is not None}

    def part_table(self, rows):
        n = len(rows["id"]) if "png" in rows else 0
        return pa.table({
            "id": pa.array(rows["id"][:n], pa.string()), "path": pa.array(rows["path"][:n], pa.string()),
            "label": pa.array([str(v) if v not in (None, "") else None for v in rows["label"][:n]], pa.string()),
            "image": pa.array([self._rel(i) for i in rows["id"][:n]], pa.string()),
            "energy_start": pa.array(np.asarray(rows.get("energy_start", []), np.float32), pa.float32()),
            "energy_end": pa.array(np.asarray(rows.get("energy_end", []), np.float32), pa.float32()),
        }, schema=schemas.DREAM)

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        t = store.read(self.name, columns=["energy_start", "energy_end"])
        e0, e1 = np.asarray(t.column("energy_start")), np.asarray(t.column("energy_end"))
        s = {"images": t.num_rows, "layer": self.config.layer,
             "energy_gain": float(np.median(e1 / np.maximum(e0, 1e-12))) if t.num_rows else None}
        log(f"dream: {s['images']} images dreamed at {s['layer']}, median energy gain x{s['energy_gain'] or 0:.2f}")
        return s

    def report(self, store):
        s = store.summary(self.name) or {}
        t = store.read(self.name, columns=["id", "image"]).slice(0, 24).to_pylist() if store.parts(self.name) else []
        return (f"<p>{s.get('images', 0)} images dreamed at <code>{html.escape(str(s.get('layer')))}</code> "
                f"({html.escape(str(self.config.model_dump(exclude={'layer'})))}); median gain of 1/2||a||^2: "
                f"x{(s.get('energy_gain') or 0):.2f}. PNGs in <code>dream/images/</code>.</p>"
                + images_html([r["image"] for r in t], [r["id"][-24:] for r in t]))
