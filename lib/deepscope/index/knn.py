"""The whole dataset's neighbours: every image's k nearest, as sharded batch searches in tasks on
the command's executor (local processes or Ray) over the index `deepscope index` built, then what that graph says (near-duplicate groups,
uniqueness, label disagreement).

Search (`graph_space`): the stage's parts are grouped into blocks of at most block_rows images.
One task searches one block against one shard of the index (k + 1 neighbours, the image
itself is dropped later), reading the shard and the block's vectors through the output location, each
checked against its recorded sha256: a task holds one shard and one block, whatever the dataset's
size.  Shards of an IVF index share one coarse quantizer (trained once): a task per block finds
its images' nprobe nearest lists once, and every shard searches those lists.  An IVF-Flat shard is
searched list by list: the block's queries that probe a list against its vectors in one matrix
product (algos/knn.py: search_lists), the answer of FAISS's search_preassigned at BLAS speed.  A worker keeps the last shard it loaded, and the tasks of a window of blocks are sent shard
by shard, so consecutive tasks on a worker mostly reuse it.  The driver merges the shards' answers
of a block (k best), drops each image's own row, and writes one part per input partition: a rerun
reuses every part already written for the same index and settings.  A Flat index (small sets:
exact search) is searched the same way: then each task is an exact block.

Recall@k of the graph is measured on a sample of images against an exact blocked search over all
vectors (streamed part by part on the driver) and recorded.

The analysis (`analyse`) holds n x k neighbour rows and distances per space, plus a 192-value
pixel signature (float16), and when pairs are verified a 256-value rank signature (float16) and a
768-byte sketch per image: ~1.8 GB per million images.  Candidate pairs are verified on the thumbnails
in tasks, after a shuffle that gathers each task's thumbnails (every thumbs part read once).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa

from deepscope.algos import knn as K
from deepscope.algos import verify as V
from deepscope.errors import UserError
from deepscope.index.build import load_shard, parts_with_starts
from deepscope.io import schemas
from deepscope.io.store import sha256

GRAPH = "knn/{space}"  # the graph's parts: a stage entry of its own in the manifest, per space


# ---------------------------------------------------------------------------- the index's record

def index_info(store, space: str) -> dict:
    """The space's index record, checked to be current; one line saying what to run otherwise."""
    from deepscope.index.build import SPACES, inputs_digest

    stage = SPACES[space][0]
    if not store.parts(stage):
        how = "deepscope features DATA --out OUT" if stage == "features" else f"deepscope index {store.root} --pixels"
        raise UserError(f"{store.root} has no {stage}: run `{how}` first")
    info = ((store.summary("index") or {}).get("spaces") or {}).get(space)
    if info is None:
        raise UserError(f"{store.root} has no {space} index: run `deepscope index {store.root}"
                        f"{' --pixels' if space == 'pixels' else ''}` first")
    if inputs_digest(store, stage) != info["inputs"]:
        raise UserError(f"the {stage} of {store.root} changed after the {space} index was built: "
                        f"run `deepscope index {store.root}` again")
    return info


def indexed_spaces(store) -> list[str]:
    return list(((store.summary("index") or {}).get("spaces") or {}))


def _blocks(parts, block_rows: int) -> list[list]:
    blocks, cur, rows = [], [], 0
    for p in parts:
        if cur and rows + p[1]["rows"] > block_rows:
            blocks.append(cur)
            cur, rows = [], 0
        cur.append(p)
        rows += p[1]["rows"]
    if cur:
        blocks.append(cur)
    return blocks


# ---------------------------------------------------------------------------- tasks

def _read_block(url: str, files: list[tuple[str, str]], column: str, cosine: bool) -> np.ndarray:
    """A block's vectors, read through the output location, each part checked against its sha256."""
    from deepscope.index.build import part_vectors
    from deepscope.io.location import Location

    loc = Location(url)
    xs = [part_vectors(loc, rel, sha, column, cosine) for rel, sha in files]
    return np.ascontiguousarray(np.concatenate(xs) if len(xs) > 1 else xs[0])


def search_block(url: str, shard: tuple[str, str], files: list[tuple[str, str]], column: str, cosine: bool, k: int,
                 setting: dict, assigned=None) -> tuple[np.ndarray, np.ndarray]:
    """One task: a block of the stage's vectors against one shard -> (squared L2 (nq, k), rows).
    assigned: the block's (distances, lists) from the shared IVF quantizer (assign_block), so that S
    shards do not repeat the coarse search S times."""
    import faiss

    from deepscope.index.search import search_params

    faiss.omp_set_num_threads(1)  # one task, one CPU: parallelism comes from the tasks
    index = load_shard(url, *shard)
    x = _read_block(url, files, column, cosine)
    k = min(k, index.ntotal)
    if assigned is not None:
        dq, iq = assigned
        ivf = faiss.extract_index_ivf(index)
        read = K.ivf_lists(ivf)
        if read is not None:  # raw vectors or bytes: list by list, BLAS
            return K.search_lists(x, iq, read, k)
        ivf.nprobe = iq.shape[1]
        return ivf.search_preassigned(x, k, iq, dq)
    return index.search(x, k, params=search_params(index, **setting))


def quantizer_of(url: str, shard: tuple[str, str]) -> bytes | None:
    """One task: the IVF coarse quantizer the shards share (trained once on the driver), or None."""
    import faiss

    from deepscope.index.build import serialize

    index = load_shard(url, *shard)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return None  # OPQ: the rotation comes first; each shard assigns for itself
    return bytes(serialize(faiss.downcast_index(ivf.quantizer)))


def assign_block(url: str, files: list[tuple[str, str]], column: str, cosine: bool, nprobe: int, *,
                 quantizer: bytes):
    """One task: a block's nprobe nearest IVF lists, for every shard's search_preassigned."""
    import faiss

    from deepscope.index.build import deserialize

    faiss.omp_set_num_threads(1)
    return deserialize(quantizer).search(_read_block(url, files, column, cosine), nprobe)


# ---------------------------------------------------------------------------- the graph

def graph_key(info: dict, k: int, block_rows: int) -> dict:
    """What fixes a space's graph parts: the index (its files), k and the search setting."""
    files = [f["sha256"] for f in info["shard_files"]] + [info["ids"]["sha256"]]
    return {"index": sha256(json.dumps(files).encode())[:16], "k": k, "search": info["search"],
            "inputs": info["inputs"]}


def graph_space(store, space: str, k: int, cfg, log, executor) -> dict:
    """Every image's k nearest neighbours in one space, written part by part; returns its record.
    The blocks' searches are tasks on the command's executor."""
    info = index_info(store, space)
    n, stage, column = info["rows"], info["stage"], info["column"]
    if k >= n:
        raise UserError(f"k = {k} is not below the number of images ({n}) in {store.root}'s {space} index")
    t_start = time.time()
    rel = GRAPH.format(space=space)
    key = graph_key(info, k, cfg.block_rows)
    if store.stage_config(rel) != key:
        store.drop_parts_except(rel, set())  # another index or k: recompute every part
        store.open_stage(rel, key, replace=True)
    parts = parts_with_starts(store, stage)
    done = set(store.parts(rel))
    pending = [p for p in parts if p[0] not in done]
    ids_table = _ids_table(store, info)
    ids = ids_table.column("id")
    shards = [(f["file"], f["sha256"]) for f in info["shard_files"]]
    log(f"knn {space}: {n} images, k={k}, {len(shards)} shard{'s' if len(shards) > 1 else ''} "
        f"({info['kind']}, {', '.join(f'{a}={b}' for a, b in info['search'].items()) or 'exact'}); "
        f"{len(parts) - len(pending)} of {len(parts)} parts done")
    if pending:
        cosine = info["metric"] == "cosine"
        memory_mb = info.get("estimated_mb_per_shard", 0) * 1.2 + cfg.block_rows * info["dim"] * 8 / 2**20 + 128
        quantizer = None
        if info["search"].get("nprobe"):  # IVF: assign once per block, search list by list
            quantizer = next(executor.map(quantizer_of, [(store.url, shards[0])]))[1]
        blocks = _blocks(pending, cfg.block_rows)
        written, total = 0, sum(e["rows"] for _, e, _ in pending)
        width = executor.cpus
        for w in range(0, len(blocks), width):
            window = blocks[w:w + width]
            files = [[(e["file"], e["sha256"]) for _, e, _ in block] for block in window]
            assigned = [None] * len(window)
            if quantizer is not None:
                calls = [(store.url, f, column, cosine, info["search"]["nprobe"]) for f in files]
                for b, result in executor.map(assign_block, calls, shared={"quantizer": quantizer}):
                    assigned[b] = result
            calls = [(store.url, shard, files[b], column, cosine, k + 1, info["search"], assigned[b])
                     for shard in shards for b in range(len(window))]  # shard by shard: a worker keeps its shard
            results: dict[int, list] = {b: [] for b in range(len(window))}
            for i, result in executor.map(search_block, calls, memory_mb=memory_mb):
                b = i % len(window)
                results[b].append(result)
                if len(results[b]) == len(shards):
                    _write_block(store, rel, window[b], results.pop(b), k, info["metric"], ids, ids_table)
                    written += sum(e["rows"] for _, e, _ in window[b])
            log(f"knn {space}: {written} of {total} images searched ({time.time() - t_start:.0f} s)")
    search_s = time.time() - t_start
    t0 = time.time()
    recall = measure_recall(store, space, info, k, cfg.sample, cfg.seed, cfg.chunk_rows)
    record = {"space": space, "rows": n, "k": k, "index": info["kind"], "shards": len(shards),
              "search": info["search"], "metric": info["metric"], f"recall_at_{k}": recall["recall"],
              "recall_sample": recall["sample"], "search_s": round(search_s, 2),
              "recall_s": round(time.time() - t0, 2), "parts": len(parts), "inputs": info["inputs"]}
    log(f"knn {space}: recall@{k} {recall['recall']:.3f} on {recall['sample']} images against exact search; "
        f"searched in {search_s:.1f} s")
    return record


def _ids_table(store, info) -> pa.Table:
    import pyarrow.parquet as pq

    from deepscope.index.search import verified_bytes

    data = verified_bytes(store, info["ids"]["file"], info["ids"]["sha256"])
    return pq.read_table(pa.BufferReader(data), columns=["id", "path", "label"])


def _write_block(store, rel, block, results, k, metric, ids, ids_table) -> None:
    top = K.TopK(len(results[0][0]), k + 1)
    for d, r in results:
        top.add(d, r)
    first = block[0][2]
    own = np.arange(first, first + len(top.d), dtype=np.int64)
    d, r = K.drop_self(top.d, top.i, own, k)
    d = K.reported(d, metric)
    at = 0
    for part, entry, start in block:
        m = entry["rows"]
        rows, dist = r[at:at + m], d[at:at + m]
        at += m
        flat = rows.reshape(-1)
        valid = flat >= 0
        names = np.full(len(flat), None, object)
        names[valid] = ids.take(pa.array(flat[valid])).to_numpy(zero_copy_only=False)
        lens = (rows >= 0).sum(1)  # padding (-1) sits at the end of each row
        offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
        own_rows = pa.array(np.arange(start, start + m, dtype=np.int64))
        meta = ids_table.slice(start, m)
        table = pa.table({
            "id": meta.column("id"), "path": meta.column("path"), "label": meta.column("label"), "row": own_rows,
            "neighbor_ids": pa.ListArray.from_arrays(offsets, pa.array(names[valid].tolist(), pa.string())),
            "neighbor_rows": pa.ListArray.from_arrays(offsets, pa.array(flat[valid], pa.int64())),
            "distances": pa.ListArray.from_arrays(offsets, pa.array(dist.reshape(-1)[valid], pa.float32())),
        }, schema=schemas.KNN_GRAPH)
        store.write_part(rel, part, table)


def read_graph(store, space: str, columns=("neighbor_rows", "distances")) -> tuple[np.ndarray, np.ndarray]:
    """The graph as (rows (n, k), distances (n, k)) in index-row order; -1 / inf pad short rows."""
    rel = GRAPH.format(space=space)
    k = store.stage_config(rel)["k"]
    rows_out, dist_out = [], []
    for _, t in store.iter_parts(rel, columns=list(columns)):
        if t.num_rows == 0:
            continue
        r, d = np.full((t.num_rows, k), -1, np.int64), np.full((t.num_rows, k), np.inf, np.float32)
        lr, ld = t.column("neighbor_rows").combine_chunks(), t.column("distances").combine_chunks()
        lens = np.diff(lr.offsets.to_numpy())
        mask = np.arange(k)[None, :] < lens[:, None]
        r[mask] = lr.values.to_numpy()
        d[mask] = ld.values.to_numpy()
        rows_out.append(r)
        dist_out.append(d)
    return np.concatenate(rows_out), np.concatenate(dist_out)


def measure_recall(store, space: str, info: dict, k: int, sample: int, seed: int, chunk_rows: int) -> dict:
    """Recall@k of the written graph on a random sample of images, against exact blocked search."""
    from deepscope.index.build import stream_vectors

    n = info["rows"]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    cosine = info["metric"] == "cosine"
    q, found = [], []
    for start, x, _ in stream_vectors(store, info["stage"], info["column"], chunk_rows, cosine):
        lo, hi = np.searchsorted(rows, [start, start + len(x)])
        if hi > lo:
            q.append(x[rows[lo:hi] - start])
    q = np.concatenate(q)
    top = K.TopK(len(q), k)
    for start, x, _ in stream_vectors(store, info["stage"], info["column"], chunk_rows, cosine):
        top.add_block(q, x, start, exclude=rows)
    graph_rows, _ = read_graph(store, space, columns=("neighbor_rows", "distances"))
    found = graph_rows[rows]
    return {"recall": round(K.recall_at_k(found, top.i), 4), "sample": len(rows)}


# ---------------------------------------------------------------------------- what the graph says

def _signatures(store, info: dict, with_sketches: bool) -> tuple[np.ndarray, dict | None]:
    """Pixel signatures (n, 192) float16 and, when pairs will be verified, what finds and first looks at
    them: sketches (n, 16, 16, 3) int8 and rank signatures (n, 256) float16, in the pixels index's row
    order, streamed part by part (together ~1.6 GB per million images)."""
    from deepscope.index.build import stream_vectors

    size = int(round((info["dim"] / 3) ** 0.5))
    out = np.empty((info["rows"], 3 * K.SIGNATURE_GRID ** 2 if size % K.SIGNATURE_GRID == 0 else 3), np.float16)
    more = {"sketches": np.empty((info["rows"], K.SKETCH_SIDE, K.SKETCH_SIDE, 3), np.int8),
            "ranks": np.empty((info["rows"], K.RANK_GRID ** 2), np.float16)} if with_sketches else None
    for start, x, _ in stream_vectors(store, "pixels", "pixels", 16384, cosine=False):
        out[start:start + len(x)] = K.pixel_signature(x, size)
        if with_sketches:
            more["sketches"][start:start + len(x)] = K.pixel_sketch(np.clip(x, 0, 255).astype(np.uint8), size)
            more["ranks"][start:start + len(x)] = K.rank_signature(x, size)
    return out, more


EXACT_ROWS = 50_000  # vectors read to give pairs found in pixel space only their exact feature distance


def _norms_and_rows(store, info: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the stage: every vector's norm, and the vectors of the given (sorted) rows."""
    from deepscope.index.build import stream_vectors

    norms = np.empty(info["rows"], np.float32)
    got = []
    for start, x, _ in stream_vectors(store, info["stage"], info["column"], 16384, cosine=False):
        norms[start:start + len(x)] = np.linalg.norm(x, axis=1)
        lo, hi = np.searchsorted(rows, [start, start + len(x)])
        if hi > lo:
            got.append(x[rows[lo:hi] - start])
    return norms, (np.concatenate(got) if got else np.zeros((0, info["dim"]), np.float32))


def _signature_distances(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), 1 << 20):
        out[s:s + (1 << 20)] = K.signature_distance(sig[a[s:s + (1 << 20)]], sig[b[s:s + (1 << 20)]], mirrored=True)
    return out


def _cosine_from_l2(d: np.ndarray, norms: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(x_a, x_b) from |x_a - x_b| and the norms (monotone in the L2 distance for fixed norms,
    so a lower bound stays a lower bound)."""
    na, nb = norms[a].astype(np.float64), norms[b].astype(np.float64)
    cos = (na ** 2 + nb ** 2 - d.astype(np.float64) ** 2) / np.maximum(2 * na * nb, 1e-12)
    return np.clip(1 - cos, 0, 2).astype(np.float32)


def analyse(store, spaces: list[str], cfg, log, executor) -> dict:
    """Near-duplicate groups, uniqueness and label disagreement from the graphs; writes
    knn/images.parquet, knn/duplicates.parquet and the figures.  Returns the summary's numbers."""
    feat_space = "features" if "features" in spaces else spaces[0]
    finfo = index_info(store, feat_space)
    table = _ids_table(store, finfo)
    n = table.num_rows
    ids = table.column("id").to_numpy(zero_copy_only=False)
    labels = table.column("label").to_pylist()
    rows_f, dist_f = read_graph(store, feat_space)
    k = rows_f.shape[1]
    own = np.arange(n, dtype=np.int64)

    # candidate pairs: the feature graph's edges, and the pixel graph's (a copy can rank low in one space)
    a, b, d_feat = K.undirected_edges(rows_f, dist_f, own)
    graph_edges = len(a)
    exact = np.ones(len(a), bool)
    sig, sketches, ranks, d_pix, gather = None, None, None, None, np.zeros(0, np.int64)
    if feat_space == "features" and "pixels" in spaces:
        pinfo = index_info(store, "pixels")
        if _ids_table(store, pinfo).column("id").equals(table.column("id")):
            rows_p, dist_p = read_graph(store, "pixels")
            pa_, pb, _ = K.undirected_edges(rows_p, dist_p, own)
            extra = ~np.isin(pa_ * n + pb, a * n + b)
            pa_, pb = pa_[extra], pb[extra]
            # the sketches serve only the verification's first look: not made for the threshold alone
            sig, more = _signatures(store, pinfo, with_sketches=bool(cfg.verify and store.parts("thumbs")))
            sketches, ranks = (more["sketches"], more["ranks"]) if more else (None, None)
            d_pix_extra = _signature_distances(sig, pa_, pb)
            # their feature distance: exact for the pixel-nearest pairs (their rows' vectors are read, at
            # most EXACT_ROWS of them), else bounded below by the k-th feature neighbour's distance
            order = np.argsort(d_pix_extra, kind="stable")
            seen = np.zeros(n, bool)
            take = 0
            for take, e in enumerate(order, 1):
                seen[pa_[e]] = seen[pb[e]] = True
                if take % 1024 == 0 and seen.sum() > EXACT_ROWS:
                    break
            gather = np.nonzero(seen)[0]
            fin = np.isfinite(dist_f[:, -1])
            kth = np.where(fin, dist_f[:, -1], dist_f[fin, -1].max() if fin.any() else 0)
            a, b = np.concatenate([a, pa_]), np.concatenate([b, pb])
            d_feat = np.concatenate([d_feat, np.maximum(kth[pa_], kth[pb])])
            exact = np.concatenate([exact, np.zeros(len(pa_), bool)])
            d_pix = np.concatenate([_signature_distances(sig, a[:len(a) - len(pa_)], b[:len(a) - len(pa_)]), d_pix_extra])
        else:
            log("knn: the pixels index holds other images than the features index; duplicates from features alone")
    norms, vecs = (_norms_and_rows(store, finfo, gather) if finfo["metric"] == "l2" or len(gather)
                   else (None, None))
    if finfo["metric"] == "l2":  # duplicates compare directions (cosine): from L2 distances and the norms
        d_feat = _cosine_from_l2(d_feat, norms, a, b)
    if len(gather):
        where = np.full(n, -1, np.int64)
        where[gather] = np.arange(len(gather))
        sel = np.nonzero(~exact & (where[a] >= 0) & (where[b] >= 0))[0]
        u = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        for s0 in range(0, len(sel), 1 << 16):
            e = sel[s0:s0 + (1 << 16)]
            d_feat[e] = np.clip(1 - (u[where[a[e]]] * u[where[b[e]]]).sum(1), 0, 2)
        exact[sel] = True
    # each space's typical distance: the median over the feature graph's pairs
    scale_f = float(np.median(d_feat[:graph_edges])) if graph_edges else 1.0
    scale_p = float(np.median(d_pix[:graph_edges])) if d_pix is not None and graph_edges else None
    dist = K.combine(d_feat, d_pix, scale_f, scale_p)

    # each image's nearest by the combined distance
    nearest = np.full(n, np.inf, np.float32)
    nearest_id = np.full(n, -1, np.int64)
    for x in (a, b):
        np.minimum.at(nearest, x, dist)
    for x, y in ((b, a), (a, b)):  # ties: the smaller partner (written last) wins
        hit = dist == nearest[x]
        nearest_id[x[hit][::-1]] = y[hit][::-1]
    if cfg.dup_threshold is not None:
        threshold, how = float(cfg.dup_threshold), {"method": "set in the job (dup_threshold)"}
    else:
        threshold, how = K.choose_threshold(nearest[np.isfinite(nearest)], cfg.min_dip)
    mutual = K.mutual_nearest(a, b, nearest_id)
    thumbs = _thumb_rows(store, ids) if cfg.verify and store.parts("thumbs") else None
    if thumbs is None:  # no thumbnails to look at: the threshold decides, as before
        cand = np.nonzero(dist <= threshold)[0]
        sketch = np.full(len(cand), np.nan, np.float32)
        ev = {"same": np.ones(len(cand), bool)}
        tiers = np.full(len(cand), "unverified", object)
        verification = None
    else:
        cand = K.candidate_edges(a, b, dist, n, cfg.verify_top)
        if d_pix is not None:  # a pair nearest in both graphs is always verified: the signature that ranks
            # the candidates can put a captioned copy nearer the other captioned images than its original
            cand = np.union1d(cand, K.edges_of(a, b, n, *K.nearest_in_both(rows_f[:, 0], rows_p[:, 0])))
        if cfg.verify_nearest:  # and each image's nearest in each graph: a copy that carries a common
            # caption or watermark is nearest the other captioned images by the combined distance, while
            # the CNN or the pixels still rank its original first (more pairs: most set aside at the first look)
            firsts = [rows_f[:, 0]] + ([rows_p[:, 0]] if d_pix is not None else [])
            cand = np.union1d(cand, K.edges_of(a, b, n, np.repeat(own, len(firsts)), np.stack(firsts, 1).reshape(-1)))
        t0 = time.time()
        n_graph, s_graph, best_sketch = len(a), None, 0
        if sketches is not None and cfg.verify_best_sketch <= 1:
            # and each image's graph edge whose fine detail agrees best, when it agrees well: a caption
            # moves both distances (its original ranks low by them) more than the sketches' best agreement
            s_graph = K.sketch_agreement(sketches, a, b)  # every graph edge (~13 us each): reused by the first look
            best = K.candidate_edges(a, b, -np.nan_to_num(s_graph, nan=-np.inf), n, 1)
            best = np.setdiff1d(best[s_graph[best] >= cfg.verify_best_sketch], cand)
            cand, best_sketch = np.union1d(cand, best), len(best)
        t_graph_sketch = time.time() - t0
        hashes = thumbs["hash"]
        ha, hb = hashes[a[cand]], hashes[b[cand]]
        same_hash = (ha == hb) & (ha != "")
        known = set(zip(a[cand].tolist(), b[cand].tolist()))
        # each image's nearest by pixel signature, as it is or mirrored (a flipped, cropped, captioned
        # copy ranks far in both graphs but is nearest there), and by rank signature (a copy lightened
        # until it clips, whose signature's correlation bends)
        rank_pairs, t_sig = 0, 0.0
        if sig is not None:
            t_sig = time.time()
            sa, sb = K.signature_nearest(sig)
            new = np.array([(i, j) not in known for i, j in zip(sa.tolist(), sb.tolist())], bool)
            known.update(zip(sa[new].tolist(), sb[new].tolist()))
            sa, sb = sa[new], sb[new]
            if ranks is not None:
                ra, rb = K.signature_nearest(ranks, grid=K.RANK_GRID, codes=K.RANK_CODES, shortlist=K.RANK_SHORTLIST)
                new = np.array([(i, j) not in known for i, j in zip(ra.tolist(), rb.tolist())], bool)
                known.update(zip(ra[new].tolist(), rb[new].tolist()))
                sa, sb, rank_pairs = np.concatenate([sa, ra[new]]), np.concatenate([sb, rb[new]]), int(new.sum())
            t_sig = time.time() - t_sig
            log(f"knn: each image's nearest by pixel signature and by rank signature, as it is or mirrored: {len(sa)} more "
                f"candidate pairs, {rank_pairs} of them by rank ({t_sig:.0f} s)")
            fin = np.isfinite(dist_f[:, -1])
            kth = np.where(fin, dist_f[:, -1], dist_f[fin, -1].max() if fin.any() else 0)
            kth = _cosine_from_l2(np.maximum(kth[sa], kth[sb]), norms, sa, sb) if finfo["metric"] == "l2" else np.maximum(kth[sa], kth[sb])
            sp = _signature_distances(sig, sa, sb)
            first = len(a)
            a, b = np.concatenate([a, sa]), np.concatenate([b, sb])
            d_feat, d_pix = np.concatenate([d_feat, kth]), np.concatenate([d_pix, sp])
            dist = np.concatenate([dist, K.combine(kth, sp, scale_f, scale_p)])
            exact, mutual = np.concatenate([exact, np.zeros(len(sa), bool)]), np.concatenate([mutual, np.zeros(len(sa), bool)])
            cand = np.concatenate([cand, np.arange(first, len(a))])
            same_hash = np.concatenate([same_hash, (hashes[sa] == hashes[sb]) & (hashes[sa] != "")])
        signature_pairs = len(a) - first if sig is not None else 0
        extra_a, extra_b = K.equal_key_pairs(hashes)  # exact copies the graph missed (free: the hash is known)
        keep = np.array([(i, j) not in known for i, j in zip(extra_a.tolist(), extra_b.tolist())], bool)
        if keep.any():
            first = len(a)
            a, b = np.concatenate([a, extra_a[keep]]), np.concatenate([b, extra_b[keep]])
            pad = int(keep.sum())
            dist, d_feat = np.concatenate([dist, np.zeros(pad, np.float32)]), np.concatenate([d_feat, np.zeros(pad, np.float32)])
            exact = np.concatenate([exact, np.zeros(pad, bool)])
            mutual = np.concatenate([mutual, np.zeros(pad, bool)])
            if d_pix is not None:
                d_pix = np.concatenate([d_pix, np.zeros(pad, np.float32)])
            cand = np.concatenate([cand, np.arange(first, len(a))])
            same_hash = np.concatenate([same_hash, np.ones(pad, bool)])
        t0 = time.time()
        # a first look at the pixel sketches: a pair whose fine detail agrees nowhere under a small shift,
        # scale or mirror is two different pictures (most candidates), and its thumbnails are not read
        sketch = np.full(len(cand), np.nan, np.float32)  # without pixels: every pair is verified
        if sketches is not None:
            known = (cand < n_graph) if s_graph is not None else np.zeros(len(cand), bool)
            if known.any():
                sketch[known] = s_graph[cand[known]]
            sketch[~known] = K.sketch_agreement(sketches, a[cand[~known]], b[cand[~known]])
        screened = (sketch < cfg.min_sketch) & ~same_hash  # NaN (no detail to compare): verified
        if sketches is not None:
            log(f"knn: {int(screened.sum())} of {len(cand)} candidate pairs set aside at a first look (their pixel "
                f"sketches agree under {cfg.min_sketch})")
        frames, close = frames_rule(sketch, cfg)  # how each pair may be laid by its frames, from its sketches
        ev = verify_candidates(store, thumbs, a[cand], b[cand], cfg, log, executor, skip=screened, frames=frames, close=close, ids=ids)
        seconds = time.time() - t0 + t_graph_sketch  # the graph's sketches count as the first look's
        ev["same"] |= same_hash
        tiers = np.array([V.tier(h, {k: ev[k][i] for k in V.EVIDENCE}) for i, h in enumerate(same_hash)], object)
        verification = {"pairs": int(len(cand)), "verified": int(ev["verified"].sum()), "screened": int(screened.sum()),
                        "earlier": int(ev["earlier"].sum()),  # of the verified: their evidence read from knn/verified
                        "min_sketch": cfg.min_sketch, "min_frames_sketch": cfg.min_frames_sketch, "close_frames_sketch": cfg.close_frames_sketch, "nearest": bool(cfg.verify_nearest), "seconds": round(seconds, 2),
                        "ms_per_image": round(seconds * 1000 / max(n, 1), 3), "top": cfg.verify_top,
                        "exact_pairs_outside_graph": int(keep.sum()), "signature_pairs": int(signature_pairs), "rank_pairs": rank_pairs,
                        "signature_seconds": round(t_sig, 2),  # the two signature searches (not in `seconds`)
                        "best_sketch": cfg.verify_best_sketch if s_graph is not None else None, "best_sketch_pairs": int(best_sketch),
                        # pairs that passed every other test, told apart by their finest details (pages of one template)
                        "fine_only": int(sum(f.endswith(": fine") for f in ev["failed"])),
                        # ... and pairs whose matches fit one overlay's band and whose details disagree beyond it
                        "shared_overlay_only": int(sum(f.endswith(": outside_overlay") for f in ev["failed"]))}
    ok = ev["same"]
    dup = cand[ok]
    group_of = K.components(n, a[dup], b[dup])
    sizes = np.bincount(group_of, minlength=n)[group_of]
    in_group = sizes > 1
    # which to keep: the most pixels, then the largest file, then the most pairs; every other member is a verified copy of a kept one.
    # Without thumbnails no size is known: none is chosen
    copy_of = (K.copies_to_remove(n, a[dup], b[dup], thumbs["pixels"], thumbs["file_bytes"],
                                  np.where(same_hash[ok], 1.0, ev["overlap"][ok]), V.VerifySettings().min_overlap)
               if thumbs is not None else np.full(n, -1, np.int64))

    uniq = K.uniqueness(dist_f)
    lab = K.label_disagreement(labels, rows_f, flag_below=cfg.flag_below)

    images = pa.table({
        "id": table.column("id"), "path": table.column("path"), "label": table.column("label"),
        "uniqueness": pa.array(uniq, pa.float32()),
        "nearest_id": pa.array([ids[j] if j >= 0 else None for j in nearest_id], pa.string()),
        "nearest_distance": pa.array(np.where(np.isfinite(nearest), nearest, np.nan), pa.float32(),
                                     mask=~np.isfinite(nearest)),
        "group": pa.array([ids[g] if m else None for g, m in zip(group_of, in_group)], pa.string()),
        "group_size": pa.array(np.where(in_group, sizes, 1).astype(np.int32)),
        "duplicate_of": pa.array([ids[j] if j >= 0 else None for j in copy_of], pa.string()),
        "majority_label": pa.array(lab["majority"], pa.string()),
        "majority_share": pa.array(lab["majority_share"]),
        "own_label_share": pa.array(lab["own_share"], mask=np.isnan(lab["own_share"])),
        "label_flagged": pa.array(lab["flagged"]),
    }, schema=schemas.KNN_IMAGES)
    store.write_table("knn/images.parquet", images)
    cols = _pair_columns(ids, group_of, a, b, cand, dist, d_feat, exact, d_pix, mutual, sketch, ev, tiers)
    order = np.lexsort((dist[cand], group_of[a[cand]]))
    accepted = pa.table(cols).take(pa.array(order[ok[order]]))
    store.write_table("knn/duplicates.parquet", accepted.drop_columns(["accepted"]).cast(schemas.KNN_DUPLICATES))
    if thumbs is not None:
        # why each pair that is not a duplicate is not: the first look, a missing thumbnail, or the tests failed
        why = np.where(ev["verified"], ev["failed"], np.where(
            screened, f"first look: the pixel sketches agree under {cfg.min_sketch}", "not verified: a thumbnail is missing"))
        why = pa.array([None if o else w for o, w in zip(ok.tolist(), why.tolist())], pa.string())
        store.write_table("knn/candidates.parquet", pa.table(cols).append_column("rejected_by", why)
                          .take(pa.array(order)).cast(schemas.KNN_CANDIDATES))

    from deepscope.index import figures

    store.write_file("knn/distances.png", figures.distance_plot(
        nearest[np.isfinite(nearest)], threshold, d_feat / scale_f, None if d_pix is None else d_pix / scale_p,
        np.isin(np.arange(len(a)), dup)))
    groups = _largest_groups(group_of, in_group, copy_of, cfg.show)
    paths = table.column("path").to_pylist()
    pictures = _thumb_bytes(store, thumbs, [i for g in groups for i in g]) if thumbs is not None else {}
    store.write_file("knn/duplicates.png", figures.group_grid(  # thumbnails when there are: no original is read
        [[(pictures.get(i, paths[i]), ids[i], thumbs is not None and copy_of[i] < 0) for i in g] for g in groups])
        if groups else figures.empty_png())
    order_u = np.argsort(uniq, kind="stable")
    store.write_file("knn/uniqueness.png", figures.rows_grid([
        ("most unique", [(paths[i], f"{uniq[i]:.2f}") for i in order_u[::-1][:cfg.show]]),
        ("most redundant", [(paths[i], f"{uniq[i]:.2f}") for i in order_u[:cfg.show]])]))
    flagged = np.nonzero(lab["flagged"])[0]
    flagged = flagged[np.argsort(lab["own_share"][flagged], kind="stable")][:cfg.show]
    store.write_file("knn/disagreements.png", figures.rows_grid(
        [(f"{labels[i]} -> {lab['majority'][i]} {lab['majority_share'][i]:.0%}",
          [(paths[i], str(labels[i]))] + [(paths[j], str(labels[j])) for j in rows_f[i][:8] if j >= 0])
         for i in flagged], first_framed=True) if len(flagged) else figures.empty_png())
    n_groups = int(len(np.unique(group_of[in_group])))
    tier_counts = {t: int((tiers[ok] == t).sum()) for t in ("exact", "near-identical", "edited", "unverified") if (tiers[ok] == t).any()}
    decided = (f"verified on thumbnails: {verification['pairs']} candidate pairs in {verification['seconds']} s"
               if verification else f"at threshold {threshold:.3g} ({how['method']}; {'verify = false' if not cfg.verify else 'no [thumbs] to verify on'})")
    copies = int((copy_of >= 0).sum()) if thumbs is not None else None
    log(f"knn: {n_groups} near-duplicate groups ({int(in_group.sum())} images, "
        f"{'' if copies is None else f'{copies} of them copies of a kept one; '}"
        f"{', '.join(f'{v} {k}' for k, v in tier_counts.items()) or 'no pairs'}) {decided}; "
        f"{int(lab['flagged'].sum())} labels disagree with their neighbours")
    return {
        "duplicates": {"threshold": round(threshold, 4), "how": how, "groups": n_groups, "images": int(in_group.sum()),
                       "copies": copies, "edges": int(len(dup)), "candidate_pairs": len(a), "pixel_evidence": d_pix is not None,
                       "verification": verification, "tiers": tier_counts,
                       "feature_scale": round(scale_f, 4), "pixel_scale": None if scale_p is None else round(scale_p, 4)},
        "uniqueness": {"median_mean_distance": round(float(np.nanmedian(np.where(np.isfinite(dist_f), dist_f, np.nan).mean(1))), 4)},
        "labels": {"labelled": int(sum(1 for x in labels if x not in (None, ""))), "flagged": int(lab["flagged"].sum()),
                   "flag_below": cfg.flag_below},
    }


def _pair_columns(ids, group_of, a, b, cand, dist, d_feat, exact, d_pix, mutual, sketch, ev, tiers) -> dict:
    """The columns of duplicates.parquet / candidates.parquet for the candidate edges `cand`."""
    ea, eb = a[cand], b[cand]
    accepted = np.asarray(ev["same"], bool)
    verified = np.asarray(ev.get("verified", np.zeros(len(cand), bool)), bool)

    def evidence(k, typ):
        if k not in ev:
            return pa.nulls(len(cand), typ)
        v = np.asarray(ev[k])
        return pa.array(v, typ, mask=~verified | (np.isnan(v) if v.dtype.kind == "f" else False))  # NaN: no evidence

    return {
        "group": pa.array(np.where(accepted, ids[group_of[ea]], None).tolist(), pa.string()),
        "a": pa.array(ids[ea].tolist(), pa.string()), "b": pa.array(ids[eb].tolist(), pa.string()),
        "tier": pa.array(np.where(accepted, tiers, None).tolist(), pa.string()),
        "distance": pa.array(dist[cand], pa.float32()), "feature_distance": pa.array(d_feat[cand], pa.float32()),
        "feature_exact": pa.array(exact[cand]),
        "pixel_distance": pa.array(d_pix[cand], pa.float32()) if d_pix is not None else pa.nulls(len(cand), pa.float32()),
        "mutual": pa.array(mutual[cand]), "sketch": pa.array(sketch, pa.float32(), mask=np.isnan(sketch)),
        "verified": pa.array(verified),
        "inliers": evidence("inliers", pa.int32()), "inlier_ratio": evidence("inlier_ratio", pa.float32()),
        "flip": evidence("flip", pa.bool_()), "scale": evidence("scale", pa.float32()),
        "rotation": evidence("rotation", pa.float32()), "spread": evidence("spread", pa.float32()),
        "overlap": evidence("overlap", pa.float32()),
        "aligned_correlation": evidence("aligned_correlation", pa.float32()),
        "explained": evidence("explained", pa.float32()), "detail": evidence("detail", pa.float32()),
        "detail_outside": evidence("detail_outside", pa.float32()),
        "fine": evidence("fine", pa.float32()),
        "differing": evidence("differing", pa.float32()), "regions": evidence("regions", pa.int32()),
        "overlay": evidence("overlay", pa.float32()), "colour_shift": evidence("colour_shift", pa.float32()),
        "colour_order": evidence("colour_order", pa.float32()), "accepted": pa.array(accepted),
    }


# ---------------------------------------------------------------------------- verification on thumbnails

def _thumb_rows(store, ids: np.ndarray) -> dict | None:
    """Where each index row's thumbnail is: {"file": (n,) part file or "", "row": (n,) row in it,
    "hash": (n,) pixel hash or "", "pixels": (n,) the original's width x height, "file_bytes": (n,) its
    file's size (0: unknown)}; None when no image of the index has one."""
    where = {}
    for _, entry in sorted(store.parts("thumbs").items()):
        cols = ["id", "pixel_hash", "width", "height"]
        try:
            t = store.loc.read_table(entry["file"], columns=cols + ["file_bytes"])
            nbytes = t.column("file_bytes").fill_null(0).to_pylist()
        except (KeyError, pa.ArrowInvalid):  # a part written before file_bytes existed
            t = store.loc.read_table(entry["file"], columns=cols)
            nbytes = [0] * t.num_rows
        for r, (i, h, w, ht, nb) in enumerate(zip(*(t.column(c).to_pylist() for c in ("id", "pixel_hash", "width", "height")), nbytes)):
            where[i] = (entry["file"], r, h, w * ht, nb)
    got = [where.get(i, ("", -1, "", 0, 0)) for i in ids]
    if not any(g[0] for g in got):
        return None
    return {"file": np.array([g[0] for g in got], object), "row": np.array([g[1] for g in got], np.int64),
            "hash": np.array([g[2] for g in got], object), "pixels": np.array([g[3] for g in got], np.int64),
            "file_bytes": np.array([g[4] for g in got], np.int64)}


def _thumb_bytes(store, thumbs: dict, rows: list[int]) -> dict[int, bytes]:
    out, tables = {}, {}
    for i in rows:
        f = thumbs["file"][i]
        if f:
            if f not in tables:
                tables[f] = store.loc.read_table(f, columns=["thumb"]).column("thumb")
            out[i] = tables[f][int(thumbs["row"][i])].as_py()
    return out


def frames_rule(sketch: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, from its sketches' agreement: may it be laid by its frames, and only where its layouts correlate
    closely (when both pictures have keypoints) -> (frames, close).  A pair laid by its frames must agree nearly
    everywhere, its fine detail too: under min_frames_sketch only its keypoints are tried (the lowest such copy on
    the tuning sets: 0.43), under close_frames_sketch only close layouts (V.verify_pair); NaN (no detail): tried."""
    return ~(sketch < cfg.min_frames_sketch), sketch < cfg.close_frames_sketch


def verify_settings(cfg) -> dict:
    return {"min_inliers": cfg.min_inliers, "min_explained": cfg.min_explained, "min_detail": cfg.min_detail, "min_fine": cfg.min_fine, "max_differing": cfg.max_differing,
            "max_overlay": cfg.max_overlay}


GATHER = "knn/gather"  # the thumbnails regrouped by verification task (deleted when the verification ends)
GATHER_ROWS = 20_000  # thumbnails one gathering task collects (each of its thumbs parts read once)


def gather_thumbs(out_url: str, rel: str, parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> dict[int, int]:
    """One task: each of its thumbs parts read once, and the rows that verification tasks need written
    to rel, one row group per task -> {task: row group}.  parts: (file, rows in it, their image rows,
    the task that needs each; a row needed by two tasks is listed twice)."""
    import pyarrow.parquet as pq

    from deepscope.io.location import Location

    loc = Location(out_url)
    got = []
    for file, rows, images, tasks in parts:
        thumbs = loc.read_table(file, columns=["thumb"]).column("thumb")
        got.append(pa.table({"task": pa.array(tasks, pa.int32()), "image": pa.array(images, pa.int64()),
                             "thumb": thumbs.take(pa.array(rows, pa.int64()))}))
    table = pa.concat_tables(got).sort_by("task")
    task = table.column("task").to_numpy()
    starts = np.flatnonzero(np.r_[True, np.diff(task) != 0])
    groups = {}
    with loc.writing(rel) as f, pq.ParquetWriter(f, table.schema) as w:
        for g, (lo, hi) in enumerate(zip(starts, np.r_[starts[1:], len(task)])):
            w.write_table(table.slice(lo, hi - lo))  # one row group: the task reads only its own
            groups[int(task[lo])] = g
    return groups


def verify_chunk(out_url: str, pairs: dict, *, settings: dict) -> dict[str, np.ndarray]:
    """One independent task: its thumbnails read from the row groups gathered for it, each image
    prepared once, every pair verified (algos/verify.py) -> evidence arrays (V.EVIDENCE).
    pairs: {"a", "b": image rows, "frames", "close": how each may be laid by its frames (frames_rule), "sources": [(gathered file, row group)]};
    settings: VerifySettings' fields."""
    import faiss

    from deepscope.io.location import Location

    faiss.omp_set_num_threads(1)  # one task, one CPU (the keypoints' matching): parallelism comes from the tasks
    loc = Location(out_url)
    data = {}
    for rel, group in pairs["sources"]:
        t = loc.read_row_group(rel, group, columns=["image", "thumb"])
        data.update(zip(t.column("image").to_pylist(), t.column("thumb").to_pylist()))
    return verify_thumbs(data, pairs, V.VerifySettings(**settings))


def verify_thumbs(data: dict, pairs: dict, s: V.VerifySettings) -> dict[str, np.ndarray]:
    """A task's pairs verified in order from their encoded thumbnails (data: {image row: bytes}, consumed), each
    image decoded and prepared once, at its first pair, and freed after its last -> evidence arrays (V.EVIDENCE)."""
    import cv2

    images = {}

    def image(i):
        if i not in images:
            thumb = np.frombuffer(data.pop(i), np.uint8)
            images[i] = V.prepare(cv2.cvtColor(cv2.imdecode(thumb, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), s)
        return images[i]

    a, b = pairs["a"].tolist(), pairs["b"].tolist()
    last = {}  # each image's last pair in this task
    for k, (i, j) in enumerate(zip(a, b)):
        last[i] = last[j] = k
    rows = []
    for k, (i, j, f, c) in enumerate(zip(a, b, pairs["frames"], pairs["close"])):
        rows.append(V.verify_pair(image(i), image(j), s, frames=bool(f), close=bool(c)))
        for x in (i, j):  # its last pair in this task (each task's pairs come in local_order): its ~0.35 MB freed
            if last[x] == k:
                images.pop(x, None)
    return V.evidence_arrays(rows)


MIN_VERIFY_CHUNK = 200  # pairs: below, a task's start and its thumbnails' preparation outweigh the pairs


def _gather_calls(store, thumbs: dict, a: np.ndarray, b: np.ndarray, chunks: list[np.ndarray]) -> list[tuple]:
    """The gathering tasks' calls: every (task, image) it needs once, by thumbs part, parts grouped so
    that a task collects about GATHER_ROWS thumbnails.  Each thumbs part is read once in all, whatever
    the dataset's size; a verification task then reads one row group of each gathered file."""
    task = np.concatenate([np.full(len(c), t, np.int64) for t, c in enumerate(chunks)])
    idx = np.concatenate(chunks)
    need = np.unique(np.stack([np.r_[task, task], np.r_[a[idx], b[idx]]], 1), axis=0)  # (task, image), once each
    files = thumbs["file"][need[:, 1]]
    order = np.argsort(files, kind="stable")
    need, files = need[order], files[order]
    cuts = np.flatnonzero(np.r_[True, files[1:] != files[:-1]])
    calls, group, rows = [], [], 0
    for lo, hi in zip(cuts, np.r_[cuts[1:], len(files)]):
        img = need[lo:hi, 1]
        group.append((files[lo], thumbs["row"][img], img, need[lo:hi, 0]))
        rows += hi - lo
        if rows >= GATHER_ROWS:
            calls.append((store.url, f"{GATHER}/{len(calls):05d}.parquet", group))
            group, rows = [], 0
    if group:
        calls.append((store.url, f"{GATHER}/{len(calls):05d}.parquet", group))
    return calls


VERIFIED = "knn/verified"  # each finished verification task's evidence, pair by pair: an interrupted stage resumes from it


def _verified_key(store, cfg) -> dict:
    """What fixes a pair's evidence besides the pair: the settings, the thumbnails' (their size and encoding),
    the verification's code and OpenCV's (its keypoints); another of any and every pair is verified again."""
    import inspect

    import cv2

    return {"settings": verify_settings(cfg), "thumbs": store.stage_config("thumbs"),
            "code": sha256(inspect.getsource(V).encode())[:16], "opencv": cv2.__version__}


def _pairs_table(ids: np.ndarray, hashes: np.ndarray, a: np.ndarray, b: np.ndarray, frames: np.ndarray, close: np.ndarray) -> pa.Table:
    """The key of each pair's evidence: both images' ids and pixel hashes (another picture under the same id
    is verified again), and how it may be laid by its frames (frames_rule)."""
    return pa.table({"a": pa.array(ids[a].tolist(), pa.string()), "b": pa.array(ids[b].tolist(), pa.string()),
                     "a_hash": pa.array(hashes[a].tolist(), pa.string()), "b_hash": pa.array(hashes[b].tolist(), pa.string()),
                     "frames": pa.array(frames, pa.bool_()), "close": pa.array(close, pa.bool_())})


def _resume(store, cfg, keys: pa.Table) -> tuple[np.ndarray, dict]:
    """The pairs (rows of keys) an earlier run of these settings verified already, and their evidence."""
    key = _verified_key(store, cfg)
    if store.stage_config(VERIFIED) != key:
        store.drop_parts_except(VERIFIED, set())  # other settings or code: every pair is verified again
        store.open_stage(VERIFIED, key, replace=True)
    if not store.parts(VERIFIED):
        return np.zeros(0, np.int64), {}
    done = store.read(VERIFIED).join(keys.append_column("i", pa.array(np.arange(keys.num_rows))), list(keys.column_names),
                                     join_type="inner")
    rows = done.column("i").to_numpy()
    return rows, {k: done.column(k).to_numpy(zero_copy_only=False).astype(V.EVIDENCE_TYPES.get(k, np.float32)) for k in V.EVIDENCE}


def _verified_table(keys: pa.Table, evidence: dict[str, np.ndarray]) -> pa.Table:
    """One task's pairs (their keys) and evidence, as knn/verified holds them."""
    schema = schemas.KNN_VERIFIED
    cols = {**{f: keys.column(f) for f in keys.column_names},
            **{k: pa.array(evidence[k].tolist() if k == "failed" else evidence[k], schema.field(k).type) for k in V.EVIDENCE}}
    return pa.table(cols, schema=schema)


def verify_candidates(store, thumbs: dict, a: np.ndarray, b: np.ndarray, cfg, log, executor,
                      skip: np.ndarray | None = None, frames: np.ndarray | None = None, close: np.ndarray | None = None,
                      ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every candidate pair verified, in independent chunks of pairs, as tasks on the command's executor,
    after the thumbnails each chunk needs are gathered from the thumbs parts (a shuffle: the pairs join
    images from anywhere in the dataset); pairs without both thumbnails, and those in skip, are left
    unverified (not accepted, unless their hashes agree); frames, close: per pair, how it may be laid by its
    frames (frames_rule; None: every pair may, anyhow).  ids: the images' ids (rows -> id): each finished task's evidence is then
    committed as a part of knn/verified, and a rerun (an interrupted stage, a changed threshold)
    verifies only the pairs no earlier run of these settings did."""
    n = len(a)
    out = V.no_evidence(n)
    frames = np.ones(n, bool) if frames is None else np.asarray(frames, bool)
    close = np.zeros(n, bool) if close is None else np.asarray(close, bool)
    have = (thumbs["file"][a] != "") & (thumbs["file"][b] != "")
    if skip is not None:
        have &= ~skip
    out["verified"] = have
    out["earlier"] = np.zeros(n, bool)  # verified by an earlier run of these settings (knn/verified)
    todo = np.nonzero(have)[0]
    if not len(todo):
        return out
    keys = None
    if ids is not None:
        keys = _pairs_table(ids, thumbs["hash"], a[todo], b[todo], frames[todo], close[todo])
        found, evidence = _resume(store, cfg, keys)
        if len(found):
            for k, v in evidence.items():
                out[k][todo[found]] = v
            out["earlier"][todo[found]] = True
            left = np.ones(len(todo), bool)
            left[found] = False
            todo, keys = todo[left], keys.filter(pa.array(left))
            log(f"knn: {int((~left).sum())} pairs verified by an earlier run of these settings (knn/verified), {len(todo)} to verify")
            if not len(todo):
                return out
    # about verify_chunk pairs a task (K.pair_tasks: within 5%), and two tasks per core when there are pairs enough (200 a task):
    # one 2000-pair chunk and a small one would leave a core idle
    size = max(1, min(cfg.verify_chunk, max(MIN_VERIFY_CHUNK, -(-len(todo) // (2 * executor.cpus)))))
    order, starts = K.pair_tasks(a[todo], b[todo], -(-len(todo) // size))  # an image's pairs in few tasks
    todo = todo[order]
    keys = keys.take(pa.array(order)) if keys is not None else None
    chunks = np.split(todo, starts[1:])
    t0 = time.time()
    store.loc.rm_folder(GATHER)  # an interrupted run's
    sources = [[] for _ in chunks]
    calls = _gather_calls(store, thumbs, a, b, chunks)
    prepared = sum(len(part[3]) for _, _, parts in calls for part in parts)  # (task, image) once each: what the tasks prepare
    log(f"knn: {len(todo)} pairs in {len(chunks)} verification task{'s' * (len(chunks) > 1)}: {prepared} thumbnails to prepare, "
        f"{prepared / len(np.unique(np.r_[a[todo], b[todo]])):.2f} an image")
    try:
        for g, groups in executor.map(gather_thumbs, calls):
            for task, group in groups.items():
                sources[task].append((calls[g][1], group))
        parts = sum(len(c[2]) for c in calls)
        log(f"knn: gathered the thumbnails of {len(chunks)} verification task{'s' * (len(chunks) > 1)} from {parts} "
            f"thumbs part{'s' * (parts > 1)} ({time.time() - t0:.0f} s)")
        calls = [(store.url, {"a": a[idx], "b": b[idx], "frames": frames[idx], "close": close[idx], "sources": sources[c]})
                 for c, idx in enumerate(chunks)]
        done = 0
        for c, res in executor.map(verify_chunk, calls, shared={"settings": verify_settings(cfg)}):
            for k, v in res.items():
                out[k][chunks[c]] = v
            if keys is not None:  # committed as it finishes: a rerun starts from here
                mine = keys.slice(starts[c], len(chunks[c]))
                # named by its whole key (frames too): the same pairs under another min_frames_sketch are another part
                name = sha256("\n".join(mine.column("a").to_pylist() + mine.column("b").to_pylist()).encode()
                              + np.asarray(mine.column("frames")).tobytes() + np.asarray(mine.column("close")).tobytes())[:20]
                store.write_part(VERIFIED, f"v-{name}", _verified_table(mine, res))
            done += len(chunks[c])
            log(f"knn: verified {done} of {len(todo)} candidate pairs on thumbnails ({time.time() - t0:.0f} s)")
    finally:
        store.loc.rm_folder(GATHER)
    return out


def _largest_groups(group_of, in_group, copy_of, show: int) -> list[list[int]]:
    """The `show` largest groups, each as its first ten members: each kept image followed by its copies."""
    gid, counts = np.unique(group_of[in_group], return_counts=True)
    members = {}
    for i in np.nonzero(in_group)[0]:
        members.setdefault(int(group_of[i]), []).append(int(i))
    top = gid[np.lexsort((gid, -counts))][:show]
    return [sorted(members[int(g)], key=lambda i: (i if copy_of[i] < 0 else copy_of[i], copy_of[i] >= 0, i))[:10] for g in top]
