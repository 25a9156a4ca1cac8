"""What a whole dataset's neighbours say, on arrays: exact blocked k-NN, near-duplicate evidence
from feature and pixel space, a data-driven threshold, connected components, uniqueness and
label disagreement.

Pure numpy/scipy: no Ray, no store.  deepscope/index/knn.py runs the distributed search and
deepscope/stages/knn.py reads and writes the folder.

Distances: "l2" is the Euclidean distance, "cosine" is 1 - cos (as the index reports them).
"""
from __future__ import annotations

import functools
import math
from collections import Counter

import numpy as np

# ---------------------------------------------------------------------------- exact k-NN


class TopK:
    """The k smallest distances (and their rows) of each of nq queries, merged block by block.
    Internal distances are squared L2 (of normalised vectors for cosine)."""

    def __init__(self, nq: int, k: int):
        self.k = k
        self.d = np.full((nq, k), np.inf, np.float32)
        self.i = np.full((nq, k), -1, np.int64)

    def add(self, d: np.ndarray, rows: np.ndarray) -> None:
        """d, rows: (nq, m) candidates of every query (any order; rows < 0 are ignored)."""
        d = np.where(rows < 0, np.inf, d).astype(np.float32, copy=False)
        d = np.concatenate([self.d, d], 1)
        i = np.concatenate([self.i, rows.astype(np.int64, copy=False)], 1)
        if d.shape[1] > self.k:
            part = np.argpartition(d, self.k - 1, axis=1)[:, :self.k]
            d, i = np.take_along_axis(d, part, 1), np.take_along_axis(i, part, 1)
        order = np.lexsort((i, d), axis=1)  # by distance, ties by row: deterministic
        self.d, self.i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)

    def add_block(self, queries: np.ndarray, x: np.ndarray, start: int, exclude: np.ndarray | None = None) -> None:
        """Exact distances from the queries to rows start..start+len(x) (exclude: each query's own
        global row, left out)."""
        if len(x) == 0:
            return
        d = sq_l2(queries, x)
        rows = np.broadcast_to(np.arange(start, start + len(x), dtype=np.int64), d.shape)
        if exclude is not None:
            rows = np.where(rows == exclude[:, None], -1, rows)
        k = min(self.k, d.shape[1])
        part = np.argpartition(np.where(rows < 0, np.inf, d), k - 1, axis=1)[:, :k]
        # the matrix product's |q|^2 - 2 q.x + |x|^2 loses the small distances to cancellation (a copy
        # lands at 1e-3, not 0): the chosen few are recomputed directly
        diff = queries[:, None, :] - x[part]
        exact = np.einsum("qkd,qkd->qk", diff, diff)
        self.add(exact, np.take_along_axis(rows, part, 1))


def sq_l2(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(nq, nx) squared Euclidean distances, one matrix product (float32, clamped at 0)."""
    d = (q * q).sum(1, dtype=np.float32)[:, None] - 2 * (q @ x.T) + (x * x).sum(1, dtype=np.float32)[None, :]
    return np.maximum(d, 0, out=d)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def reported(sq: np.ndarray, metric: str) -> np.ndarray:
    """Internal squared L2 -> the reported distance (Euclidean, or 1 - cos = |a - b|^2 / 2)."""
    return (np.sqrt(np.maximum(sq, 0)) if metric == "l2" else sq / 2).astype(np.float32)


def exact_knn(queries: np.ndarray, data, k: int, metric: str = "l2", block_rows: int = 16384,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest rows of data for each query, in blocks of block_rows data rows (memory:
    nq x block_rows distances). data: an array, or an iterable of (first row, block) pairs.
    exclude: (nq,) a row to leave out per query (its own).  -> (distances (nq, k), rows (nq, k)),
    nearest first; -1 / inf pad when data has fewer than k rows."""
    q = prepare(queries, metric)
    top = TopK(len(q), k)
    blocks = ((s, data[s:s + block_rows]) for s in range(0, len(data), block_rows)) if isinstance(data, np.ndarray) else data
    for start, x in blocks:
        top.add_block(q, prepare(x, metric), start, exclude)
    return reported(top.d, metric), top.i


def search_lists(x: np.ndarray, assigned: np.ndarray, lists, k: int,
                 inner_product: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An IVF search done list by list: the queries that probe a list are compared with its vectors in
    one matrix product, instead of query by query (the same answer as FAISS's search_preassigned over
    raw vectors, at BLAS speed).  x: (nq, d) queries; assigned: (nq, nprobe) the lists each probes (-1:
    none); lists(l) -> (vectors (m, d) float32, ids (m,) int64) (ivf_lists).  -> (squared L2, or minus
    the inner product, (nq, k), ids), nearest first, -1 / inf padded."""
    nq, nprobe = assigned.shape
    dist = np.full((nq, nprobe, k), np.inf, np.float32)
    ids = np.full((nq, nprobe, k), -1, np.int64)
    qn = (x * x).sum(1, dtype=np.float32)
    flat = assigned.reshape(-1)
    order = np.argsort(flat, kind="stable")
    keys = flat[order]
    starts = np.searchsorted(keys, np.unique(keys[keys >= 0]))
    ends = np.append(starts[1:], len(keys))
    for start, end in zip(starts, ends):
        vec, vid = lists(int(keys[start]))
        if len(vid) == 0:
            continue
        entries = order[start:end]
        q, slot = entries // nprobe, entries % nprobe
        xq = x[q]
        d = xq @ vec.T
        if inner_product:
            d *= -1
        else:
            d *= -2
            d += qn[q][:, None]
            d += (vec * vec).sum(1, dtype=np.float32)[None, :]
        kk = min(k, len(vid))
        if len(vid) > kk and kk <= 2:  # one or two: row minima, much faster than a partition
            part, sel, r = np.empty((len(q), kk), np.int64), np.empty((len(q), kk), np.float32), np.arange(len(q))
            for t in range(kk):
                part[:, t] = d.argmin(1)
                sel[:, t] = d[r, part[:, t]]
                d[r, part[:, t]] = np.inf
        elif len(vid) > kk:
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            sel = np.take_along_axis(d, part, 1)
        else:
            part, sel = np.broadcast_to(np.arange(kk), (len(q), kk)), d
        if not inner_product:
            # |q|^2 - 2 q.x + |x|^2 loses small distances to cancellation: those few are recomputed directly
            r, c = np.nonzero(sel < 1e-3 * qn[q][:, None])
            if len(r):
                diff = xq[r] - vec[part[r, c]]
                sel = np.array(sel, np.float32)
                sel[r, c] = np.einsum("nd,nd->n", diff, diff)
            sel = np.maximum(sel, 0)
        dist[q, slot, :kk] = sel
        ids[q, slot, :kk] = vid[part]
    top = TopK(nq, k)
    top.add(dist.reshape(nq, -1), ids.reshape(nq, -1))
    return top.d, top.i


def ivf_lists(ivf):
    """l -> (vectors float32, ids) of an IVF index's list l, for the indexes whose lists hold the vectors
    themselves: IVF-Flat (views of FAISS's arrays; the index stays alive) and IVF-SQ8_direct not by
    residual (the pixels' bytes, converted list by list: FAISS scans those codes query by query, about
    4x slower here than the matrix product).  None for other indexes (their codes are not the vectors)."""
    import faiss

    ivf = faiss.downcast_index(ivf)
    inv, d = ivf.invlists, ivf.d
    if isinstance(ivf, faiss.IndexIVFFlat):
        width, as_vectors = 4, lambda raw, m: raw.view(np.float32).reshape(m, d)
    elif (isinstance(ivf, faiss.IndexIVFScalarQuantizer) and not ivf.by_residual
          and ivf.sq.qtype == faiss.ScalarQuantizer.QT_8bit_direct):
        width, as_vectors = 1, lambda raw, m: raw.reshape(m, d).astype(np.float32)
    else:
        return None

    def read(lst: int):
        m = inv.list_size(lst)
        if m == 0:
            return np.zeros((0, d), np.float32), np.zeros(0, np.int64)
        codes = as_vectors(faiss.rev_swig_ptr(inv.get_codes(lst), m * d * width), m)
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), m).view(np.int64)
        return codes, ids

    return read


def drop_self(dist: np.ndarray, rows: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search results of k + 1 (or more) per query, with each query's own row removed (wherever it
    ranks: exact copies tie with it), cut to k; -1 rows (FAISS padding) move to the end."""
    keep = (rows != own[:, None]) & (rows >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(np.where(keep, dist, np.inf), order, 1)
    r = np.take_along_axis(np.where(keep, rows, -1), order, 1)
    return d.astype(np.float32), r.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours (rows >= 0 of truth) that found holds."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


# ---------------------------------------------------------------------------- near-duplicates

SIGNATURE_GRID = 8  # the pixel signature: 3 x 8 x 8 area means of the lightly blurred tiny image


def pixel_signature(pixels: np.ndarray, size: int) -> np.ndarray:
    """Tiny images (n, 3 * size * size) uint8 (CHW, the pixels stage) -> unit vectors (n, 192):
    blurred (sigma 3/32 of the side), area-averaged to 8 x 8, each channel's mean removed.  The dot product
    of two signatures is a correlation: unchanged by lightening or contrast, and by the pixel or two
    that a crop or a resize shifts; look-alike scenes (the same shapes elsewhere) still differ."""
    from scipy.ndimage import gaussian_filter

    x = pixels.reshape(len(pixels), 3, size, size).astype(np.float32)
    g = SIGNATURE_GRID if size % SIGNATURE_GRID == 0 else 1
    x = gaussian_filter(x, (0, 0, size * 3 / 32, size * 3 / 32), mode="nearest")
    f = size // g
    x = x.reshape(len(x), 3, g, f, g, f).mean((3, 5))
    x -= x.mean((2, 3), keepdims=True)
    x = x.reshape(len(x), -1)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)).astype(np.float32)


RANK_GRID = 16  # the rank signature: the grey tiny image's ranks, area-averaged to 16 x 16


def rank_signature(pixels: np.ndarray, size: int) -> np.ndarray:
    """Tiny images (n, 3 * size * size) (CHW, the pixels stage) -> unit vectors (n, 256): each grey pixel
    replaced by its rank within its own picture (mid-ranks for ties, so that a flat paper stays flat),
    area-averaged to 16 x 16, mean removed.  Any rising curve (lightening, contrast, gamma, the clipping a
    lightening causes) leaves the ranks as they are, where the signature's correlation bends with it."""
    import cv2

    n, levels = len(pixels), 766  # grey = the sum of the three channels' bytes
    grey = np.clip(np.rint(pixels.reshape(n, 3, size * size).sum(1, dtype=np.float32)), 0, levels - 1).astype(np.int32)
    level = (grey + levels * np.arange(n, dtype=np.int32)[:, None]).ravel()  # (picture, grey level) as one index
    counts = np.bincount(level, minlength=n * levels).reshape(n, levels).astype(np.float32)
    mid = np.cumsum(counts, 1) - (counts + 1) / 2  # each level's mid-rank in its picture
    ranks = mid.ravel()[level].reshape(n, size, size)
    if size % RANK_GRID == 0:
        f = size // RANK_GRID
        x = ranks.reshape(n, RANK_GRID, f, RANK_GRID, f).mean((2, 4))
    else:
        x = np.stack([cv2.resize(r, (RANK_GRID, RANK_GRID), interpolation=cv2.INTER_AREA) for r in ranks])
    x = x.reshape(n, -1)
    x -= x.mean(1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray, mirrored: bool = False) -> np.ndarray:
    """Row-wise 1 - correlation of signatures (0: the same picture, about 1: unrelated); a flat
    image (no structure) is at 1 from everything.  mirrored: the smaller of the distances to b and to
    b mirrored left-right (a flipped copy is near its original)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    d = np.clip(1 - (a * b).sum(1), 0, 2)
    if mirrored and b.shape[1] == 3 * SIGNATURE_GRID ** 2:
        m = b.reshape(len(b), 3, SIGNATURE_GRID, SIGNATURE_GRID)[..., ::-1].reshape(len(b), -1)
        d = np.minimum(d, np.clip(1 - (a * m).sum(1), 0, 2))
    return d


SKETCH_SIDE = 16  # the pixel sketch: each colour channel's fine detail at 16 x 16
SKETCH_CENTRE, SKETCH_SCALES = 0.75, (1.0, 1.17)  # what is looked for, and at what sizes (crops of 15% a side)


def pixel_sketch(pixels: np.ndarray, size: int) -> np.ndarray:
    """Tiny images (n, 3 * size * size) uint8 (CHW, the pixels stage) -> (n, 16, 16, 3) int8: each colour
    channel's band-pass at 16 x 16 (between 0.5 and 1.5 of its pixels), divided by its RMS and squashed
    (tanh, x 127) so that a caption's strong edges weigh no more than the picture's own.  A picture
    with under a grey level of detail gives zeros (nothing to compare)."""
    import cv2

    out = np.zeros((len(pixels), SKETCH_SIDE, SKETCH_SIDE, 3), np.int8)
    for i, x in enumerate(pixels.reshape(len(pixels), 3, size, size)):
        c = np.ascontiguousarray(x.transpose(1, 2, 0), np.float32)
        if size != SKETCH_SIDE:
            c = cv2.resize(c, (SKETCH_SIDE, SKETCH_SIDE), interpolation=cv2.INTER_AREA if size > SKETCH_SIDE else cv2.INTER_LINEAR)
        d = cv2.GaussianBlur(c, (0, 0), 0.5) - cv2.GaussianBlur(c, (0, 0), 1.5)
        rms = float(np.sqrt((d ** 2).mean()))
        if rms >= 1.0:
            out[i] = np.round(127 * np.tanh(d / rms))
    return out


def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src): the linear map cv2.resize(INTER_LINEAR) applies along one axis."""
    import cv2

    return cv2.resize(np.eye(src, dtype=np.float32), (src, dst), interpolation=cv2.INTER_LINEAR)


def _templates(sketches: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """The central 3/4 of each sketch at each of SKETCH_SCALES -> per scale (len(rows), m*m*3) rows with
    their mean removed and unit norm (zeros where the sketch is empty)."""
    n, c = SKETCH_SIDE, int(round(SKETCH_SIDE * (1 - SKETCH_CENTRE) / 2))
    centre = sketches[rows, c:n - c, c:n - c].astype(np.float32)
    out = []
    for s in SKETCH_SCALES:
        m = int(round(centre.shape[1] * s))
        r = _resize_matrix(centre.shape[1], m)
        t = centre if m == centre.shape[1] else np.einsum("yi,kijc,xj->kyxc", r, centre, r, optimize=True)
        t = t.reshape(len(rows), -1)
        t = t - t.mean(1, keepdims=True)
        out.append(t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6))
    return out


@functools.lru_cache(maxsize=None)
def _window_index(m: int) -> np.ndarray:
    """Flat indices into a (16, 16, 3) sketch of its every m x m window, then of its mirror's (a gather
    is faster than a strided view's copy)."""
    n = SKETCH_SIDE
    grid = np.arange(n * n * 3).reshape(n, n, 3)
    views = [np.lib.stride_tricks.sliding_window_view(g, (m, m), axis=(0, 1)).transpose(0, 1, 3, 4, 2).reshape(-1, m * m * 3)
             for g in (grid, grid[:, ::-1])]
    return np.concatenate(views)


def _windows(sketch: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Every m x m window of one sketch and of it mirrored -> (2 * positions, m*m*3) and each window's
    norm once its mean is removed (the denominator of a normalised correlation)."""
    w = sketch.reshape(-1).astype(np.float32)[_window_index(m)]
    return w, np.sqrt(np.maximum((w * w).sum(1) - w.sum(1) ** 2 / w.shape[1], 0))


def sketch_agreement(sketches: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 16384) -> np.ndarray:
    """How well two pictures' sketches agree if one is the other cropped, resized, rotated a little or
    mirrored: the best normalised correlation of the central 3/4 of one sketch, at 1 or 1.17 times its size,
    anywhere in the other (shifts up to 1/8 of a side), as it is or mirrored, both ways round.  A copy
    keeps its fine detail where it is; two different pictures, even of one layout, do not.  A cheap first
    look, before the thumbnails are compared: -> (m,) float32, NaN where either sketch is empty.
    One matrix product per image and scale: its windows against the templates of every image paired
    with it (templates made for a block of images at a time: 4 KB each)."""
    out = np.full(len(a), -1.0, np.float32)
    if not len(a):
        return out
    empty = ~sketches.reshape(len(sketches), -1).any(1)
    at = np.empty(len(a), np.int64)  # each pair's row in its block's templates
    for one, other in ((a, b), (b, a)):  # one's centre looked for in other
        order = np.argsort(other, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(other[order]) != 0])
        ends = np.r_[starts[1:], len(order)]
        for s0 in range(0, len(starts), block):
            sel = order[starts[s0]:ends[min(s0 + block, len(starts)) - 1]]
            rows, where = np.unique(one[sel], return_inverse=True)
            templates = _templates(sketches, rows)
            at[sel] = where
            for lo, hi in zip(starts[s0:s0 + block], ends[s0:s0 + block]):
                pairs = order[lo:hi]
                best = out[pairs]
                for t in templates:
                    w, norm = _windows(sketches[other[pairs[0]]], int(round(np.sqrt(t.shape[1] // 3))))
                    best = np.maximum(best, ((w @ t[at[pairs]].T) / np.maximum(norm, 1e-6)[:, None]).max(0))
                out[pairs] = best
    out[empty[a] | empty[b]] = np.nan
    return out


def combine(d_feat: np.ndarray, d_pix: np.ndarray | None, scale_feat: float, scale_pix: float | None) -> np.ndarray:
    """One duplicate distance per pair: the geometric mean of the feature and pixel distances, each
    divided by its typical value (scale: the median over the graph's edges).  A copy is near in both
    spaces; a look-alike is near in features but not in pixels, or the reverse, so the product
    separates what neither space separates alone.  Without pixels: the scaled feature distance."""
    f = np.maximum(d_feat, 0) / max(scale_feat, 1e-12)
    if d_pix is None:
        return f.astype(np.float32)
    return np.sqrt(f * np.maximum(d_pix, 0) / max(scale_pix, 1e-12)).astype(np.float32)


def choose_threshold(nearest: np.ndarray, min_dip: float = 0.5, floor: float = 1e-3) -> tuple[float, dict]:
    """A duplicate threshold from the data: each image's nearest (combined) distance, on a log scale.

    The unrelated images form a bulk; copies form a second, lower population.  A kernel density of the
    log distances (Gaussian, bandwidth by Silverman's rule on the bulk's upper quartile, which copies do
    not reach) is scanned below the bulk's median: the threshold is the lowest point of the valley
    between the two, where the density falls under min_dip times the highest density below it.  A
    valley of zero width (a clean gap) puts it mid-gap.  No such dip: no second population, and the
    threshold goes far below the bulk (median / 4), usually under every image.
    -> (threshold, {"method", "median", "bandwidth", "dip"})."""
    d = np.sort(np.asarray(nearest, np.float64)[np.isfinite(nearest)])
    if len(d) < 3:
        return 0.0, {"method": "too few images", "median": float(d[0]) if len(d) else None}
    median = float(np.median(d))
    x = np.log(np.maximum(d, floor * max(median, 1e-12)))
    m = float(np.log(max(median, 1e-12)))
    spread = (float(np.quantile(x, 0.75)) - m) / 0.6745  # the bulk's sigma, from its upper side only
    h = max(1.06 * max(spread, 1e-3) * len(x) ** -0.2, 1e-3)
    grid = np.linspace(x[0] - 3 * h, m, 512)
    f = np.zeros(len(grid))
    for s0 in range(0, len(x), 4096):  # memory: 512 x 4096 at a time
        f += np.exp(-0.5 * ((grid[:, None] - x[None, s0:s0 + 4096]) / h) ** 2).sum(1)
    left_peak = np.maximum.accumulate(f)
    dips = np.nonzero(f < min_dip * left_peak)[0]
    fallback = (median / 4, {"method": "no second population below the bulk: median / 4", "median": median,
                             "bandwidth": round(h, 4), "dip": None})
    if not len(dips):
        return fallback
    # the valley nearest the bulk: the last run of dipping points, and its lowest stretch's middle
    first = len(dips) - 1
    while first > 0 and dips[first - 1] == dips[first] - 1:
        first -= 1
    valley = dips[first:]
    lowest = f[valley].min()
    run = valley[f[valley] <= lowest + 1e-6 * max(left_peak[valley[0]], 1e-12)]
    g = grid[run[len(run) // 2]]
    below = int(np.searchsorted(x, g))
    dip = float(lowest / max(left_peak[run[0]], 1e-12))
    return float(math.exp(g)), {"method": f"the density valley below the bulk ({below} images under it, "
                                          f"density {dip:.2f} of the peak below)",
                                "median": median, "bandwidth": round(h, 4), "dip": round(dip, 4)}


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph on n nodes with edges (a[i], b[i]) -> a label per
    node (the smallest node of its component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(a), np.int8), (np.asarray(a, np.int64), np.asarray(b, np.int64))), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    first = np.full(lab.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(first, lab, np.arange(n))
    return first[lab]


def local_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An order of the pairs (a[i], b[i]) that keeps each image's pairs near each other: a chunk of pairs
    gathers and prepares (decodes, finds the keypoints of) every image it holds, so an image whose pairs
    fall in three chunks is prepared three times.  Reverse Cuthill-McKee over the pair graph (neighbours
    numbered near each other), each pair placed by its earlier image: on the knn-cost set's pairs in
    chunks of 313, 1.37 preparations an image instead of 1.61 sorted by row (1.79 instead of 2.05 in
    chunks of 50, as at a million).  The decisions do not depend on it: each pair is verified alone."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    nodes, at = np.unique(np.r_[a, b], return_inverse=True)
    ia, ib = at[:len(a)], at[len(a):]
    g = coo_matrix((np.ones(len(a), np.int8), (ia, ib)), shape=(len(nodes), len(nodes))).tocsr()
    perm = reverse_cuthill_mckee((g + g.T).tocsr(), symmetric_mode=True)
    place = np.empty(len(nodes), np.int64)
    place[perm] = np.arange(len(nodes))
    return np.lexsort((np.maximum(place[ia], place[ib]), np.minimum(place[ia], place[ib])))


def pair_tasks(a: np.ndarray, b: np.ndarray, tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (a[i], b[i]) cut into `tasks` tasks of about equal numbers of pairs so that an image's pairs
    share few tasks (each task that holds an image prepares it: decodes it, finds its keypoints) -> (order,
    starts): the pairs task by task, each task's in local_order (its images freed early), and where each
    task's pairs start.  A k-way partition of the pair graph (METIS, each image weighted by its pairs: the
    parts balance pairs) puts most pairs with both images in one part; a pair cut between two parts goes
    to the part where its other image is prepared anyway for more of that image's cut pairs, while that part
    has room (5% over an equal share).  On the 99,989 generated scenes' 272,628 verified pairs in 14 tasks,
    1.56 preparations an image instead of 2.37 cut from local_order (137 tasks: 2.07 instead of 2.91).  The
    decisions do not depend on it: each pair is verified alone."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if tasks <= 1 or len(a) <= tasks:  # one task, or one pair a task
        order = local_order(a, b) if len(a) else np.zeros(0, np.int64)
        return order, (np.zeros(min(1, len(a)), np.int64) if tasks <= 1 else np.arange(len(a)))
    import pymetis
    from scipy.sparse import coo_matrix

    nodes, at = np.unique(np.r_[a, b], return_inverse=True)
    ia, ib = at[:len(a)], at[len(a):]
    n = len(nodes)
    g = coo_matrix((np.ones(len(a), np.int8), (ia, ib)), shape=(n, n)).tocsr()
    g = ((g + g.T) > 0).tocsr()
    g.setdiag(0)
    g.eliminate_zeros()  # METIS takes neither loops nor repeated edges
    degree = np.bincount(ia, minlength=n) + np.bincount(ib, minlength=n)
    _, part = pymetis.part_graph(tasks, adjacency=pymetis.CSRAdjacency(g.indptr.astype(np.int64), g.indices.astype(np.int64)),
                                 vweights=degree.tolist())
    part = np.asarray(part, np.int64)
    pa, pb = part[ia], part[ib]
    task = pa.copy()
    cut = np.flatnonzero(pa != pb)
    # a cut pair makes one of its images foreign to the other's part: (image, part) imports counted over the cut
    # pairs; each pair, the surest first, placed where its foreign image serves more of them, if that part has room
    b_into_a, a_into_b = ib[cut] * tasks + pa[cut], ia[cut] * tasks + pb[cut]
    keys, counts = np.unique(np.r_[b_into_a, a_into_b], return_counts=True)
    margin = counts[np.searchsorted(keys, b_into_a)] - counts[np.searchsorted(keys, a_into_b)]  # > 0: a's part
    size = np.bincount(task[pa == pb], minlength=tasks)
    room = int(1.05 * len(a) / tasks) + 1
    for k in np.argsort(-np.abs(margin), kind="stable").tolist():
        first, second = (pa[cut[k]], pb[cut[k]]) if margin[k] >= 0 else (pb[cut[k]], pa[cut[k]])
        task[cut[k]] = first if size[first] < room or size[first] <= size[second] else second
        size[task[cut[k]]] += 1
    by_task = np.argsort(task, kind="stable")
    starts = np.flatnonzero(np.r_[True, task[by_task][1:] != task[by_task][:-1]])
    order = np.concatenate([group[local_order(a[group], b[group])]
                            for group in np.split(by_task, starts[1:])])
    return order, starts


def copies_to_remove(n: int, a: np.ndarray, b: np.ndarray, pixels: np.ndarray | None = None,
                     file_bytes: np.ndarray | None = None, overlap: np.ndarray | None = None,
                     min_cover: float = 0.65) -> np.ndarray:
    """Which images of the duplicate pairs (a[i], b[i]) to keep: greedily, the image with the most pixels
    (the uncropped, unshrunk one), then the largest file (the least compressed: of a photo and its JPEG
    copies of one size, the photo), then the most duplicate pairs, then the first row, is kept and its
    partners become its copies; an image reached unplaced that pairs with a copy at least as large is a
    copy of that copy's kept image (a photo's edits pair with each other, not each with the original)
    when enough of it is still shown there: the product of the pairs' overlaps (overlap[i]: the smaller
    share of either image the other covers; None: 1) along the way, at least min_cover (a direct pair's
    least overlap), so that a chain of crops drifting across a picture is not removed through its middle
    -> (n,) the kept image each copy duplicates, -1 for every kept or unpaired image.  A copy never has
    more pixels than the image it names, and pairs with it directly or through such copies (a chain
    A-B-C of equal sizes keeps B; one whose middle is smaller keeps two)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    degree = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
    size = np.zeros(n) if pixels is None else np.asarray(pixels, np.float64)
    nbytes = np.zeros(n) if file_bytes is None else np.asarray(file_bytes, np.float64)
    ov = np.ones(len(a)) if overlap is None else np.nan_to_num(np.asarray(overlap, np.float64), nan=0.0)
    paired = np.nonzero(degree)[0]
    order = paired[np.lexsort((paired, -degree[paired], -nbytes[paired], -size[paired]))]
    ends = np.concatenate([a, b])
    by_end = np.argsort(ends, kind="stable")
    partners, partner_ov = np.concatenate([b, a])[by_end], np.concatenate([ov, ov])[by_end]
    start = np.concatenate([[0], np.cumsum(degree)])
    copy_of = np.full(n, -1, np.int64)
    cover = np.ones(n)  # the share of a copy that its kept image still shows (the overlaps' product on the way)
    for i in order.tolist():  # a partner kept before i would have made i its copy: i's partners are unplaced or copies
        if copy_of[i] < 0:
            mine, mine_ov = partners[start[i]:start[i + 1]], partner_ov[start[i]:start[i + 1]]
            reach = cover[mine] * mine_ov
            via = np.nonzero((copy_of[mine] >= 0) & (size[mine] >= size[i]) & (reach >= min_cover))[0]
            if len(via):  # the most shown, then the largest copy
                j = via[np.lexsort((-size[mine[via]], -reach[via]))[0]]
                copy_of[i], cover[i] = copy_of[mine[j]], reach[j]
            else:
                new = copy_of[mine] < 0
                copy_of[mine[new]], cover[mine[new]] = i, mine_ov[new]
    return copy_of


def undirected_edges(rows: np.ndarray, dist: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour lists (n, k) of the images `own` -> unique undirected edges (a < b, distance)
    (the smaller distance when both directions are listed)."""
    a = np.repeat(own, rows.shape[1])
    b = rows.reshape(-1)
    d = dist.reshape(-1)
    ok = b >= 0
    a, b, d = a[ok], b[ok], d[ok]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((d, hi, lo))
    lo, hi, d = lo[order], hi[order], d[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], d[first]


def mutual_nearest(a: np.ndarray, b: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Per edge (a[i], b[i]): is each the other's nearest (nearest: (n,) row, -1 none)?"""
    return (nearest[a] == b) & (nearest[b] == a)


def candidate_edges(a: np.ndarray, b: np.ndarray, dist: np.ndarray, n: int, top: int) -> np.ndarray:
    """The edges worth verifying: those among the `top` nearest of either of their images (by dist),
    so that the work is about n * top pairs, whatever the distances' scale.  -> sorted edge indices."""
    node = np.concatenate([a, b])
    edge = np.concatenate([np.arange(len(a)), np.arange(len(a))])
    order = np.lexsort((edge, np.concatenate([dist, dist]), node))
    node, edge = node[order], edge[order]
    first = np.searchsorted(node, np.arange(n))
    rank = np.arange(len(node)) - first[node]
    return np.unique(edge[rank < top])


def edges_of(a: np.ndarray, b: np.ndarray, n: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the undirected edges (a[i] < b[i], unique) joining x[j] and y[j] (either order;
    y < 0: none) that are among them -> sorted edge indices."""
    ok = y >= 0
    lo, hi = np.minimum(x[ok], y[ok]), np.maximum(x[ok], y[ok])
    keys, want = np.asarray(a, np.int64) * n + b, np.unique(lo.astype(np.int64) * n + hi)
    order = np.argsort(keys, kind="stable")
    at = np.searchsorted(keys[order], want)
    found = at < len(keys)
    found[found] = keys[order][at[found]] == want[found]
    return np.sort(order[at[found]])


def nearest_in_both(first_f: np.ndarray, first_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's nearest in one graph when the other graph agrees (it is the image's nearest there
    too, or the image is its nearest there): first_f, first_p (n,) nearest rows (-1: none) -> (x, y)."""
    n = len(first_f)
    i = np.arange(n)
    out = []
    for one, other in ((first_f, first_p), (first_p, first_f)):
        j = one
        ok = j >= 0
        back = np.full(n, -1, np.int64)
        back[ok] = other[j[ok]]
        ok &= (other == j) | (back == i)
        out.append((i[ok], j[ok]))
    return np.concatenate([x for x, _ in out]), np.concatenate([y for _, y in out])


def signature_nearest(sig: np.ndarray, grid: int = SIGNATURE_GRID, flat_max: int = 100_000, nprobe: int = 16,
                      codes: str = "lists", shortlist: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each image's nearest other image by a signature of (channels x grid x grid) unit vectors, the other
    taken as it is or mirrored (a flipped, cropped, captioned copy is nearest its original there even when
    the feature graph and the pixel graph rank it far) -> (a, b) with a < b, one pair per image, repeats
    removed.  Exact inner products up to flat_max images; beyond, an IVF index (about 4 sqrt(n) lists):
    "lists" (the vectors, each list scanned for all the queries that probe it in one matrix product:
    exact over the lists probed), "sq8" (a byte a value), "pq4" (4-bit PQ codes scanned in SIMD registers,
    FAISS's fast scan; for signatures whose copies stand out) or "flat" (the vectors, FAISS's scan), each
    image's `shortlist` best by the codes re-ranked exactly (at a million generated pictures with 1,000
    planted copies, bench/signatures.py: sq8 392 s, lists 99 s, all the copies found by each)."""
    import faiss

    n, d = sig.shape
    if n < 2 or d < grid * grid or d % (grid * grid):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x = np.ascontiguousarray(sig, np.float32)
    mirrored = np.ascontiguousarray(x.reshape(n, -1, grid, grid)[..., ::-1].reshape(n, d))
    if n <= flat_max:
        index, shortlist = faiss.IndexFlatIP(d), 2
    else:
        nlist = 1 << int(np.log2(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        if codes == "pq4" and d % 4 == 0:
            index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, d // 4, 4, faiss.METRIC_INNER_PRODUCT)
        elif codes in ("flat", "lists"):
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)])
        index.nprobe, shortlist = nprobe, max(2, shortlist)
    index.add(x)
    best_s, best_j = np.full(n, -np.inf, np.float32), np.full(n, -1, np.int64)
    lists = ivf_lists(index) if codes == "lists" and n > flat_max else None
    for q in (x, mirrored):
        if lists is not None:  # in chunks of queries: what the scan holds stays small
            rows = np.concatenate([search_lists(c, index.quantizer.search(c, nprobe)[1], lists, shortlist,
                                                inner_product=True)[1] for c in np.array_split(q, -(-n // (1 << 17)))])
        else:
            rows = index.search(q, shortlist)[1]
        for s in range(0, n, 16384):  # exact inner products (the codes' are approximate)
            r = rows[s:s + 16384]
            sims = np.einsum("nd,nkd->nk", q[s:s + 16384], x[np.maximum(r, 0)])
            sims[(r < 0) | (r == np.arange(s, s + len(r))[:, None])] = -np.inf
            c = sims.argmax(1)
            top, j = sims[np.arange(len(r)), c], r[np.arange(len(r)), c]
            take = top > best_s[s:s + len(r)]
            best_s[s:s + len(r)][take], best_j[s:s + len(r)][take] = top[take], j[take]
    i = np.nonzero(best_j >= 0)[0]
    lo, hi = np.minimum(i, best_j[i]), np.maximum(i, best_j[i])
    pairs = np.unique(lo * n + hi)
    return (pairs // n).astype(np.int64), (pairs % n).astype(np.int64)


RANK_CODES, RANK_SHORTLIST = "pq4", 4  # the rank signature's search beyond flat_max: its copies stand out (1,000 of
# 1,000 planted at a million, 13x faster than IVF-Flat); the pixel signature's lightened copies do not (414 of 500)


def equal_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows that share a non-empty key (a content hash): each joined to its group's first row
    (enough for the groups) -> (a, b) with a < b."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    start = np.ones(len(k), bool)
    start[1:] = k[1:] != k[:-1]
    head = order[np.maximum.accumulate(np.where(start, np.arange(len(k)), 0))]
    pick = ~start & (k != "")
    lo, hi = np.minimum(head[pick], order[pick]), np.maximum(head[pick], order[pick])
    return lo.astype(np.int64), hi.astype(np.int64)


# ---------------------------------------------------------------------------- uniqueness, labels

UNIQUENESS_WEIGHTS = (0.6, 0.3, 0.1)  # the nearest neighbours count most (as FiftyOne's uniqueness does)


def uniqueness(dist: np.ndarray, scale: float | None = None, weights=UNIQUENESS_WEIGHTS) -> np.ndarray:
    """Per image: a weighted mean of its distances to its nearest neighbours (0.6, 0.3, 0.1 for the
    first three), divided by the dataset's median of that score: 1 is typical, above is unique (an
    outlier), near 0 is redundant (it has a copy)."""
    w = np.asarray(weights[:dist.shape[1]], np.float64)
    d = dist[:, :len(w)].astype(np.float64)
    ok = np.isfinite(d)
    m = (np.where(ok, d, 0) * w).sum(1) / np.maximum((ok * w).sum(1), 1e-12)
    m[~ok.any(1)] = np.nan
    scale = float(np.nanmedian(m)) if scale is None else scale
    return (m / max(scale, 1e-12)).astype(np.float32)


def label_disagreement(labels: list, neighbours: np.ndarray, neighbour_labels: list | None = None,
                       flag_below: float = 0.5) -> dict[str, np.ndarray | list]:
    """For each image, its neighbours' labels: the majority label, its share, and the share of the
    image's own label among them.  Flagged: a labelled image whose own label holds less than
    flag_below of its labelled neighbours, and that is not the majority.
    labels: one per row of neighbours; neighbour_labels: the labels neighbours' rows index (default
    labels).  -> {"majority", "majority_share", "own_share", "flagged"}."""
    lab = labels if neighbour_labels is None else neighbour_labels
    majority, share, own_share, flagged = [], np.zeros(len(labels), np.float32), np.zeros(len(labels), np.float32), np.zeros(len(labels), bool)
    for n, (mine, nbrs) in enumerate(zip(labels, neighbours)):
        got = [lab[r] for r in nbrs if r >= 0 and lab[r] not in (None, "")]
        if not got:
            majority.append(None)
            continue
        counts = Counter(got).most_common()
        top = max(c for _, c in counts)
        best = min(name for name, c in counts if c == top)  # ties: by name, deterministic
        majority.append(best)
        share[n] = top / len(got)
        own_share[n] = (sum(1 for g in got if g == mine) / len(got)) if mine not in (None, "") else np.nan
        flagged[n] = mine not in (None, "") and own_share[n] < flag_below and best != mine
    return {"majority": majority, "majority_share": share, "own_share": own_share, "flagged": flagged}
