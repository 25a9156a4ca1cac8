"""Pure code for putting images in a space and on a page: tiny pixel vectors, 2-D maps, grids.

No Ray, no deepscope.io: callers stream the data in and write the results out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def downsample_pixels(x01: torch.Tensor, size: int) -> np.ndarray:
    """(N, 3, H, W) floats in [0, 1] -> uint8 (N, 3*size*size): the "pixel space" of the lecture's
    nearest-neighbour figure.  Area averaging, so that the tiny image is the mean of its block."""
    import torch  # here, not above: the map stage uses this module without torch
    import torch.nn.functional as F

    with torch.autocast(x01.device.type, enabled=False):  # the same result with or without autocast
        small = F.interpolate(x01.float(), size=(size, size), mode="area")
    return (small * 255).round_().clamp_(0, 255).to(torch.uint8).flatten(1).cpu().numpy()


def tsne(x: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """Barnes-Hut t-SNE of the rows of x -> (n, 2) float32 (perplexity lowered for tiny sets)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(x)
    if n < 3:
        return np.zeros((n, 2), np.float32)
    perplexity = min(perplexity, (n - 1) / 3)  # sklearn requires perplexity < n
    # below a few thousand points an iteration is too little work to split: OpenMP's barriers then
    # cost more than they save (300 points: 3 s on one thread, 45 s on two of a busy machine)
    with threadpool_limits(1 if n < 2000 else None, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed).fit_transform(x).astype(np.float32)


def place_by_neighbour(sample_x: np.ndarray, sample_xy: np.ndarray, rest_x: np.ndarray) -> np.ndarray:
    """2-D positions for points left out of an embedding: the position of their nearest sample point."""
    import faiss

    if len(rest_x) == 0:
        return np.zeros((0, 2), np.float32)
    index = faiss.IndexFlatL2(sample_x.shape[1])
    index.add(np.ascontiguousarray(sample_x, np.float32))
    _, nearest = index.search(np.ascontiguousarray(rest_x, np.float32), 1)
    return sample_xy[nearest[:, 0]]


def grid_cells(xy: np.ndarray, side: int) -> np.ndarray:
    """Assign each 2-D point its own cell of a side x side grid (needs len(xy) <= side**2), keeping
    the layout: an optimal assignment minimising the summed squared distance of points to cells
    (the "cnnembed" picture, where a t-SNE map becomes a full grid of thumbnails).
    Returns the cell number (row * side + column) of each point."""
    from scipy.optimize import linear_sum_assignment

    n = len(xy)
    if n > side * side:
        raise ValueError(f"{n} points do not fit a {side}x{side} grid")
    if n == 0:
        return np.zeros(0, np.int64)
    lo, hi = xy.min(0), xy.max(0)
    unit = (xy - lo) / np.where(hi > lo, hi - lo, 1)  # into [0, 1]^2
    centres = (np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2) + 0.5) / side
    # row = y from the top (image coordinates), column = x
    pts = np.stack([1 - unit[:, 1], unit[:, 0]], 1)
    cost = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    rows, cells = linear_sum_assignment(cost)
    out = np.empty(n, np.int64)
    out[rows] = cells
    return out


def graph_tsne(neighbors: np.ndarray, distances: np.ndarray, init: np.ndarray, perplexity: float = 30.0,
               iterations: int = 750, seed: int = 0, n_jobs: int = -1, log=None) -> np.ndarray:
    """t-SNE of every point from a precomputed k-NN graph (openTSNE: perplexity-based affinities on the
    given neighbours, FFT-accelerated gradients above 10,000 points), so that no point is left out and nothing needs the
    vectors again. neighbors: (n, k) row numbers (the point itself left out), distances: (n, k);
    init: (n, 2) starting layout (PCA's first two components), rescaled as openTSNE recommends.
    Perplexity is lowered to k / 3 (the neighbours the affinities can use). Returns (n, 2) float32."""
    from openTSNE import TSNEEmbedding, affinity, initialization
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    n, k = neighbors.shape
    if n < 4:
        return np.zeros((n, 2), np.float32)
    knn = PrecomputedNeighbors(np.ascontiguousarray(neighbors, np.int64), np.ascontiguousarray(distances, np.float64))
    aff = affinity.PerplexityBasedNN(knn_index=knn, perplexity=min(perplexity, k / 3), n_jobs=n_jobs,
                                     random_state=seed)
    start = initialization.rescale(np.asarray(init, np.float64))
    method = "fft" if n > 10_000 else "bh"  # FFT interpolation costs a fixed grid per iteration: slower below ~10k points
    emb = TSNEEmbedding(start, aff, negative_gradient_method=method, n_jobs=n_jobs, random_state=seed)
    early = max(1, iterations // 3)  # early exaggeration first (openTSNE's defaults: 250 of 750)
    emb = emb.optimize(early, exaggeration=12, momentum=0.5, callbacks=log and [_Progress(log, "early")],
                       callbacks_every_iters=125)
    emb = emb.optimize(iterations - early, momentum=0.8, callbacks=log and [_Progress(log, "main", early)],
                       callbacks_every_iters=125)
    return np.asarray(emb, np.float32)


class _Progress:
    """openTSNE callback: a line every 125 iterations (a 1,000,000-point map takes minutes)."""

    def __init__(self, log, phase: str, offset: int = 0):
        self.log, self.phase, self.offset = log, phase, offset

    def __call__(self, iteration, error, embedding):
        self.log(f"map: graph t-SNE {self.phase} iteration {self.offset + iteration}, KL {error:.3f}")
        return False
