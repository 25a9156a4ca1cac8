"""Exact top k per channel over a stream of images, in bounded memory.

Each image contributes one candidate per channel: its largest activation and where it is
(so a channel's top k holds at most one patch per image). Any set of candidates reduces to
its k best per channel, and the best k of a union are the best k of the parts' best k, so
partitions reduce independently and merge in any order into the exact global answer.
Order: score descending, ties broken by id ascending, so every merge order gives the same rows.
"""
from __future__ import annotations

import numpy as np
import torch


def spatial_max(act: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) or (N, C) -> (score float32 (N, C), position int32 (N, C)): each channel's largest
    activation in each image and its flat position row * W + col (the first in row-major order on
    ties; 0 for (N, C) layers, which have one position)."""
    if act.ndim == 2:
        return act.float().cpu().numpy(), np.zeros(act.shape, np.int32)
    if act.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) or (N, C) activation, got shape {tuple(act.shape)}")
    score, pos = act.float().flatten(2).max(dim=2)  # max returns the first maximal index
    return score.cpu().numpy(), pos.to(torch.int32).cpu().numpy()


def top_k_rows(channel: np.ndarray, score: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a long candidate table to keep -> (row indices, rank): the k best rows of each channel,
    ordered by channel then rank. ids: any sortable array (strings, or integers in id order)."""
    order = np.lexsort((ids, -np.asarray(score, np.float64), channel))  # last key sorts first
    ch = np.asarray(channel)[order]
    n = len(order)
    starts = np.r_[True, ch[1:] != ch[:-1]] if n else np.zeros(0, bool)
    rank = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    keep = rank < k
    return order[keep], rank[keep]


def top_k_matrix(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (N images, C channels) -> (image index, channel index, rank) of each channel's k best images."""
    n, c = scores.shape
    _, id_order = np.unique(np.asarray(ids), return_inverse=True)  # integers in id order: a cheap tie-break
    image = np.repeat(np.arange(n), c)
    channel = np.tile(np.arange(c), n)
    rows, rank = top_k_rows(channel, scores.reshape(-1), id_order.reshape(-1)[image], k)
    return image[rows], channel[rows], rank
