"""Adversarial images on the 8-bit pixel grid (Szegedy et al. 2014; Goodfellow et al. 2015;
Madry et al. 2018; Moosavi-Dezfooli et al. 2017).

Every attack here takes and returns uint8 pixels (N, 3, H, W) at the model's input resolution,
and every iterate lies on the 8-bit grid: a step is rounded to whole pixel levels and projected
onto |x - x0| <= eps (eps in 8-bit units, 0..255) and [0, 255] BEFORE the model sees it.  So the
image the attack judged is exactly the PNG written to disk, and reloading it and applying only
the model's normalization (transform.normalize) gives the same prediction.

  fool       the lecture's fooling loop: ascend the target's score (step normalized by the
             gradient's norm) until the network predicts it, unbounded in eps
  fgsm       one step of eps * sign(gradient) (untargeted: raise the loss of the clean
             prediction; targeted: lower the loss of the target)
  pgd        `steps` such steps of size `step`, projected onto the eps ball each time
  universal  one perturbation v for a whole dataset (stochastic PGD on the mean loss of batches,
             Shafahi et al. 2020's variant of the universal perturbation), |v| <= eps
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepscope.algos.ascent import autocast, item_generators


def _normalize(loaded, pixels255: torch.Tensor) -> torch.Tensor:
    """Differentiable transform.normalize for float pixels on the 0..255 scale."""
    tf = loaded.transform
    mean = torch.tensor(tf.mean, device=pixels255.device).view(1, 3, 1, 1)
    std = torch.tensor(tf.std, device=pixels255.device).view(1, 3, 1, 1)
    return (pixels255 / 255.0 - mean) / std


def logits_of(loaded, pixels: torch.Tensor, amp=None) -> torch.Tensor:
    """The model's logits for uint8 pixels, through exactly the path a PNG on disk takes."""
    with torch.no_grad(), autocast(pixels.device, amp):
        return loaded.module(loaded.transform.normalize(pixels)).float()


def _loss_grad(loaded, q: torch.Tensor, labels: torch.Tensor, targeted: bool, amp=None) -> torch.Tensor:
    """Gradient of the per-item objective to ASCEND, w.r.t. pixels q (0..255 floats)."""
    q = q.detach().requires_grad_(True)
    with autocast(q.device, amp):
        logits = loaded.module(_normalize(loaded, q))
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    grad, = torch.autograd.grad(-loss if targeted else loss, q)
    return grad


def _project(q: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Round to whole pixel levels, then into |q - x0| <= floor(eps) and [0, 255]."""
    bound = math.floor(eps + 1e-9)
    return torch.minimum(torch.maximum(q.round(), x0 - bound), x0 + bound).clamp(0, 255)


def _labels(loaded, pixels, target, amp) -> tuple[torch.Tensor, bool]:
    if target is None:
        return logits_of(loaded, pixels, amp).argmax(1), False
    t = torch.as_tensor(target, device=pixels.device).long()
    return (t.expand(len(pixels)) if t.ndim == 0 else t), True


def fgsm(loaded, pixels: torch.Tensor, eps: float, target=None, amp=None) -> torch.Tensor:
    """Fast gradient sign: untargeted (target None) or towards target (an int or (N,) classes)."""
    labels, targeted = _labels(loaded, pixels, target, amp)
    x0 = pixels.float()
    g = _loss_grad(loaded, x0, labels, targeted, amp)
    return _project(x0 + eps * g.sign(), x0, eps).to(torch.uint8)


def pgd(loaded, pixels: torch.Tensor, eps: float, target=None, step: float | None = None, steps: int = 10,
        random_start: bool = False, seed: int = 0, stop_early: bool = False, amp=None) -> torch.Tensor:
    """Projected gradient descent in L-inf on the 8-bit grid.  step: pixel levels per iteration
    (default max(1, 2.5 * eps / steps), Madry et al.).  stop_early: items whose prediction already
    changed (untargeted) or reached the target stop moving (saves work when only success counts)."""
    labels, targeted = _labels(loaded, pixels, target, amp)
    step = step if step is not None else max(1.0, 2.5 * eps / steps)
    x0 = pixels.float()
    q = x0.clone()
    if random_start:
        gens = item_generators([seed + i for i in range(len(q))])
        noise = torch.stack([torch.empty(q.shape[1:]).uniform_(-eps, eps, generator=g) for g in gens])
        q = _project(q + noise.to(q.device), x0, eps)
    active = torch.ones(len(q), dtype=torch.bool, device=q.device)
    for _ in range(steps):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0:
            break
        g = _loss_grad(loaded, q[idx], labels[idx], targeted, amp)
        q[idx] = _project(q[idx] + step * g.sign(), x0[idx], eps)
        if stop_early:
            pred = logits_of(loaded, q[idx].to(torch.uint8), amp).argmax(1)
            active[idx] = (pred != labels[idx]) if targeted else (pred == labels[idx])
    return q.to(torch.uint8)


def fool(loaded, pixels: torch.Tensor, target, lr: float = 1.0, max_steps: int = 100,
         amp=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fooling loop: ascend each item's target score, step lr * g / ||g|| (in pixel levels per
    unit of the whole image's gradient norm, scaled by sqrt(pixels)), rounded to 8 bits, until the
    8-bit image is predicted as the target.  -> (uint8 images, steps each item took; -1 = failed)."""
    labels, _ = _labels(loaded, pixels, target, amp)
    q = pixels.float()
    n_elems = q[0].numel()
    taken = torch.full((len(q),), -1, dtype=torch.long, device=q.device)
    for step in range(max_steps + 1):
        pred = logits_of(loaded, q.to(torch.uint8), amp).argmax(1)
        newly = (pred == labels) & (taken < 0)
        taken[newly] = step
        idx = (taken < 0).nonzero()[:, 0]
        if len(idx) == 0 or step == max_steps:
            break
        x = q[idx].detach().requires_grad_(True)
        with autocast(x.device, amp):
            logits = loaded.module(_normalize(loaded, x))
        score = logits.float().gather(1, labels[idx, None]).sum()
        g, = torch.autograd.grad(score, x)
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        # at least one level somewhere: rounding must not swallow every step
        q[idx] = (x.detach() + lr * math.sqrt(n_elems) * g / norm).round().clamp(0, 255)
    return q.to(torch.uint8), taken


def apply_perturbation(pixels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """uint8 pixels + an integer perturbation (3, H, W), clipped to [0, 255]."""
    return (pixels.float() + delta.to(pixels.device).float()).clamp(0, 255).to(torch.uint8)


def universal(loaded, batches: list[torch.Tensor], eps: float, epochs: int = 5, step: float | None = None,
              amp=None) -> torch.Tensor:
    """One perturbation (int16 (3, H, W), |v| <= eps) that raises the loss of the clean predictions
    of every batch of uint8 images: stochastic PGD on the mean loss, over `epochs` passes."""
    step = step if step is not None else max(1.0, eps / 4)
    labels = [logits_of(loaded, b, amp).argmax(1) for b in batches]
    v = torch.zeros(batches[0].shape[1:], device=batches[0].device)
    zero = torch.zeros_like(v)
    for _ in range(epochs):
        for b, lab in zip(batches, labels):
            x = b.float() + v
            g = _loss_grad(loaded, x.clamp(0, 255), lab, False, amp).sum(0)
            v = _project(v + step * g.sign(), zero, eps)
    return v.to(torch.int16)


def fooling_rate(loaded, batches: list[torch.Tensor], delta: torch.Tensor, amp=None) -> float:
    changed = total = 0
    for b in batches:
        clean = logits_of(loaded, b, amp).argmax(1)
        adv = logits_of(loaded, apply_perturbation(b, delta), amp).argmax(1)
        changed += int((clean != adv).sum())
        total += len(b)
    return changed / max(total, 1)
