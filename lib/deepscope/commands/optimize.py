"""Seeing by optimization: `visualize`, `dream`, `invert`, `adversarial`, `robustness`."""
from __future__ import annotations

from deepscope.commands.common import model_options, run_options
from deepscope.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("visualize", help="pictures of every unit or class of a layer, by gradient ascent (a Ray job)")
    p.add_argument("model", help="lite0 | torchvision:NAME | timm:NAME")
    p.add_argument("--layer", help="layer of the units (deepscope layers MODEL)")
    p.add_argument("--units", help="all | 0-63 | 3,7")
    p.add_argument("--classes", help="all | 0-63 | 3,7 (classes of the model's output)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, help="ascent steps (default 100)")
    p.add_argument("--size", type=int, help="picture side (default: the model's crop)")
    p.add_argument("--lr", type=float, help="RMS of each step (default fourier 0.1, pixel 0.06)")
    p.add_argument("--l2", type=float, help="L2 weight (default pixel 1e-3, fourier 3e-5)")
    p.add_argument("--blur-every", type=int, help="blur every N steps, 0 off (default 4)")
    p.add_argument("--blur-sigma", type=float, help="blur sigma, pixels (default 0.5)")
    p.add_argument("--value-clip", type=float, help="quantile of small-norm pixels zeroed each step (default 0)")
    p.add_argument("--grad-clip", type=float, help="quantile of small-contribution pixels zeroed each step (default 0)")
    p.add_argument("--jitter", type=int, help="largest random shift, pixels (default classes 16, units 2)")
    p.add_argument("--param", choices=["pixel", "fourier"],
                   help="image parameterization (default fourier: decorrelated colours, 1/f spectrum)")
    p.add_argument("--optimizer", choices=["sgd", "adam"],
                   help="fourier: preconditioned gradient steps (default) or Adam (Lucid's recipe)")
    p.add_argument("--decay", type=float, help="fourier: spectrum scaled by 1/f**decay (default 1)")
    p.add_argument("--pad", type=int, help="transformation robustness: canvas margin, pixels (default classes 16, units 0)")
    p.add_argument("--scale", type=float, help="... random scale 1 +- SCALE each step (default classes 0.25, units 0)")
    p.add_argument("--rotate", type=float, help="... random rotation up to ROTATE degrees each step (default classes 15, units 0)")
    p.add_argument("--position", choices=["mean", "center"], help="unit objective: mean activation or the centre one")
    p.add_argument("--facets", type=int, help="pictures per unit or class that differ from each other (default 1)")
    p.add_argument("--diversity", type=float,
                   help="with --facets: weight of the facets' Gram-matrix similarity, in units of the score (default 0.5)")
    p.add_argument("--facet-method", choices=["diversity", "clusters"],
                   help="with --facets: diversity (default: Gram-matrix term, random starts) or clusters (each facet "
                        "starts from the mean of a cluster of the unit's top patches: needs --patches)")
    p.add_argument("--patches", metavar="FOLDER",
                   help="an output folder with the patches stage on --layer (and dissection): the units are shown "
                        "beside their top patches, and --facet-method clusters starts from them")
    p.add_argument("--contrast", type=float,
                   help="units: weight of the layer's mean |activation| subtracted from the unit's (default 1; 0: the unit alone)")
    p.add_argument("--plain", action="store_true", help="no regularizers and no jitter (fooling images)")
    model_options(p, seed=True)
    run_options(p)
    p.set_defaults(fn="deepscope.commands.optimize:cmd_visualize")

    d = sub.add_parser("dream", help="DeepDream of one image, or of a folder as a job")
    d.add_argument("input", help="an image, or a folder / manifest of images")
    d.add_argument("--layer", required=True, help="the layer to amplify (e.g. _blocks.6 of lite0)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--octaves", type=int, help="scales (default 4)")
    d.add_argument("--octave-scale", type=float, help="ratio between scales (default 1.4)")
    d.add_argument("--steps", type=int, help="steps per octave (default 10)")
    d.add_argument("--lr", type=float, help="mean step, pixels in [0, 1] (default 0.01)")
    d.add_argument("--jitter", type=int, help="largest random shift, pixels (default 32)")
    model_options(d, seed=True)
    run_options(d)
    d.set_defaults(fn="deepscope.commands.optimize:cmd_dream")

    i = sub.add_parser("invert", help="feature inversion of one image, or of a folder as a job")
    i.add_argument("input", help="an image, or a folder / manifest of images")
    i.add_argument("--layers", required=True, help="layers to invert from, e.g. _blocks.1,_blocks.10")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--steps", type=int, help="Adam steps (default 200)")
    i.add_argument("--lr", type=float, help="Adam learning rate (default 0.05)")
    i.add_argument("--tv", type=float, help="total variation weight (default 0.5)")
    i.add_argument("--param", choices=["pixel", "fourier"],
                   help="fourier (default): 1/f spectrum, decorrelated colours, random transformations; pixel: Adam on pixels")
    model_options(i, seed=True)
    run_options(i)
    i.set_defaults(fn="deepscope.commands.optimize:cmd_invert")

    v = sub.add_parser("adversarial", help="an adversarial image that stays adversarial as a PNG on disk")
    v.add_argument("input", help="an image")
    v.add_argument("--target", type=int, required=True, help="the class to reach")
    v.add_argument("--eps", type=float, help="largest pixel change, 8-bit levels (fgsm, pgd)")
    v.add_argument("--attack", choices=["pgd", "fgsm", "fool"], default="pgd",
                   help="pgd (default), fgsm, or fool (the unbounded fooling loop)")
    v.add_argument("--steps", type=int, default=20, help="pgd / fool steps (default 20)")
    v.add_argument("--step", type=float, help="pgd step, 8-bit levels (default max(1, 2.5 eps / steps))")
    v.add_argument("--out", required=True, help="output folder: source.png, adversarial.png, index.html")
    model_options(v, seed=True)
    v.set_defaults(fn="deepscope.commands.optimize:cmd_adversarial")

    r = sub.add_parser("robustness", help="adversarial robustness of every image of an output folder")
    r.add_argument("out", help="an output folder made by `deepscope features` or `deepscope run`")
    r.add_argument("--attack", choices=["fgsm", "pgd"], default="fgsm")
    r.add_argument("--eps", default="1,2,4,8", help="eps list, 8-bit levels (default 1,2,4,8)")
    r.add_argument("--steps", type=int, help="pgd steps (default 10)")
    r.add_argument("--step", type=float, help="pgd step, 8-bit levels")
    r.add_argument("--universal", action="store_true", help="also compute one universal perturbation")
    r.add_argument("--universal-images", type=int, help="images it is computed from (default 64)")
    run_options(r, precision=False)
    r.set_defaults(fn="deepscope.commands.optimize:cmd_robustness")


def cmd_visualize(a):
    from deepscope.executor import executor_for
    from deepscope.io.ranges import parse_targets
    from deepscope.io.location import is_remote
    from deepscope.io.store import MANIFEST, Store
    from deepscope.models.taps import layer_width
    from deepscope.report.html import write_index
    from deepscope.report.visualize import visualize_html
    from deepscope.runner import log
    from deepscope.stages.visualize import visualize_job

    if bool(a.units) == bool(a.classes):
        raise UserError("visualize: give either --units or --classes")
    data = None  # checked before the model loads: a wrong folder is one line at once
    if a.patches:
        from pathlib import Path

        if not is_remote(a.patches) and not (Path(a.patches) / MANIFEST).exists():
            raise UserError(f"--patches {a.patches}: not a deepscope output folder")
        data = Store(a.patches)
    if a.facet_method == "clusters" and not a.patches:
        raise UserError("--facet-method clusters needs --patches FOLDER (an output with the patches stage on the layer)")
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
                                      position=a.position, size=a.size, seed=a.seed, facets=a.facets,
                                      diversity=a.diversity, facet_method=a.facet_method,
                                      contrast=a.contrast).items() if v is not None}
    if not 1 <= settings.get("facets", 1) <= 16:
        raise UserError("--facets must be between 1 and 16")
    if a.plain:
        from deepscope.algos.ascent import PLAIN
        settings = {**PLAIN, **settings}
    store = Store(a.out)
    store.open({"model": a.model, "weights": a.weights, "precision": a.precision or "fp32"})
    store.clean_temporaries()
    store.metadata = {"deepscope.model": a.model, "deepscope.weights": loaded.weights,
                      "deepscope.random_weights": str(loaded.random_weights).lower()}
    run = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address, "executor": a.executor,
           "precision": a.precision or "fp32"}
    executor = executor_for(run, store)
    try:
        s = visualize_job(store, a.model, a.weights, layer, kind, targets, settings, run, log, executor, data)
    finally:
        executor.close()
    write_index(a.out, f"deepscope visualize: {a.model} {layer}", visualize_html(s))


def _inputs(path: str) -> bool:
    """True: one image (run in-process); False: a folder or manifest (run as a job)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir() or path.lower().endswith((".csv", ".parquet")):
        return False
    if not p.exists() and "://" not in path:
        raise UserError(f"no such image or folder: {path}")
    return True


def _job(a, stage: str, config: dict) -> None:
    from deepscope import job as jobmod
    from deepscope.runner import run

    runcfg = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address, "executor": a.executor,
              "precision": a.precision}
    run(jobmod.validate({"out": a.out, "dataset": {"source": a.input},
                         "model": {"name": a.model, "weights": a.weights},
                         "run": {k: v for k, v in runcfg.items() if v is not None},
                         stage: {k: v for k, v in config.items() if v is not None}}, "arguments"))


def cmd_dream(a):
    import torch
    import os
    import html
    import time
    from deepscope.io.images import item_seed, png_bytes
    from deepscope.models.transform import model_input
    from deepscope.report.html import write_index

    from deepscope.algos.dream import DreamSettings, dream, dream_energy
    from deepscope.io.location import write_single_file
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
    import torch
    import os
    import re
    import html
    import time
    from deepscope.io.images import item_seed, png_bytes
    from deepscope.models.transform import model_input
    from deepscope.report.html import write_index

    from deepscope.algos.invert import InvertSettings, invert
    from deepscope.io.location import write_single_file
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


def cmd_adversarial(a):
    import os
    import html
    import time
    from deepscope.io.images import png_bytes, read_png
    from deepscope.models.taps import layer_width
    from deepscope.models.transform import model_input
    from deepscope.report.html import write_index

    from deepscope.algos import adversarial as adv
    from deepscope.io.location import write_single_file
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
    from deepscope.io.ranges import parse_floats
    from deepscope.runner import run_stage

    config = {"attack": a.attack, "eps": parse_floats(a.eps, "eps"), "steps": a.steps, "step": a.step,
              "universal": True if a.universal else None, "universal_images": a.universal_images}
    run = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address, "executor": a.executor}
    run_stage(a.out, "robustness", {k: v for k, v in config.items() if v is not None},
              {k: v for k, v in run.items() if v is not None})


def _device():
    from deepscope.models.registry import best_device
    return best_device()


def _load(model: str, weights: str | None):
    from deepscope.models.registry import load_model

    loaded = load_model(model, weights)
    loaded.module.to(_device())
    return loaded
