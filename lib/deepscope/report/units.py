"""Two one-model figures of what units are, that need no dataset: a conv layer's weights (`filters`)
and one image's feature maps at a layer (`activations`)."""
from __future__ import annotations

import numpy as np
import torch

from deepscope.errors import UserError


# ---------------------------------------------------------------------------- filters

def conv_weight(loaded, layer: str | None) -> tuple[str, torch.Tensor]:
    """(module name, weight (out, in, kh, kw)) of the named conv layer, or of the first one."""
    convs = [(n, m) for n, m in loaded.module.named_modules() if getattr(m, "weight", None) is not None
             and m.weight.ndim == 4]
    if not convs:
        raise UserError(f"{loaded.spec} has no convolution layer")
    if layer is None:
        return convs[0][0], convs[0][1].weight.detach().float().cpu()
    modules = dict(loaded.module.named_modules())
    if layer not in modules:
        from deepscope.models.taps import resolve
        resolve(loaded, layer)  # raises the unknown-layer error, with close matches
        raise UserError(f"layer {layer!r} is an alias, not a module: name a convolution, e.g. {convs[0][0]}")
    w = getattr(modules[layer], "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        raise UserError(f"layer {layer!r} of {loaded.spec} is a {type(modules[layer]).__name__}, not a convolution "
                        f"with 4-d weights; convolutions: {', '.join(n for n, _ in convs[:8])}, ...")
    return layer, w.detach().float().cpu()


def filters_figure(weight: torch.Tensor, max_filters: int = 64, max_inputs: int = 32, tile: int = 0):
    """Weights (out, in, kh, kw) -> PIL grid, each filter scaled by its own min and max.

    in = 3 (the first layer): one RGB tile per filter, near-square grid.
    Deeper: one row per filter (up to max_filters), one grey tile per input channel (up to max_inputs);
    depthwise (in = 1): one grey tile per filter, near-square grid."""
    from deepscope.report.figures import NEAREST, grid, grid_shape, normalize_per_tile

    w = weight.numpy()[:max_filters]
    side = tile or max(24, 4 * max(w.shape[2:]))
    if w.shape[1] == 3:
        tiles = normalize_per_tile([f.transpose(1, 2, 0) for f in w])
        rows, cols = grid_shape(len(tiles))
        return grid(tiles, rows, cols, pad=2, tile=side, resample=NEAREST)
    w = w[:, :max_inputs]
    scaled = normalize_per_tile(list(w))  # per filter: all its input slices share one scale
    if w.shape[1] == 1:  # depthwise: one slice per filter, laid out near-square
        rows, cols = grid_shape(len(w))
        return grid([s[0] for s in scaled], rows, cols, pad=1, tile=side, resample=NEAREST)
    tiles = [s[i] for s in scaled for i in range(w.shape[1])]
    return grid(tiles, len(w), w.shape[1], pad=1, tile=side, resample=NEAREST)


# ---------------------------------------------------------------------------- activations

def feature_maps(loaded, x: torch.Tensor, layer: str) -> np.ndarray:
    from deepscope.models.taps import forward_with_taps

    _, taps = forward_with_taps(loaded, x, [layer])
    act = taps[layer][0].float().numpy()
    if act.ndim != 3:
        raise UserError(f"layer {layer!r} of {loaded.spec} has output shape {act.shape}: feature maps need (C, H, W)")
    return act


def activations_figure(maps: np.ndarray, tile: int = 0):
    """(C, H, W) -> PIL grid of grey maps, one shared scale (weak channels stay dark next to strong ones)."""
    from deepscope.report.figures import NEAREST, grid, grid_shape, normalize_together

    rows, cols = grid_shape(len(maps))
    side = tile or max(16, 2 * max(maps.shape[1:]))
    return grid(normalize_together(list(maps)), rows, cols, pad=1, tile=side, resample=NEAREST, background=(60, 60, 60))


def strongest(maps: np.ndarray, n: int) -> list[tuple[int, float, float, int, int]]:
    """(channel, max, mean, row, col of the max) of the n channels with the largest maximum."""
    flat = maps.reshape(len(maps), -1)
    best = np.argsort(-flat.max(1), kind="stable")[:n]
    return [(int(c), float(flat[c].max()), float(flat[c].mean()), *divmod(int(flat[c].argmax()), maps.shape[2]))
            for c in best]
