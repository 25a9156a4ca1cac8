"""`[visualize]` in a job file: pictures of a layer's units or of the model's classes, by gradient
ascent (algos/ascent.py), as a post stage of the job's folder.

Its work items are targets, not the dataset's images: it runs after the job's pipeline, ignores
the dataset, and spreads partitions of targets over model actors itself (visualize_job below,
the same Ray job as `deepscope visualize MODEL ... --out DIR`, which needs no dataset at all).
"""
from __future__ import annotations

import io
import re
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from deepscope.errors import UserError
from deepscope.io.images import png_bytes, read_png
from deepscope.models.taps import layer_width
from deepscope.report.figures import grid_png
from deepscope.stages.base import Stage, StageConfig


class VisualizeConfig(StageConfig):
    layer: str = "logits"  # logits: classes; any other layer: its units (channels)
    targets: str = "0-15"  # all | 0-63 | 3,7,10-12
    steps: int = Field(100, ge=1)
    size: int | None = Field(None, ge=16)  # default: the model's crop
    lr: float | None = Field(None, gt=0)  # default: fourier 0.1, pixel 0.06 (algos/ascent.py)
    l2: float | None = Field(None, ge=0)  # default: pixel 1e-3, fourier 3e-5 (algos/ascent.py)
    blur_every: int = Field(4, ge=0)
    blur_sigma: float = Field(0.5, gt=0)
    value_clip: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(0.0, ge=0, lt=1)
    jitter: int | None = Field(None, ge=0)  # default: classes 16, units 2 (algos/ascent.py: for_kind)
    param: Literal["pixel", "fourier"] = "fourier"
    optimizer: Literal["sgd", "adam"] = "sgd"
    decay: float = Field(1.0, ge=0)
    pad: int | None = Field(None, ge=0)  # default: classes 16, units 0
    scale: float | None = Field(None, ge=0, lt=1)  # default: classes 0.25, units 0
    rotate: float | None = Field(None, ge=0)  # default: classes 15, units 0
    position: Literal["mean", "center"] = "mean"
    seed: int = 0
    facets: int = Field(1, ge=1, le=16)  # pictures per target that differ (Gram-matrix diversity)
    diversity: float = Field(0.5, ge=0)  # with facets > 1 (algos/ascent.py: gram_similarity)
    facet_method: Literal["diversity", "clusters"] = "diversity"  # clusters: start from the means of clusters of
    #                                     the unit's top patches (needs the patches stage on this layer)
    contrast: float | None = Field(None, ge=0)  # units: weight of the layer's mean |activation| subtracted (1)


class Visualize(Stage):
    name = "visualize"
    Config = VisualizeConfig
    pipeline = False

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.io.ranges import parse_targets
        from deepscope.models.registry import load_model

        cfg = self.config
        kind = "class" if cfg.layer == "logits" else "unit"
        loaded = load_model(self.job.model.name, self.job.model.weights)
        targets = parse_targets(cfg.targets, layer_width(loaded, cfg.layer), "targets")
        settings = cfg.model_dump(exclude={"layer", "targets"}, exclude_none=True)
        run = self.job.run.model_dump()
        run["batch_size"] = min(run["batch_size"], 16)  # targets per part: pictures arrive steadily
        return visualize_job(store, self.job.model.name, self.job.model.weights, cfg.layer, kind, targets,
                             settings, run, log, ctx.executor)

    def report(self, store):
        from deepscope.report.visualize import visualize_html

        s = store.summary(self.name)
        return visualize_html(s, prefix="../") if s and s.get("pictures") is not None else ""


# ---------------------------------------------------------------------------- the Ray job (also `deepscope visualize`)

VIS = "visualize"


def picture_name(kind: str, target: int, facet: int, facets: int) -> str:
    return f"{VIS}/images/{kind}_{target:04d}{f'_f{facet}' if facets > 1 else ''}.png"


class VisualizeActor:
    """One per GPU (or CPU slot): the model, loaded once; each call visualizes one partition of targets."""

    def __init__(self, model: str, weights: str | None, layer: str, kind: str, settings: dict,
                 precision: str = "fp32", channels_last: bool = True, threads: int = 0,
                 out: str = "", metadata: dict | None = None):
        from deepscope.algos.ascent import AscentSettings
        from deepscope.io.store import PartWriter
        from deepscope.models.registry import best_device
        from deepscope.models.registry import load_model

        if threads:
            torch.set_num_threads(threads)
        self.device = best_device()
        self.loaded = load_model(model, weights)
        module = self.loaded.module.to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.loaded.module = module
        self.layer, self.kind, self.settings = layer, kind, AscentSettings(**settings)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.writer = PartWriter(out, metadata)

    def __call__(self, part, rows=None) -> list:
        """One partition of targets in; its PNGs and table written here; its record out."""
        import pyarrow as pa

        from deepscope.algos.ascent import visualize
        from deepscope.io import schemas

        targets = [int(t) for t in part.desc["targets"]]
        t0 = time.perf_counter()
        starts = [None if rel is None else read_png(io.BytesIO(self.writer.loc.get(rel)))[0].numpy() / 255.0
                  for rel in part.desc.get("starts") or []] or None
        r = visualize(self.loaded, self.layer, targets, self.settings, self.kind, self.amp, starts)
        nf = self.settings.facets
        each = [t for t in targets for _ in range(nf)]
        files = {picture_name(self.kind, t, f, nf): png_bytes(p) for t, f, p in zip(each, r.facet, r.pixels)}
        names = self.loaded.class_names if self.kind == "class" else None
        table = pa.table({
            "layer": [self.layer] * len(each), "kind": [self.kind] * len(each),
            "target": pa.array(each, pa.int32()), "name": [names[t] if names else None for t in each],
            "image": list(files), "start": pa.array(np.asarray(r.start, np.float32)),
            "score": pa.array(np.asarray(r.score, np.float32)),
            "top1": pa.array(np.asarray(r.top1, np.int32)), "facet": pa.array(np.asarray(r.facet, np.int32)),
            "selectivity": pa.array(np.asarray(r.selectivity, np.float32)),
            "peak": pa.array(np.asarray(r.peak, np.float32))}, schema=schemas.VISUALIZE)
        ms = (time.perf_counter() - t0) * 1000
        rec = self.writer.write(VIS, part.name, table, files)
        rec.images, rec.infer_ms, rec.t_model = len(each), ms, time.time() - ms / 1000
        return [rec]


def visualize_job(store, model: str, weights: str | None, layer: str, kind: str, targets: list[int],
                  settings: dict, run: dict, log, executor, data=None) -> dict:
    """Visualize `targets` of `layer` into an open Store: parts visualize/pNNNNN, PNGs, grid, summary.
    data: the Store whose patches and dissection outputs the units are shown beside (and, with
    facet_method clusters, start from); default `store` itself.
    Runs on the executor every pass runs on (actors write their parts, the driver commits):
    executor.run_pass(store, **Pass fields)."""
    from deepscope.io.plan import Partition
    from deepscope.models.registry import load_model

    loaded = load_model(model, weights)  # fail fast (bad layer, bad target) before any cluster work
    width = layer_width(loaded, layer)
    if targets and max(targets) >= width:
        raise UserError(f"{kind} {max(targets)} does not exist: {layer} has {width}")
    per_part = int(run.get("batch_size") or 16)
    plan = {f"p{i // per_part:05d}": targets[i:i + per_part] for i in range(0, len(targets), per_part)}
    config = {"layer": layer, "kind": kind, "targets": targets, "settings": settings}
    if store.parts(VIS) and (store.summary(VIS) or {}).get("config") != config:
        log(f"{store.root}/{VIS}: other targets or settings than last time: recomputing every picture")
        store.drop_parts_except(VIS, set())  # a part's name says which targets, not how they were made
    store.open_stage(VIS, store.stage_config(VIS) or config)  # a job's post stage opened it already
    store.drop_parts_except(VIS, set(plan))
    per_target = int(settings.get("facets", 1))
    pending = [Partition(p, len(ts) * per_target, {"kind": "targets", "targets": ts}) for p, ts in plan.items()
               if not store.has_part(VIS, p)]
    data = data or store
    if pending and settings.get("facet_method") == "clusters":
        starts = cluster_start_files(store, data, loaded, layer, [t for p in pending for t in p.desc["targets"]],
                                     per_target, int(settings.get("size") or loaded.transform.crop),
                                     int(settings.get("seed", 0)), log)
        for p in pending:
            p.desc["starts"] = [starts.get((t, f)) for t in p.desc["targets"] for f in range(per_target)]
    t0 = time.time()
    done = 0
    if pending:
        log(f"{len(pending)} parts of {kind} pictures of {layer}, {settings.get('steps', 100)} steps")
        stats = executor.run_pass(
            store, parts=pending, commits=[VIS], worker=VisualizeActor, unit="pictures",
            worker_kwargs=dict(model=model, weights=weights, layer=layer, kind=kind, settings=settings,
                               precision=run.get("precision", "fp32"), channels_last=run.get("channels_last", True),
                               out=store.url, metadata=store.metadata))
        done = stats.items
    else:
        log(f"nothing to do: all {len(plan)} parts of {store.root}/{VIS} are complete")
    table = store.read(VIS)
    rows = sorted(table.to_pylist(), key=lambda r: (r["target"], r["facet"] or 0))
    facets = int(settings.get("facets", 1))
    caption = [f"{r['target']}{' ' + r['name'][:14] if r['name'] else ''}\n{r['score']:.1f}" for r in rows]
    pics = [read_png(io.BytesIO(store.read_bytes(r["image"])))[0].numpy() for r in rows]
    grid = f"{VIS}/grid_{re.sub(r'[^A-Za-z0-9._-]+', '_', layer)}.png"
    store.write_file(grid, grid_png(pics, caption, cols=facets * max(1, 8 // facets) if facets > 1 else 8))
    units = unit_figures(store, layer, rows, pics, facets, log, data) if kind == "unit" else {}
    wall = time.time() - t0
    sel = np.array([r["selectivity"] for r in rows if r["selectivity"] is not None], np.float64)
    summary = {"layer": layer, "kind": kind, "pictures": len(rows), "computed": done, "wall_s": round(wall, 2),
               "per_s": round(done / wall, 3) if done else None, "grid": grid,
               "top1_is_target": sum(r["top1"] == r["target"] for r in rows) if kind == "class" else None,
               "mean_gain": float(np.mean([r["score"] - r["start"] for r in rows])) if rows else None,
               "settings": settings, "weights": loaded.weights, "random_weights": loaded.random_weights,
               "config": config, "facets": facets,
               "selective_3x": float((sel >= 3).mean()) if kind == "unit" and len(sel) else None,
               "median_selectivity": float(np.median(sel)) if kind == "unit" and len(sel) else None,
               "facet_correlation": facet_correlation_of(pics, facets) if facets > 1 else None,
               **units}
    store.update_summary(VIS, summary)
    log(f"done: {len(rows)} {kind} pictures of {layer}, {done} computed in {wall:.1f} s"
        f"{f', {done / wall:.2f}/s' if done else ''} -> {store.root}/{VIS}/")
    return summary


def cluster_start_files(store, data, loaded, layer: str, targets: list[int], facets: int, size: int, seed: int,
                        log) -> dict[tuple[int, int], str]:
    """Multi-faceted starts (Nguyen et al. 2016), written as visualize/starts/unit_NNNN_fK.png ->
    {(unit, facet): its path}; facets beyond a unit's patches start from noise."""
    out = {}
    for (t, f), m in unit_cluster_starts(data, loaded, layer, targets, facets, size, seed).items():
        path = f"{VIS}/starts/unit_{t:04d}_f{f}.png"
        store.write_file(path, png_bytes((np.asarray(m) * 255).round().clip(0, 255).astype(np.uint8)))
        out[(t, f)] = path
    log(f"visualize: {len(out)} facets of {len(targets)} units start from clusters of their top patches")
    return out


def unit_cluster_starts(data, loaded, layer: str, targets: list[int], facets: int, size: int,
                        seed: int = 0) -> dict[tuple[int, int], np.ndarray]:
    """Each unit's top patches (the patches stage's patches/top-<layer>.parquet in `data`)
    clustered by the layer's activations on them (channel means, at the picture's size) ->
    {(unit, facet): its cluster's mean patch, (3, size, size) in [0, 1]} (algos/ascent.py: cluster_starts)."""
    import pyarrow.parquet as pq

    from deepscope.algos.ascent import cluster_starts
    from deepscope.io.images import file_name
    from deepscope.models.taps import forward_with_taps

    rel = f"patches/top-{file_name(layer)}.parquet"
    if not data.exists(rel):
        raise UserError(f"facet_method 'clusters' needs the patches stage's output for {layer} in {data.root} "
                        f"({rel}): run [patches] layers = [\"{layer}\"] there first (deepscope visualize: "
                        "--patches FOLDER), or use facet_method 'diversity'")
    patches: dict[int, list] = {}
    for r in sorted(pq.read_table(io.BytesIO(data.read_bytes(rel))).to_pylist(), key=lambda r: r["rank"]):
        if r["layer"] == layer and r["patch"] is not None:
            patches.setdefault(r["channel"], []).append(read_png(io.BytesIO(r["patch"]))[0].numpy())
    out = {}
    for t in targets:
        mine = patches.get(t, [])
        if not mine:
            continue
        x = torch.cat([torch.nn.functional.interpolate(torch.from_numpy(p)[None].float(), size=(size, size),
                                                       mode="bilinear", antialias=True) for p in mine])
        with torch.no_grad():
            _, taps = forward_with_taps(loaded, loaded.transform.normalize(x.round().clamp(0, 255).to(torch.uint8)),
                                        [layer])
        means, _ = cluster_starts(mine, taps[layer].float().flatten(2).mean(2).cpu().numpy(), facets, size, seed)
        out.update({(t, f): m for f, m in enumerate(means) if m is not None})
    return out


def facet_correlation_of(pics: list[np.ndarray], facets: int) -> float:
    """The mean over targets of the mean pairwise pixel correlation of a target's facets."""
    from deepscope.algos.ascent import facet_correlation

    return float(np.nanmean(facet_correlation(np.stack(pics), facets)))


def unit_figures(store, layer: str, rows: list[dict], pics: list[np.ndarray], facets: int, log, data=None,
                 per_page: int = 16) -> dict:
    """Per unit, its pictures beside its top dataset patches (the patches stage's
    patches/top-<layer>.parquet) and its dissection concept (dissection/iou-<layer>.parquet), when
    the folder has them: pages visualize/units_<layer>_NNN.png, and each unit's picture against its
    best patch (a picture should drive its unit harder than any dataset patch)."""
    from deepscope.io.images import file_name
    from deepscope.report.visualize import unit_page_png

    data = data or store
    patches, concepts = {}, {}
    rel = f"patches/top-{file_name(layer)}.parquet"
    if data.exists(rel):
        import pyarrow.parquet as pq

        for r in pq.read_table(io.BytesIO(data.read_bytes(rel))).to_pylist():
            if r["layer"] == layer:
                patches.setdefault(r["channel"], []).append(r)
    rel = f"dissection/iou-{file_name(layer)}.parquet"
    if data.exists(rel):
        import pyarrow.parquet as pq

        for r in pq.read_table(io.BytesIO(data.read_bytes(rel))).to_pylist():
            if r["rank"] == 1:
                concepts[r["unit"]] = f"{r['concept']} (IoU {r['iou']:.2f})"
    if not patches and not concepts:
        return {}
    by_unit: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_unit.setdefault(r["target"], []).append(i)
    units = sorted(by_unit)
    pages, beats = [], []
    for start in range(0, len(units), per_page):
        entries = []
        for u in units[start:start + per_page]:
            mine = sorted(patches.get(u, []), key=lambda r: r["rank"])
            best = max((r["score"] for r in mine), default=None)
            peak = max(rows[i]["peak"] for i in by_unit[u])
            if best is not None:
                beats.append(peak > best)
            entries.append({"unit": u, "pictures": [pics[i] for i in by_unit[u]],
                            "patches": [r["patch"] for r in mine if r["patch"] is not None][:8],
                            "concept": concepts.get(u), "peak": peak, "best_patch": best})
        page = f"{VIS}/units_{file_name(layer)}_{start // per_page:03d}.png"
        store.write_file(page, unit_page_png(entries, facets))
        pages.append(page)
    log(f"visualize: {len(units)} units beside their dataset patches{' and concepts' if concepts else ''} "
        f"-> {pages[0]}{f' (+{len(pages) - 1} pages)' if len(pages) > 1 else ''}")
    return {"unit_pages": pages, "beats_best_patch": int(sum(beats)) if beats else None,
            "units_with_patches": len(beats)}
