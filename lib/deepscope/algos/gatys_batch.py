"""Gatys neural style for a batch of content images at once, each image its own problem (the
stylize stage's gatys method): per-image losses and weights, and an L-BFGS with per-image
histories and line searches, so that an image's result does not depend on its batch.
The losses and the loss network are algos/style.py's."""
from __future__ import annotations

import math

import torch

from deepscope.algos.style import (LossNetwork, StyleResult, _optimize, _wide, content_loss, gram_weights, keep_colours,
                                   style_loss, tv_loss)


def gatys(net: LossNetwork, content: torch.Tensor, targets: dict[str, torch.Tensor], content_layers: list[str],
          content_weight: float = 1.0, style_weight: float = 10.0, tv_weight: float = 1.0, init: str = "content",
          optimizer: str = "lbfgs", steps: int = 200, lr: float = 0.02, preserve_colour: bool = False,
          seed: int | list[int] = 0, history_size: int = 10, log=None) -> StyleResult:
    """Gatys 2016 on a batch of content images of one size against given style targets
    ({layer: (1, C, C)}, from `style_targets`, computed once for many batches).

    One optimization over the whole batch (one forward and backward pass per step for all images),
    in which every image is still its own problem: per-image losses and content-layer weights, and
    for L-BFGS a per-image history, step scaling and line search (torch's L-BFGS has one line
    search for the whole batch, which couples the images); Adam is elementwise anyway. So an
    image's result does not depend on which images share its batch, up to float rounding.
    seed: one, or one per image (noise init)."""
    n = content.shape[0]
    with torch.no_grad():
        feats = net(content)
        ct = {layer: _wide(feats[layer].detach()) for layer in content_layers}
    sw = gram_weights(targets)
    cw = {layer: 1.0 / (len(ct) * p.pow(2).flatten(1).mean(1) + 1e-12) for layer, p in ct.items()}  # (N,) each
    if init == "content":
        x = _wide(content.detach()).clone().contiguous()
    elif init == "noise":
        seeds = [seed] * n if isinstance(seed, int) else list(seed)
        x = torch.stack([torch.rand(content.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds]).to(content.device, _wide(content).dtype)
    else:
        raise ValueError(f"init {init!r}: use content or noise")

    def losses(img, idx):
        """(style, content) losses, (k,) each, of the images content[idx]."""
        f = net(img)
        return (style_loss(f, targets, sw),
                content_loss(f, {k: v[idx] for k, v in ct.items()}, {k: v[idx] for k, v in cw.items()}))

    def objective(img, idx):
        s, c = losses(img, idx)
        return content_weight * c + style_weight * s + tv_weight * tv_loss(img)

    if optimizer == "lbfgs":
        history = _lbfgs_per_image(x, objective, steps, history_size, log)
    elif optimizer == "adam":
        everyone = torch.arange(n, device=x.device)
        history = _optimize(x, lambda img: objective(img, everyone).sum(), steps, "adam", lr,
                            max(1, steps // 10), log)
    else:
        raise ValueError(f"optimizer {optimizer!r}: use lbfgs or adam")
    out = keep_colours(x, content) if preserve_colour else x.detach()
    with torch.no_grad():
        s, c = losses(out, torch.arange(n, device=x.device))
    return StyleResult(out, s.tolist(), c.tolist(), history)


def _lbfgs_per_image(x: torch.Tensor, objective, steps: int, m: int = 10, log=None,
                     max_ls: int = 12, c1: float = 1e-4) -> list[float]:
    """Minimize objective(img, idx) -> (k,) for each image of x (N, ...) in place, as N independent
    L-BFGS problems solved together: each image has its own m curvature pairs, its own H0 scaling
    and its own projected backtracking (Armijo) line search; the box [0, 1] is kept by projecting
    each trial point. Pairs with yᵀs ≤ 0 get ρ = 0, which makes them no-ops in the two-loop recursion."""
    n = x.shape[0]
    dev = x.device
    everyone = torch.arange(n, device=dev)

    def evaluate(img, idx):
        img = img.detach().requires_grad_(True)
        f = objective(img, idx)
        (g,) = torch.autograd.grad(f.sum(), img)
        return _wide(f.detach()), _wide(g.detach().flatten(1))

    f, g = evaluate(x, everyone)
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    R: list[torch.Tensor] = []
    gamma = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-12), max=1.0)  # torch's first step: min(1, 1/|g|₁)
    history: list[float] = []
    log_every = max(1, steps // 10)
    for step in range(steps):
        q = -g
        alphas = []
        for s, y, rho in zip(reversed(S), reversed(Y), reversed(R)):
            a = rho * (s * q).sum(1)
            q = q - a[:, None] * y
            alphas.append(a)
        d = q * gamma[:, None]
        for (s, y, rho), a in zip(zip(S, Y, R), reversed(alphas)):
            b = rho * (y * d).sum(1)
            d = d + s * (a - b)[:, None]
        uphill = (g * d).sum(1) >= 0  # not a descent direction (should not happen with ρ ≥ 0): steepest descent
        if uphill.any():
            d[uphill] = -g[uphill] * gamma[uphill, None]
        xf = x.detach().flatten(1)
        t = torch.ones(n, device=dev)
        x_new, f_new, g_new = xf.clone(), f.clone(), g.clone()
        pending = torch.ones(n, dtype=torch.bool, device=dev)
        for _ in range(max_ls):
            idx = pending.nonzero().flatten()
            xt = (xf[idx] + t[idx, None] * d[idx]).clamp(0, 1)
            ft, gt = evaluate(xt.view((len(idx),) + x.shape[1:]), idx)
            ok = ft <= f[idx] + c1 * (g[idx] * (xt - xf[idx])).sum(1)
            ok &= torch.isfinite(ft)
            good = idx[ok]
            x_new[good], f_new[good], g_new[good] = xt[ok], ft[ok], gt[ok]
            pending[good] = False
            if not pending.any():
                break
            t[idx[~ok]] *= 0.5
        # an image whose line search failed stays where it is; its pair (s = 0) is a no-op
        s, y = x_new - xf, g_new - g
        ys = (s * y).sum(1)
        valid = ys > 1e-10
        S.append(s)
        Y.append(y)
        R.append(torch.where(valid, 1.0 / ys.clamp_min(1e-10), torch.zeros_like(ys)))
        gamma = torch.where(valid, ys / (y * y).sum(1).clamp_min(1e-20), gamma)
        if len(S) > m:
            S.pop(0), Y.pop(0), R.pop(0)
        with torch.no_grad():
            x.copy_(x_new.view_as(x))
        f, g = f_new, g_new
        history.append(float(f.sum()))
        if log and (step + 1) % log_every == 0:
            log(f"  step {step + 1}/{steps}: loss {history[-1]:.4g}")
        if not math.isfinite(history[-1]):
            raise FloatingPointError("the objective became infinite: lower the style weight")
    return history
