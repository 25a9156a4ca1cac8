"""Activation atlas (Carter et al. 2019): activation vectors laid out in 2-D, binned on a grid,
each cell's mean vector to be turned into a picture (algos/invert.py: invert_vectors).

Pure numpy / scikit-learn: no Ray, no io."""
from __future__ import annotations

import numpy as np

from deepscope.algos.embed import place_by_neighbour, tsne


def sample_positions(n_positions: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct positions of a map of n_positions (all of them when k >= n_positions), sorted."""
    if k >= n_positions:
        return np.arange(n_positions)
    return np.sort(rng.choice(n_positions, size=k, replace=False))


def layout(vectors: np.ndarray, method: str = "tsne", max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """(n, C) -> (n, 2) float32. PCA to 50 dimensions first; t-SNE on at most max_points of them
    (a seeded sample), every other point placed where its nearest sampled neighbour is; "pca": the
    first two principal components of all points."""
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, np.float32)
    n = len(x)
    if n < 3:
        return np.zeros((n, 2), np.float32)
    rng = np.random.default_rng(seed)
    fit = x[rng.choice(n, size=min(n, max_points * 4), replace=False)] if n > max_points * 4 else x
    pca = PCA(n_components=min(50 if method == "tsne" else 2, x.shape[1], len(fit)), random_state=seed).fit(fit)
    z = pca.transform(x).astype(np.float32)
    if method == "pca":
        return z[:, :2]
    sample = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    xy = np.empty((n, 2), np.float32)
    xy[sample] = tsne(z[sample], seed=seed)
    rest = np.setdiff1d(np.arange(n), sample)
    xy[rest] = place_by_neighbour(z[sample], xy[sample], z[rest])
    return xy


def bin_cells(xy: np.ndarray, side: int) -> np.ndarray:
    """(n, 2) -> (n,) cell number row * side + column of a side x side grid over the points'
    bounding box (row 0 at the top: y grows upwards, as on a scatter plot)."""
    lo, hi = xy.min(0), xy.max(0)
    unit = (xy - lo) / np.where(hi > lo, hi - lo, 1)
    col = np.minimum((unit[:, 0] * side).astype(np.int64), side - 1)
    row = np.minimum(((1 - unit[:, 1]) * side).astype(np.int64), side - 1)
    return row * side + col


def cell_means(vectors: np.ndarray, cells: np.ndarray, min_count: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell numbers, counts, mean vectors) of the cells holding at least min_count vectors."""
    order = np.argsort(cells, kind="stable")
    ids, counts = np.unique(cells[order], return_counts=True)
    if not len(ids):
        return ids, counts, np.zeros((0, vectors.shape[1]), np.float32)
    sums = np.add.reduceat(np.asarray(vectors, np.float32)[order], np.r_[0, np.cumsum(counts)[:-1]], axis=0)
    keep = counts >= min_count
    return ids[keep], counts[keep], (sums[keep] / counts[keep, None]).astype(np.float32)
