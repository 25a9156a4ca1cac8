"""Saliency: `saliency OUT`."""
from __future__ import annotations

from deepscope.commands.common import run_options, run_section
from deepscope.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("saliency", help="saliency maps of every image of an output folder, and their dataset statistics")
    p.add_argument("out", help="an output folder made by `deepscope features` or `deepscope run`")
    p.add_argument("--method", default="backprop",
                   help="backprop | guided | integrated_gradients | occlusion | gradcam, or several: backprop,gradcam")
    p.add_argument("--target", default="pred", help="pred (default) | label | a class index")
    p.add_argument("--label", action="append", default=[], metavar="LABEL=CLASS",
                   help="map a dataset label to a class index or name (repeatable), for --target label")
    p.add_argument("--layer", help="gradcam layer: MODULE, MODULE@K (K-th call of a module that runs several times) "
                                  "or MODULE:input (default: the last spatial module call; lite0: _swish@2)")
    p.add_argument("--smoothgrad", type=int, help="SmoothGrad samples over the method (default 0: off)")
    p.add_argument("--noise", type=float, help="SmoothGrad noise, share of the input range (default 0.15)")
    p.add_argument("--window", type=int, help="occlusion window (default 15)")
    p.add_argument("--stride", type=int, help="occlusion stride (default 8)")
    p.add_argument("--fill", help="occlusion fill / IG baseline: mean (default) or a grey level in [0, 1]")
    p.add_argument("--steps", type=int, help="integrated gradients Gauss-Legendre steps (default 50)")
    p.add_argument("--ig-tolerance", type=float, metavar="T",
                   help="rerun the images whose completeness error ig_delta exceeds T at 2x, 4x ... steps "
                        "(default 0.05; 0: fixed steps)")
    p.add_argument("--ig-max-steps", type=int, help="cap of those reruns (default 800)")
    p.add_argument("--map-size", type=int, help="stored map side (default 56)")
    p.add_argument("--no-grabcut", action="store_true", help="skip the GrabCut masks")
    p.add_argument("--objects", help="csv/parquet with id and box (x0,y0,x1,y1) and/or mask columns")
    run_options(p, precision=False)
    p.set_defaults(fn="deepscope.commands.saliency:cmd_saliency")


def cmd_saliency(a):
    from deepscope.runner import run_stage

    labels = {}
    for item in a.label:
        lab, sep, cls = item.partition("=")
        if not sep or not lab or not cls:
            raise UserError(f"--label {item!r}: write LABEL=CLASS (a class index or name)")
        labels[lab] = int(cls) if cls.strip().isdigit() else cls
    fill = a.fill
    if fill not in (None, "mean"):
        try:
            fill = float(fill)
        except ValueError:
            raise UserError(f"--fill {a.fill!r}: use mean or a grey level in [0, 1]") from None
    config = {"method": a.method, "target": a.target, "labels": labels, "layer": a.layer, "smoothgrad": a.smoothgrad,
              "noise": a.noise, "window": a.window, "stride": a.stride, "fill": fill, "steps": a.steps,
              "ig_tolerance": a.ig_tolerance, "ig_max_steps": a.ig_max_steps,
              "map_size": a.map_size, "grabcut": False if a.no_grabcut else None, "objects": a.objects}
    run_stage(a.out, "saliency", {k: v for k, v in config.items() if v not in (None, {})}, run_section(a))
