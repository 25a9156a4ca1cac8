"""Benchmark: class pictures that a person and other networks read (issue 14), units visualized per
second for a layer of lite0 batched against one at a time (same targets, steps and seed), and
robustness images/s for FGSM and PGD over a list of eps.

Quality: pictures of 10 ImageNet classes made on lite0 alone, by each recipe, judged by
EfficientNet-Lite1 and -Lite2 (target in their top 5, at full and at half resolution) and by their
high-frequency share (power above a quarter of the sampling rate, grey image at 224 px; photos
1-3%).  --figure FILE writes the pictures, one row per recipe.

    PYTHONPATH=lib .venv/bin/python bench/visualize.py [--quality-only] [--recipes default,pixel,lucid]
        [--classes readme|holdout] [--figure runs/bench-visualize.png] [--units 8] [--steps 10] [--size 128] [--images 8]

Selectivity (issue 25): every unit of each layer in N facets, by each variant of the unit objective;
the share of pictures whose unit's mean activation is >= 3x the layer's mean |activation|, its
median, the facets' mean pairwise pixel correlation, and the units whose picture drives them harder
than their best position in the demo photos (all load-independent; s/pic is not, at load > 1):

    PYTHONPATH=lib .venv/bin/python bench/visualize.py --selectivity _blocks.1,_blocks.4 \
        --variants before,default,contrast3 --facets 4 --steps 20 --size 64

Facet methods (issue 25) on an output folder with the patches stage on the layer; atlas cells:

    PYTHONPATH=lib .venv/bin/python bench/visualize.py --facet-methods runs/atlas --layer _blocks.15 --units 8 \
        --facets 4 --steps 40 --size 96 --figure docs/img/pictures-facets.jpg
    PYTHONPATH=lib .venv/bin/python bench/visualize.py --atlas 64:64:16,64:64:16:cl,32:64:16:cl,32:64:32:cl --cells 32
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepscope.algos import adversarial as adv
from deepscope.algos.ascent import AscentSettings, visualize
from deepscope.models.registry import load_model


CLASSES = [1, 9, 130, 207, 292, 309, 417, 817, 949, 954]  # goldfish ostrich flamingo retriever tiger bee
# balloon sports-car strawberry banana
HOLDOUT = [14, 94, 145, 323, 340, 388, 430, 511, 950, 985]  # not tuned on (issue 25): indigo bunting hummingbird
# king-penguin monarch zebra panda basketball convertible orange daisy
RECIPES = {
    "default": {},  # fourier, decorrelated colours, preconditioned steps, pad/jitter/scale/rotate, L2 3e-5
    "before": dict(l2=1e-3),  # the default before issue 25: L2 1e-3, a grey wash
    "l2-5e-5": dict(l2=5e-5),  # issue 25's tuning: between the two
    "lucid": dict(optimizer="adam", pad=12, jitter=8, scale=0.1, rotate=10.0, lr=0.06),  # Lucid's: Adam
    "pixel": dict(param="pixel", pad=0, scale=0.0, rotate=0.0, jitter=8),  # the defaults before issue 14
}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def quality(loaded, recipes: list[str], steps: int, figure: str | None, classes: list[int] = CLASSES):
    from deepscope.algos.quality import hf_share, mean_saturation, pixel_std, target_ranks
    from deepscope.models.registry import load_model

    n = len(classes)
    judges = [load_model("lite1"), load_model("lite2")]
    print(f"# class pictures of {n} classes on lite0, {steps} steps at 224 px, {torch.get_num_threads()} "
          f"threads; judged by lite1 / lite2 (target in top 5); pixel std and mean saturation (photos 0.14-0.32)")
    print(f"{'recipe':10s} {'s/pic':>6s} {'hf share':>9s} {'std':>5s} {'sat':>5s} {'lite1':>6s} {'lite2':>6s} "
          f"{'lite1 half':>10s} {'lite2 half':>10s} {'both half':>9s}  load average")
    rows = []
    for name in recipes:
        t = time.perf_counter()
        r = visualize(loaded, "logits", classes, AscentSettings(steps=steps, **RECIPES[name]))
        dt = time.perf_counter() - t
        px = torch.from_numpy(r.pixels)
        full = [target_ranks(j, px, classes) < 5 for j in judges]
        half = [target_ranks(j, px, classes, half=True) < 5 for j in judges]
        hf = hf_share(px)
        print(f"{name:10s} {dt / n:6.1f} {float(hf.mean()):5.3f}/{float(hf.max()):.2f} "
              f"{float(pixel_std(px).mean()):5.3f} {float(mean_saturation(px).mean()):5.3f} "
              f"{int(full[0].sum()):4d}/{n} {int(full[1].sum()):4d}/{n} {int(half[0].sum()):8d}/{n} "
              f"{int(half[1].sum()):8d}/{n} {int((half[0] & half[1]).sum()):7d}/{n}  {load()}", flush=True)
        rows.append((name, r.pixels))
    if figure:
        from matplotlib.figure import Figure

        names = loaded.class_names
        fig = Figure(figsize=(1.6 * n, 1.8 * len(rows)), dpi=100, layout="constrained")
        axes = fig.subplots(len(rows), n, squeeze=False)
        for i, (name, pixels) in enumerate(rows):
            for j, c in enumerate(classes):
                ax = axes[i, j]
                ax.imshow(pixels[j].transpose(1, 2, 0))
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(names[c][:16], fontsize=7)
                if j == 0:
                    ax.set_ylabel(name, fontsize=9)
        os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
        fig.savefig(figure)
        print(f"figure: {figure}")


VARIANTS = {
    "before": dict(contrast=0.0, pad=16, scale=0.25, rotate=15.0, jitter=16),  # the unit alone, the class
    #                                                      transformations: the unit default before issue 25's end
    "default": {},
    "contrast1": dict(contrast=1.0),
    "contrast3": dict(contrast=3.0),
    "contrast10": dict(contrast=10.0),
    "steps2x": {"steps*": 2},  # the default at twice the steps
    "size2x": {"size*": 2},  # ... at twice the size
    "nodiv": dict(diversity=0.0),
    "smallpad": {"pad/": 14, "jitter/": 14},  # pad and jitter scaled to the size (16 px at 224 px)
    "notf": dict(pad=0, scale=0.0, rotate=0.0, jitter=2, contrast=0.0),  # no resampling each step, the unit alone
    "adam": dict(optimizer="adam"),  # Adam on the spectrum: lets fine texture grow
    "decay05": dict(decay=0.5),  # a flatter spectrum
    "decay15": dict(decay=1.5),  # a steeper one
    "lighttf": dict(pad=4, scale=0.1, rotate=5.0, jitter=4),  # milder transformations
    "pixel": dict(param="pixel", pad=0, scale=0.0, rotate=0.0, jitter=8),
}


def variant(name: str, steps: int, size: int, facets: int) -> AscentSettings:
    """A variant's settings; names join with '+' (contrast3+steps2x)."""
    v = {}
    for part in name.split("+"):
        v.update(VARIANTS[part] if part in VARIANTS else {"contrast": float(part.removeprefix("contrast"))})
    steps *= v.pop("steps*", 1)
    size *= v.pop("size*", 1)
    for k in ("pad", "jitter"):
        if f"{k}/" in v:
            v[k] = max(1, round(size / v.pop(f"{k}/")))
    return AscentSettings(**{**dict(steps=steps, size=size, facets=facets), **v})


def save_figure(path: str, png: bytes) -> None:
    """PNG bytes to `path` (JPEG when it ends in .jpg: the docs' figures)."""
    import io

    from PIL import Image

    if path.endswith(".jpg"):
        Image.open(io.BytesIO(png)).convert("RGB").save(path, quality=85)
    else:
        Path(path).write_bytes(png)


def best_patches(loaded, layer: str) -> torch.Tensor:
    """(C,) each channel's largest activation over every position of the demo photos (224 px)."""
    from deepscope.io.demo_data import PHOTOS, _photo
    from deepscope.models.taps import forward_with_taps

    photos = torch.cat([torch.from_numpy(loaded.transform.geometry(_photo(n).convert("RGB")))[None] for n in PHOTOS])
    with torch.no_grad():
        _, taps = forward_with_taps(loaded, loaded.transform.normalize(photos), [layer])
    return taps[layer].float().flatten(2).amax(dim=(0, 2)).cpu()


def selectivity_table(loaded, layers: list[str], variants: list[str], facets: int, steps: int, size: int,
                      figure: str | None):
    from deepscope.algos.ascent import facet_correlation
    from deepscope.models.taps import layer_width

    print(f"# unit pictures of whole layers of lite0, {facets} facets, {steps} steps at {size} px, "
          f"{torch.get_num_threads()} threads; selectivity = own mean activation / layer's mean |activation|")
    print(f"{'layer':11s} {'variant':11s} {'pics':>5s} {'>=3x':>6s} {'median':>7s} {'facet corr':>10s} "
          f"{'> best patch':>12s} {'s/pic':>6s}  load average")
    shown = []
    for layer in layers:
        units = list(range(layer_width(loaded, layer)))
        best = best_patches(loaded, layer)
        for name in variants:
            s = variant(name, steps, size, facets)
            t = time.perf_counter()
            r = visualize(loaded, layer, units, s, kind="unit")
            dt = time.perf_counter() - t
            sel = np.asarray(r.selectivity)
            corr = float(np.nanmean(facet_correlation(r.pixels, facets))) if facets > 1 else float("nan")
            peak = torch.from_numpy(np.asarray(r.peak)).view(len(units), facets).amax(1)
            beats = int((peak > best[units]).sum())
            print(f"{layer:11s} {name:11s} {len(sel):5d} {float((sel >= 3).mean()):6.0%} {float(np.median(sel)):7.2f} "
                  f"{corr:10.3f} {beats:6d}/{len(units):<5d} {dt / len(sel):6.2f}  {load()}", flush=True)
            shown.append((f"{layer} {name}", r.pixels[:8 * facets]))
    if figure:
        from deepscope.report.figures import grid_png

        pics = [p for _, pixels in shown for p in pixels]
        caps = [f"{label}" if i == 0 else "" for label, pixels in shown for i in range(len(pixels))]
        save_figure(figure, grid_png(pics, caps, cols=8 * facets))
        print(f"figure: {figure}")


def atlas_cells(loaded, cells: int, settings: list[str], layer: str = "_blocks.15"):
    """Seconds per atlas cell of the inversion (algos/invert.py: invert_vectors) by steps, size and
    cells per batch, and its loss at the start and the end (the cell's picture against its mean
    vector), on `cells` mean vectors of random positions of the demo photos."""
    from deepscope.algos.invert import InvertSettings, _layer, invert_vectors
    from deepscope.io.demo_data import PHOTOS, _photo

    photos = torch.cat([torch.from_numpy(loaded.transform.geometry(_photo(n).convert("RGB")))[None] for n in PHOTOS])
    with torch.no_grad():
        act = _layer(loaded, photos.float() / 255, layer, None).flatten(2).transpose(1, 2).reshape(-1, _width(loaded, layer))
    g = torch.Generator().manual_seed(0)
    vectors = torch.stack([act[torch.randperm(len(act), generator=g)[:8]].mean(0) for _ in range(cells)])
    print(f"# atlas cells: {cells} mean vectors of 8 random positions of {layer} on the demo photos, "
          f"{torch.get_num_threads()} threads; loss = mean over the picture's map of ||a - v||^2 / ||v||^2")
    print(f"{'steps':>5s} {'size':>4s} {'batch':>5s} {'cl':>2s} {'lr':>4s} {'s/cell':>7s} {'loss start':>10s} {'loss end':>8s}  load average")
    plain = loaded.module
    for spec in settings:  # STEPS:SIZE:BATCH[:cl]
        steps, size, batch = (int(v) for v in spec.split(":")[:3])
        cl = ":cl" in spec
        lr = float(spec.split(":lr")[1]) if ":lr" in spec else 0.1
        loaded.module = plain.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        t = time.perf_counter()
        out = [invert_vectors(loaded, vectors[i:i + batch], layer, size, InvertSettings(steps=steps, tv=0.05, lr_fourier=lr),
                              seeds=list(range(i, min(i + batch, cells)))) for i in range(0, cells, batch)]
        dt = time.perf_counter() - t
        start, end = torch.cat([o[1] for o in out]), torch.cat([o[2] for o in out])
        print(f"{steps:5d} {size:4d} {batch:5d} {'cl' if cl else '':>2s} {lr:4.2f} {dt / cells:7.3f} {float(start.mean()):10.3f} {float(end.mean()):8.3f}  "
              f"{load()}", flush=True)


def _width(loaded, layer):
    from deepscope.models.taps import layer_width

    return layer_width(loaded, layer)


def facet_methods(loaded, folder: str, layer: str, n_units: int, facets: int, steps: int, size: int,
                  figure: str | None):
    """Facets by the Gram-matrix diversity term (random starts) against facets started from the
    means of clusters of each unit's top patches (Nguyen et al. 2016), on an output folder with the
    patches stage on `layer`: the facets' pixel correlation, selectivity, and the units whose picture
    beats their best patch; the figure: per method a row per unit (the starts first for clusters)."""
    import io

    import pyarrow.parquet as pq

    from deepscope.algos.ascent import facet_correlation
    from deepscope.io.images import file_name
    from deepscope.io.store import Store
    from deepscope.stages.visualize import unit_cluster_starts

    data = Store(folder)
    top = pq.read_table(io.BytesIO(data.read_bytes(f"patches/top-{file_name(layer)}.parquet"))).to_pylist()
    units = sorted({r["channel"] for r in top if r["layer"] == layer})[:n_units]
    best = {u: max(r["score"] for r in top if r["channel"] == u) for u in units}
    starts = unit_cluster_starts(data, loaded, layer, units, facets, size)
    start_list = [starts.get((u, f)) for u in units for f in range(facets)]
    print(f"# facets of {len(units)} units of {layer} ({folder}), {facets} facets, {steps} steps at {size} px, "
          f"{torch.get_num_threads()} threads; {sum(v is not None for v in start_list)} cluster starts")
    print(f"{'method':22s} {'facet corr':>10s} {'>=3x':>6s} {'median':>7s} {'> best patch':>12s} {'s/pic':>6s}  load average")
    shown = []
    for name, div, st in (("diversity", 0.5, None), ("clusters", 0.0, start_list), ("clusters+diversity", 0.5, start_list)):
        t = time.perf_counter()
        r = visualize(loaded, layer, units, AscentSettings(steps=steps, size=size, facets=facets, diversity=div),
                      kind="unit", starts=st)
        dt = time.perf_counter() - t
        sel = np.asarray(r.selectivity)
        peak = np.asarray(r.peak).reshape(len(units), facets).max(1)
        beats = sum(int(p > best[u]) for p, u in zip(peak, units))
        print(f"{name:22s} {float(np.nanmean(facet_correlation(r.pixels, facets))):10.3f} {float((sel >= 3).mean()):6.0%} "
              f"{float(np.median(sel)):7.2f} {beats:6d}/{len(units):<5d} {dt / len(sel):6.2f}  {load()}", flush=True)
        shown.append((name, r.pixels))
    if figure:
        from deepscope.report.figures import grid_png

        grey = np.full((3, size, size), 0.5)
        pics, caps = [], []
        for i, u in enumerate(units):
            row = [(np.asarray(s if s is not None else grey) * 255).round().astype(np.uint8)
                   for s in start_list[i * facets:(i + 1) * facets]]
            pics += row
            caps += [f"unit {u} cluster start {f}" for f in range(facets)]
            for name, pixels in shown:
                pics += list(pixels[i * facets:(i + 1) * facets])
                caps += [f"{name}" if f == 0 else "" for f in range(facets)]
        save_figure(figure, grid_png(pics, caps, cols=facets * 4))
        print(f"figure: {figure}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="default,pixel,lucid")
    ap.add_argument("--quality-steps", type=int, default=100)
    ap.add_argument("--figure", help="write the quality pictures here (PNG)")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--classes", default="readme", help="readme (the 10 tuned on) | holdout (10 others) | 1,9,...")
    ap.add_argument("--layer", default="_blocks.6")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--eps", default="1,2,4,8")
    ap.add_argument("--selectivity", help="layers (comma-separated): the selectivity table only")
    ap.add_argument("--variants", default="before,default", help=f"with --selectivity: {','.join(VARIANTS)}, contrastK")
    ap.add_argument("--facets", type=int, default=4)
    ap.add_argument("--facet-methods", metavar="FOLDER",
                    help="an output folder with the patches stage on --layer: diversity against cluster-started facets")
    ap.add_argument("--atlas", help="STEPS:SIZE:BATCH[:cl][:lrX],... : seconds per atlas cell of each inversion "
                                    "setting only (cl: the model in channels_last; lrX: the step, default 0.1)")
    ap.add_argument("--cells", type=int, default=32, help="with --atlas: cells inverted per setting")
    a = ap.parse_args()
    loaded = load_model("lite0")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    loaded.module.to(device)
    if a.facet_methods:
        facet_methods(loaded, a.facet_methods, a.layer, a.units, a.facets, a.steps, a.size, a.figure)
        return
    if a.atlas:
        atlas_cells(loaded, a.cells, a.atlas.split(","))
        return
    if a.selectivity:
        selectivity_table(loaded, a.selectivity.split(","), a.variants.split(","), a.facets, a.steps, a.size,
                          a.figure)
        return
    if a.recipes:
        classes = {"readme": CLASSES, "holdout": HOLDOUT}.get(a.classes) or [int(c) for c in a.classes.split(",")]
        quality(loaded, [r for r in a.recipes.split(",") if r], a.quality_steps, a.figure, classes)
    if a.quality_only:
        return
    s = AscentSettings(steps=a.steps, size=a.size)
    units = list(range(a.units))
    visualize(loaded, a.layer, units[:1], AscentSettings(steps=1, size=a.size), kind="unit")  # warm-up

    t = time.perf_counter()
    batched = visualize(loaded, a.layer, units, s, kind="unit")
    t_batch = time.perf_counter() - t
    t = time.perf_counter()
    singles = [visualize(loaded, a.layer, [u], s, kind="unit") for u in units]
    t_one = time.perf_counter() - t
    same = max(int(np.abs(b.astype(int) - o.pixels[0].astype(int)).max()) for b, o in zip(batched.pixels, singles))

    print(f"# lite0 {a.layer}, {a.units} units, {a.steps} steps at {a.size}px, {device}, {torch.get_num_threads()} threads")
    print(f"{'method':34s} {'seconds':>8s} {'units/s':>8s}")
    print(f"{'one at a time (baseline)':34s} {t_one:8.1f} {a.units / t_one:8.2f}")
    print(f"{'batched':34s} {t_batch:8.1f} {a.units / t_batch:8.2f}   speed-up x{t_one / t_batch:.2f}, "
          f"largest pixel difference {same}")

    from deepscope.io.demo_data import make_demo_data
    from deepscope.models.transform import model_input

    with tempfile.TemporaryDirectory() as d:
        make_demo_data(d, per_photo=max(1, a.images // 6 + 1))
        paths = sorted(str(p) for p in Path(d).rglob("*.jpg"))[:a.images]
        x = torch.cat([model_input(loaded, p) for p in paths]).to(device)
    eps = [float(e) for e in a.eps.split(",")]
    clean = adv.logits_of(loaded, x).argmax(1)
    print(f"\n# robustness: {len(x)} images at {x.shape[-1]}px, eps {a.eps} (smallest eps that changes each prediction)")
    print(f"{'attack':34s} {'seconds':>8s} {'images/s':>8s}  changed at each eps")
    for name, attack in (("fgsm", lambda p, e: adv.fgsm(loaded, p, e)),
                         ("pgd 10 steps, early stop", lambda p, e: adv.pgd(loaded, p, e, steps=10, stop_early=True))):
        t = time.perf_counter()
        min_eps = torch.full((len(x),), float("nan"))
        for e in eps:
            idx = torch.isnan(min_eps).nonzero()[:, 0]
            if len(idx) == 0:
                break
            pred = adv.logits_of(loaded, attack(x[idx], e)).argmax(1).cpu()
            min_eps[idx[pred != clean[idx].cpu()]] = e
        dt = time.perf_counter() - t
        shares = " ".join(f"{float((min_eps <= e).float().mean()):.0%}" for e in eps)
        print(f"{name:34s} {dt:8.1f} {len(x) / dt:8.2f}  {shares}")


if __name__ == "__main__":
    main()
