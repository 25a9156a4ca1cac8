"""Measures of whether an optimized picture shows what a network sees (issue 14).

- hf_share: the share of a picture's spectral power above a quarter of the sampling rate (radial
  frequency > 0.25 cycles/pixel), on its grey image at 224 px, mean removed.  Photos: ~0.03;
  plain pixel ascent: ~0.3 (a fine coloured texture).
- target_ranks: the rank (0 = first) of each picture's target class for another network, the
  picture resized to that network's input; `half=True` first halves the picture (antialiased) and
  scales it back up: the picture as seen in a thumbnail, without its finest details.
- edge_correlation: the correlation of two images' Sobel edge maps (structure kept by a stylization).

Pure PyTorch; no Ray, no I/O.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GREY = (0.299, 0.587, 0.114)


def _float01(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def grey(x01: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W) luminance."""
    return torch.einsum("nchw,c->nhw", x01, torch.tensor(GREY, device=x01.device))


def hf_share(pixels: torch.Tensor, cutoff: float = 0.25, size: int = 224) -> torch.Tensor:
    """(N,) the share of power above `cutoff` cycles/pixel of each picture's grey image at `size` px
    (uint8 or [0, 1] floats, (N, 3, H, W)); the mean (DC) is excluded."""
    g = grey(resize(_float01(pixels), size))
    g = g - g.mean(dim=(-2, -1), keepdim=True)
    p = torch.fft.fft2(g).abs().pow(2)
    fy = torch.fft.fftfreq(g.shape[-2], device=g.device)[:, None]
    fx = torch.fft.fftfreq(g.shape[-1], device=g.device)[None, :]
    high = (fy * fy + fx * fx).sqrt() > cutoff
    return p[:, high].sum(1) / p.flatten(1).sum(1).clamp_min(1e-12)


def half_resolution(x01: torch.Tensor) -> torch.Tensor:
    """The picture at half its resolution (antialiased), scaled back up to its size."""
    h, w = x01.shape[-2:]
    small = F.interpolate(x01, size=(h // 2, w // 2), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def target_ranks(loaded, pixels: torch.Tensor, targets, half: bool = False, batch: int = 16) -> torch.Tensor:
    """(N,) rank of each target class (0: the network's first choice) for `loaded`, the pictures
    resized to its input; half=True: after half_resolution (see the module's docstring)."""
    x = _float01(pixels)
    if half:
        x = half_resolution(x)
    x = resize(x, loaded.transform.crop)
    t = torch.as_tensor(list(targets), dtype=torch.long)
    dev = next(loaded.module.parameters()).device
    mean = torch.tensor(loaded.transform.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.transform.std).view(1, 3, 1, 1)
    ranks = []
    for i in range(0, len(x), batch):
        logits = loaded.module(((x[i:i + batch] - mean) / std).to(dev)).float().cpu()
        own = logits.gather(1, t[i:i + batch, None])
        ranks.append((logits > own).sum(1))
    return torch.cat(ranks)


def sobel_edges(x01: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W) gradient magnitude of the grey image."""
    g = grey(_float01(x01))[:, None]
    k = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], device=g.device)
    gx = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))
    gy = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k.t().reshape(1, 1, 3, 3))
    return (gx * gx + gy * gy).sqrt()[:, 0]


def edge_correlation(a: torch.Tensor, b: torch.Tensor, size: int = 128) -> torch.Tensor:
    """(len(a), len(b)) Pearson correlation of the edge maps of every a with every b (at size px)."""
    ea = sobel_edges(resize(_float01(a), size)).flatten(1)
    eb = sobel_edges(resize(_float01(b), size)).flatten(1)
    ea = ea - ea.mean(1, keepdim=True)
    eb = eb - eb.mean(1, keepdim=True)
    ea = ea / ea.norm(dim=1, keepdim=True).clamp_min(1e-12)
    eb = eb / eb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return ea @ eb.t()


def structure_kept(outputs: torch.Tensor, inputs: torch.Tensor, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(own (N,), other (N,)): the edge correlation of each output with its own input, and the
    largest with any other input.  A stylization keeps structure when own is far above other; a
    collapsed network (the same picture for every input, or a constant) has own ~ other."""
    c = edge_correlation(outputs, inputs, size)
    own = c.diag()
    other = (c - 2 * torch.eye(len(c), device=c.device)).amax(1) if len(c) > 1 else torch.zeros_like(own)
    return own, other


def keeps_structure(outputs: torch.Tensor, inputs: torch.Tensor, min_own: float = 0.25,
                    margin: float = 0.15) -> bool:
    own, other = structure_kept(outputs, inputs)
    return bool(((own >= min_own) & (own >= other + margin)).all())


def pixel_std(pixels: torch.Tensor) -> torch.Tensor:
    """(N,) standard deviation of each picture's values in [0, 1], over pixels and channels
    (issue 25: photos 0.14-0.32, a grey wash below 0.1)."""
    return _float01(pixels).flatten(1).std(1)


def mean_saturation(pixels: torch.Tensor) -> torch.Tensor:
    """(N,) mean HSV saturation, (max - min) / max over RGB per pixel (0: grey; photos ~0.2-0.5)."""
    x = _float01(pixels)
    hi, lo = x.amax(1), x.amin(1)
    return ((hi - lo) / hi.clamp_min(1e-6)).flatten(1).mean(1)
