"""Feature inversion (Mahendran & Vedaldi 2015): what an image's features at a layer still say.

From the features phi0 = phi(x0) of an image at a layer, find
    x* = argmin_x ||phi(x) - phi0||^2 / ||phi0||^2 + tv * TV(x)
with TV(x) the mean of (dx^2 + dy^2)^(beta/2) over pixels (beta = 2: a smoothness prior), by Adam
on pixels in [0, 1] starting from seeded grey noise.  Early layers keep almost everything, late
ones mostly what matters to the class: the lecture's row of reconstructions from relu1 to fc8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from deepscope.algos.ascent import autocast, item_generators
from deepscope.models.taps import LayerTaps


@dataclass(frozen=True)
class InvertSettings:
    steps: int = 200
    lr: float = 0.05  # Adam, pixel units in [0, 1]
    tv: float = 0.5  # weight of the total-variation prior
    beta: float = 2.0  # TV exponent
    seed: int = 0


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """(N,) mean over pixels of (dx^2 + dy^2)^(beta/2), forward differences."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx * dx + dy * dy).sum(1).pow(beta / 2).flatten(1).mean(1)


def _features(loaded, pixels01, layer, amp):
    tf = loaded.transform
    mean = torch.tensor(tf.mean, device=pixels01.device).view(1, 3, 1, 1)
    std = torch.tensor(tf.std, device=pixels01.device).view(1, 3, 1, 1)
    with LayerTaps(loaded, [layer], detach=False) as taps, autocast(pixels01.device, amp):
        taps.forward((pixels01 - mean) / std)
    return taps.outputs[layer].float().flatten(1)


def invert(loaded, pixels01: torch.Tensor, layer: str, settings: InvertSettings = InvertSettings(),
           seeds: list[int] | None = None, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels in [0, 1] (N, 3, H, W) -> (reconstructions in [0, 1], relative feature error (N,))."""
    s = settings
    with torch.no_grad():
        target = _features(loaded, pixels01.float(), layer, amp)
    norm = target.pow(2).sum(1).clamp_min(1e-12)
    gens = item_generators(seeds if seeds is not None else [s.seed + i for i in range(len(pixels01))])
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
    with torch.no_grad():
        err = (_features(loaded, x, layer, amp) - target).pow(2).sum(1) / norm
    return x.detach(), err
