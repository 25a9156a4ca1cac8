"""`[atlas]`: an activation atlas of one layer over the dataset (Carter et al. 2019).

- model actors (map_batch): per image, the layer's activation vectors at `per_image` random
  positions (seeded by the image's id), and with `filter_class` each vector's attribution to that
  class (a . d logit / da); parts atlas/<part>.parquet (schemas.atlas_samples);
- driver (finish): the vectors laid out in 2-D (algos/atlas.py: PCA, t-SNE on a sample, the rest
  placed at their nearest sampled neighbour), binned on a grid x grid grid, each cell's mean
  vector kept (atlas/cells.parquet); then the cells' pictures by feature inversion
  (algos/invert.py: invert_vectors), a batch of cells per partition on the executor every pass
  runs on (parts atlas_cells/pNNNNN + PNGs: resumable by cells, a rerun does nothing); last the
  atlas images atlas/atlas-<name>.png, each cell's picture with its count.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from deepscope.io import schemas
from deepscope.stages.base import Stage, StageConfig

CELLS = "atlas_cells"


class AtlasConfig(StageConfig):
    layer: str = "_blocks.15"
    per_image: int = Field(16, ge=1, le=4096)  # activation vectors sampled per image (random positions)
    grid: int = Field(20, ge=2, le=200)  # cells per side
    layout: Literal["tsne", "pca"] = "tsne"
    layout_points: int = Field(5000, ge=10)  # t-SNE on this many (a sample), the rest placed by neighbour
    min_count: int = Field(3, ge=1)  # cells with fewer vectors stay empty
    size: int = Field(48, ge=32)  # side of a cell's picture, px (48 px, 32 steps: the inversion loss of
    steps: int = Field(32, ge=1)  # 64 px, 64 steps at 28% of the work: bench/visualize.py --atlas)
    tv: float = Field(0.05, ge=0)  # total-variation weight of the inversion
    cells_per_part: int = Field(16, ge=1)  # cells inverted together (one batch, one part)
    filter_class: int | None = Field(None, ge=0)  # also a class-filtered atlas: the vectors that most support it
    filter_share: float = Field(0.1, gt=0, le=1)  # ... the share of vectors with the largest attribution
    seed: int = 0


class Atlas(Stage):
    name = "atlas"
    Config = AtlasConfig

    def __init__(self, config, job):
        super().__init__(config, job)
        self.needs_grad = config.filter_class is not None  # the attribution needs d logit / d activation

    def layers(self):
        return [self.config.layer]

    def prepare(self, ctx):
        from deepscope.errors import UserError
        from deepscope.models.taps import forward_with_taps

        from deepscope.models.registry import load_model

        loaded = ctx.loaded or load_model(self.job.model.name, self.job.model.weights)
        crop = loaded.transform.crop
        _, taps = forward_with_taps(loaded, torch.zeros(1, 3, crop, crop), [self.config.layer])
        if taps[self.config.layer].ndim != 4:
            raise UserError(f"[atlas] layer {self.config.layer!r} has output shape {tuple(taps[self.config.layer].shape[1:])}: "
                            "an atlas needs a spatial map (C, H, W)")
        n_classes = loaded.module(torch.zeros(1, 3, crop, crop)).shape[1] if self.needs_grad else None
        if n_classes is not None and self.config.filter_class >= n_classes:
            raise UserError(f"[atlas] filter_class {self.config.filter_class} does not exist: the model has {n_classes} classes")

    # -- model actors --------------------------------------------------------------------
    def map_batch(self, model, x, taps, rows):
        from deepscope.algos.atlas import sample_positions
        from deepscope.io.images import item_seed

        cfg = self.config
        act = taps[cfg.layer].float()
        attribution = None
        if cfg.filter_class is not None:
            from deepscope.models.taps import LayerTaps

            with torch.enable_grad(), LayerTaps(model, [cfg.layer], detach=False) as t:
                logits = t.forward(x.detach().float().requires_grad_(True))  # frozen weights: a graph from x
                a = t.outputs[cfg.layer]
                g, = torch.autograd.grad(logits[:, cfg.filter_class].float().sum(), a)
            act = a.detach().float()
            attribution = (act * g.float()).sum(1).flatten(1)  # (N, H*W)
        flat = act.flatten(2)  # (N, C, P)
        k = min(cfg.per_image, flat.shape[2])
        pos = np.stack([sample_positions(flat.shape[2], k, np.random.default_rng(item_seed(i, cfg.seed)))
                        for i in rows["id"]])
        idx = torch.from_numpy(pos).to(flat.device)
        vec = flat.gather(2, idx[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)  # (N, k, C)
        out = {"position": pos.astype(np.int32), "vector": vec.cpu().numpy().astype(np.float16)}
        if attribution is not None:
            out["attribution"] = attribution.gather(1, idx).cpu().numpy().astype(np.float32)
        return out

    def part_table(self, rows):
        if "vector" not in rows or not len(rows["id"]):
            return schemas.atlas_samples(1).empty_table()  # every image of the partition failed
        vec = np.asarray(rows["vector"])  # (N, k, C)
        n, k, c = vec.shape
        attribution = rows.get("attribution")
        return pa.table({
            "id": pa.array(np.repeat(np.asarray(rows["id"]).astype(str), k), pa.string()),
            "position": pa.array(np.asarray(rows["position"]).reshape(-1), pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float16()), c),
            "attribution": pa.array(np.asarray(attribution).reshape(-1) if attribution is not None else [None] * (n * k),
                                    pa.float32()),
        }, schema=schemas.atlas_samples(c))

    # -- driver --------------------------------------------------------------------------
    def finish(self, ctx):
        store, log, cfg = ctx.store, ctx.log, self.config
        t0 = time.time()
        cells = self._cells(store, log)
        config = {"layer": cfg.layer, "size": cfg.size, "steps": cfg.steps, "tv": cfg.tv, "seed": cfg.seed,
                  "cells": hashlib.sha256(cells.to_pandas().to_json().encode()).hexdigest()[:16]}
        if store.parts(CELLS) and store.stage_config(CELLS) != config:
            log(f"{store.root}/{CELLS}: other cells or settings than last time: inverting every cell again")
            store.drop_parts_except(CELLS, set())
        store.open_stage(CELLS, config, replace=True)
        rows = cells.to_pylist()
        per = cfg.cells_per_part
        plan = {f"p{i // per:05d}": rows[i:i + per] for i in range(0, len(rows), per)}
        store.drop_parts_except(CELLS, set(plan))
        from deepscope.io.plan import Partition

        pending = [Partition(p, len(rs), {"kind": "cells", "cells": [[r["atlas"], r["cell"], r["count"]] for r in rs],
                                          "vectors": [[round(float(v), 5) for v in r["vector"]] for r in rs]})
                   for p, rs in plan.items() if not store.has_part(CELLS, p)]
        if pending:
            log(f"atlas: {len(rows)} cells to invert in {len(pending)} parts of {per}, {cfg.steps} steps at {cfg.size} px")
            ctx.executor.run_pass(store, parts=pending, commits=[CELLS], worker=AtlasCellActor, unit="cells",
                                  worker_kwargs=dict(model=self.job.model.name, weights=self.job.model.weights,
                                                     layer=cfg.layer, size=cfg.size, steps=cfg.steps, tv=cfg.tv,
                                                     seed=cfg.seed, out=store.url, metadata=store.metadata))
        else:
            log(f"nothing to do: all {len(rows)} cells of {store.root}/{CELLS} are inverted")
        done = store.read(CELLS).to_pylist() if store.parts(CELLS) else []
        images = {}
        for name in sorted({r["atlas"] for r in done}):
            mine = [r for r in done if r["atlas"] == name]
            rel = f"{self.name}/atlas-{name}.png"
            store.write_file(rel, atlas_png(store, mine, cfg.grid))
            images[name] = {"image": rel, "cells": len(mine), "vectors": int(sum(r["count"] for r in mine))}
        wall = time.time() - t0
        losses = np.array([[r["loss_start"], r["loss"]] for r in done], np.float64)
        summary = {"layer": cfg.layer, "grid": cfg.grid, "atlases": images, "cells": len(done),
                   "vectors": int(store.read(self.name, columns=["position"]).num_rows),
                   "loss_start": float(losses[:, 0].mean()) if len(done) else None,
                   "loss": float(losses[:, 1].mean()) if len(done) else None, "wall_s": round(wall, 1)}
        log(f"atlas: {len(done)} cells of a {cfg.grid}x{cfg.grid} grid over {summary['vectors']} vectors of "
            f"{cfg.layer}, inversion loss {summary['loss_start'] or 0:.3f} -> {summary['loss'] or 0:.3f}, "
            f"{wall:.1f} s -> {', '.join(v['image'] for v in images.values())}")
        return summary

    def _cells(self, store, log) -> pa.Table:
        """atlas/cells-table.parquet (atlas, cell, count, vector), made once from the samples and kept:
        the layout is fixed once cells have pictures (a rerun reuses both)."""
        from deepscope.algos.atlas import bin_cells, cell_means, layout

        cfg = self.config
        rel = f"{self.name}/cells.parquet"
        key = json.dumps({**cfg.model_dump(exclude={"steps", "size", "tv", "cells_per_part"}),
                          "parts": sorted(store.parts(self.name))}, sort_keys=True)
        if store.exists(rel):
            import pyarrow.parquet as pq

            t = pq.read_table(io.BytesIO(store.read_bytes(rel)))
            if (t.schema.metadata or {}).get(b"deepscope.atlas") == key.encode():
                return t
        t = store.read(self.name, columns=["vector", "attribution"])
        vec = np.asarray(t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
        vec = vec.reshape(t.num_rows, -1) if t.num_rows else np.zeros((0, 1), np.float32)  # every image failed
        t1 = time.time()
        xy = layout(vec, cfg.layout, cfg.layout_points, cfg.seed)
        cell = bin_cells(xy, cfg.grid) if len(xy) else np.zeros(0, np.int64)
        if not len(vec):
            log(f"atlas: no activation vectors of {cfg.layer} (every image failed): an empty atlas")
        log(f"atlas: {len(vec)} vectors of {cfg.layer} laid out ({cfg.layout}) in {time.time() - t1:.1f} s")
        selections = {"all": np.ones(len(vec), bool)}
        if cfg.filter_class is not None:
            attr = t["attribution"].to_numpy(zero_copy_only=False).astype(np.float64)
            cut = np.quantile(attr, 1 - cfg.filter_share) if len(attr) else 0.0
            selections[f"class_{cfg.filter_class}"] = attr >= cut
        cols = {"atlas": [], "cell": [], "count": [], "vector": []}
        for name, keep in selections.items():
            ids, counts, means = cell_means(vec[keep], cell[keep], cfg.min_count)
            cols["atlas"] += [name] * len(ids)
            cols["cell"] += ids.tolist()
            cols["count"] += counts.tolist()
            cols["vector"] += list(means)
        out = pa.table({"atlas": pa.array(cols["atlas"], pa.string()), "cell": pa.array(cols["cell"], pa.int32()),
                        "count": pa.array(cols["count"], pa.int32()),
                        "vector": pa.array([v.tolist() for v in cols["vector"]], pa.list_(pa.float32()))})
        out = out.replace_schema_metadata({"deepscope.atlas": key})
        store.write_table(rel, out)
        return out

    def report(self, store):
        s = store.summary(self.name) or {}
        if not s.get("atlases"):
            return ""
        figs = "".join(f"<figure><img src='../{html.escape(v['image'])}' style='max-width:100%'><figcaption>"
                       f"{html.escape(k)}: {v['cells']} cells, {v['vectors']} vectors</figcaption></figure>"
                       for k, v in s["atlases"].items())
        return (f"<p>Activation atlas of <code>{html.escape(s['layer'])}</code>: {s['vectors']} activation vectors "
                f"laid out in 2-D and binned on a {s['grid']}x{s['grid']} grid; each cell shows its mean vector "
                f"inverted into a picture (inversion loss {s['loss_start']:.3f} -> {s['loss']:.3f}), its count in "
                f"the corner.</p>{figs}")


def atlas_png(store, cells: list[dict], side: int, tile: int = 64) -> bytes:
    """The atlas: each cell's picture at its place on the grid, its count in the corner."""
    from PIL import Image, ImageDraw

    from deepscope.report.figures import to_png_bytes

    out = Image.new("RGB", (side * tile, side * tile), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for r in cells:
        if not r["image"]:
            continue
        row, col = divmod(r["cell"], side)
        with Image.open(io.BytesIO(store.read_bytes(r["image"]))) as im:
            out.paste(im.convert("RGB").resize((tile, tile)), (col * tile, row * tile))
        draw.text((col * tile + 2, row * tile + 1), str(r["count"]), fill=(255, 255, 255), stroke_width=1,
                  stroke_fill=(0, 0, 0))
    return to_png_bytes(out)


class AtlasCellActor:
    """One per GPU (or CPU slot): the model loaded once; each call inverts whole partitions of cells."""

    def __init__(self, model: str, weights: str | None, layer: str, size: int, steps: int, tv: float, seed: int,
                 threads: int = 0, out: str = "", metadata: dict | None = None):
        from deepscope.algos.invert import InvertSettings
        from deepscope.io.store import PartWriter
        from deepscope.models.registry import best_device, load_model

        if threads:
            torch.set_num_threads(threads)
        self.device = best_device()
        self.loaded = load_model(model, weights)
        # channels_last, as the visualize actors: CPU convolutions prefer it (bench/visualize.py --atlas ...:cl)
        self.loaded.module = self.loaded.module.to(self.device).to(memory_format=torch.channels_last)
        self.layer, self.size = layer, size
        self.settings = InvertSettings(steps=steps, tv=tv, seed=seed)
        self.writer = PartWriter(out, metadata)

    def __call__(self, part, rows=None) -> list:
        """One partition of cells in; their pictures and table written here; its record out."""
        from deepscope.algos.invert import invert_vectors
        from deepscope.io.images import png_bytes

        d = part.desc
        t0 = time.perf_counter()
        vectors = torch.tensor(d["vectors"], dtype=torch.float32, device=self.device)
        seeds = [self.settings.seed * 1_000_003 + cell for _, cell, _ in d["cells"]]
        pics, start, loss = invert_vectors(self.loaded, vectors, self.layer, self.size, self.settings, seeds)
        pixels = (pics * 255).round().to(torch.uint8).cpu().numpy()
        files = {f"atlas/cells/{name}_{cell:05d}.png": png_bytes(p) for (name, cell, _), p in zip(d["cells"], pixels)}
        table = pa.table({
            "atlas": [c[0] for c in d["cells"]], "cell": pa.array([c[1] for c in d["cells"]], pa.int32()),
            "count": pa.array([c[2] for c in d["cells"]], pa.int32()), "image": list(files),
            "loss_start": pa.array(start.cpu().numpy(), pa.float32()),
            "loss": pa.array(loss.cpu().numpy(), pa.float32())}, schema=schemas.ATLAS_CELLS)
        ms = (time.perf_counter() - t0) * 1000
        rec = self.writer.write(CELLS, part.name, table, files)
        rec.images, rec.infer_ms, rec.t_model = len(d["cells"]), ms, time.time() - ms / 1000
        return [rec]
