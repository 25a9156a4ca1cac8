"""Seeing by optimization, from the command line: `visualize` (every unit or class of a layer, one
Ray job over batches of targets), `dream` and `invert` (one image in-process, or a folder as a
job), `adversarial` (one image, PNGs that stay adversarial on disk) and `robustness` (a stage
added to a features job's folder).  The algorithms are in algos/ascent, dream, invert, adversarial.

The visualize job has no dataset: its work items are partitions of targets (classes or units),
spread with Ray Data over model actors; each partition is one Parquet part plus its PNGs, so a
rerun skips what is done and an interrupted run resumes.
"""
from __future__ import annotations

import hashlib
import html
import io
import os
import re
import time

import numpy as np
import torch

from deepscope.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


# ---------------------------------------------------------------------------- small shared helpers

def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (3, H, W) -> PNG bytes (lossless: the file holds exactly these pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.asarray(pixels, np.uint8).transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def read_png(path) -> torch.Tensor:
    """A PNG written by png_bytes -> uint8 (1, 3, H, W)."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), np.uint8).transpose(2, 0, 1).copy())[None]


def file_stem(item_id: str) -> str:
    """A file name for an image id (ids may hold slashes): readable tail + hash, the same every run."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", str(item_id))[-48:].strip("._") or "img"
    return f"{tail}-{hashlib.sha1(str(item_id).encode()).hexdigest()[:8]}"


def item_seed(item_id: str, seed: int) -> int:
    """An image's random stream (jitter, noise) from its id: the same in any batch."""
    return seed * 1_000_003 + int(hashlib.sha1(str(item_id).encode()).hexdigest()[:8], 16)


def parse_targets(text: str, count: int, what: str) -> list[int]:
    """'all' | '0-63' | '3,7,10-12' -> indices, each < count."""
    text = (text or "").strip()
    if text == "all":
        return list(range(count))
    from deepscope.visualize_units import parse_channels

    out = parse_channels(text, what)
    bad = [t for t in out if t >= count]
    if bad:
        raise UserError(f"--{what}: {bad[0]} does not exist (there are {count}: 0-{count - 1})")
    return list(dict.fromkeys(out))


def parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad --{what} {text!r}: use numbers separated by commas, e.g. 1,2,4,8") from None
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"bad --{what} {text!r}: give one or more positive numbers")
    return vals


def layer_width(loaded, layer: str) -> int:
    """Channels (or classes) of a layer's output, from one forward pass at the crop size."""
    from deepscope.models.taps import forward_with_taps

    x = torch.zeros(1, 3, loaded.transform.crop, loaded.transform.crop)
    _, taps = forward_with_taps(loaded, x, [layer])
    out = taps[layer]
    if out.ndim not in (2, 4):
        raise UserError(f"layer {layer!r} gives shape {tuple(out.shape[1:])}: pick a layer with channels (N, C, H, W) or (N, C)")
    return int(out.shape[1])


def model_input(loaded, path: str) -> torch.Tensor:
    """The model's input pixels for an image file: uint8 (1, 3, crop, crop) after resize and crop."""
    from deepscope.io.decode import open_image

    return torch.from_numpy(loaded.transform.geometry(open_image(path)))[None]


def write_index(out: str, title: str, body: str) -> None:
    from deepscope.io.store import write_single_file
    from deepscope.report.html import CSS

    page = f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}</style><h1>{html.escape(title)}</h1>{body}"
    write_single_file(os.path.join(out, "index.html"), page.encode())


def grid_png(images: list[np.ndarray], captions: list[str], cols: int = 8) -> bytes:
    """A captioned grid of uint8 (3, H, W) pictures (matplotlib)."""
    from matplotlib.figure import Figure

    cols = min(cols, max(1, len(images)))
    rows = (len(images) + cols - 1) // cols
    fig = Figure(figsize=(1.5 * cols, 1.7 * rows), dpi=100, layout="constrained")
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
            ax.set_title(captions[i], fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _device():
    from deepscope.models.registry import best_device
    return best_device()


def _load(model: str, weights: str | None):
    from deepscope.models.registry import load_model

    loaded = load_model(model, weights)
    loaded.module.to(_device())
    return loaded


# ---------------------------------------------------------------------------- visualize: the Ray job

VIS = "visualize"


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

    def __call__(self, batch: dict):
        """Whole partitions of targets in; each one's PNGs and table written here; records out."""
        import json

        import pyarrow as pa

        from deepscope.algos.ascent import visualize
        from deepscope.io import schemas

        records = []
        for part, desc in zip(batch["part"], batch["desc"]):
            targets = [int(t) for t in json.loads(desc)["targets"]]
            t0 = time.perf_counter()
            r = visualize(self.loaded, self.layer, targets, self.settings, self.kind, self.amp)
            files = {f"{VIS}/images/{self.kind}_{t:04d}.png": png_bytes(p) for t, p in zip(targets, r.pixels)}
            names = self.loaded.class_names if self.kind == "class" else None
            table = pa.table({
                "layer": [self.layer] * len(targets), "kind": [self.kind] * len(targets),
                "target": pa.array(targets, pa.int32()), "name": [names[t] if names else None for t in targets],
                "image": list(files), "start": pa.array(np.asarray(r.start, np.float32)),
                "score": pa.array(np.asarray(r.score, np.float32)),
                "top1": pa.array(np.asarray(r.top1, np.int32))}, schema=schemas.VISUALIZE)
            ms = (time.perf_counter() - t0) * 1000
            rec = self.writer.write(VIS, part, table, files)
            records.append({**rec, "files": json.dumps(rec["files"]), "images": len(targets), "failed": 0,
                            "decode_ms": 0.0, "infer_ms": ms, "write_ms": 0.0, "t_model": time.time() - ms / 1000})
        return pa.Table.from_pylist(records)


def visualize_job(store, model: str, weights: str | None, layer: str, kind: str, targets: list[int],
                  settings: dict, run: dict, log, execute) -> dict:
    """Visualize `targets` of `layer` into an open Store: parts visualize/pNNNNN, PNGs, grid, summary.
    Runs on the executor every pass runs on (actors write their parts, the driver commits):
    execute(store, **Pass fields), e.g. RunContext.execute."""
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
    pending = [Partition(p, len(ts), {"kind": "targets", "targets": ts}) for p, ts in plan.items()
               if not store.has_part(VIS, p)]
    t0 = time.time()
    done = 0
    if pending:
        log(f"{len(pending)} parts of {kind} pictures of {layer}, {settings.get('steps', 100)} steps")
        stats = execute(
            store, parts=pending, commits=[VIS], worker=VisualizeActor, unit="pictures",
            worker_kwargs=dict(model=model, weights=weights, layer=layer, kind=kind, settings=settings,
                               precision=run.get("precision", "fp32"), channels_last=run.get("channels_last", True),
                               out=store.url, metadata=store.metadata),
            address=run.get("address"), actors=int(run.get("actors") or 1), threads=run.get("threads") or 0)
        done = stats.items
    else:
        log(f"nothing to do: all {len(plan)} parts of {store.root}/{VIS} are complete")
    table = store.read(VIS)
    rows = sorted(table.to_pylist(), key=lambda r: r["target"])
    caption = [f"{r['target']}{' ' + r['name'][:14] if r['name'] else ''}\n{r['score']:.1f}" for r in rows]
    pics = [read_png(io.BytesIO(store.read_bytes(r["image"])))[0].numpy() for r in rows]
    grid = f"{VIS}/grid_{re.sub(r'[^A-Za-z0-9._-]+', '_', layer)}.png"
    store.write_file(grid, grid_png(pics, caption))
    wall = time.time() - t0
    summary = {"layer": layer, "kind": kind, "pictures": len(rows), "computed": done, "wall_s": round(wall, 2),
               "per_s": round(done / wall, 3) if done else None, "grid": grid,
               "top1_is_target": sum(r["top1"] == r["target"] for r in rows) if kind == "class" else None,
               "mean_gain": float(np.mean([r["score"] - r["start"] for r in rows])) if rows else None,
               "settings": settings, "weights": loaded.weights, "random_weights": loaded.random_weights,
               "config": config}
    store.update_summary(VIS, summary)
    log(f"done: {len(rows)} {kind} pictures of {layer}, {done} computed in {wall:.1f} s"
        f"{f', {done / wall:.2f}/s' if done else ''} -> {store.root}/{VIS}/")
    return summary


def visualize_html(summary: dict, prefix: str = "") -> str:
    s = summary
    warn = '<p class="warn">RANDOM WEIGHTS: test only.</p>' if s.get("random_weights") else ""
    top = (f", the model predicts the target class for {s['top1_is_target']} of {s['pictures']}"
           if s.get("top1_is_target") is not None else "")
    return (f"{warn}<p>{s['pictures']} {s['kind']} pictures of <code>{html.escape(s['layer'])}</code> by gradient ascent "
            f"({html.escape(str(s['settings']))}); mean score gain {s['mean_gain']:.2f}{top}. PNGs in "
            f"<code>visualize/images/</code>, one row per picture in <code>visualize/*.parquet</code>.</p>"
            f'<p><img src="{prefix}{html.escape(s["grid"])}"></p>')
