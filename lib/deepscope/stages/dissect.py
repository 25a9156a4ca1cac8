"""Dissect: which unit of a layer detects which concept (Bau et al., "Network Dissection", CVPR 2017).

A `[dissect]` section works in any job: dissection always reads the concept dataset's images (a
Broden-format folder, `concepts`), whatever the job's own dataset, with the job's model. So it is a
post stage whose finish() runs two distributed passes through the runner's own pipeline (decode
tasks -> model actors -> parts written by the store, resumable per partition):

  pass 1 (`dissect_thresholds/` parts): per unit, the partition's largest activations, exactly enough
         to give T_k = the (1 - quantile) quantile over all positions of all images (algos.dissect);
         merged on the driver into the thresholds, plus each unit's best images;
  pass 2 (`dissect_counts/` parts): the thresholds travel to the actors on the pass's stage object
         (as prepare() state does); each actor reads an image's masks itself, next to the activation
         map it thresholds, so only integer counts cross the network, never upsampled maps; per part,
         intersection and union per (unit, concept), summed over any partitioning.

Why the actors read the masks: the masks are a second input of the same image, indexed by its id
(Broden's image name, the pipeline id here), and counting needs them at mask resolution beside the
upsampled map; reading them on the driver would mean shipping C upsampled maps per image to it.

Outputs: dissection/iou-<layer>.parquet (schemas.DISSECTION), dissection/top-<layer>.parquet, the
paper's bar chart of unique detectors per category, and per unit its top images with the region
above its threshold drawn over them (the figures and the report section: report/dissect.py).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field

from deepscope.algos import dissect as algo
from deepscope.algos.topk import top_k_matrix, top_k_rows
from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.io.images import file_name
from deepscope.report.dissect import bar_chart, dissect_html, unit_grid
from deepscope.stages.base import Stage, StageConfig


class DissectConfig(StageConfig):
    layer: str  # a module name (or alias) with a (C, H, W) output
    concepts: str  # a Broden-format folder (index.csv, label.csv, images/)
    quantile: float = Field(0.005, gt=0, lt=1)  # top share of activations above T_k
    iou_threshold: float = Field(0.04, ge=0, le=1)  # a unit is a detector of its best concept at or above this
    concepts_per_unit: int = Field(5, ge=1, le=1000)  # table rows per unit, best first
    top_images: int = Field(4, ge=0, le=64)  # per unit, in the table and the report
    show_units: int = Field(24, ge=0, le=4096)  # units drawn in the report, best IoU first
    generate: int = Field(0, ge=0)  # demo: write a synthetic concept dataset of this many images if `concepts` has none


# -- the two passes: stages of the runner's pipeline, run by Dissect.finish ----------------------
class ThresholdPass(Stage):
    name = "dissect_thresholds"
    Config = DissectConfig

    def __init__(self, config, job, n_images: int):
        super().__init__(config, job)
        self.n_images = n_images  # bounds the number of positions, so the buffer size, from above

    def layers(self):
        return [self.config.layer]

    def buffer(self, positions_per_image: int) -> int:
        return algo.quantile_buffer(self.config.quantile, self.n_images * positions_per_image)

    def map_batch(self, model, x, taps, rows):
        act = taps[self.config.layer].float().flatten(2)  # (N, C, P)
        k = min(act.shape[2], self.buffer(act.shape[2]))
        return {"top": act.topk(k, dim=2).values.cpu().numpy(), "max": act.amax(2).cpu().numpy(),
                "positions": np.full(act.shape[0], act.shape[2], np.int64)}

    def part_table(self, rows):
        if "top" not in rows or not len(rows["id"]):
            return schemas.DISSECT_QUANTILE_PARTS.empty_table()
        top, ids = rows["top"], np.asarray(rows["id"]).astype(str)
        n, c, k = top.shape
        per_unit = algo.top_values(top.transpose(1, 0, 2).reshape(c, n * k), self.buffer(int(rows["positions"][0])))
        image, unit, _ = top_k_matrix(rows["max"], ids, self.config.top_images) if self.config.top_images else ([], [], [])
        best = [[] for _ in range(c)]
        for i, u in zip(image, unit):
            best[u].append(i)
        paths = np.asarray(rows["path"]).astype(str)
        return pa.table({
            "unit": pa.array(np.arange(c), pa.int32()),
            "positions": pa.array(np.full(c, int(rows["positions"].sum())), pa.int64()),
            "top": pa.array(list(per_unit.astype(np.float32)), pa.list_(pa.float32())),
            "image_ids": pa.array([ids[b].tolist() for b in best], pa.list_(pa.string())),
            "image_paths": pa.array([paths[b].tolist() for b in best], pa.list_(pa.string())),
            "image_scores": pa.array([rows["max"][b, u].tolist() for u, b in enumerate(best)], pa.list_(pa.float32())),
        }, schema=schemas.DISSECT_QUANTILE_PARTS)


class CountPass(Stage):
    name = "dissect_counts"
    Config = DissectConfig

    def __init__(self, config, job, thresholds: np.ndarray, concepts, transform):
        super().__init__(config, job)
        self.thresholds = thresholds  # (C,) float64, from pass 1
        self.concepts = concepts  # the Broden index: each actor reads the masks of its images
        self.transform = transform

    def layers(self):
        return [self.config.layer]

    def map_batch(self, model, x, taps, rows):
        act = taps[self.config.layer]
        thr = torch.tensor(self.thresholds, device=act.device)  # float64: compare exactly
        n, c, h, w = act.shape
        out = {k: np.empty(n, object) for k in ("labels", "intersection", "label_pixels", "mask_error")}
        out["active"] = np.zeros((n, c), np.int64)
        out["annotated"] = np.zeros((n, len(self.concepts.categories)), bool)
        for i in range(n):
            out["labels"][i], out["intersection"][i], out["label_pixels"][i] = (np.zeros(0, np.int64),) * 3
            out["mask_error"][i] = ""
            try:
                maps, image_labels, annotated = self.concepts.read(str(rows["id"][i]))
            except Exception as e:  # a missing or broken mask: this image counts for nothing, the job goes on
                out["mask_error"][i] = f"{type(e).__name__}: {e}"[:300]
                continue
            width, height = int(rows["width"][i]), int(rows["height"][i])
            mh, mw = maps[0][1].shape if maps else self.concepts.entries[str(rows["id"][i])].mask_size
            scale, left, top = self.transform.crop_box_in_original(width, height)
            r, cidx, ys, xs = algo.mask_grid(width, height, mw, mh, self.transform.crop, scale, left, top, w, h)
            active = (algo.upsample(act[i], ys, xs) > thr[:, None, None]).reshape(c, -1)
            label_maps = [m[np.ix_(r, cidx)] if m.shape == (mh, mw) else _resize_nearest(m, mh, mw)[np.ix_(r, cidx)]
                          for _, m in maps]
            present, member = algo.membership(label_maps, [lab for _, lab in image_labels], len(r) * len(cidx))
            inter, out["active"][i], pixels = algo.image_counts(active, member)
            out["labels"][i], out["intersection"][i], out["label_pixels"][i] = present, inter.reshape(-1), pixels
            out["annotated"][i, sorted(annotated)] = True
        return out

    def part_table(self, rows):
        n_labels = len(self.concepts.names)
        c = len(self.thresholds)
        inter = np.zeros((c, n_labels), np.int64)
        label_pixels = np.zeros(n_labels, np.int64)
        active_in_category = np.zeros((c, len(self.concepts.categories)), np.int64)
        errors = []
        for i in range(len(rows["id"]) if "labels" in rows else 0):
            if rows["mask_error"][i]:
                errors.append(f"{rows['id'][i]}: {rows['mask_error'][i]}")
                continue
            labels = np.asarray(rows["labels"][i], np.int64)
            inter[:, labels] += np.asarray(rows["intersection"][i], np.int64).reshape(c, len(labels))
            label_pixels[labels] += np.asarray(rows["label_pixels"][i], np.int64)
            active_in_category += rows["active"][i][:, None] * rows["annotated"][i][None, :]
        union = algo.union(inter, active_in_category, label_pixels, self.concepts.label_category)
        table = pa.table({"unit": pa.array(np.arange(c), pa.int32()),
                          "intersection": pa.array(list(inter), pa.list_(pa.int64())),
                          "union": pa.array(list(union), pa.list_(pa.int64()))}, schema=schemas.DISSECT_COUNT_PARTS)
        return table.replace_schema_metadata({"deepscope.mask_errors": json.dumps(errors)})


def _resize_nearest(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """A mask of another size than the image's first mask, sampled at that one's pixel centres."""
    ri = np.minimum(((np.arange(h) + 0.5) * m.shape[0] / h).astype(int), m.shape[0] - 1)
    ci = np.minimum(((np.arange(w) + 0.5) * m.shape[1] / w).astype(int), m.shape[1] - 1)
    return m[np.ix_(ri, ci)]


# -- the stage ---------------------------------------------------------------------------------
class Dissect(Stage):
    name = "dissect"
    Config = DissectConfig
    pipeline = False  # its passes read the concept images, not the job's dataset

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.io.concepts import Concepts, make_concept_data
        from deepscope.io.sources import partition_items

        cfg, job = self.config, self.job
        self.passes = {}  # per pass computed in this run: images, seconds (the benchmark reads them)
        root = Path(cfg.concepts)
        if cfg.generate and not (root / "index.csv").exists():
            make_concept_data(root, n=cfg.generate)
            log(f"dissect: wrote a synthetic concept dataset of {cfg.generate} images to {root}")
        concepts = Concepts.open(root)
        loaded = ctx.loaded
        units, map_size = self._geometry(loaded)
        items = concepts.items()
        if not len(items):
            raise UserError(f"{root}/index.csv lists no image")
        plan = partition_items(items, job.run.partition_size)
        key = {"layer": cfg.layer, "quantile": cfg.quantile, "concepts": str(root.resolve()),
               "top_images": cfg.top_images, "images": len(items)}

        # pass 1: thresholds
        self._pass(ctx, ThresholdPass(cfg, job, len(items)), key, plan)
        thresholds, best = self._thresholds(store, units)

        # pass 2: counts (recomputed whenever the thresholds change)
        digest = hashlib.sha256(thresholds.tobytes()).hexdigest()[:16]
        self._pass(ctx, CountPass(cfg, job, thresholds, concepts, loaded.transform), {**key, "thresholds": digest}, plan)
        inter = np.zeros((units, len(concepts.names)), np.int64)
        union = np.zeros_like(inter)
        mask_errors = []
        for _, part in store.iter_parts(CountPass.name):
            if part.num_rows:
                inter += np.stack(part.column("intersection").to_numpy(zero_copy_only=False))
                union += np.stack(part.column("union").to_numpy(zero_copy_only=False))
            mask_errors += json.loads((part.schema.metadata or {}).get(b"deepscope.mask_errors", b"[]"))
        return self._results(store, concepts, loaded, thresholds, best, inter, union, mask_errors, map_size, log)

    def _geometry(self, loaded) -> tuple[int, tuple[int, int]]:
        from deepscope.models.taps import forward_with_taps

        crop = loaded.transform.crop
        _, taps = forward_with_taps(loaded, torch.zeros(1, 3, crop, crop), [self.config.layer])
        shape = tuple(taps[self.config.layer].shape[1:])
        if len(shape) != 3:
            raise UserError(f"layer {self.config.layer!r} of {loaded.spec} has output shape {shape}: dissection "
                            "needs units with a spatial map (C, H, W)")
        return shape[0], shape[1:]

    def _pass(self, ctx, stage, key, plan) -> None:
        """One distributed pass over the concept images; partitions already committed are skipped."""
        store, log = ctx.store, ctx.log
        if store.stage_config(stage.name) != key:  # other settings or thresholds: start this pass over
            store.drop_parts_except(stage.name, set())
            store.open_stage(stage.name, key, replace=True)
        store.drop_parts_except(stage.name, {p.name for p in plan})
        pending = [p for p in plan if not store.has_part(stage.name, p.name)]
        if pending:
            n = sum(len(p.items) for p in pending)
            log(f"dissect: {stage.name}, {n} concept images")
            t0 = time.perf_counter()
            ctx.run_pass([stage], pending)
            seconds = time.perf_counter() - t0
            self.passes[stage.name] = {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 2)}

    def _thresholds(self, store, units: int):
        """Merge the pass-1 parts: the exact thresholds and each unit's best images."""
        parts = [t for _, t in store.iter_parts(ThresholdPass.name) if t.num_rows]
        if not parts:
            raise UserError(f"dissect: no concept image of {self.config.concepts} could be read (see errors.parquet)")
        positions = sum(int(t["positions"][0].as_py()) for t in parts)
        m = algo.quantile_buffer(self.config.quantile, positions)
        top = np.full((units, 0), -np.inf, np.float32)
        cand = {"unit": [], "id": [], "path": [], "score": []}
        for t in parts:  # memory: the running buffer plus one part
            width = max(len(v) for v in t.column("top").to_pylist())
            add = np.full((units, width), -np.inf, np.float32)
            for u, v in enumerate(t.column("top").to_pylist()):
                add[u, :len(v)] = v
            top = algo.top_values(np.concatenate([top, add], axis=1), m)
            for u, (ids, paths, scores) in enumerate(zip(*(t.column(c).to_pylist() for c in ("image_ids", "image_paths", "image_scores")))):
                cand["unit"] += [u] * len(ids)
                cand["id"] += ids
                cand["path"] += paths
                cand["score"] += scores
        keep, rank = top_k_rows(np.asarray(cand["unit"], np.int64), np.asarray(cand["score"], np.float32),
                                np.asarray(cand["id"], str), self.config.top_images)
        best = pa.table({"layer": [self.config.layer] * len(keep), "unit": np.asarray(cand["unit"])[keep].astype(np.int32),
                         "rank": rank.astype(np.int32), "id": np.asarray(cand["id"], object)[keep].tolist(),
                         "path": np.asarray(cand["path"], object)[keep].tolist(),
                         "score": np.asarray(cand["score"], np.float32)[keep]}, schema=schemas.DISSECTION_TOP_IMAGES)
        return algo.threshold_from_top(top, positions, self.config.quantile), best

    def _results(self, store, concepts, loaded, thresholds, best, inter, union, mask_errors, map_size, log) -> dict:
        cfg = self.config
        iou = algo.iou(inter, union)
        order, scores = algo.rank_concepts(iou, min(cfg.concepts_per_unit, iou.shape[1] - 1))
        units, k = order.shape
        unit = np.repeat(np.arange(units), k)
        labels = order.reshape(-1)
        detector = (np.tile(np.arange(k), units) == 0) & (scores.reshape(-1) >= cfg.iou_threshold) & (scores.reshape(-1) > 0)
        table = pa.table({
            "layer": [cfg.layer] * len(unit), "unit": unit.astype(np.int32), "rank": np.tile(np.arange(1, k + 1), units).astype(np.int32),
            "concept": [concepts.names[i] for i in labels], "label": labels.astype(np.int32),
            "category": [concepts.category_of(int(i)) for i in labels], "iou": scores.reshape(-1).astype(np.float32),
            "intersection": inter[unit, labels], "union": union[unit, labels],
            "threshold": thresholds[unit].astype(np.float32), "detector": detector,
        }, schema=schemas.DISSECTION)
        stem = file_name(cfg.layer)
        store.write_table(f"dissection/iou-{stem}.parquet", table)
        store.write_table(f"dissection/top-{stem}.parquet", best)

        first = table.filter(pc.equal(table["rank"], 1)).to_pandas()
        det = first[first["detector"]]
        per_category = {c: {"detectors": int((det["category"] == c).sum()),
                            "unique": int(det.loc[det["category"] == c, "concept"].nunique())} for c in concepts.categories}
        figures = {"bars": f"dissection/detectors-{stem}.png"}
        store.write_file(figures["bars"], bar_chart(per_category, cfg.layer, len(det), units))
        shown = first.sort_values(["detector", "iou", "unit"], ascending=[False, False, True]).head(cfg.show_units)
        if len(shown) and cfg.top_images:
            figures["units"] = f"dissection/units-{stem}.jpg"
            store.write_file(figures["units"], unit_grid(loaded, cfg.layer, cfg.top_images, shown, best, thresholds, log))
        summary = {"layer": cfg.layer, "units": units, "map": list(map_size), "quantile": cfg.quantile,
                   "iou_threshold": cfg.iou_threshold, "images": len(concepts.entries),
                   "detectors": len(det), "unique_concepts": int(det["concept"].nunique()), "categories": per_category,
                   "mask_errors": len(mask_errors), "passes": self.passes, "table": f"dissection/iou-{stem}.parquet", "figures": figures,
                   "best": [{"unit": int(r.unit), "concept": r.concept, "category": r.category, "iou": round(float(r.iou), 4),
                             "detector": bool(r.detector)} for r in shown.itertuples()]}
        by_category = ", ".join(f"{c} {v['unique']}" for c, v in per_category.items())
        log(f"dissect: {cfg.layer}: {len(det)} detectors of {units} units, {summary['unique_concepts']} unique concepts "
            f"({by_category}); "
            f"{len(mask_errors)} images without readable masks -> {store.path(summary['table'])}")
        return summary

    def report(self, store):
        s = store.summary(self.name) or {}
        return dissect_html(s) if s else ""
