"""Segmentation without supervision: GrabCut (OpenCV) seeded by a saliency map.

As in Simonyan et al. 2014 (section 3.2): the most salient pixels are taken as sure foreground,
the least salient as sure background, and GrabCut's colour models spread the labels from
there to the object's edges.  The rest is split into probable foreground (above the median)
and probable background.
"""
from __future__ import annotations

import cv2
import numpy as np


def grabcut_from_saliency(rgb: np.ndarray, saliency: np.ndarray, fg_share: float = 0.05,
                          bg_share: float = 0.30, iterations: int = 5) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) non-negative map -> (H, W) bool object mask.

    fg_share: the most salient share of pixels seeded as sure foreground; bg_share: the least
    salient share seeded as sure background.  A map without contrast (constant, or NaN) cannot
    seed anything: the mask is empty.
    """
    s = np.nan_to_num(np.asarray(saliency, np.float64))
    if s.max() <= s.min():
        return np.zeros(s.shape, bool)
    hi, mid = np.quantile(s, [1 - fg_share, 0.5])
    if hi <= s.min():  # the map is non-zero on fewer pixels than fg_share: that support is the seed
        hi = s[s > s.min()].min()
    fg = s >= hi
    # the bg_share least salient pixels; among equals (a map's flat zero region) the farthest from
    # the foreground seed, so that GrabCut, not a tie, decides the pixels near the object
    far = cv2.distanceTransform((~fg).astype(np.uint8), cv2.DIST_L2, 3)
    order = np.lexsort((-far.ravel(), s.ravel()))
    bg = np.zeros(s.size, bool)
    bg[order[:int(round(bg_share * s.size))]] = True
    bg = bg.reshape(s.shape) & ~fg
    mask = np.where(s > mid, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[fg] = cv2.GC_FGD
    mask[bg] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    img = np.ascontiguousarray(rgb[..., ::-1])  # OpenCV's colour order; GrabCut's models do not care, but stay faithful
    cv2.setRNGSeed(0)  # GrabCut's k-means initialisation: same input, same mask
    try:
        cv2.grabCut(img, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few seed pixels for its colour models (k-means needs 5 per side)
        return fg
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (NaN when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")
