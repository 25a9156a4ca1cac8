"""Patches: what a unit looks for. For every channel of a layer, the k images that activate it
most (at most one place per image), and the patch of each: the receptive field of the strongest
unit, cropped from the original image at full resolution.

One streaming pass, in bounded memory:
- model actors (map_batch): per image and channel, the largest activation and its position;
- per partition (part_table): only each channel's k best images there, so a part
  `patches/part-*.parquet` has at most layers x channels x k rows whatever its size;
- driver (finish): the parts merged into the exact global top k (score descending, ties: smaller
  id first), then only those images read and decoded again to crop the patches:
  `patches/top-<layer>.parquet` (schemas.PATCHES) and the grids `patches/grid-<layer>-NNN.jpg`
  (rows = channels, 32 per page; columns = rank).

A layer with a (C,) output (logits, penultimate, fc7) has one unit per channel that sees the
whole crop: its "patch" is the model's view of the image, i.e. the top k images of a class.
"""
from __future__ import annotations

import html
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BeforeValidator, Field, field_validator

from deepscope.algos.topk import spatial_max, top_k_matrix, top_k_rows
from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.io.images import file_name
from deepscope.stages.base import Stage, StageConfig

GRID_ROWS = 32  # channels per grid page


def _as_list(v):
    return [v] if isinstance(v, str) else v


class PatchesConfig(StageConfig):
    layers: Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)]  # module names or aliases
    channels: list[Annotated[int, Field(ge=0)]] | None = None  # None: every channel of each layer
    k: int = Field(16, ge=1, le=1024)  # images per channel
    max_side: int = Field(256, ge=0)  # a stored patch larger than this is scaled down to it; 0: never
    tile: int = Field(64, ge=16, le=512)  # grid cell side, px

    @field_validator("channels")
    @classmethod
    def _unique(cls, v):
        return None if v is None else sorted(set(v))


def original_box(box, width: int, height: int, transform) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1) in model-input pixels -> the same region of the original image.

    Widened by the resize filter's reach (a bilinear pixel mixes originals up to half an input
    pixel beyond it when shrinking, one original pixel when enlarging), so that the box holds
    every original pixel that the unit's activation depends on."""
    scale, left, top = transform.crop_box_in_original(width, height)
    pad = 0.5 * max(scale, 1.0) + 1.0
    x0, y0, x1, y1 = box
    ox0 = max(0, math.floor(left + x0 * scale - pad))
    oy0 = max(0, math.floor(top + y0 * scale - pad))
    ox1 = min(width, math.ceil(left + x1 * scale + pad))
    oy1 = min(height, math.ceil(top + y1 * scale + pad))
    return ox0, oy0, max(ox1, ox0 + 1), max(oy1, oy0 + 1)


class Patches(Stage):
    name = "patches"
    Config = PatchesConfig

    def __init__(self, config, job):
        super().__init__(config, job)
        self.geometry: dict | None = None  # per layer: channels, map size, receptive field (prepare)
        self.transform = None

    def layers(self):
        return list(self.config.layers)

    # -- driver, before the pass: fail fast on bad names, measure the receptive fields --------
    def prepare(self, ctx):
        self.geometry, self.transform = self.measure()

    def measure(self, receptive_fields: bool = True):
        """-> ({layer: channels, map size, receptive field}, transform); UserError for a bad layer or channel."""
        from deepscope.models.receptive import receptive_field
        from deepscope.models.registry import load_model
        from deepscope.models.taps import forward_with_taps

        loaded = load_model(self.job.model.name, self.job.model.weights)
        crop = loaded.transform.crop
        _, taps = forward_with_taps(loaded, torch.zeros(1, 3, crop, crop), self.config.layers)
        geometry = {}
        for layer in self.config.layers:
            shape = tuple(taps[layer].shape[1:])
            if len(shape) not in (1, 3):
                raise UserError(f"layer {layer!r} of {loaded.spec} has output shape {shape}: patches need "
                                "channels with a map (C, H, W), or a vector (C,)")
            n = shape[0]
            missing = [c for c in self.config.channels or [] if c >= n]
            if missing:
                raise UserError(f"channel {missing[0]} does not exist in layer {layer!r} of {loaded.spec}, "
                                f"which has {n} channels (0-{n - 1})")
            rf = receptive_field(loaded, layer) if len(shape) == 3 and receptive_fields else None
            geometry[layer] = {"channels": self.config.channels if self.config.channels is not None else list(range(n)),
                               "map": list(shape[1:]) if len(shape) == 3 else [1, 1], "rf": rf}
        return geometry, loaded.transform

    # -- model actors --------------------------------------------------------------------
    def map_batch(self, model, x, taps, rows):
        out = {}
        for i, layer in enumerate(self.config.layers):
            act = taps[layer]
            if self.config.channels is not None:
                act = act[:, self.config.channels]
            out[f"score{i}"], out[f"position{i}"] = spatial_max(act)
        return out

    # -- driver --------------------------------------------------------------------------
    def part_table(self, rows):
        ids = np.asarray(rows["id"]).astype(str)
        tables = [schemas.PATCH_CANDIDATES.empty_table()]
        for i, layer in enumerate(self.config.layers):
            if f"score{i}" not in rows or not len(ids):
                continue  # every image of the partition failed
            scores = rows[f"score{i}"]
            image, col, _ = top_k_matrix(scores, ids, self.config.k)
            channels = np.asarray(self.config.channels if self.config.channels is not None else range(scores.shape[1]))
            tables.append(pa.table({
                "layer": pa.array([layer] * len(image), pa.string()),
                "channel": pa.array(channels[col], pa.int32()),
                "id": pa.array(ids[image], pa.string()),
                "path": pa.array(np.asarray(rows["path"]).astype(str)[image], pa.string()),
                "width": pa.array(np.asarray(rows["width"])[image], pa.int32()),
                "height": pa.array(np.asarray(rows["height"])[image], pa.int32()),
                "score": pa.array(scores[image, col], pa.float32()),
                "position": pa.array(rows[f"position{i}"][image, col], pa.int32()),
            }, schema=schemas.PATCH_CANDIDATES))
        return pa.concat_tables(tables)

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        if self.geometry is None:  # finish without a pass (an earlier run stopped before it)
            self.geometry, self.transform = self.measure()
        k = self.config.k
        best = {layer: schemas.PATCH_CANDIDATES.empty_table() for layer in self.config.layers}
        for _, part in store.iter_parts(self.name):  # memory: one part plus the running best
            for layer in self.config.layers:
                both = pa.concat_tables([best[layer], part.filter(pc.equal(part["layer"], layer))])
                keep, _ = top_k_rows(both["channel"].to_numpy(), both["score"].to_numpy(),
                                     both["id"].to_numpy(zero_copy_only=False).astype(str), k)
                best[layer] = both.take(keep)
        summary = {"k": k, "layers": {}}
        for layer in self.config.layers:
            table, tiles = self._crop(best[layer], self.geometry[layer], log)
            rel = f"{self.name}/top-{file_name(layer)}.parquet"
            store.write_table(rel, table)
            g = self.geometry[layer]
            rf = g["rf"]
            summary["layers"][layer] = {
                "table": rel, "patches": table.num_rows, "channels": len(g["channels"]), "map": g["map"],
                "receptive_field": rf.to_dict() if rf else "whole crop",
                "unreadable": int(table["patch"].null_count),
                "grids": self._grids(store, layer, g["channels"], table, tiles),
            }
            log(f"patches: {table.num_rows} patches of {len(g['channels'])} channels of {layer} -> {store.path(rel)}")
        return summary

    def _crop(self, top: pa.Table, g: dict, log) -> tuple[pa.Table, dict]:
        """The final table of one layer (rank, unit, box, patch PNG) and the grid tile of each (channel, rank)."""
        from deepscope.io.decode import DecodeLimits, decode
        from deepscope.io.sources import read_bytes
        from deepscope.report.figures import fit, to_png_bytes

        keep, rank = top_k_rows(top["channel"].to_numpy(), top["score"].to_numpy(),
                                top["id"].to_numpy(zero_copy_only=False).astype(str), self.config.k)
        top = top.take(keep)
        rows = top.to_pylist()
        crop, map_w = self.transform.crop, g["map"][1]
        units = [divmod(r["position"], map_w) for r in rows]
        boxes = [original_box(g["rf"].box(i, j, crop) if g["rf"] else (0, 0, crop, crop), r["width"], r["height"],
                              self.transform) for r, (i, j) in zip(rows, units)]
        run = self.job.run
        limits = DecodeLimits(max_pixels=run.max_pixels, max_bytes=run.max_bytes, timeout_s=run.decode_timeout_s)
        by_path: dict[str, list[int]] = {}
        for n, r in enumerate(rows):
            by_path.setdefault(r["path"], []).append(n)

        def cut(path):  # one image decoded at full resolution (no JPEG draft), all its patches cut
            try:
                img = decode(read_bytes(path, limits.max_bytes), limits)[0]
            except Exception as e:  # deleted or changed since the pass: the other patches go on
                log(f"patches: cannot read {path} again ({e}); its patches are left empty")
                return []
            out, done = [], {}
            for n in by_path[path]:
                if boxes[n] not in done:  # channels often pick the same place (always, for a vector layer)
                    piece = img.crop(boxes[n])
                    if self.config.max_side and max(piece.size) > self.config.max_side:
                        piece.thumbnail((self.config.max_side, self.config.max_side))
                    done[boxes[n]] = (to_png_bytes(piece, level=1), fit(piece, self.config.tile))
                out.append((n, *done[boxes[n]]))
            return out

        patches: list[bytes | None] = [None] * len(rows)
        tiles = {}
        with ThreadPoolExecutor(4) as pool:  # PIL decodes and encodes outside the GIL
            for done in pool.map(cut, by_path):
                for n, png, tile in done:
                    patches[n] = png
                    tiles[(rows[n]["channel"], int(rank[n]))] = tile
        table = pa.table({
            "layer": top["layer"], "channel": top["channel"], "rank": pa.array(rank, pa.int32()),
            "id": top["id"], "path": top["path"], "score": top["score"],
            "row": pa.array([i for i, _ in units], pa.int32()), "col": pa.array([j for _, j in units], pa.int32()),
            **{f: pa.array([b[m] for b in boxes], pa.int32()) for m, f in enumerate(("x0", "y0", "x1", "y1"))},
            "patch": pa.array(patches, pa.binary()),
        }, schema=schemas.PATCHES)
        return table, tiles

    def _grids(self, store, layer: str, channels: list[int], table: pa.Table, tiles: dict) -> list[dict]:
        from deepscope.report.figures import grid, to_jpeg_bytes

        pages = []
        if not table.num_rows:
            return pages
        for p, start in enumerate(range(0, len(channels), GRID_ROWS)):
            chans = channels[start:start + GRID_ROWS]
            cells = [tiles.get((c, r)) for c in chans for r in range(self.config.k)]
            img = grid(cells, rows=len(chans), cols=self.config.k, tile=self.config.tile,
                       row_labels=[str(c) for c in chans])
            rel = f"{self.name}/grid-{file_name(layer)}-{p:03d}.jpg"
            store.write_file(rel, to_jpeg_bytes(img))
            pages.append({"file": rel, "first": chans[0], "last": chans[-1]})
        return pages

    def report(self, store):
        s = store.summary(self.name) or {}
        out = [f"<p>For each channel, the {s.get('k')} images that activate it most (one place per image, "
               "strongest first, left to right) and the receptive field of that place, cropped from the original "
               "image. Tables: <code>patches/top-LAYER.parquet</code>.</p>"]
        for layer, info in s.get("layers", {}).items():
            rf = info["receptive_field"]
            where = (f"receptive field {rf['size'][0]}x{rf['size'][1]} px of the model input, stride {rf['stride'][0]}"
                     if isinstance(rf, dict) and not rf.get("whole") else "each unit sees the whole input")
            out.append(f"<h3>{html.escape(layer)}</h3><p>{info['channels']} channels, map "
                       f"{info['map'][0]}x{info['map'][1]}, {where}; {info['patches']} patches in "
                       f"<code>{html.escape(info['table'])}</code>"
                       + (f"; {info['unreadable']} images could not be read again" if info["unreadable"] else "")
                       + ".</p>")
            for n, g in enumerate(info["grids"]):
                out.append(f"<details{' open' if n == 0 else ''}><summary>channels {g['first']}-{g['last']}</summary>"
                           f"<img class=grid loading=lazy src=\"../{html.escape(g['file'])}\"></details>")
        return "".join(out)
