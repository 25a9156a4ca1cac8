"""Build a FAISS index over a stage's vectors: choose it, train it on a sample, fill it part by part,
tune its search parameters against exact search, and write it with its id mapping.

Sharded builds: the driver plans (which rows of which parts go to which shard), trains the
quantizer on a bounded sample read part by part, and records what the tasks wrote; one task (on
the command's executor) per shard reads its rows from the parts (each checked against its sha256), fills a copy of the
trained index and writes it, so the driver never holds a shard, a chunk of the vectors, or more
of the id mapping than its Arrow columns.  One shard is filled the same way in the driver (the
index then fits memory_mb: that is why it is one shard).

Internally every index is L2: for the cosine metric the vectors are L2-normalised first, and
|a - b|^2 / 2 = 1 - cos(a, b) turns the squared L2 distance back into the cosine distance.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.io.location import Location
from deepscope.io.store import sha256

SPACES = {"features": ("features", "feature"), "pixels": ("pixels", "pixels")}  # space -> (stage, column)
KINDS = ("flat", "ivf_flat", "ivf_sq8", "ivf_pq", "opq_ivf_pq", "hnsw")
K = 10  # recall@K is what the tuning reaches for
HNSW_M = 32  # graph degree: FAISS's usual value, a good speed/recall trade-off
HNSW_MAX_DIM = 128  # above this, IVF scans beat graph walks on build time at the same recall
IVF_PROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
HNSW_EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


@dataclass
class IndexChoice:
    kind: str
    factory: str  # FAISS index_factory string of one shard
    shards: int
    nlist: int  # IVF lists (0: not IVF)
    m: int  # PQ bytes per vector (0: not PQ)
    shard_bytes: int  # estimated memory of one shard
    reason: str


def estimate_bytes(kind: str, n: int, d: int, nlist: int = 0, m: int = 0) -> int:
    """Memory of an index of n vectors (ids are 8 bytes a vector in IVF lists and ID maps)."""
    if kind == "flat":
        return n * (d * 4 + 8)
    if kind == "hnsw":
        return n * (d * 4 + 2 * HNSW_M * 4 + 8)  # level 0 holds 2M links; upper levels are small
    if kind == "ivf_flat":
        return n * (d * 4 + 8) + nlist * d * 4
    if kind == "ivf_sq8":  # a byte a dimension
        return n * (d + 8) + nlist * d * 4
    # codes and ids, centroids, codebooks, and FAISS's precomputed distance tables (nlist x m x 256)
    pq = n * (m + 8) + nlist * d * 4 + d * 256 * 4 + nlist * m * 256 * 4
    return pq + (d * d * 4 if kind == "opq_ivf_pq" else 0)


def default_nlist(n: int, train_max: int) -> int:
    """About 4 sqrt(n) lists, a power of two, with at least 39 training points per list."""
    cap = max(1, min(4 * math.sqrt(n), n // 39, train_max // 39))
    return 2 ** int(math.log2(cap))


def pq_bytes(d: int, n: int, nlist: int, budget: int) -> int:
    """The most PQ bytes per vector that fit: a divisor of d, from 4 dimensions per byte (sub-quantizer)
    up to 64 (and at least 8 bytes); shorter codes lose too much, so 0 then (shard instead)."""
    lowest = max(min(8, d), math.ceil(d / 64))
    fits = [m for m in range(lowest, min(max(d // 4, 1), 256) + 1)
            if d % m == 0 and estimate_bytes("opq_ivf_pq", n, d, nlist, m) <= budget]
    return max(fits) if fits else 0


def factory(kind: str, d: int, nlist: int, m: int) -> str:
    return {"flat": "IDMap,Flat", "hnsw": f"IDMap,HNSW{HNSW_M}", "ivf_flat": f"IVF{nlist},Flat",
            "ivf_sq8": f"IVF{nlist},SQ8_direct",  # bytes kept as they are: exact for uint8 vectors (pixels)
            "ivf_pq": f"IVF{nlist},PQ{m}x8", "opq_ivf_pq": f"OPQ{m},IVF{nlist},PQ{m}x8"}[kind]


def choose(n: int, d: int, kind: str = "auto", memory_mb: int = 4096, flat_max: int = 20_000,
           shards: int = 0, nlist: int = 0, train_max: int = 100_000, whole_bytes: bool = False) -> IndexChoice:
    """The index for n vectors of d dims under a memory budget per shard (machine).

    auto: exact (Flat) up to flat_max vectors; above, HNSW for low dimensions and IVF-Flat
    otherwise while the raw vectors fit the budget; for vectors of whole bytes (whole_bytes: the
    pixels' uint8), IVF with the bytes kept as they are (SQ8_direct: the same distances, a quarter of
    the memory) while those fit; IVF-PQ when they do not (OPQ's rotation
    first when the codes get short: more than 16 dimensions per PQ byte); and when even that
    does not fit, as many shards as needed.  shards=0 chooses the shard count too.
    """
    budget = memory_mb * 2**20
    if kind == "ivf_sq8" and not whole_bytes:
        raise UserError("kind ivf_sq8 keeps each value as a byte: it is for the pixel space's uint8 vectors, not features")

    def plan_for(count: int, n_shards: int) -> IndexChoice | None:
        nl = min(nlist or default_nlist(count, train_max), count)
        if kind != "auto":
            m = pq_bytes(d, count, nl, budget) if kind in ("ivf_pq", "opq_ivf_pq") else 0
            if kind in ("ivf_pq", "opq_ivf_pq") and not m:
                m = max(x for x in range(1, min(d // 4, 8) + 1) if d % x == 0) if d >= 4 else 1
            k, why = kind, "forced"
        elif n <= flat_max:
            k, m, why = "flat", 0, f"{n} <= flat_max {flat_max}: exact search"
        elif d <= HNSW_MAX_DIM and estimate_bytes("hnsw", count, d) <= budget:
            k, m, why = "hnsw", 0, f"low dimension ({d} <= {HNSW_MAX_DIM}) and the graph fits {memory_mb} MB"
        elif estimate_bytes("ivf_flat", count, d, nl) <= budget:
            k, m, why = "ivf_flat", 0, f"raw vectors fit {memory_mb} MB"
        elif whole_bytes and estimate_bytes("ivf_sq8", count, d, nl) <= budget:
            k, m, why = "ivf_sq8", 0, f"the vectors' bytes fit {memory_mb} MB as they are (exact distances)"
        else:
            m = pq_bytes(d, count, nl, budget)
            if not m:
                return None
            k = "ivf_pq" if m * 16 >= d else "opq_ivf_pq"
            why = f"raw vectors exceed {memory_mb} MB: {m}-byte PQ codes" + (" with OPQ" if k == "opq_ivf_pq" else "")
        nl = nl if k.startswith(("ivf", "opq")) else 0
        return IndexChoice(k, factory(k, d, nl, m), n_shards, nl, m, estimate_bytes(k, count, d, nl, m), why)

    if shards:
        return plan_for(math.ceil(n / shards), shards)
    for s in range(1, 1025):
        plan = plan_for(math.ceil(n / s), s)
        if plan is not None:
            if s > 1:
                plan.reason += f"; {s} shards, since one index does not fit {memory_mb} MB"
            return plan
    raise UserError(f"{n} vectors of {d} dims do not fit 1024 shards of {memory_mb} MB: raise memory_mb")


# ---------------------------------------------------------------------------- bytes

def serialize(index) -> bytearray:
    """The index as bytes, in one buffer of the exact size: a counting pass first, since
    faiss.serialize_index holds up to three copies at once (a growing vector, then an array)."""
    size = pos = 0

    def count(b):
        nonlocal size
        size += len(b)
        return len(b)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    buf = bytearray(size)

    def fill(b):
        nonlocal pos
        buf[pos:pos + len(b)] = b
        pos += len(b)
        return len(b)

    faiss.write_index(index, faiss.PyCallbackIOWriter(fill))
    return buf


def deserialize(data) -> faiss.Index:
    """An index from bytes, read in pieces (no second full copy)."""
    view, pos = memoryview(data), 0

    def read(n):
        nonlocal pos
        piece = view[pos:pos + n].tobytes()
        pos += len(piece)
        return piece

    return faiss.read_index(faiss.PyCallbackIOReader(read))


def write_faiss_index(loc, rel: str, index) -> str:
    """Write an index into the folder in pieces, hashing as it goes (serialize() would hold a second
    copy of a 1 GB shard); returns its sha256.  The bytes are serialize()'s."""
    h = hashlib.sha256()
    with loc.writing(rel) as f:
        def write(b):
            h.update(b)
            f.write(b)
            return len(b)

        faiss.write_index(index, faiss.PyCallbackIOWriter(write))
    return h.hexdigest()


_SHARD: dict = {}  # one shard per worker process, by sha256: the tuning's and the graph's tasks reuse it


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # a local shard of the location (load_shard), hashed in pieces
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def load_shard(url: str, rel: str, sha: str):
    """A shard of the output location `url`, opened only when it matches the sha256 recorded at build
    time. A worker keeps the last one it loaded: reading 1 GB again for every task would cost more
    than the search."""
    if sha not in _SHARD:
        _SHARD.clear()  # drop the old one first: one shard in memory
        loc = Location(url)
        if loc.remote:
            data = loc.get(rel)
            if sha256(data) != sha:
                raise RuntimeError(f"{loc.full(rel)} does not match the sha256 recorded at build time; rebuild the index")
            _SHARD[sha] = deserialize(data)
        else:  # a local file is hashed in pieces and mapped by FAISS (not held twice)
            if _file_sha256(loc.full(rel)) != sha:
                raise RuntimeError(f"{loc.full(rel)} does not match the sha256 recorded at build time; rebuild the index")
            _SHARD[sha] = faiss.read_index(loc.full(rel))
    return _SHARD[sha]


# ---------------------------------------------------------------------------- reading

def matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column -> (rows, d) float32."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    d = col.type.list_size
    return np.ascontiguousarray(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d), dtype=np.float32)


def stream_vectors(store, stage: str, column: str, chunk_rows: int, cosine: bool, meta: bool = False):
    """Yield (first row, vectors, {id, path, label, part, offset} or None), parts in manifest order,
    about chunk_rows rows at a time (memory: one chunk)."""
    cols = [column] + (["id", "path", "label"] if meta else [])
    buf: list = []
    start = rows = 0
    for part, t in store.iter_parts(stage, columns=cols):
        if t.num_rows == 0:
            continue  # a partition whose images all failed
        x = matrix(t.column(column))
        if cosine:
            faiss.normalize_L2(x)
        m = None
        if meta:
            m = {k: t.column(k).to_pylist() for k in ("id", "path", "label")}
            m["part"] = [part] * t.num_rows
            m["offset"] = list(range(t.num_rows))
        buf.append((x, m))
        rows += t.num_rows
        if rows >= chunk_rows:
            yield start, *_join(buf)
            start, buf, rows = start + rows, [], 0
    if buf:
        yield start, *_join(buf)


def _join(buf):
    x = np.concatenate([b[0] for b in buf]) if len(buf) > 1 else buf[0][0]
    if buf[0][1] is None:
        return x, None
    return x, {k: [v for b in buf for v in b[1][k]] for k in buf[0][1]}


def parts_with_starts(store, stage: str) -> list[tuple[str, dict, int]]:
    """(part, manifest entry, first index row) of the stage's non-empty parts, in the order the index adds them."""
    out, start = [], 0
    for part, entry in sorted(store.parts(stage).items()):
        if entry["rows"]:
            out.append((part, entry, start))
            start += entry["rows"]
    return out


def part_vectors(loc, rel: str, sha: str, column: str, cosine: bool) -> np.ndarray:
    """One part's vectors, read where they are used (a Ray task), only if the part's bytes are the
    ones the manifest recorded."""
    data = loc.get(rel)
    if sha256(data) != sha:
        raise RuntimeError(f"{loc.full(rel)} does not match the manifest's sha256")
    x = matrix(pq.read_table(pa.BufferReader(data), columns=[column]).column(column))
    del data
    if cosine:
        faiss.normalize_L2(x)
    return x


def dataset_shape(store, stage: str, column: str) -> tuple[int, int, list[str]]:
    """(rows, dim, non-empty parts) from the manifest and one part's schema."""

    parts = {p: e for p, e in store.parts(stage).items() if e["rows"]}
    if not parts:
        how = (f"add a [pixels] section to the job, or run `deepscope index {store.root} --pixels`" if stage == "pixels"
               else f"run `deepscope features` into {store.root} first")
        raise UserError(f"{store.root} has no {stage} results: {how}")
    schema = store.read_schema(parts[min(parts)]["file"])
    return sum(e["rows"] for e in parts.values()), schema.field(column).type.list_size, sorted(parts)


def _value_type(store, stage: str, column: str) -> pa.DataType:
    """The type of one value of a stage's vector column (float32 features, uint8 pixels)."""
    parts = {p: e for p, e in store.parts(stage).items() if e["rows"]}
    return store.read_schema(parts[min(parts)]["file"]).field(column).type.value_type


def inputs_digest(store, stage: str) -> str:
    """What the index was built from: the checksums of the stage's parts."""
    return sha256(json.dumps(sorted((p, e["sha256"]) for p, e in store.parts(stage).items())).encode())[:16]


# ---------------------------------------------------------------------------- tuning

def recall_without_self(found: np.ndarray, truth: np.ndarray, query_rows: np.ndarray, k: int = K) -> float:
    """Share of the exact k nearest that were found; each query's own row is left out of both lists
    (the queries are rows of the indexed set, and finding oneself is no achievement)."""
    hits = total = 0
    for f, t, r in zip(found, truth, query_rows):
        want = [i for i in t if i != r and i >= 0][:k]
        got = set([i for i in f if i != r and i >= 0][:k])
        hits += len(got.intersection(want))
        total += len(want)
    return hits / total if total else 1.0


def candidates(plan: IndexChoice) -> list[dict]:
    """Search settings from cheapest to dearest."""
    if plan.nlist:
        return [{"nprobe": p} for p in IVF_PROBES if p < plan.nlist] + [{"nprobe": plan.nlist}]
    if plan.kind == "hnsw":
        return [{"ef_search": e} for e in HNSW_EFS]
    return [{}]


def tune(search, plan: IndexChoice, truth: np.ndarray, query_rows: np.ndarray, target: float, log, k: int):
    """The cheapest setting whose recall@k reaches the target (else the best one) -> (setting, recall, sweep)."""
    sweep = []
    best = None
    for setting in candidates(plan):
        t0 = time.perf_counter()
        _, found = search(setting, k + 1)
        ms = (time.perf_counter() - t0) * 1000 / max(len(query_rows), 1)
        r = recall_without_self(found, truth, query_rows, k)
        sweep.append({**setting, "recall": round(r, 4), "ms_per_query": round(ms, 3)})
        if best is None or r > best[1]:
            best = (setting, r)
        if r >= target:
            return setting, r, sweep
    log(f"  index: recall@{k} target {target} not reached; best {best[1]:.3f} with {best[0]}")
    return best[0], best[1], sweep


# ---------------------------------------------------------------------------- building

@dataclass
class _Sample:
    queries: np.ndarray  # (q, d)
    query_rows: np.ndarray
    train: np.ndarray | None


def _sample(store, parts, column, n, d, plan, cfg, cosine) -> _Sample:
    """Held-out tuning queries and the training sample, picked by row number and read part by part
    into arrays allocated once (memory: the sample and one part, not the sample twice)."""
    rng = np.random.default_rng(cfg.seed)
    nq = min(cfg.tune_queries, n)
    perm = rng.permutation(n)
    query_rows = np.sort(perm[:nq])
    ntrain = 0
    if plan.nlist or plan.m:
        ntrain = min(n, cfg.train_max, max(64 * plan.nlist, 256 * 39 if plan.m else 0))
    # training rows leave the queries out when the set is big enough
    train_rows = np.sort(perm[nq:nq + ntrain] if n - nq >= ntrain else perm[:ntrain])
    queries, train = np.empty((nq, d), np.float32), np.empty((ntrain, d), np.float32)
    for part, entry, start in parts:
        end = start + entry["rows"]
        wanted = [(rows, out, *np.searchsorted(rows, [start, end]))
                  for rows, out in ((query_rows, queries), (train_rows, train))]
        if all(hi == lo for _, _, lo, hi in wanted):
            continue  # no sampled row in this part: not read
        x = matrix(store.loc.read_table(entry["file"], columns=[column]).column(column))
        _check_rows(store, part, entry, len(x))
        for rows, out, lo, hi in wanted:
            if hi > lo:
                out[lo:hi] = x[rows[lo:hi] - start]
                if cosine:
                    faiss.normalize_L2(out[lo:hi])  # rows lo:hi of a C-ordered array: normalised in place
        del x
    return _Sample(queries, query_rows, train if ntrain else None)


def _check_rows(store, part: str, entry: dict, rows: int) -> None:
    if rows != entry["rows"]:
        raise RuntimeError(f"{store.root}/{entry['file']} changed while indexing ({rows} != {entry['rows']} rows "
                           f"in part {part}); run again")


def _ids_table(store, parts) -> pa.Table:
    """Row -> id, path, label and place in the stage's parts, as Arrow columns read part by part
    (as Python lists, a million rows cost the driver hundreds of MB)."""
    tables = []
    for part, entry, start in parts:
        t = store.loc.read_table(entry["file"], columns=["id", "path", "label"])
        _check_rows(store, part, entry, t.num_rows)
        m = t.num_rows
        tables.append(pa.table({
            "row": pa.array(np.arange(start, start + m, dtype=np.int64)),
            **{c: t.column(c).cast(schemas.INDEX_IDS.field(c).type) for c in ("id", "path", "label")},
            "part": pa.repeat(pa.scalar(part, pa.string()), m),
            "offset": pa.array(np.arange(m, dtype=np.int32))}, schema=schemas.INDEX_IDS))
    return pa.concat_tables(tables).combine_chunks()  # one chunk: the file is written as before


@dataclass(frozen=True)
class Slice:
    """Rows [lo, hi) of one part of the stage: the index's rows first, first + 1, ..."""
    file: str
    sha256: str
    lo: int
    hi: int
    first: int


def _shard_of(n: int, shards: int) -> np.ndarray:
    """First row of each shard (and n): contiguous, nearly equal row ranges."""
    return np.array([n * s // shards for s in range(shards + 1)])


def shard_slices(parts, bounds: np.ndarray) -> list[list[Slice]]:
    """The plan of a build: which rows of which parts each shard holds."""
    plan: list[list[Slice]] = [[] for _ in range(len(bounds) - 1)]
    for _, entry, start in parts:
        end = start + entry["rows"]
        for s in range(len(plan)):
            lo, hi = max(start, bounds[s]), min(end, bounds[s + 1])
            if hi > lo:
                plan[s].append(Slice(entry["file"], entry["sha256"], int(lo - start), int(hi - start), int(lo)))
    return plan


def build_space(store, space: str, cfg, log, executor) -> dict:
    """Build, tune and write the index of one space; returns its info (also written as index.json).
    Several shards are filled in parallel tasks on the executor."""
    stage, column = SPACES[space]
    t_start = time.time()
    n, d, _ = dataset_shape(store, stage, column)
    metric = cfg.metric if space == "features" else "l2"  # pixel space is the lecture's L2 on pixels
    cosine = metric == "cosine"
    plan = choose(n, d, cfg.kind, cfg.memory_mb, cfg.flat_max, min(cfg.shards, n), cfg.nlist, cfg.train_max,
                  whole_bytes=_value_type(store, stage, column) == pa.uint8())
    log(f"index {space}: {n} vectors of {d} dims -> {plan.kind} ({plan.factory}, {plan.shards} shard"
        f"{'s' if plan.shards > 1 else ''}): {plan.reason}")

    parts = parts_with_starts(store, stage)
    sample = _sample(store, parts, column, n, d, plan, cfg, cosine)
    empty = faiss.index_factory(d, plan.factory)
    if plan.kind == "ivf_sq8":  # the bytes themselves, not their residuals from the list's centre (which are not bytes)
        faiss.extract_index_ivf(empty).by_residual = False
    t0 = time.time()
    if sample.train is not None:
        empty.train(sample.train)
    train_s = time.time() - t0
    del sample.train

    ids_rel = f"index/{space}/ids.parquet"
    store.write_table(ids_rel, _ids_table(store, parts))

    k = min(K, n - 1) if n > 1 else 1
    slices = shard_slices(parts, _shard_of(n, plan.shards))
    t0 = time.time()
    if plan.shards == 1:
        shard_files, truth, search = _fill_local(store, space, empty, slices[0], column, cosine, sample.queries, k + 1)
    else:
        shard_files, truth, search = _fill_parallel(store, space, empty, slices, column, cosine, sample.queries,
                                                    k + 1, plan, executor)
    add_s = time.time() - t0

    t0 = time.time()
    setting, recall, sweep = ({}, 1.0, []) if plan.kind == "flat" else tune(
        search, plan, truth, sample.query_rows, cfg.target_recall, log, k)
    tune_s = time.time() - t0
    info = {
        "space": space, "stage": stage, "column": column, "rows": n, "dim": d, "metric": metric,
        **{f: v for f, v in asdict(plan).items() if f != "shard_bytes"},
        "estimated_mb_per_shard": round(plan.shard_bytes / 2**20, 1), "memory_mb": cfg.memory_mb,
        "search": setting, f"recall_at_{k}": round(recall, 4), "recall_k": k, "target_recall": cfg.target_recall,
        "target_met": recall >= cfg.target_recall, "tune_queries": len(sample.query_rows), "sweep": sweep,
        "train_s": round(train_s, 2), "add_s": round(add_s, 2), "tune_s": round(tune_s, 2),
        "build_s": round(time.time() - t_start, 2), "shard_files": shard_files,
        "ids": {"file": ids_rel, "sha256": store.manifest["files"][ids_rel]["sha256"]},
        "inputs": inputs_digest(store, stage),
    }
    store.write_file(f"index/{space}/index.json", json.dumps(info, indent=1))
    log(f"index {space}: recall@{k} {recall:.3f} with {setting or 'exact search'}, built in {info['build_s']} s")
    return info


def _add_truth(heap, queries, x, start):
    """The exact heap.k nearest of the queries among x (rows start...), into the heap."""
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    dist, rows = flat.search(queries, heap.k)
    heap.add_result(dist, np.where(rows >= 0, rows + start, -1))


def fill_shard(index, loc, rel: str, slices: list[Slice], column: str, cosine: bool, queries: np.ndarray, k: int):
    """Add the slices' vectors, read from the parts (each checked against its sha256), to a trained
    empty index with their global rows as ids, and write it to rel; the exact k nearest of the tuning
    queries among them come from the same pass.  -> ({file, rows, sha256}, (distances, rows))."""
    truth = faiss.ResultHeap(len(queries), k)
    for s in slices:
        x = part_vectors(loc, s.file, s.sha256, column, cosine)[s.lo:s.hi]
        index.add_with_ids(x, np.arange(s.first, s.first + len(x), dtype=np.int64))
        _add_truth(truth, queries, x, s.first)
        del x
    truth.finalize()
    return {"file": rel, "rows": int(index.ntotal), "sha256": write_faiss_index(loc, rel, index)}, (truth.D, truth.I)


def _fill_shard_task(url: str, rel: str, slices: list[Slice], column: str, cosine: bool, k: int, *,
                     empty: bytes, queries: np.ndarray):
    """One task: one shard, built from the parts themselves (the driver ships only the plan)."""
    return fill_shard(deserialize(empty), Location(url), rel, slices, column, cosine, queries, k)


def _fill_local(store, space, index, slices, column, cosine, queries, k):
    """One shard, filled in this process (no Ray for small sets); tuning searches it here."""
    file, (dist, rows) = fill_shard(index, store.loc, f"index/{space}/shard-000.faiss", slices, column, cosine,
                                    queries, k)
    store.record_file(file["file"], file["sha256"])

    def search(setting, k):
        from deepscope.index.search import search_params

        return index.search(queries, k, params=search_params(index, **setting))

    return [file], rows, search


def _fill_parallel(store, space, empty, slices, column, cosine, queries, k, plan, executor):
    """Shards filled in parallel tasks, each reading its rows from the parts and writing its file;
    the driver sends the plan and records the files, so it never holds a shard or the vectors."""
    memory_mb = plan.shard_bytes * 1.2 / 2**20 + 64
    calls = [(store.url, f"index/{space}/shard-{s:03d}.faiss", plan_s, column, cosine, k) for s, plan_s in enumerate(slices)]
    done = dict(executor.map(_fill_shard_task, calls, shared={"empty": bytes(serialize(empty)), "queries": queries},
                             memory_mb=memory_mb))
    files, truth = [], faiss.ResultHeap(len(queries), k)
    for s in range(len(slices)):  # in shard order: equal distances keep the lower rows, as one pass over all would
        file, (dist, rows) = done[s]
        store.record_file(file["file"], file["sha256"])
        files.append(file)
        truth.add_result(dist, rows)
    truth.finalize()

    def search(setting, k):
        found = dict(executor.map(_search_shard, [(store.url, f["file"], f["sha256"]) for f in files],
                                  shared={"queries": queries, "k": k, "setting": setting}, memory_mb=memory_mb))
        return merge_knn([found[i] for i in range(len(files))], k)

    return files, truth.I, search


def _search_shard(url: str, rel: str, sha: str, *, queries: np.ndarray, k: int, setting: dict):
    from deepscope.index.search import search_params

    index = load_shard(url, rel, sha)
    return index.search(queries, k, params=search_params(index, **setting))


def merge_knn(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (distances, rows) of the same queries into the k best (L2: smallest first)."""
    heap = faiss.ResultHeap(results[0][0].shape[0], k)
    for dist, rows in results:
        heap.add_result(np.ascontiguousarray(dist[:, :k], np.float32), np.ascontiguousarray(rows[:, :k], np.int64))
    heap.finalize()
    return heap.D, heap.I
