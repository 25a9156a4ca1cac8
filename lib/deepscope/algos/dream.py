"""DeepDream (Mordvintsev et al. 2015): amplify whatever a layer sees in an image.

Gradient ascent on 1/2 ||a(x)||^2 at one layer, whose gradient w.r.t. the activation is the
activation itself; each step is normalized by the gradient's mean absolute value (per image),
taken on a randomly shifted copy (jitter) and followed by clipping to valid pixels.  Octaves:
the image is dreamed from the smallest scale up, and the detail added at each scale is carried
up to the next, so that patterns appear at several sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepscope.algos.ascent import autocast, item_generators, random_shifts, roll
from deepscope.models.taps import LayerTaps


@dataclass(frozen=True)
class DreamSettings:
    octaves: int = 4  # scales, each octave_scale times smaller than the next
    octave_scale: float = 1.4
    steps: int = 10  # ascent steps per octave
    lr: float = 0.01  # mean absolute step, pixel units in [0, 1] (1.5 / 255 * ~1.7)
    jitter: int = 32  # largest random shift, pixels (scaled down with the octave)
    min_size: int = 32  # smaller octaves are skipped
    seed: int = 0


def dream_energy(loaded, pixels01: torch.Tensor, layer: str, amp=None) -> torch.Tensor:
    """(N,) 1/2 ||a(x)||^2 at `layer` for pixels in [0, 1]."""
    tf = loaded.transform
    mean = torch.tensor(tf.mean, device=pixels01.device).view(1, 3, 1, 1)
    std = torch.tensor(tf.std, device=pixels01.device).view(1, 3, 1, 1)
    with LayerTaps(loaded, [layer], detach=False) as taps, autocast(pixels01.device, amp):
        taps.forward((pixels01 - mean) / std)
    return 0.5 * taps.outputs[layer].float().pow(2).flatten(1).sum(1)


def dream(loaded, pixels01: torch.Tensor, layer: str, settings: DreamSettings = DreamSettings(),
          seeds: list[int] | None = None, amp=None) -> torch.Tensor:
    """pixels in [0, 1] (N, 3, H, W) -> dreamed pixels in [0, 1], same size.  seeds: one per image
    (its jitter stream), so that an image dreams the same in any batch."""
    s = settings
    gens = item_generators(seeds if seeds is not None else [s.seed + i for i in range(len(pixels01))])
    h, w = pixels01.shape[-2:]
    sizes = []
    for k in range(s.octaves):  # largest first
        size = (round(h / s.octave_scale ** k), round(w / s.octave_scale ** k))
        if k and min(size) < s.min_size:
            break
        sizes.append(size)
    base = pixels01.detach().float()
    detail = torch.zeros_like(F.interpolate(base, size=sizes[-1], mode="bilinear", align_corners=False))
    for size in reversed(sizes):  # smallest first
        octave = F.interpolate(base, size=size, mode="bilinear", align_corners=False) if size != (h, w) else base
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        x = (octave + detail).clamp(0, 1)
        jitter = max(1, round(s.jitter * size[0] / h)) if s.jitter else 0
        for _ in range(s.steps):
            shifts = random_shifts(gens, jitter)
            xs = roll(x, shifts).requires_grad_(True)
            grad, = torch.autograd.grad(dream_energy(loaded, xs, layer, amp).sum(), xs)
            grad = roll(grad, shifts, sign=-1)
            with torch.no_grad():
                x = (x + s.lr * grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)).clamp(0, 1)
        detail = x - octave
    return x.detach()
