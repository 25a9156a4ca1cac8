"""Saliency: which pixels matter, for every image, and what the whole dataset's maps reveal.

On the model actors: one map per image and method (algos/saliency.py, Captum), its statistics,
and a GrabCut object mask seeded by it (algos/grabcut.py).  On the driver (finish): the mean map
of all images and of each class (centre bias); where objects are annotated (a `box` or `mask`
column), the share of saliency mass inside each object, images and classes ranked by the mass
outside (the bias finder), and GrabCut's IoU with the objects.  README: "Saliency: which pixels
matter, and what the whole dataset's maps reveal".

The figures and the report section are in report/saliency.py, the object annotations in
io/objects.py.  What is left is one stage (config, actor code, part table, and the dataset
statistics of finish, which are its reduction): longer than 350 lines because finish streams the
maps once and computes every table in that one pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.io.objects import object_coverage, read_objects
from deepscope.report.saliency import saliency_figures, saliency_html
from deepscope.stages.base import Stage, StageConfig, name_list

if TYPE_CHECKING:
    from deepscope.algos import saliency as sal

Method = Literal["backprop", "guided", "integrated_gradients", "occlusion", "gradcam"]
ALL = "(all)"
STATS = "saliency_stats"  # dataset-level tables


class SaliencyConfig(StageConfig):
    method: list[Method] = ["backprop"]  # one or more; "backprop,gradcam" is accepted too
    target: Annotated[int, Field(ge=0)] | Literal["pred", "label"] = "pred"  # or a fixed class index
    labels: dict[str, int | str] = {}  # label -> class index or class name, for target = "label"
    layer: str | None = None  # gradcam: a module name, MODULE@K (its K-th call, for a module that runs several
    #                           times: lite0's `_swish`) or MODULE:input; default: the last spatial module call
    #                           of the forward pass (lite0: `_swish@2`, the head after its ReLU6; `_bn1` is before)
    window: int = Field(15, ge=1)  # occlusion window side, input pixels
    stride: int = Field(8, ge=1)  # occlusion stride
    fill: Literal["mean"] | Annotated[float, Field(ge=0, le=1)] = "mean"  # occlusion fill and IG baseline:
    #                                   the transform's mean colour, or a grey level in [0, 1]
    steps: int = Field(50, ge=1)  # integrated gradients: Gauss-Legendre nodes on the path (Captum's default)
    ig_tolerance: float = Field(0.05, ge=0)  # images whose ig_delta (completeness error) exceeds it run again at
    #                                          2x, 4x, ... steps, up to ig_max_steps; 0: every image at `steps`
    ig_max_steps: int = Field(800, ge=1)
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
        self._cam: dict | None = None  # the Grad-CAM layer: module, input, call, name, activated
        self._n_classes: int | None = None

    def method_names(self) -> list[str]:
        return [f"smoothgrad({m})" if self.config.smoothgrad else m for m in self.config.method]

    def layers(self):
        return ["logits"]

    # -- driver, before the pass: fail on bad settings before any image is computed -----------
    def prepare(self, ctx):
        from deepscope.io.sources import open_source

        loaded = ctx.loaded
        self._check_model(loaded)
        source = open_source(self.job.dataset.source)
        if self.config.target == "label":
            labels = [x for items in source.items() for x in items["label"].tolist()]
            self._label_index = label_index(labels, self.config.labels, loaded.class_names, self._n_classes)
        read_objects(self.config.objects, source.manifest_files())  # parses every box: errors now

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
            self._cam, shape = _cam_layer(loaded, cfg.layer, x, resolve)
            if len(shape) != 4:
                raise UserError(f"gradcam needs a layer with a spatial (N, C, H, W) output; {cfg.layer} gives "
                                f"{tuple(shape)}: name a convolutional layer (deepscope layers MODEL)")

    # -- model actors -------------------------------------------------------------------------
    def map_batch(self, model, x, taps, rows):
        # Captum and OpenCV are imported where they run (the model workers), not with the job's spec
        from deepscope.algos import saliency as sal
        from deepscope.algos.grabcut import grabcut_from_saliency

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
        cols: dict[str, list] = {k: [] for k in ("map", "entropy", "top_mass", "com_x", "com_y", "grabcut",
                                                 "ig_delta", "ig_steps")}
        for method in cfg.method:
            delta, steps = torch.full((len(x),), float("nan")), torch.zeros(len(x), dtype=torch.int32)
            if method == "integrated_gradients":
                maps, delta, steps = sal.integrated_gradients(model.module, x, target, opts)
            else:
                maps = sal.attribute(model.module, x, target, method, opts)
            cols["ig_delta"].append(delta.cpu().numpy().astype(np.float32))
            cols["ig_steps"].append(steps.cpu().numpy().astype(np.int32))
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
        from deepscope.algos import saliency as sal

        cfg, tf = self.config, model.transform
        fill = 0.0  # "mean": the transform's mean colour is 0 after normalization
        if cfg.fill != "mean":
            fill = ((torch.tensor(float(cfg.fill)) - torch.tensor(tf.mean)) / torch.tensor(tf.std)).view(1, 3, 1, 1)
        layer, layer_input, layer_call = None, False, 0
        if "gradcam" in cfg.method:
            if self._cam is None:  # prepare() did not run here (a direct call): find it now
                self._check_model(model)
            layer = dict(model.module.named_modules())[self._cam["module"]]
            layer_input, layer_call = self._cam["input"], self._cam["call"]
        # the normalized input spans 1/std per channel: noise is a share of that range
        noise = cfg.noise * float(np.mean([1 / s for s in tf.std]))
        return sal.Options(window=cfg.window, stride=cfg.stride, fill=fill, steps=cfg.steps,
                           tolerance=cfg.ig_tolerance, max_steps=max(cfg.ig_max_steps, cfg.steps), layer=layer,
                           layer_input=layer_input, layer_call=layer_call, smoothgrad=cfg.smoothgrad, noise=noise,
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
        ig_delta = per("ig_delta", np.float32) if "ig_delta" in rows else np.full(n * m, np.nan, np.float32)
        ig_steps = per("ig_steps", np.int32) if "ig_steps" in rows else np.zeros(n * m, np.int32)
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
            "ig_delta": pa.array(ig_delta, pa.float32(), mask=np.isnan(ig_delta)),
            "ig_steps": pa.array(ig_steps, pa.int32(), mask=ig_steps == 0),
        }, schema=schemas.saliency(self.config.map_size))

    def finish(self, ctx):
        from deepscope.algos.grabcut import iou
        from deepscope.models.registry import load_model

        store, log = ctx.store, ctx.log
        cfg, S = self.config, self.config.map_size
        loaded = ctx.loaded or load_model(self.job.model.name, self.job.model.weights)
        transform = loaded.transform
        from deepscope.io.sources import open_source

        objects = read_objects(cfg.objects, open_source(self.job.dataset.source).manifest_files())
        coverage: dict[str, tuple[str, np.ndarray] | None] = {}  # id -> (truth, S x S object share)
        sums: dict[tuple[str, str], np.ndarray] = {}
        counts: dict[tuple[str, str], int] = {}
        rows: list[dict] = []  # one per (image, method): the scalars rankings need
        obj_rows: list[dict] = []
        bad_masks: list[str] = []
        columns = ["id", "path", "label", "width", "height", "method", "target_name", "map", "entropy", "top_mass",
                   "grabcut", "ig_delta", "ig_steps"]
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
        if "gradcam" in cfg.method:
            if self._cam is None:  # no pass ran in this process (only the summary was missing)
                self._check_model(loaded)
            summary["gradcam_layer"] = {k: self._cam[k] for k in ("name", "activated", "input")}
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
            if method == "integrated_gradients":
                s["ig"] = _ig_summary(mine, cfg)
                log(f"saliency: integrated gradients: {_ig_line(s['ig'])}")
            s["figures"] = saliency_figures(store, self.name, S, method, mine, objs, mean_rows, transform,
                                            cfg.ig_tolerance)
            summary["methods"][method] = s
        return summary

    def report(self, store):
        return saliency_html(store, store.summary(self.name) or {}, self.config.target, self.method_names(), STATS)


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


def shrink_mask(masks: np.ndarray, S: int) -> np.ndarray:
    """(N, H, W) bool -> (N, S, S) bool: cells that the mask covers at least half of."""
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (F.adaptive_avg_pool2d(t, S)[:, 0] >= 0.5).numpy()


# ---------------------------------------------------------------------------- statistics

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


def _centre(p: np.ndarray) -> dict:
    S = p.shape[0]
    c = (np.arange(S) + 0.5) / S
    q0, q1 = S // 4, S - S // 4
    return {"com_x": float((p.sum(0) * c).sum()), "com_y": float((p.sum(1) * c).sum()),
            "centre_mass": float(p[q0:q1, q0:q1].sum())}


def _nanmean(values) -> float | None:
    v = [float(x) for x in values if x is not None and x == x]
    return float(np.mean(v)) if v else None


def _ig_summary(rows: list[dict], cfg) -> dict:
    """The completeness errors of one run's integrated gradients, and how many images needed more steps."""
    delta = np.array([r["ig_delta"] for r in rows if r["ig_delta"] is not None], np.float64)
    steps = np.array([r["ig_steps"] or cfg.steps for r in rows])
    tol = cfg.ig_tolerance
    return {"tolerance": tol, "steps": cfg.steps, "max_steps": max(cfg.ig_max_steps, cfg.steps),
            "quadrature": "gausslegendre", "images": len(rows), "measured": int(len(delta)),
            "median": float(np.median(delta)) if len(delta) else None,
            "max": float(delta.max()) if len(delta) else None,
            "more_steps": int((steps > cfg.steps).sum()),
            "still_miss": int((delta > tol).sum()) if tol > 0 else None,
            "over_0.05": int((delta > 0.05).sum())}


def _ig_line(ig: dict) -> str:
    if ig["median"] is None:
        return f"{ig['images']} images, completeness not measured (SmoothGrad)"
    miss = (f"{ig['more_steps']} needed more than {ig['steps']} steps, {ig['still_miss']} still miss "
            f"{ig['tolerance']:g} at {ig['max_steps']}" if ig["tolerance"] > 0 else
            f"all at {ig['steps']} steps (no tolerance), {ig['over_0.05']} above 0.05")
    return f"{ig['images']} images, ig_delta median {ig['median']:.4f}, max {ig['max']:.4f}; {miss}"


def _cam_layer(loaded, layer: str | None, x, resolve) -> tuple[dict, tuple]:
    """The Grad-CAM layer (named, or the default) -> ({module, input, call, name, activated}, its shape).
    A module that runs several times is hooked at one call: MODULE@K, or its last call when unnamed."""
    from deepscope.algos import saliency as sal

    calls = sal.layer_calls(loaded.module, x)
    if not layer:
        c = sal.default_cam_layer(loaded.module, x)
        if c is None:
            raise UserError(f"{loaded.spec} has no spatial layer for gradcam: name one with layer = ...")
        return {"module": c.module, "input": False, "call": c.call if c.calls > 1 else 0, "name": c.name,
                "activated": c.activated}, c.shape
    name, at, call = layer.partition("@")
    tap = resolve(loaded, name)
    mine = [c for c in calls if c.module == tap.module_name]
    if not mine:
        raise UserError(f"gradcam layer {layer!r} does not run in a forward pass of {loaded.spec}")
    if at and (tap.kind == "input" or not call.strip().isdigit() or not 1 <= int(call) <= len(mine)):
        raise UserError(f"gradcam layer {layer!r}: {tap.module_name} runs {len(mine)} time(s) per forward pass; "
                        f"name a call as {tap.module_name}@1 .. @{len(mine)} (outputs only)")
    c = mine[int(call) - 1] if at else mine[-1]  # unnamed: the last call, as layer taps take
    if tap.kind == "input":
        shape = _layer_shape(loaded.module, tap.module_name, True, x)
        return {"module": tap.module_name, "input": True, "call": 0, "name": layer, "activated": None}, shape
    return {"module": c.module, "input": False, "call": c.call if c.calls > 1 else 0, "name": c.name,
            "activated": c.activated}, c.shape


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
