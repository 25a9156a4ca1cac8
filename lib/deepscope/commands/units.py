"""What units look for: `patches`, `filters`, `activations`."""
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

    f = sub.add_parser("filters", help="a conv layer's weights as an image grid (default: the first layer)")
    f.add_argument("model", help="lite0 | torchvision:NAME | timm:NAME")
    f.add_argument("--layer", help="a convolution module (default: the first)")
    f.add_argument("--weights")
    f.add_argument("--out", required=True, help="PNG file")
    f.add_argument("--max-filters", type=int, default=64)
    f.add_argument("--max-inputs", type=int, default=32, help="input channels shown per filter (deeper layers)")
    f.set_defaults(fn="deepscope.visualize_units:cmd_filters")

    v = sub.add_parser("activations", help="one image's feature maps at a layer, and its strongest channels")
    v.add_argument("model")
    v.add_argument("image")
    v.add_argument("--layer", required=True)
    v.add_argument("--weights")
    v.add_argument("--out", required=True, help="PNG file")
    v.add_argument("--top", type=int, default=10, help="strongest channels to list")
    v.set_defaults(fn="deepscope.visualize_units:cmd_activations")


def cmd_patches(a):
    from deepscope.job import load_spec
    from deepscope.runner import run_stage
    from deepscope.stages.patches import Patches
    from deepscope.visualize_units import parse_channels

    if a.k < 1:
        raise UserError("--k must be at least 1")
    config = {"layers": a.layer, "k": a.k, "max_side": a.max_side, "tile": a.tile}
    channels = parse_channels(a.channels)
    if channels is not None:
        config["channels"] = channels
    # names checked first: a folder that already has patches would otherwise only say its settings differ
    Patches(Patches.Config.model_validate(config), load_spec(a.out)).measure(receptive_fields=False)
    run_stage(a.out, "patches", config, run_section(a))
