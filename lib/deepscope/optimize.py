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
from pathlib import Path

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
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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
        from deepscope.mapper import device_for_actor
        from deepscope.models.registry import load_model

        if threads:
            torch.set_num_threads(threads)
        self.device = device_for_actor()
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
                  settings: dict, run: dict, log) -> dict:
    """Visualize `targets` of `layer` into an open Store: parts visualize/pNNNNN, PNGs, grid, summary.
    Runs on the executor every pass runs on (actors write their parts, the driver commits)."""
    from deepscope.executor import Pass, execute
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
        stats = execute(store, Pass(
            parts=pending, commits=[VIS], worker=VisualizeActor, unit="pictures",
            worker_kwargs=dict(model=model, weights=weights, layer=layer, kind=kind, settings=settings,
                               precision=run.get("precision", "fp32"), channels_last=run.get("channels_last", True),
                               out=store.url, metadata=store.metadata),
            address=run.get("address"), actors=int(run.get("actors") or 1), threads=run.get("threads") or 0))
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


def cmd_visualize(a):
    from deepscope.io.store import Store
    from deepscope.runner import log

    if bool(a.units) == bool(a.classes):
        raise UserError("visualize: give either --units or --classes")
    loaded = _load(a.model, a.weights)
    kind, layer = ("class", "logits") if a.classes else ("unit", a.layer)
    if a.classes and a.layer not in (None, "logits"):
        raise UserError("--classes visualizes the model's classes (layer logits): drop --layer or use --units")
    if not layer:
        raise UserError("visualize --units needs --layer (list them with `deepscope layers MODEL`)")
    width = layer_width(loaded, layer)
    targets = parse_targets(a.classes or a.units, width, "classes" if a.classes else "units")
    settings = {k: v for k, v in dict(steps=a.steps, lr=a.lr, l2=a.l2, blur_every=a.blur_every, blur_sigma=a.blur_sigma,
                                      value_clip=a.value_clip, grad_clip=a.grad_clip, jitter=a.jitter, param=a.param,
                                      optimizer=a.optimizer, decay=a.decay, pad=a.pad, scale=a.scale, rotate=a.rotate,
                                      position=a.position, size=a.size, seed=a.seed).items() if v is not None}
    if a.plain:
        from deepscope.algos.ascent import PLAIN
        settings = {**PLAIN, **settings}
    store = Store(a.out)
    store.open({"model": a.model, "weights": a.weights, "precision": a.precision or "fp32"})
    store.clean_temporaries()
    store.metadata = {"deepscope.model": a.model, "deepscope.weights": loaded.weights,
                      "deepscope.random_weights": str(loaded.random_weights).lower()}
    run = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address, "precision": a.precision or "fp32"}
    s = visualize_job(store, a.model, a.weights, layer, kind, targets, settings, run, log)
    write_index(a.out, f"deepscope visualize: {a.model} {layer}", visualize_html(s))


# ---------------------------------------------------------------------------- dream / invert: one image

def _inputs(path: str) -> bool:
    """True: one image (run in-process); False: a folder or manifest (run as a job)."""
    p = Path(path)
    if p.is_dir() or path.lower().endswith((".csv", ".parquet")):
        return False
    if not p.exists() and "://" not in path:
        raise UserError(f"no such image or folder: {path}")
    return True


def _job(a, stage: str, config: dict) -> None:
    from deepscope import job as jobmod
    from deepscope.runner import run

    runcfg = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address, "precision": a.precision}
    run(jobmod.validate({"out": a.out, "dataset": {"source": a.input},
                         "model": {"name": a.model, "weights": a.weights},
                         "run": {k: v for k, v in runcfg.items() if v is not None},
                         stage: {k: v for k, v in config.items() if v is not None}}, "arguments"))


def cmd_dream(a):
    from deepscope.algos.dream import DreamSettings, dream, dream_energy
    from deepscope.io.store import write_single_file
    from deepscope.models.taps import resolve
    from deepscope.runner import log

    config = dict(layer=a.layer, octaves=a.octaves, octave_scale=a.octave_scale, steps=a.steps, lr=a.lr,
                  jitter=a.jitter, seed=a.seed)
    if not _inputs(a.input):
        return _job(a, "dream", config)
    t0 = time.time()
    loaded = _load(a.model, a.weights)
    resolve(loaded, a.layer)
    src = model_input(loaded, a.input).to(_device())
    settings = DreamSettings(**{k: v for k, v in config.items() if v is not None and k != "layer"})
    out = dream(loaded, src.float() / 255, a.layer, settings, seeds=[item_seed(a.input, settings.seed)])
    pixels = (out.clamp(0, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        e0, e1 = (float(dream_energy(loaded, p.float() / 255, a.layer)[0]) for p in (src, pixels))
    write_single_file(os.path.join(a.out, "source.png"), png_bytes(src[0].cpu().numpy()))
    write_single_file(os.path.join(a.out, "dream.png"), png_bytes(pixels[0].cpu().numpy()))
    write_index(a.out, f"deepscope dream: {a.input}",
                f"<p>layer <code>{html.escape(a.layer)}</code>, {html.escape(str(settings))}; 1/2||a||^2 "
                f"{e0:.1f} -> {e1:.1f}</p><p><img src='source.png'> <img src='dream.png'></p>")
    log(f"done: 1 image dreamed at {a.layer} in {time.time() - t0:.1f} s, energy {e0:.1f} -> {e1:.1f} -> {a.out}/dream.png")


def cmd_invert(a):
    from deepscope.algos.invert import InvertSettings, invert
    from deepscope.io.store import write_single_file
    from deepscope.models.taps import resolve
    from deepscope.runner import log

    layers = [v.strip() for v in (a.layers or "").split(",") if v.strip()]
    if not layers:
        raise UserError("invert needs --layers L1,L2 (list them with `deepscope layers MODEL`)")
    config = dict(layers=layers, steps=a.steps, lr=a.lr, tv=a.tv, seed=a.seed, param=a.param)
    if not _inputs(a.input):
        return _job(a, "invert", config)
    t0 = time.time()
    loaded = _load(a.model, a.weights)
    for layer in layers:
        resolve(loaded, layer)
    src = model_input(loaded, a.input).to(_device())
    settings = InvertSettings(**{k: v for k, v in config.items() if v is not None and k != "layers"})
    write_single_file(os.path.join(a.out, "source.png"), png_bytes(src[0].cpu().numpy()))
    cells = ["<figure><img src='source.png'><figcaption>model input</figcaption></figure>"]
    for layer in layers:
        rec, err = invert(loaded, src.float() / 255, layer, settings, seeds=[item_seed(a.input, settings.seed)])
        pixels = (rec * 255).round().to(torch.uint8)
        name = f"invert_{re.sub(r'[^A-Za-z0-9._-]+', '_', layer)}.png"
        write_single_file(os.path.join(a.out, name), png_bytes(pixels[0].cpu().numpy()))
        rmse = float((pixels.float() - src.float()).div(255).pow(2).mean().sqrt())
        cells.append(f"<figure><img src='{name}'><figcaption>{html.escape(layer)}: feature error {float(err[0]):.3f}, "
                     f"pixel RMSE {rmse:.3f}</figcaption></figure>")
        log(f"  {layer}: feature error {float(err[0]):.3f}, pixel RMSE {rmse:.3f}")
    write_index(a.out, f"deepscope invert: {a.input}", f"<p>{html.escape(str(settings))}</p><div style='display:flex;gap:8px'>{''.join(cells)}</div>")
    log(f"done: 1 image inverted from {len(layers)} layers in {time.time() - t0:.1f} s -> {a.out}/index.html")


# ---------------------------------------------------------------------------- adversarial: one image

def cmd_adversarial(a):
    from deepscope.algos import adversarial as adv
    from deepscope.io.store import write_single_file
    from deepscope.runner import log

    t0 = time.time()
    loaded = _load(a.model, a.weights)
    n_classes = layer_width(loaded, "logits")
    if not 0 <= a.target < n_classes:
        raise UserError(f"--target {a.target} does not exist: {a.model} has {n_classes} classes (0-{n_classes - 1})")
    if a.attack != "fool" and (a.eps is None or a.eps < 1):
        raise UserError("--eps must be >= 1 (8-bit pixel levels) for fgsm and pgd")
    src = model_input(loaded, a.input).to(_device())
    if a.attack == "fgsm":
        out = adv.fgsm(loaded, src, a.eps, target=a.target)
    elif a.attack == "pgd":
        out = adv.pgd(loaded, src, a.eps, target=a.target, steps=a.steps, step=a.step, stop_early=True)
    else:
        out, _ = adv.fool(loaded, src, a.target, max_steps=a.steps)
    write_single_file(os.path.join(a.out, "source.png"), png_bytes(src[0].cpu().numpy()))
    write_single_file(os.path.join(a.out, "adversarial.png"), png_bytes(out[0].cpu().numpy()))
    # judge the files, as a user would: reload, normalize, classify
    src_disk, adv_disk = (read_png(os.path.join(a.out, f)).to(_device()) for f in ("source.png", "adversarial.png"))
    clean, fooled = (int(adv.logits_of(loaded, p).argmax(1)[0]) for p in (src_disk, adv_disk))
    diff = int((adv_disk.int() - src_disk.int()).abs().max())
    names = loaded.class_names or []

    def name(c):
        return f"{c} ({names[c]})" if c < len(names) else str(c)

    ok = fooled == a.target
    write_index(a.out, f"deepscope adversarial: {a.input}",
                f"<p>{a.attack}, eps {a.eps}: source predicted {html.escape(name(clean))}, adversarial predicted "
                f"{html.escape(name(fooled))} (target {html.escape(name(a.target))}: {'reached' if ok else 'NOT reached'}); "
                f"largest pixel difference {diff} (8-bit levels)</p><p><img src='source.png'> <img src='adversarial.png'></p>")
    log(f"done: {a.attack} {'reached' if ok else 'did NOT reach'} target {name(a.target)} (source {name(clean)}, "
        f"adversarial {name(fooled)}), max pixel difference {diff} in {time.time() - t0:.1f} s -> {a.out}/adversarial.png")
    if not ok:
        raise UserError(f"the attack did not reach class {a.target} within eps {a.eps}: "
                        "raise --eps or --steps (the images are written anyway)")


def cmd_robustness(a):
    from deepscope.runner import run_stage

    config = {"attack": a.attack, "eps": parse_floats(a.eps, "eps"), "steps": a.steps, "step": a.step,
              "universal": True if a.universal else None, "universal_images": a.universal_images}
    run = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address}
    run_stage(a.out, "robustness", {k: v for k, v in config.items() if v is not None},
              {k: v for k, v in run.items() if v is not None})


# ---------------------------------------------------------------------------- argparse

def _model_args(p, jobs: bool = True):
    p.add_argument("--model", default="lite0", help="lite0 | torchvision:NAME | timm:NAME")
    p.add_argument("--weights", help="weights file (default: the model's own); 'random' for tests")
    p.add_argument("--seed", type=int, help="random seed (default 0): the same seed gives the same picture")
    if jobs:
        p.add_argument("--batch-size", type=int, help="items per model batch")
        p.add_argument("--actors", type=int, help="CPU model actors when there is no GPU")
        p.add_argument("--address", help="Ray cluster address")
        p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")


def add_commands(sub, Parser):
    p = sub.add_parser("visualize", help="pictures of every unit or class of a layer, by gradient ascent (a Ray job)")
    p.add_argument("model", help="lite0 | torchvision:NAME | timm:NAME")
    p.add_argument("--layer", help="layer of the units (deepscope layers MODEL)")
    p.add_argument("--units", help="all | 0-63 | 3,7")
    p.add_argument("--classes", help="all | 0-63 | 3,7 (classes of the model's output)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, help="ascent steps (default 100)")
    p.add_argument("--size", type=int, help="picture side (default: the model's crop)")
    p.add_argument("--lr", type=float, help="RMS of each step (default fourier 0.1, pixel 0.06)")
    p.add_argument("--l2", type=float, help="L2 weight (default 1e-3)")
    p.add_argument("--blur-every", type=int, help="blur every N steps, 0 off (default 4)")
    p.add_argument("--blur-sigma", type=float, help="blur sigma, pixels (default 0.5)")
    p.add_argument("--value-clip", type=float, help="quantile of small-norm pixels zeroed each step (default 0)")
    p.add_argument("--grad-clip", type=float, help="quantile of small-contribution pixels zeroed each step (default 0)")
    p.add_argument("--jitter", type=int, help="largest random shift, pixels (default 16)")
    p.add_argument("--param", choices=["pixel", "fourier"],
                   help="image parameterization (default fourier: decorrelated colours, 1/f spectrum)")
    p.add_argument("--optimizer", choices=["sgd", "adam"],
                   help="fourier: preconditioned gradient steps (default) or Adam (Lucid's recipe)")
    p.add_argument("--decay", type=float, help="fourier: spectrum scaled by 1/f**decay (default 1)")
    p.add_argument("--pad", type=int, help="transformation robustness: canvas margin, pixels (default 16)")
    p.add_argument("--scale", type=float, help="... random scale 1 +- SCALE each step (default 0.25)")
    p.add_argument("--rotate", type=float, help="... random rotation up to ROTATE degrees each step (default 15)")
    p.add_argument("--position", choices=["mean", "center"], help="unit objective: mean activation or the centre one")
    p.add_argument("--plain", action="store_true", help="no regularizers and no jitter (fooling images)")
    _model_args(p)
    p.set_defaults(fn=cmd_visualize)

    d = sub.add_parser("dream", help="DeepDream of one image, or of a folder as a job")
    d.add_argument("input", help="an image, or a folder / manifest of images")
    d.add_argument("--layer", required=True, help="the layer to amplify (e.g. _blocks.6 of lite0)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--octaves", type=int, help="scales (default 4)")
    d.add_argument("--octave-scale", type=float, help="ratio between scales (default 1.4)")
    d.add_argument("--steps", type=int, help="steps per octave (default 10)")
    d.add_argument("--lr", type=float, help="mean step, pixels in [0, 1] (default 0.01)")
    d.add_argument("--jitter", type=int, help="largest random shift, pixels (default 32)")
    _model_args(d)
    d.set_defaults(fn=cmd_dream)

    i = sub.add_parser("invert", help="feature inversion of one image, or of a folder as a job")
    i.add_argument("input", help="an image, or a folder / manifest of images")
    i.add_argument("--layers", required=True, help="layers to invert from, e.g. _blocks.1,_blocks.10")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--steps", type=int, help="Adam steps (default 200)")
    i.add_argument("--lr", type=float, help="Adam learning rate (default 0.05)")
    i.add_argument("--tv", type=float, help="total variation weight (default 0.5)")
    i.add_argument("--param", choices=["pixel", "fourier"],
                   help="fourier (default): 1/f spectrum, decorrelated colours, random transformations; pixel: Adam on pixels")
    _model_args(i)
    i.set_defaults(fn=cmd_invert)

    v = sub.add_parser("adversarial", help="an adversarial image that stays adversarial as a PNG on disk")
    v.add_argument("input", help="an image")
    v.add_argument("--target", type=int, required=True, help="the class to reach")
    v.add_argument("--eps", type=float, help="largest pixel change, 8-bit levels (fgsm, pgd)")
    v.add_argument("--attack", choices=["pgd", "fgsm", "fool"], default="pgd",
                   help="pgd (default), fgsm, or fool (the unbounded fooling loop)")
    v.add_argument("--steps", type=int, default=20, help="pgd / fool steps (default 20)")
    v.add_argument("--step", type=float, help="pgd step, 8-bit levels (default max(1, 2.5 eps / steps))")
    v.add_argument("--out", required=True, help="output folder: source.png, adversarial.png, index.html")
    _model_args(v, jobs=False)
    v.set_defaults(fn=cmd_adversarial)

    r = sub.add_parser("robustness", help="adversarial robustness of every image of an output folder")
    r.add_argument("out", help="an output folder made by `deepscope features` or `deepscope run`")
    r.add_argument("--attack", choices=["fgsm", "pgd"], default="fgsm")
    r.add_argument("--eps", default="1,2,4,8", help="eps list, 8-bit levels (default 1,2,4,8)")
    r.add_argument("--steps", type=int, help="pgd steps (default 10)")
    r.add_argument("--step", type=float, help="pgd step, 8-bit levels")
    r.add_argument("--universal", action="store_true", help="also compute one universal perturbation")
    r.add_argument("--universal-images", type=int, help="images it is computed from (default 64)")
    r.add_argument("--batch-size", type=int, help="images per model batch")
    r.add_argument("--actors", type=int, help="CPU model actors when there is no GPU")
    r.add_argument("--address", help="Ray cluster address")
    r.set_defaults(fn=cmd_robustness)
