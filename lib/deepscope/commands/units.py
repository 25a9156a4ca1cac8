"""What units look for: `patches` and `atlas` (stages added to an output folder), `filters` and
`activations` (one-model figures, report/units.py)."""
from __future__ import annotations

from deepscope.commands.common import run_options, run_section
from deepscope.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("patches", help="each channel's maximally activating patches, added to an output folder")
    p.add_argument("out", help="an output folder made by `deepscope features` or `deepscope run`")
    p.add_argument("--layer", action="append", required=True, help="layer (module name or alias); repeat for several")
    p.add_argument("--k", type=int, default=16, help="images per channel (default 16)")
    p.add_argument("--channels", help="e.g. 0-15,32 (default: every channel)")
    p.add_argument("--max-side", type=int, default=256, help="longest side of a stored patch, px (0: full size)")
    p.add_argument("--tile", type=int, default=64, help="grid cell side, px")
    run_options(p, precision=False)
    p.set_defaults(fn="deepscope.commands.units:cmd_patches")

    t = sub.add_parser("atlas", help="an activation atlas of a layer over an output folder's dataset")
    t.add_argument("out", help="an output folder made by `deepscope features` or `deepscope run`")
    t.add_argument("--layer", required=True, help="a layer with a spatial map, e.g. _blocks.15")
    t.add_argument("--grid", type=int, help="cells per side (default 20)")
    t.add_argument("--per-image", type=int, help="activation vectors sampled per image (default 16)")
    t.add_argument("--layout", choices=["tsne", "pca"], help="2-D layout (default tsne)")
    t.add_argument("--min-count", type=int, help="cells with fewer vectors stay empty (default 3)")
    t.add_argument("--steps", type=int, help="inversion steps per cell (default 64)")
    t.add_argument("--size", type=int, help="a cell's picture side, px (default 64)")
    t.add_argument("--filter-class", type=int, help="also an atlas of the vectors that most support this class")
    run_options(t, precision=False)
    t.set_defaults(fn="deepscope.commands.units:cmd_atlas")

    f = sub.add_parser("filters", help="a conv layer's weights as an image grid (default: the first layer)")
    f.add_argument("model", help="lite0 | torchvision:NAME | timm:NAME")
    f.add_argument("--layer", help="a convolution module (default: the first)")
    f.add_argument("--weights")
    f.add_argument("--out", required=True, help="PNG file")
    f.add_argument("--max-filters", type=int, default=64)
    f.add_argument("--max-inputs", type=int, default=32, help="input channels shown per filter (deeper layers)")
    f.set_defaults(fn="deepscope.commands.units:cmd_filters")

    v = sub.add_parser("activations", help="one image's feature maps at a layer, and its strongest channels")
    v.add_argument("model")
    v.add_argument("image")
    v.add_argument("--layer", required=True)
    v.add_argument("--weights")
    v.add_argument("--out", required=True, help="PNG file")
    v.add_argument("--top", type=int, default=10, help="strongest channels to list")
    v.set_defaults(fn="deepscope.commands.units:cmd_activations")


def cmd_patches(a):
    from deepscope.io.ranges import parse_channels
    from deepscope.job import load_spec
    from deepscope.runner import run_stage
    from deepscope.stages.patches import Patches

    if a.k < 1:
        raise UserError("--k must be at least 1")
    config = {"layers": a.layer, "k": a.k, "max_side": a.max_side, "tile": a.tile}
    channels = parse_channels(a.channels)
    if channels is not None:
        config["channels"] = channels
    # names checked first: a folder that already has patches would otherwise only say its settings differ
    Patches(Patches.Config.model_validate(config), load_spec(a.out)).measure(receptive_fields=False)
    run_stage(a.out, "patches", config, run_section(a))


def cmd_atlas(a):
    from deepscope.runner import run_stage

    config = {"layer": a.layer, "grid": a.grid, "per_image": a.per_image, "layout": a.layout, "min_count": a.min_count,
              "steps": a.steps, "size": a.size, "filter_class": a.filter_class}
    run_stage(a.out, "atlas", {k: v for k, v in config.items() if v is not None}, run_section(a))


def _write(path: str, data: bytes) -> None:
    from deepscope.io.location import write_single_file

    write_single_file(path, data)


def cmd_filters(a):
    from deepscope.models.registry import load_model
    from deepscope.report.figures import to_png_bytes
    from deepscope.report.units import conv_weight, filters_figure

    if a.max_filters < 1 or a.max_inputs < 1:
        raise UserError("--max-filters and --max-inputs must be at least 1")
    loaded = load_model(a.model, a.weights)
    name, w = conv_weight(loaded, a.layer)
    _write(a.out, to_png_bytes(filters_figure(w, a.max_filters, a.max_inputs)))
    what = "RGB" if w.shape[1] == 3 else f"grey, first {min(w.shape[0], a.max_filters)} filters x {min(w.shape[1], a.max_inputs)} inputs"
    print(f"{name}: weights {'x'.join(map(str, w.shape))} ({what}) -> {a.out}")


def cmd_activations(a):
    from deepscope.models.registry import load_model
    from deepscope.models.transform import image_input
    from deepscope.report.figures import to_png_bytes
    from deepscope.report.units import activations_figure, feature_maps, strongest

    loaded = load_model(a.model, a.weights)
    maps = feature_maps(loaded, image_input(loaded, a.image), a.layer)
    _write(a.out, to_png_bytes(activations_figure(maps)))
    print(f"{a.layer}: {len(maps)} maps of {maps.shape[1]}x{maps.shape[2]} -> {a.out}")
    print(f"{'channel':>7} {'max':>10} {'mean':>10}  at (row, col)")
    for c, mx, mean, i, j in strongest(maps, a.top):
        print(f"{c:>7} {mx:>10.4f} {mean:>10.4f}  ({i}, {j})")
