"""Network dissection (Bau et al., "Network Dissection", CVPR 2017), the arithmetic.

Pass 1, thresholds. A unit's threshold T_k is the (1 - q) quantile of its activations over every
position of every image (numpy's default 'linear' quantile). It is computed exactly and mergeably:
that quantile depends only on the n - floor((1-q)(n-1)) largest of the n values, so each image keeps
its `quantile_buffer(q, n_max)` largest values per unit (n_max bounds n from above, and the buffer
size grows with n), any set of buffers reduces to the largest m of their union, and the final
buffer plus the count n gives numpy's answer bit for bit. Memory per unit: m = about q * n values
(ResNet-18 layer4 on Broden, 63k images x 49 positions, q = 0.005: 15.5k floats per unit).

Pass 2, counts. Each unit's map is upsampled (bilinear) to the mask pixels that the model saw and
thresholded at T_k (strictly above). Per image, for unit c and concept l:
  intersection[c, l] = active pixels of c that carry l,
  label_pixels[l] = pixels that carry l,
  active[c] = active pixels of c (counted towards a concept's union only in images that annotate
              the concept's category, as NetDissect does: an unannotated category says nothing).
Integer sums over images, so any partition and merge order gives the same table.
IoU[c, l] = intersection / (active-in-annotated-images + label_pixels - intersection).
"""
from __future__ import annotations

import math

import numpy as np
import torch


# -- pass 1: exact top-quantile thresholds ------------------------------------------------------
def _virtual_index(n: int, p: float) -> float:
    """numpy's 'linear' (Hyndman-Fan 7) index of quantile p in a sorted sample of n, same float ops."""
    return float((np.float64(n) - 1) * np.float64(p))


def quantile_buffer(q: float, n: int) -> int:
    """How many of the largest of n values fix their (1 - q) quantile: floor(index) .. n-1, plus one
    spare against float rounding in the index."""
    if n <= 0:
        return 0
    return int(min(n, n - math.floor(_virtual_index(n, 1.0 - q)) + 1))


def top_values(values: np.ndarray, m: int) -> np.ndarray:
    """values (C, n) -> each row's m largest (C, min(m, n)), sorted descending."""
    values = np.asarray(values)
    if values.shape[1] > m:
        values = np.partition(values, values.shape[1] - m, axis=1)[:, values.shape[1] - m:]
    return -np.sort(-values, axis=1)


def threshold_from_top(top: np.ndarray, n: int, q: float) -> np.ndarray:
    """top (C, >= quantile_buffer(q, n)) sorted descending, the largest of n values per unit ->
    np.quantile(all values, 1 - q) per unit, float64 (the same float operations as numpy)."""
    top = np.asarray(top, np.float64)
    if n <= 0:
        return np.full(top.shape[0], np.nan)
    h = _virtual_index(n, 1.0 - q)
    if h >= n - 1:
        return top[:, 0].copy()
    lo = max(math.floor(h), 0)
    # sorted ascending position i of the whole sample is top[:, n - 1 - i]
    if n - 1 - lo >= top.shape[1]:
        raise ValueError(f"the buffer of {top.shape[1]} values is too small for n = {n}, q = {q}")
    a, b = top[:, n - 1 - lo], top[:, n - 2 - lo]
    t = np.float64(h - lo)
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


# -- pass 2: upsample, threshold, count -----------------------------------------------------
def mask_grid(width: int, height: int, mask_w: int, mask_h: int, crop: int, scale: float, left: float,
              top: float, map_w: int, map_h: int):
    """The mask pixels that the model's crop covers, and where their centres fall on a map_h x map_w
    activation map (align_corners=False convention, clamped at the border).

    -> (mask rows, mask cols, map y (float), map x (float)); (scale, left, top) is the crop box in
    original pixels (Transform.crop_box_in_original)."""
    def axis(n_mask, size, start, n_map):
        centre = (np.arange(n_mask) + 0.5) * (size / n_mask)  # original pixels
        u = (centre - start) / scale  # model-input pixels
        inside = (u >= 0) & (u < crop)
        return np.nonzero(inside)[0], np.clip(u[inside] * n_map / crop - 0.5, 0, n_map - 1)

    rows, ys = axis(mask_h, height, top, map_h)
    cols, xs = axis(mask_w, width, left, map_w)
    return rows, cols, ys, xs


def upsample(act: torch.Tensor, ys, xs) -> torch.Tensor:
    """act (C, h, w) sampled bilinearly at rows ys x columns xs (map coordinates) -> (C, len(ys), len(xs)).

    Separable, in the form a + t * (b - a): a constant map stays exactly constant (so a constant
    unit never rises above its own threshold through rounding)."""
    dev = act.device
    act = act.float()
    _, h, w = act.shape

    def corners(v, n):
        v = torch.as_tensor(np.asarray(v), dtype=torch.float32, device=dev)
        i0 = v.floor().long().clamp(0, n - 1)
        return i0, (i0 + 1).clamp(max=n - 1), v - i0

    x0, x1, tx = corners(xs, w)
    y0, y1, ty = corners(ys, h)
    a = act[:, :, x0]
    across = a + tx * (act[:, :, x1] - a)  # (C, h, nx)
    b = across[:, y0, :]
    return b + ty[:, None] * (across[:, y1, :] - b)


def membership(label_maps: list[np.ndarray], image_labels: list[int], n_pixels: int):
    """Pixel labels of one image -> (present label numbers (L,), pixels x labels 0/1 float32 (P, L)).

    label_maps: int arrays over the same P pixels (0 = unlabelled), one per mask file (a pixel may carry
    several labels); image_labels: labels of the whole image (scene, ...)."""
    present = np.unique(np.concatenate([np.asarray(m).ravel() for m in label_maps] + [np.asarray(image_labels, np.int64)]))
    present = present[present > 0].astype(np.int64)
    member = np.zeros((n_pixels, len(present)), np.float32)
    pix = np.arange(n_pixels)
    for m in label_maps:
        m = np.asarray(m).ravel()
        on = m > 0
        member[pix[on], np.searchsorted(present, m[on])] = 1.0
    for lab in image_labels:
        if lab > 0:
            member[:, np.searchsorted(present, lab)] = 1.0
    return present, member


def image_counts(active: torch.Tensor, member: np.ndarray):
    """active (C, P) bool, member (P, L) 0/1 -> (intersection (C, L) int64, active pixels (C,) int64,
    label pixels (L,) int64). Float32 sums are exact below 2^24 pixels."""
    m = torch.as_tensor(member, device=active.device)
    a = active.float()
    inter = (a @ m).round().long().cpu().numpy() if m.shape[1] else np.zeros((a.shape[0], 0), np.int64)
    return inter, active.sum(1).long().cpu().numpy(), member.sum(0).astype(np.int64)


def union(intersection: np.ndarray, active_in_category: np.ndarray, label_pixels: np.ndarray,
          label_category: np.ndarray) -> np.ndarray:
    """Dataset (or partition) unions (C, L+1): active pixels of c in images annotating l's category,
    plus l's pixels, minus their intersection. label_category[l] = category index (-1: none)."""
    act = np.where(label_category[None, :] >= 0, active_in_category[:, np.maximum(label_category, 0)], 0)
    return act + label_pixels[None, :] - intersection


def iou(intersection: np.ndarray, union_: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union_ > 0, intersection / np.maximum(union_, 1), 0.0)


def rank_concepts(iou_: np.ndarray, k: int, skip: tuple[int, ...] = (0,)) -> tuple[np.ndarray, np.ndarray]:
    """iou (C, L+1) -> each unit's k best concepts (C, k) and their IoU, best first (ties: lower label
    number first; skip: labels never chosen, 0 = unlabelled)."""
    scores = np.asarray(iou_, np.float64).copy()
    scores[:, list(skip)] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    return order, np.take_along_axis(np.asarray(iou_, np.float64), order, axis=1)
