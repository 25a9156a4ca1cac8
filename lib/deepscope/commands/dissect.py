"""Network dissection: `dissect OUT`, `concept-data DIR`."""
from __future__ import annotations

from deepscope.commands.common import run_options, run_section
from deepscope.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("dissect", help="network dissection: which unit of a layer detects which concept")
    p.add_argument("out", help="output folder: an existing one (its model is used) or a new one")
    p.add_argument("--layer", required=True, help="a layer with a (C, H, W) output (see `deepscope layers MODEL`)")
    p.add_argument("--concepts", required=True, help="Broden-format concept dataset (see `deepscope concept-data`)")
    p.add_argument("--quantile", type=float, help="top share of each unit's activations (default 0.005)")
    p.add_argument("--iou-threshold", type=float, help="IoU for a detector (default 0.04)")
    p.add_argument("--top-images", type=int, help="images per unit in the table and report (default 4)")
    p.add_argument("--show-units", type=int, help="units drawn in the report (default 24)")
    p.add_argument("--model", help="for a new folder: lite0 (default) | torchvision:NAME | timm:NAME | torchscript:FILE")
    p.add_argument("--weights", help="for a new folder: weights file; 'random' for tests")
    run_options(p, precision=False)
    p.set_defaults(fn="deepscope.commands.dissect:cmd_dissect")

    c = sub.add_parser("concept-data", help="write a synthetic Broden-format concept dataset")
    c.add_argument("dir")
    c.add_argument("--n", type=int, default=200, help="images (default 200)")
    c.add_argument("--size", type=int, default=128, help="image side in px (default 128; masks are half)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn="deepscope.commands.dissect:cmd_concept_data")


def cmd_dissect(a):
    from deepscope import job as jobmod
    from deepscope.io.concepts import Concepts
    from deepscope.io.store import Store
    from deepscope.runner import run, run_stage

    config = {"layer": a.layer, "concepts": a.concepts, "quantile": a.quantile, "iou_threshold": a.iou_threshold,
              "top_images": a.top_images, "show_units": a.show_units}
    config = {k: v for k, v in config.items() if v is not None}
    overrides = run_section(a)
    concepts = Concepts.open(a.concepts)  # a bad folder is one line, before any work
    store = Store(a.out)
    if store.manifest.get("spec"):
        spec = store.manifest["spec"]["model"]
        if (a.model and a.model != spec.get("name")) or (a.weights and a.weights != spec.get("weights")):
            raise UserError(f"{a.out} was made with model {spec.get('name')} (weights {spec.get('weights')}); "
                            "drop --model/--weights or use another output folder")
        run_stage(a.out, "dissect", config, overrides)
        return
    # a new folder: its dataset is the concept images, listed in a manifest the folder keeps
    listing = concepts.items()[["id", "path"]].to_csv(index=False)
    manifest = store.write_file("dissection/images.csv", listing)
    run(jobmod.validate({"out": a.out, "dataset": {"source": str(manifest)},
                         "model": {"name": a.model or "lite0", "weights": a.weights},
                         "run": overrides, "dissect": config}, "arguments"))


def cmd_concept_data(a):
    import time

    from deepscope.io.concepts import make_concept_data
    from deepscope.executor import log

    t0 = time.time()
    n = make_concept_data(a.dir, n=a.n, size=a.size, seed=a.seed)
    log(f"concept-data: wrote {n} images with colour, object, texture masks and scene labels to {a.dir} "
        f"in {time.time() - t0:.1f} s ({n / max(time.time() - t0, 1e-9):.0f} images/s)")
