"""Saliency: which pixels matter, for every image, and what the whole dataset's maps reveal.

On the model actors: one map per image and method (algos/saliency.py, Captum), its statistics,
and a GrabCut object mask seeded by it (algos/grabcut.py).  On the driver (finish): the mean map
of all images and of each class (centre bias); where objects are annotated (a `box` or `mask`
column), the share of saliency mass inside each object, images and classes ranked by the mass
outside (the bias finder), and GrabCut's IoU with the objects.  See docs/saliency.md.
"""
from __future__ import annotations

import html
import io
import math
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from deepscope.algos import saliency as sal
from deepscope.algos.grabcut import grabcut_from_saliency, iou
from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.stages.base import Stage, StageConfig, name_list

Method = Literal["backprop", "guided", "integrated_gradients", "occlusion", "gradcam"]
ALL = "(all)"
STATS = "saliency_stats"  # dataset-level tables
FIGURES = "report/saliency"


class SaliencyConfig(StageConfig):
    method: list[Method] = ["backprop"]  # one or more; "backprop,gradcam" is accepted too
    target: Annotated[int, Field(ge=0)] | Literal["pred", "label"] = "pred"  # or a fixed class index
    labels: dict[str, int | str] = {}  # label -> class index or class name, for target = "label"
    layer: str | None = None  # gradcam: a module name (default: the last spatial layer that runs once)
    window: int = Field(15, ge=1)  # occlusion window side, input pixels
    stride: int = Field(8, ge=1)  # occlusion stride
    fill: Literal["mean"] | Annotated[float, Field(ge=0, le=1)] = "mean"  # occlusion fill and IG baseline:
    #                                   the transform's mean colour, or a grey level in [0, 1]
    steps: int = Field(50, ge=1)  # integrated gradients
    smoothgrad: int = Field(0, ge=0)  # SmoothGrad samples over the method(s); 0: off
    noise: float = Field(0.15, gt=0)  # SmoothGrad noise stdev, as a share of the input's value range
    eval_batch: int | None = Field(None, ge=1)  # inputs per forward pass (images and their occlusion windows,
    #                                            IG steps, noise samples); None: 4 on CPU, 128 on a GPU
    map_size: int = Field(56, ge=2, le=512)  # stored maps: map_size x map_size cells
    grabcut: bool = True  # GrabCut object masks seeded by each map
    objects: str | None = None  # csv/parquet with `id` and `box` ("x0,y0,x1,y1", original pixels) and/or
    #                             `mask` (image path, non-zero = object); default: the dataset manifest's columns

    @field_validator("method", mode="before")
    @classmethod
    def _methods(cls, v):
        return name_list(v, "method")


class Saliency(Stage):
    name = "saliency"
    Config = SaliencyConfig
    needs_grad = True

    def __init__(self, config, job):
        super().__init__(config, job)
        self._label_index: dict[str, int] | None = None  # set by prepare(), shipped to the actors
        self._cam: tuple[str, bool] | None = None  # (module name, input?) of the Grad-CAM layer
        self._n_classes: int | None = None

    def method_names(self) -> list[str]:
        return [f"smoothgrad({m})" if self.config.smoothgrad else m for m in self.config.method]

    def layers(self):
        return ["logits"]

    # -- driver, before the pass: fail on bad settings before any image is computed -----------
    def prepare(self, ctx):
        from deepscope.models.registry import load_model

        loaded = load_model(self.job.model.name, self.job.model.weights)
        self._check_model(loaded)
        if self.config.target == "label":
            from deepscope.io.sources import list_items

            items, _ = list_items(self.job.dataset.source)
            self._label_index = label_index(items["label"].tolist(), self.config.labels, loaded.class_names,
                                            self._n_classes)
        read_objects(self.config.objects, self.job.dataset.source)  # parses every box: errors now

    def _check_model(self, loaded):
        from deepscope.models.taps import resolve

        cfg = self.config
        if loaded.scripted and {"gradcam", "guided"} & set(cfg.method):
            raise UserError(f"{loaded.spec} is TorchScript: gradcam and guided need module hooks; "
                            "use backprop, integrated_gradients or occlusion, or load the Python model")
        param = next(iter(loaded.module.parameters()), None)
        x = torch.zeros(1, 3, loaded.transform.crop, loaded.transform.crop,
                        device=param.device if param is not None else "cpu")
        with torch.no_grad():
            self._n_classes = int(loaded.module(x).shape[1])
        if isinstance(cfg.target, int) and cfg.target >= self._n_classes:
            raise UserError(f"target class {cfg.target} does not exist: {loaded.spec} has {self._n_classes} classes")
        if "gradcam" in cfg.method:
            if cfg.layer:
                tap = resolve(loaded, cfg.layer)
                self._cam = (tap.module_name, tap.kind == "input")
            else:
                name = sal.default_cam_layer(loaded.module, x)
                if name is None:
                    raise UserError(f"{loaded.spec} has no spatial layer for gradcam: name one with layer = ...")
                self._cam = (name, False)
            shape = _layer_shape(loaded.module, *self._cam, x)
            if len(shape) != 4:
                raise UserError(f"gradcam needs a layer with a spatial (N, C, H, W) output; {cfg.layer} gives "
                                f"{tuple(shape)}: name a convolutional layer (deepscope layers MODEL)")

    # -- model actors -------------------------------------------------------------------------
    def map_batch(self, model, x, taps, rows):
        cfg = self.config
        logits = taps["logits"].float()
        pred = logits.argmax(1)
        target = self._targets(rows, pred)
        if int(target.max()) >= logits.shape[1]:
            raise ValueError(f"target class {int(target.max())} >= the model's {logits.shape[1]} classes")
        score = logits.gather(1, target[:, None])[:, 0]
        opts = self._options(model, x)
        rgb = None
        if cfg.grabcut:
            # GrabCut runs at twice the stored map's resolution: its mask is kept at map_size anyway,
            # and a quarter of the pixels of a 224 crop costs a quarter of the time
            size = min(2 * cfg.map_size, x.shape[-1])
            pixels = F.adaptive_avg_pool2d(model.transform.denormalize(x.detach().float()), size)
            rgb = pixels.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        cols: dict[str, list] = {k: [] for k in ("map", "entropy", "top_mass", "com_x", "com_y", "grabcut")}
        for method in cfg.method:
            maps = sal.attribute(model.module, x, target, method, opts)
            for k, v in sal.map_stats(maps).items():
                cols[k].append(v.cpu().numpy())
            cols["map"].append(sal.shrink(maps, cfg.map_size).flatten(1).cpu().numpy().astype(np.float16))
            if rgb is not None:
                seeds = F.adaptive_avg_pool2d(maps[:, None], rgb.shape[1])[:, 0].cpu().numpy()
                cuts = np.stack([grabcut_from_saliency(rgb[i], seeds[i]) for i in range(len(seeds))])
                cols["grabcut"].append(shrink_mask(cuts, cfg.map_size).reshape(len(seeds), -1))
        names = model.class_names
        tgt = target.cpu().numpy()
        out = {"pred": pred.cpu().numpy().astype(np.int32), "target": tgt.astype(np.int32),
               "target_name": np.array([names[t] if names and t < len(names) else str(t) for t in tgt], dtype=object),
               "score": score.detach().cpu().numpy().astype(np.float32)}
        for k, v in cols.items():
            if v:
                out[k] = np.stack(v, axis=1)  # (N, methods, ...): one row per image through Ray
        return out

    def _targets(self, rows, pred: torch.Tensor) -> torch.Tensor:
        t = self.config.target
        if t == "pred":
            return pred
        if t == "label":
            if self._label_index is None:
                raise ValueError("target = label needs prepare() (the label -> class table)")
            return torch.tensor([self._label_index[str(lab)] for lab in rows["label"]], device=pred.device)
        return torch.full_like(pred, int(t))

    def _options(self, model, x) -> sal.Options:
        cfg, tf = self.config, model.transform
        fill = 0.0  # "mean": the transform's mean colour is 0 after normalization
        if cfg.fill != "mean":
            fill = ((torch.tensor(float(cfg.fill)) - torch.tensor(tf.mean)) / torch.tensor(tf.std)).view(1, 3, 1, 1)
        layer, layer_input = None, False
        if "gradcam" in cfg.method:
            if self._cam is None:  # prepare() did not run here (a direct call): find it now
                self._check_model(model)
            layer, layer_input = dict(model.module.named_modules())[self._cam[0]], self._cam[1]
        # the normalized input spans 1/std per channel: noise is a share of that range
        noise = cfg.noise * float(np.mean([1 / s for s in tf.std]))
        return sal.Options(window=cfg.window, stride=cfg.stride, fill=fill, steps=cfg.steps, layer=layer,
                           layer_input=layer_input, smoothgrad=cfg.smoothgrad, noise=noise,
                           eval_batch=cfg.eval_batch or (128 if x.device.type == "cuda" else 4))

    # -- driver -------------------------------------------------------------------------------
    def part_table(self, rows):
        names = self.method_names()
        cells = self.config.map_size ** 2
        n = len(rows["id"]) if "map" in rows else 0
        m = len(names)

        def rep(col):  # per image -> per (image, method) row, image-major
            return np.repeat(np.asarray(col)[:n], m)

        def per(col, dtype):  # (N, methods) -> flat
            return np.asarray(rows[col], dtype).reshape(-1) if n else np.zeros(0, dtype)

        target = rep(rows["target"]) if n else np.zeros(0, np.int32)
        maps = np.asarray(rows["map"], np.float16).reshape(-1) if n else np.zeros(0, np.float16)
        grabcut = pa.nulls(n * m, pa.list_(pa.bool_(), cells))
        if n and "grabcut" in rows:
            flat = pa.array(np.asarray(rows["grabcut"], bool).reshape(-1))
            grabcut = pa.FixedSizeListArray.from_arrays(flat, cells)
        return pa.table({
            "id": pa.array(rep(rows["id"]).tolist(), pa.string()),
            "path": pa.array(rep(rows["path"]).tolist(), pa.string()),
            "label": pa.array([None if lab is None or lab == "" else str(lab) for lab in rep(rows["label"])], pa.string()),
            "width": pa.array(rep(rows["width"]).astype(np.int32) if n else [], pa.int32()),
            "height": pa.array(rep(rows["height"]).astype(np.int32) if n else [], pa.int32()),
            "method": pa.array(names * n, pa.string()),
            "target": pa.array(target.astype(np.int32), pa.int32()),
            "target_name": pa.array([str(v) for v in rep(rows["target_name"])] if n else [], pa.string()),
            "pred": pa.array(rep(rows["pred"]).astype(np.int32) if n else [], pa.int32()),
            "score": pa.array(rep(rows["score"]).astype(np.float32) if n else [], pa.float32()),
            "map": pa.FixedSizeListArray.from_arrays(pa.array(maps, pa.float16()), cells),
            "entropy": pa.array(per("entropy", np.float32), pa.float32()),
            "top_mass": pa.array(per("top_mass", np.float32), pa.float32()),
            "com_x": pa.array(per("com_x", np.float32), pa.float32()),
            "com_y": pa.array(per("com_y", np.float32), pa.float32()),
            "grabcut": grabcut,
        }, schema=schemas.saliency(self.config.map_size))

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.models.registry import load_model

        cfg, S = self.config, self.config.map_size
        transform = load_model(self.job.model.name, self.job.model.weights).transform
        objects = read_objects(cfg.objects, self.job.dataset.source)
        coverage: dict[str, tuple[str, np.ndarray] | None] = {}  # id -> (truth, S x S object share)
        sums: dict[tuple[str, str], np.ndarray] = {}
        counts: dict[tuple[str, str], int] = {}
        rows: list[dict] = []  # one per (image, method): the scalars rankings need
        obj_rows: list[dict] = []
        bad_masks: list[str] = []
        columns = ["id", "path", "label", "width", "height", "method", "target_name", "map", "entropy", "top_mass",
                   "grabcut"]
        for _, t in store.iter_parts(self.name, columns=columns):
            if not t.num_rows:
                continue
            maps = t.column("map").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            maps = maps.astype(np.float64).reshape(-1, S, S)
            gc = t.column("grabcut").combine_chunks()
            cuts = None if gc.null_count else gc.flatten().to_numpy(zero_copy_only=False).reshape(-1, S, S)
            for i, r in enumerate(t.drop_columns(["map", "grabcut"]).to_pylist()):
                group = r["label"] or r["target_name"]
                total = maps[i].sum()
                p = maps[i] / total if total > 0 else None
                if p is not None:
                    for key in ((r["method"], ALL), (r["method"], group)):
                        sums[key] = sums.get(key, 0) + p
                        counts[key] = counts.get(key, 0) + 1
                rows.append({**r, "group": group})
                if r["id"] not in objects:
                    continue
                if r["id"] not in coverage:
                    try:
                        coverage[r["id"]] = object_coverage(objects[r["id"]], r["width"], r["height"], transform, S)
                    except (UserError, OSError, ValueError) as e:
                        coverage[r["id"]] = None
                        bad_masks.append(f"{r['id']}: {e}")
                if coverage[r["id"]] is None or p is None:
                    continue
                truth, cover = coverage[r["id"]]
                area = float(cover.mean())
                inside = float((p * cover).sum())
                cut = None if cuts is None else iou(cuts[i], cover >= 0.5)
                obj_rows.append({"id": r["id"], "path": r["path"], "group": group, "method": r["method"],
                                 "truth": truth, "area": area, "inside_mass": inside,
                                 "lift": inside / area if area > 0 else float("nan"), "grabcut_iou": cut})
        for msg in bad_masks[:5]:
            log(f"saliency: object annotation skipped: {msg}")

        mean_rows = [{"method": m, "group": g, "images": counts[(m, g)], **_centre(sums[(m, g)] / counts[(m, g)]),
                      "map": (sums[(m, g)] / counts[(m, g)]).astype(np.float32).reshape(-1).tolist()}
                     for (m, g) in sorted(sums, key=lambda k: (k[0], k[1] != ALL, k[1]))]
        store.write_table(f"{STATS}/mean_maps.parquet", pa.Table.from_pylist(mean_rows, schema=schemas.SALIENCY_MEAN_MAPS))
        obj_rows.sort(key=lambda o: (o["method"], o["inside_mass"]))  # ranked: most mass outside first
        class_rows = _class_table(obj_rows)
        if obj_rows:
            store.write_table(f"{STATS}/objects.parquet", pa.Table.from_pylist(obj_rows, schema=schemas.SALIENCY_OBJECTS))
            store.write_table(f"{STATS}/classes.parquet", pa.Table.from_pylist(class_rows, schema=schemas.SALIENCY_CLASSES))

        summary = {"methods": {}, "map_size": S, "annotated_images": len(coverage) - len(bad_masks),
                   "skipped_annotations": len(bad_masks), "target": cfg.target}
        for method in self.method_names():
            mine = [r for r in rows if r["method"] == method]
            objs = [o for o in obj_rows if o["method"] == method]
            mean = next((r for r in mean_rows if r["method"] == method and r["group"] == ALL), None)
            s = {"images": len(mine), "entropy": _nanmean(r["entropy"] for r in mine),
                 "top_mass": _nanmean(r["top_mass"] for r in mine),
                 "mean_map": {k: mean[k] for k in ("com_x", "com_y", "centre_mass")} if mean else None,
                 "figures": {}}
            if objs:
                s.update(objects=len(objs), area=_nanmean(o["area"] for o in objs),
                         inside_mass=_nanmean(o["inside_mass"] for o in objs),
                         grabcut_iou=_nanmean(o["grabcut_iou"] for o in objs),
                         flagged=[c["group"] for c in class_rows if c["method"] == method and c["flagged"]])
            s["figures"] = self._figures(store, method, mine, objs, mean_rows, transform)
            summary["methods"][method] = s
        return summary

    def _figures(self, store, method, rows, objs, mean_rows, transform) -> dict:
        slug = method.replace("(", "_").replace(")", "")
        figs = {}
        means = [r for r in mean_rows if r["method"] == method]
        if means:
            figs["mean_maps"] = _write(store, f"{FIGURES}/{slug}_mean_maps.png", _mean_maps_png(means, self.config.map_size))
        k = 8
        ranked = sorted((r for r in rows if r["entropy"] == r["entropy"]), key=lambda r: r["entropy"])
        if ranked:
            picks = [("most focused (lowest entropy)", ranked[:k], "entropy"),
                     ("most diffuse (highest entropy)", ranked[::-1][:k], "entropy")]
            figs["entropy"] = _write(store, f"{FIGURES}/{slug}_entropy.png",
                                     self._overlays_png(store, method, picks, transform))
        if objs:
            by_out = sorted(objs, key=lambda o: o["inside_mass"])
            picks = [("most mass outside the object", by_out[:k], "inside_mass"),
                     ("most mass inside the object", by_out[::-1][:k], "inside_mass")]
            figs["objects"] = _write(store, f"{FIGURES}/{slug}_objects.png",
                                     self._overlays_png(store, method, picks, transform))
            figs["inside_hist"] = _write(store, f"{FIGURES}/{slug}_inside_hist.png", _histogram_png(objs, method))
        return figs

    def _overlays_png(self, store, method, picks, transform) -> bytes:
        from matplotlib.figure import Figure

        S = self.config.map_size
        wanted = {r["id"] for _, chosen, _ in picks for r in chosen}
        maps = {}
        for _, t in store.iter_parts(self.name, columns=["id", "method", "map"]):
            for rid, m, v in zip(t.column("id").to_pylist(), t.column("method").to_pylist(), t.column("map").to_pylist()):
                if m == method and rid in wanted:
                    maps[rid] = np.asarray(v, np.float32).reshape(S, S)
        cols = max(len(chosen) for _, chosen, _ in picks)
        fig = Figure(figsize=(1.6 * cols, 2.1 * len(picks)), dpi=90, layout="constrained")
        for sub, (title, chosen, key) in zip(fig.subfigures(len(picks), 1, squeeze=False)[:, 0], picks):
            sub.suptitle(title, fontsize=8, weight="bold", x=0.01, ha="left")
            for col, ax in enumerate(sub.subplots(1, cols, squeeze=False)[0]):
                ax.axis("off")
                if col < len(chosen):
                    r = chosen[col]
                    ax.imshow(overlay(_model_input_image(r["path"], transform), maps.get(r["id"], np.zeros((S, S)))))
                    ax.set_title(f"{r['id'][-18:]}\n{key} {r[key]:.2f}", fontsize=6)
        return _png(fig)

    def report(self, store):
        s = store.summary(self.name) or {}
        cfg = self.config
        target = {"pred": "the predicted class", "label": "the label's class"}.get(cfg.target, f"class {cfg.target}")
        parts = [f"<p>Saliency of {html.escape(target)} (its unnormalized score) by "
                 f"{html.escape(', '.join(self.method_names()))}; maps at {s.get('map_size')}x{s.get('map_size')} "
                 "over the centre crop in <code>saliency/*.parquet</code>, dataset tables in "
                 f"<code>{STATS}/</code>. Annotated objects: {s.get('annotated_images', 0)}"
                 f"{'' if not s.get('skipped_annotations') else ', skipped: ' + str(s['skipped_annotations'])}.</p>"]
        for method, m in (s.get("methods") or {}).items():
            mm = m.get("mean_map") or {}
            stats = {"images": m.get("images"), "mean entropy (0 one pixel, 1 uniform)": _fmt(m.get("entropy")),
                     "mass in top 5% pixels": _fmt(m.get("top_mass")),
                     "mean map: centre of mass (x, y)": f"{_fmt(mm.get('com_x'))}, {_fmt(mm.get('com_y'))}",
                     "mean map: mass in central quarter (uniform 0.25)": _fmt(mm.get("centre_mass"))}
            if "objects" in m:
                stats.update({"annotated images": m["objects"], "mean object area": _fmt(m.get("area")),
                              "mean mass inside object": _fmt(m.get("inside_mass")),
                              "GrabCut IoU with objects": _fmt(m.get("grabcut_iou")),
                              "flagged classes (inside mass < area)": ", ".join(m.get("flagged") or []) or "none"})
            rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in stats.items())
            parts.append(f"<h3>{html.escape(method)}</h3><table>{rows}</table>")
            parts.append(_classes_html(store, method))
            for key, caption in (("mean_maps", "Mean maps (centre bias), all images and per class"),
                                 ("inside_hist", "Share of saliency mass inside the object"),
                                 ("objects", "Bias finder: images ranked by mass outside the object"),
                                 ("entropy", "Most focused and most diffuse maps")):
                rel = (m.get("figures") or {}).get(key)
                if rel:
                    parts.append(f'<p>{caption}:<br><img src="{html.escape(rel[len("report/"):])}"></p>')
        return "".join(parts)


# ---------------------------------------------------------------------------- targets

def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def label_index(labels: list, mapping: dict, class_names: list[str] | None, n_classes: int | None) -> dict[str, int]:
    """label string -> class index: the config mapping (to an index or a class name), an integer
    label, or a class name of the model (case, '_' and '-' ignored).  UserError for any label left."""
    by_name = {_norm(n): i for i, n in enumerate(class_names or [])}
    out, unknown, unlabelled = {}, [], 0
    for lab in dict.fromkeys(labels):
        if lab is None or lab == "":
            unlabelled += 1
            continue
        lab = str(lab)
        v = mapping.get(lab, lab)
        if isinstance(v, int) or str(v).strip().isdigit():
            idx = int(v)
        else:
            idx = by_name.get(_norm(v))
        if idx is None or (n_classes is not None and idx >= n_classes):
            unknown.append(lab)
        else:
            out[lab] = idx
    if unlabelled and len(out) + len(unknown) == 0:
        raise UserError("target = label, but the dataset has no labels: use target = pred or a class index")
    if unlabelled:
        raise UserError("target = label, but some images have no label: label every image or use target = pred")
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UserError(f"labels with no class of the model: {shown}; map them in [saliency] labels "
                        f"(e.g. labels = {{ {unknown[0]!r} = 281 }}) or use target = pred")
    return out


# ---------------------------------------------------------------------------- objects

def read_objects(objects: str | None, source: str) -> dict[str, tuple[str, object]]:
    """id -> ("box", (x0, y0, x1, y1)) or ("mask", path): from `objects`, else the dataset manifest's
    own `box`/`mask` columns (a folder dataset has none).  Ids follow the manifest rule: the `id`
    column, else `path`.  A mask wins over a box."""
    import fsspec
    import pandas as pd

    table = objects or (source if source.lower().endswith((".csv", ".parquet")) else None)
    if table is None:
        return {}
    try:
        with fsspec.open(table, "rb") as f:
            df = pd.read_parquet(f) if table.lower().endswith(".parquet") else pd.read_csv(f, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"objects table not found: {table}") from None
    except Exception as e:
        raise UserError(f"cannot read objects table {table}: {type(e).__name__}: {e}") from None
    if "box" not in df.columns and "mask" not in df.columns:
        if objects:
            raise UserError(f"objects table {table} has neither a 'box' nor a 'mask' column")
        return {}
    key = "id" if "id" in df.columns else "path"
    if key not in df.columns:
        raise UserError(f"objects table {table} has no 'id' (or 'path') column")
    base = table.rsplit("/", 1)[0] if "/" in table else "."
    out = {}
    for rec in df.to_dict("records"):
        rid, mask, box = str(rec[key]), rec.get("mask"), rec.get("box")
        if isinstance(mask, str) and mask.strip():
            mask = mask.strip()
            out[rid] = ("mask", mask if ("://" in mask or mask.startswith("/")) else f"{base}/{mask}")
        elif box is not None and not (isinstance(box, str) and not box.strip()) and not _isnan(box):
            out[rid] = ("box", parse_box(box, rid, table))
    return out


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def parse_box(box, rid: str, table: str) -> tuple[float, float, float, float]:
    try:
        vals = [float(v) for v in (box.split(",") if isinstance(box, str) else box)]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 4 or not (vals[2] > vals[0] and vals[3] > vals[1]) or not all(map(math.isfinite, vals)):
        raise UserError(f"{table}: box of {rid!r} is {box!r}: write x0,y0,x1,y1 in original pixels, x1 > x0, y1 > y0")
    return tuple(vals)


def object_coverage(obj, width: int, height: int, transform, S: int) -> tuple[str, np.ndarray]:
    """The share of each of the S x S map cells (over the model's centre crop) that the object covers."""
    kind, value = obj
    if kind == "box":
        x0, y0, x1, y1 = value
        scale, left, top = transform.crop_box_in_original(width, height)
        edges = np.arange(S + 1) * transform.crop / S * scale  # cell edges in original pixels, from the crop corner

        def share(a, b, lo, hi):
            return np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None) / (b - a)

        fx = share(left + edges[:-1], left + edges[1:], x0, x1)
        fy = share(top + edges[:-1], top + edges[1:], y0, y1)
        return "box", np.outer(fy, fx)
    from PIL import Image

    from deepscope.io.decode import DecodeError, decode
    from deepscope.io.sources import read_bytes

    try:
        img, w, h = decode(read_bytes(value))
    except DecodeError as e:
        raise ValueError(f"mask {value}: {e}") from None
    if (w, h) != (width, height):
        raise ValueError(f"mask {value} is {w}x{h}, its image {width}x{height}")
    binary = Image.fromarray(((np.asarray(img.convert("L")) > 127) * 255).astype(np.uint8)).convert("RGB")
    crop = transform.geometry(binary)[0].astype(np.float32) / 255
    cover = F.adaptive_avg_pool2d(torch.from_numpy(crop)[None, None], S)[0, 0]
    return "mask", cover.numpy().astype(np.float64)


def shrink_mask(masks: np.ndarray, S: int) -> np.ndarray:
    """(N, H, W) bool -> (N, S, S) bool: cells that the mask covers at least half of."""
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (F.adaptive_avg_pool2d(t, S)[:, 0] >= 0.5).numpy()


def _class_table(obj_rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in obj_rows:
        groups.setdefault((o["method"], o["group"]), []).append(o)
    out = []
    for (method, group), objs in groups.items():
        area, inside = _nanmean(o["area"] for o in objs), _nanmean(o["inside_mass"] for o in objs)
        out.append({"method": method, "group": group, "images": len(objs), "area": area, "inside_mass": inside,
                    "outside_mass": 1 - inside, "grabcut_iou": _nanmean(o["grabcut_iou"] for o in objs),
                    # a uniform map puts `area` inside: less than that, the model looks elsewhere
                    "flagged": bool(inside < area)})
    return sorted(out, key=lambda c: (c["method"], -c["outside_mass"]))


def _classes_html(store, method: str) -> str:
    import pyarrow.parquet as pq

    p = store.path(f"{STATS}/classes.parquet")
    if not p.exists():
        return ""
    rows = [r for r in pq.read_table(p).to_pylist() if r["method"] == method]
    red = ' style="background:#fdd"'
    body = "".join(
        f"<tr{red if r['flagged'] else ''}><td>{html.escape(r['group'])}</td>"
        f"<td>{r['images']}</td><td>{_fmt(r['area'])}</td><td>{_fmt(r['inside_mass'])}</td>"
        f"<td>{_fmt(r['outside_mass'])}</td><td>{_fmt(r['grabcut_iou'])}</td><td>{'FLAGGED' if r['flagged'] else ''}</td></tr>"
        for r in rows)
    return ("<p>Classes ranked by saliency mass outside their objects (flagged: less mass inside than a "
            "uniform map would put there):</p><table><tr><th>class</th><th>images</th><th>object area</th>"
            f"<th>inside</th><th>outside</th><th>GrabCut IoU</th><th></th></tr>{body}</table>")


# ---------------------------------------------------------------------------- figures

def _centre(p: np.ndarray) -> dict:
    S = p.shape[0]
    c = (np.arange(S) + 0.5) / S
    q0, q1 = S // 4, S - S // 4
    return {"com_x": float((p.sum(0) * c).sum()), "com_y": float((p.sum(1) * c).sum()),
            "centre_mass": float(p[q0:q1, q0:q1].sum())}


def overlay(rgb: np.ndarray, small_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image, (S, S) map -> (H, W, 3) uint8: the map in 'jet', blended over the image."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = rgb.shape[:2]
    m = np.asarray(Image.fromarray(small_map.astype(np.float32)).resize((w, h), Image.BILINEAR))
    m = m / m.max() if m.max() > 0 else m
    heat = colormaps["jet"](m)[..., :3] * 255
    return (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)


def _model_input_image(path: str, transform) -> np.ndarray:
    from deepscope.io.decode import decode
    from deepscope.io.sources import read_bytes

    try:
        img, _, _ = decode(read_bytes(path), draft_size=transform.resize)
        return transform.geometry(img).transpose(1, 2, 0)
    except Exception:  # moved or deleted since the run: the map alone still says something
        return np.zeros((transform.crop, transform.crop, 3), np.uint8)


def _mean_maps_png(means: list[dict], S: int, most: int = 12) -> bytes:
    from matplotlib.figure import Figure

    means = means[:most]
    cols = min(len(means), 6)
    rows = math.ceil(len(means) / cols)
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows), dpi=90)
    for i, r in enumerate(means):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.asarray(r["map"]).reshape(S, S), cmap="inferno")
        ax.plot([r["com_x"] * S - 0.5], [r["com_y"] * S - 0.5], "c+", ms=10)  # the centre of mass
        ax.set_title(f"{r['group'][:20]} ({r['images']})", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _histogram_png(objs: list[dict], method: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.8), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist([o["inside_mass"] for o in objs], bins=20, range=(0, 1), color="#4477aa")
    ax.axvline(float(np.mean([o["area"] for o in objs])), color="#cc3311", ls="--", label="mean object area")
    ax.set_xlabel(f"share of {method} mass inside the object")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write(store, rel: str, data: bytes) -> str:
    store.write_file(rel, data)
    return rel


def _nanmean(values) -> float | None:
    v = [float(x) for x in values if x is not None and x == x]
    return float(np.mean(v)) if v else None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _layer_shape(module, name: str, use_input: bool, x) -> tuple:
    seen = {}
    target = dict(module.named_modules())[name]
    def hook(mod, args, output=None):  # returns None: leaves the forward pass alone
        value = args[0] if use_input else output
        seen.setdefault("s", tuple(getattr(value, "shape", ())))

    h = target.register_forward_pre_hook(hook) if use_input else target.register_forward_hook(hook)
    try:
        with torch.no_grad():
            module(x)
    finally:
        h.remove()
    return seen.get("s", ())


# ---------------------------------------------------------------------------- command line
