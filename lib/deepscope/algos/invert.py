"""Feature inversion (Mahendran & Vedaldi 2015): what an image's features at a layer still say.

From the features phi0 = phi(x0) of an image at a layer, find
    x* = argmin_x ||phi(x) - phi0||^2 / ||phi0||^2 + tv * TV(x)
with TV(x) the mean of (dx^2 + dy^2)^(beta/2) over pixels (beta = 2: a smoothness prior).

param "pixel" (the original method): Adam on pixels in [0, 1] from seeded grey noise.  Early layers
keep almost everything; from a deep layer (lite0's _blocks.15) it gives coloured noise with a faint
outline.

param "fourier" (the default): the stronger image priors of class visualization (algos/ascent.py):
the image is the sigmoid of a 1/f-scaled spectrum of decorrelated colours, moved by preconditioned
gradient steps (RMS `lr_fourier` in the image), and every step the source and the reconstruction
go through the same random transformation (`pad`, `jitter`, `scale`, `rotate`), so the match must
hold under all of them: deep-layer inversions become pictures with photo-like spectra whose
objects another network still recognizes (tests/test_ascent.py, README).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from deepscope.algos.ascent import autocast, fourier_image, fourier_linear, item_generators, random_transform
from deepscope.models.taps import LayerTaps


@dataclass(frozen=True)
class InvertSettings:
    steps: int = 200
    lr: float = 0.05  # pixel: Adam, pixel units in [0, 1]
    tv: float = 0.5  # weight of the total-variation prior
    beta: float = 2.0  # TV exponent
    seed: int = 0
    param: Literal["pixel", "fourier"] = "fourier"
    lr_fourier: float = 0.1  # fourier: RMS of each step in the pre-sigmoid image
    pad: int = 8  # fourier: the transformation shared by source and reconstruction each step
    jitter: int = 8
    scale: float = 0.1
    rotate: float = 5.0


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """(N,) mean over pixels of (dx^2 + dy^2)^(beta/2), forward differences."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx * dx + dy * dy).sum(1).pow(beta / 2).flatten(1).mean(1)


def _features(loaded, pixels01, layer, amp):
    return _layer(loaded, pixels01, layer, amp).flatten(1)


def _generator_states(gens):
    return [g.get_state() for g in gens]


def _restore(gens, states):
    for g, st in zip(gens, states):
        g.set_state(st)


def invert(loaded, pixels01: torch.Tensor, layer: str, settings: InvertSettings = InvertSettings(),
           seeds: list[int] | None = None, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels in [0, 1] (N, 3, H, W) -> (reconstructions in [0, 1], relative feature error (N,))."""
    s = settings
    src = pixels01.float()
    with torch.no_grad():
        target = _features(loaded, src, layer, amp)
    norm = target.pow(2).sum(1).clamp_min(1e-12)
    gens = item_generators(seeds if seeds is not None else [s.seed + i for i in range(len(pixels01))])
    if s.param == "fourier":
        x = _invert_fourier(loaded, src, layer, s, gens, amp)
    else:
        init = torch.stack([0.5 + 0.05 * torch.randn(pixels01.shape[1:], generator=g) for g in gens])
        x = init.clamp(0, 1).to(pixels01.device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=s.lr)
        for _ in range(s.steps):
            loss = (_features(loaded, x, layer, amp) - target).pow(2).sum(1) / norm + s.tv * total_variation(x, s.beta)
            opt.zero_grad()
            loss.sum().backward()  # items are independent: Adam is elementwise
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        x = x.detach()
    with torch.no_grad():
        err = (_features(loaded, x, layer, amp) - target).pow(2).sum(1) / norm
    return x, err


def _invert_fourier(loaded, src, layer, s: InvertSettings, gens, amp) -> torch.Tensor:
    n, _, h, w = src.shape
    spec = torch.stack([torch.randn(3, h, w // 2 + 1, 2, generator=g) * 0.01 for g in gens]).to(src.device)
    spec.requires_grad_(True)
    transformed = s.pad or s.jitter or s.scale or s.rotate
    for _ in range(s.steps):
        x = fourier_image(spec, h, w)
        if transformed:  # the same draw for the source and the reconstruction
            states = _generator_states(gens)
            seen_src = random_transform(src * 2 - 1, gens, s.pad, s.jitter, s.scale, s.rotate) / 2 + 0.5
            _restore(gens, states)
            seen = random_transform(x * 2 - 1, gens, s.pad, s.jitter, s.scale, s.rotate) / 2 + 0.5
            with torch.no_grad():
                target = _features(loaded, seen_src, layer, amp)
        else:
            seen = x
            with torch.no_grad():
                target = _features(loaded, src, layer, amp)
        norm = target.pow(2).sum(1).clamp_min(1e-12)
        loss = (_features(loaded, seen, layer, amp) - target).pow(2).sum(1) / norm + s.tv * total_variation(x, s.beta)
        g, = torch.autograd.grad(loss.sum(), spec)
        with torch.no_grad():
            u = fourier_linear(g, h, w)  # the step it makes in the image, per item
            rms = u.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1, 1)
            spec -= s.lr_fourier * g / rms
    with torch.no_grad():
        return fourier_image(spec, h, w)


def vector_loss(act: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(N,) mean over the map's positions of ||a_p - v||^2 / ||v||^2: the whole map made of v."""
    a = act.float().flatten(2) if act.ndim > 2 else act.float()[:, :, None]  # (N, C, P)
    v = vectors.float()[:, :, None]
    return (a - v).pow(2).sum(1).mean(1) / v.pow(2).sum(1)[:, 0].clamp_min(1e-12)


def invert_vectors(loaded, vectors: torch.Tensor, layer: str, size: int, settings: InvertSettings = InvertSettings(),
                   seeds: list[int] | None = None, amp=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation vectors (N, C) of `layer` (an atlas cell's mean) -> (pictures in [0, 1] (N, 3, size, size)
    whose every position's activation is close to its vector, loss at the start (N,), loss at the end (N,)).
    The image prior of class visualization (1/f spectrum, decorrelated colours, preconditioned steps,
    random transformations of the picture each step) with the TV prior of inversion."""
    s = settings
    dev = vectors.device
    gens = item_generators(seeds if seeds is not None else [s.seed + i for i in range(len(vectors))])
    spec = torch.stack([torch.randn(3, size, size // 2 + 1, 2, generator=g) * 0.01 for g in gens]).to(dev)
    spec.requires_grad_(True)
    with torch.no_grad():
        start = vector_loss(_layer(loaded, fourier_image(spec, size, size), layer, amp), vectors)
    shift = size / 224  # the transformations' pixels are meant for a 224 px picture
    pad, jitter = round(s.pad * shift), round(s.jitter * shift)
    for _ in range(s.steps):
        x = fourier_image(spec, size, size)
        seen = random_transform(x * 2 - 1, gens, pad, jitter, s.scale, s.rotate) / 2 + 0.5
        loss = vector_loss(_layer(loaded, seen, layer, amp), vectors) + s.tv * total_variation(x, s.beta)
        g, = torch.autograd.grad(loss.sum(), spec)
        with torch.no_grad():
            u = fourier_linear(g, size, size)
            rms = u.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1, 1)
            spec -= s.lr_fourier * g / rms
    with torch.no_grad():
        x = fourier_image(spec, size, size)
        return x, start, vector_loss(_layer(loaded, x, layer, amp), vectors)


def _layer(loaded, pixels01, layer, amp):
    """The layer's output (N, C, H, W) for pixels in [0, 1]."""
    tf = loaded.transform
    mean = torch.tensor(tf.mean, device=pixels01.device).view(1, 3, 1, 1)
    std = torch.tensor(tf.std, device=pixels01.device).view(1, 3, 1, 1)
    with LayerTaps(loaded, [layer], detach=False) as taps, autocast(pixels01.device, amp):
        taps.forward((pixels01 - mean) / std)
    return taps.outputs[layer].float()
