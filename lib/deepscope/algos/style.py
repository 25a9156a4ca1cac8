"""Style and texture by matching feature statistics of a loss network (Gatys 2015, 2016).

Images are float tensors (N, 3, H, W) in [0, 1]. Any supported model serves as the loss
network (`LossNetwork`): lite0 by default, VGG-16/19 for the classic look.

Definitions (per image; every loss returns one value per image, so that images optimized
together in a batch do not change each other's gradients):
- Gram matrix  G = F Fᵀ / (C·H·W), F the layer's (C, H·W) activations.
- style loss   Σ_l w_l ‖G_l(x) − A_l‖²_F, A_l the style's Gram matrix (or a weighted mix of several).
- content loss Σ_l mean((F_l(x) − P_l)²), P_l the content image's activations.
- total variation  mean((x[i+1, j] − x[i, j])²) + mean((x[i, j+1] − x[i, j])²).

Gatys for many images at once, each its own problem (the stylize stage's): algos/gatys_batch.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepscope.models.taps import LayerTaps, list_layers

# Layers per model family: Gatys' / Johnson's choices for VGG (relu1_2 ... relu4_3 / relu2_2),
# the matching stride-2..16 block outputs for lite0.
KNOWN_LAYERS = {
    "lite0": (["_blocks.2"], ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10"]),
    "torchvision:vgg16": (["features.8"], ["features.3", "features.8", "features.15", "features.22"]),
    "torchvision:vgg19": (["features.22"], ["features.1", "features.6", "features.11", "features.20", "features.29"]),
}


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for half precision (autocast), any wider type kept (float64 checks batching exactly)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def gram(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C), normalized by C·H·W so layers of any size weigh alike."""
    n, c, h, w = f.shape
    f = _wide(f.reshape(n, c, h * w))
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(feats: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               weights: dict[str, float] | None = None) -> torch.Tensor:
    """(N,): weighted squared Frobenius distance of Gram matrices; targets (1 or N, C, C)."""
    total = 0.0
    for layer, target in targets.items():
        w = 1.0 if weights is None else weights[layer]
        total = total + w * (gram(feats[layer]) - target).pow(2).sum(dim=(1, 2))
    return total


def content_loss(feats: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 weights: dict[str, float] | None = None) -> torch.Tensor:
    """(N,): weighted mean squared activation difference, summed over the content layers."""
    total = 0.0
    for layer, target in targets.items():
        w = 1.0 if weights is None else weights[layer]
        total = total + w * (_wide(feats[layer]) - _wide(target)).pow(2).flatten(1).mean(1)
    return total


def gram_weights(targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Layer weights 1 / (L ‖A_l‖²): each layer's loss becomes a relative error, so that one style
    weight suits every loss network (lite0's block outputs are 100x larger than VGG's ReLUs)."""
    return {layer: 1.0 / (len(targets) * float(a.pow(2).sum(dim=(-2, -1)).mean()) + 1e-12) for layer, a in targets.items()}


def content_weights(targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Layer weights 1 / (L mean(P_l²)), for the same reason."""
    return {layer: 1.0 / (len(targets) * float(p.float().pow(2).mean()) + 1e-12) for layer, p in targets.items()}


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """(N,): squared differences of vertical and horizontal neighbours (smoothness prior)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dy + dx


# ---------------------------------------------------------------------------- the loss network

# The fast style network's loss layers for lite0: the style at the ReLU6 activations of strides 2, 4,
# 8 and 16 (after each block's depthwise convolution), VGG's ReLUs' counterpart.  With the linear
# block outputs above (the choice before issue 14) a short training painted grey, embossed pictures
# and blobs (the demo's style loss 1.39 -> 1.0 in 300 steps); per-image Gatys optimization does
# well with either, and keeps the block outputs.
NETWORK_LAYERS = {
    "lite0": (["_blocks.2"], ["_blocks.0._swish", "_blocks.2._swish", "_blocks.4._swish", "_blocks.7._swish"]),
}


def network_layers(loaded) -> tuple[list[str], list[str]]:
    """(content layers, style layers) for training a fast style network."""
    return NETWORK_LAYERS.get(loaded.spec) or default_layers(loaded)


def default_layers(loaded) -> tuple[list[str], list[str]]:
    """(content layers, style layers): the known choice, else the last module at each of the first
    four spatial scales (style) and the one at the second scale (content) of any model."""
    if loaded.spec in KNOWN_LAYERS:
        return KNOWN_LAYERS[loaded.spec]
    by_scale: dict[int, str] = {}
    for name, kind, shape in list_layers(loaded, 64):
        if len(shape) == 3 and "pad" not in kind.lower() and "pool" not in kind.lower() and name.count(".") <= 1:
            by_scale[shape[1]] = name  # modules are listed in definition order: the last one wins
    scales = sorted(by_scale, reverse=True)[:4]
    if not scales:
        raise ValueError(f"{loaded.spec} has no convolutional layers to use as a loss network")
    style = [by_scale[s] for s in scales]
    return [style[min(1, len(style) - 1)]], style


class _Stop(Exception):
    """Raised after the deepest tapped layer: the rest of the network is never computed."""


class LossNetwork:
    """Activations of a loaded model's layers for images in [0, 1], differentiable, truncated
    after the deepest layer needed (most of a classifier is never run)."""

    def __init__(self, loaded, layers: list[str]):
        self.loaded = loaded
        self.layers = list(dict.fromkeys(layers))
        t = loaded.transform
        self.mean = torch.tensor(t.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(t.std).view(1, 3, 1, 1)
        order = [n for n, _ in loaded.module.named_modules()]
        self._last = max((LayerTaps(loaded, [layer]).taps[0] for layer in self.layers),
                         key=lambda tap: order.index(tap.module_name) if tap.module_name in order else len(order))

    def __call__(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (img - self.mean.to(img.device)) / self.std.to(img.device)
        with LayerTaps(self.loaded, self.layers, detach=False) as taps:
            modules = dict(self.loaded.module.named_modules())
            stop = None
            name = self._last.module_name
            if name.count(".") >= 2:  # inside a block (lite0's ReLU6 runs twice per block): stop after the block
                name = name.rsplit(".", 1)[0]
            if self._last.kind == "output" and name in modules and name:
                def raise_stop(*_):
                    raise _Stop
                stop = modules[name].register_forward_hook(raise_stop)
            try:
                self.loaded.module(x)
            except _Stop:
                pass
            finally:
                if stop is not None:
                    stop.remove()
            return dict(taps.outputs)


def resize_to(img: torch.Tensor, long_side: int) -> torch.Tensor:
    """Scale (N, 3, H, W) so that its longer side is long_side (antialiased)."""
    h, w = img.shape[-2:]
    s = long_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return img if size == (h, w) else F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def style_targets(net: LossNetwork, styles: list[torch.Tensor], style_layers: list[str],
                  mix: list[float] | None = None, long_side: int | None = None) -> dict[str, torch.Tensor]:
    """{layer: (1, C, C)}: the weighted average of the styles' Gram matrices (mix sums to 1).

    long_side rescales each style image first: the lecture's larger or smaller style image
    (a smaller one gives larger strokes relative to the content)."""
    mix = [1.0 / len(styles)] * len(styles) if mix is None else mix
    if len(mix) != len(styles) or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(f"style weights {mix} must be one non-negative weight per style image")
    total = sum(mix)
    out: dict[str, torch.Tensor] = {}
    for img, w in zip(styles, mix):
        if w == 0:
            continue  # a zero weight adds exactly nothing: mix (1, 0) equals the first style alone
        img = resize_to(img, long_side) if long_side else img
        feats = net(img)
        for layer in style_layers:
            g = gram(feats[layer]) * (w / total)
            out[layer] = g if layer not in out else out[layer] + g
    return out


# ---------------------------------------------------------------------------- optimization

@dataclass
class StyleResult:
    image: torch.Tensor  # (N, 3, H, W) in [0, 1]
    style_loss: list[float]  # per image, at the end, relative (layer weights gram_weights / content_weights)
    content_loss: list[float]
    history: list[float]  # the weighted objective (summed over images) after each step


def _optimize(x: torch.Tensor, objective, steps: int, optimizer: str, lr: float, log_every: int, log) -> list[float]:
    """Minimize objective(x) over x in place; the image is kept in [0, 1] by clamping between steps."""
    x.requires_grad_(True)
    history: list[float] = []
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe")
    elif optimizer == "adam":
        opt = torch.optim.Adam([x], lr=lr)
    else:
        raise ValueError(f"optimizer {optimizer!r}: use lbfgs or adam")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = objective(x)
        loss.backward()
        return loss

    for step in range(steps):
        loss = opt.step(closure)
        with torch.no_grad():
            x.clamp_(0, 1)
        history.append(float(loss.detach()))
        if log and log_every and (step + 1) % log_every == 0:
            log(f"  step {step + 1}/{steps}: loss {history[-1]:.4g}")
        if not math.isfinite(history[-1]):
            raise FloatingPointError("the objective became infinite: lower the learning rate or the style weight")
    x.requires_grad_(False)
    return history


def synthesize_texture(net: LossNetwork, sample: torch.Tensor, size: tuple[int, int], style_layers: list[str],
                       steps: int = 200, optimizer: str = "lbfgs", lr: float = 0.05, seed: int = 0,
                       tv_weight: float = 0.0, log=None) -> StyleResult:
    """Gatys 2015: from noise, an image of any size whose Gram matrices match the sample's."""
    targets = style_targets(net, [sample], style_layers)
    sw = gram_weights(targets)
    gen = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.1 * torch.randn((1, 3) + tuple(size), generator=gen)).clamp(0, 1).to(sample.device)

    def objective(img):
        return (style_loss(net(img), targets, sw) + tv_weight * tv_loss(img)).sum()

    history = _optimize(x, objective, steps, optimizer, lr, max(1, steps // 10), log)
    with torch.no_grad():
        s = style_loss(net(x), targets, sw)
    return StyleResult(x.detach(), s.tolist(), [0.0], history)


def neural_style(net: LossNetwork, content: torch.Tensor, styles: list[torch.Tensor], content_layers: list[str],
                 style_layers: list[str], mix: list[float] | None = None, style_scale: float = 1.0,
                 content_weight: float = 1.0, style_weight: float = 10.0, tv_weight: float = 1.0,
                 init: str = "content", optimizer: str = "lbfgs", steps: int = 200, lr: float = 0.02,
                 preserve_colour: bool = False, seed: int = 0, log=None) -> StyleResult:
    """Gatys 2016 on a batch of content images of one size (optimized together, independently).

    style_scale: each style image is rescaled to style_scale x the content's longer side first.
    init: "content" (start from the content image) or "noise"."""
    long_side = round(style_scale * max(content.shape[-2:]))
    targets = style_targets(net, styles, style_layers, mix, long_side)
    with torch.no_grad():
        feats = net(content)
        content_targets = {layer: feats[layer].detach() for layer in content_layers}
    sw, cw = gram_weights(targets), content_weights(content_targets)
    if init == "content":
        x = content.detach().clone().contiguous()
    elif init == "noise":
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(content.shape, generator=gen).to(content.device)
    else:
        raise ValueError(f"init {init!r}: use content or noise")

    def objective(img):
        f = net(img)
        return (content_weight * content_loss(f, content_targets, cw) + style_weight * style_loss(f, targets, sw)
                + tv_weight * tv_loss(img)).sum()

    history = _optimize(x, objective, steps, optimizer, lr, max(1, steps // 10), log)
    out = keep_colours(x, content) if preserve_colour else x.detach()
    with torch.no_grad():
        f = net(out)
        s, c = style_loss(f, targets, sw), content_loss(f, content_targets, cw)
    return StyleResult(out, s.tolist(), c.tolist(), history)


# ---------------------------------------------------------------------------- colour

_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def keep_colours(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Gatys et al. 2017's luminance-only transfer: the stylized image's luminance (Y) with the
    content image's chrominance (I, Q), so the style changes texture but not colours."""
    m = _YIQ.to(stylized.device)
    y = torch.einsum("ij,njhw->nihw", m, stylized.detach())
    c = torch.einsum("ij,njhw->nihw", m, content)
    yiq = torch.cat([y[:, :1], c[:, 1:]], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), yiq).clamp(0, 1)
