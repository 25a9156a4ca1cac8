"""Open a built index and search it: files are opened only when they match the sha256 recorded at
build time, answers only name rows of the id mapping, and per-search settings (nprobe, efSearch)
travel as FAISS search parameters, so one shared index serves concurrent requests unchanged.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepscope.errors import UserError
from deepscope.index.build import deserialize, inputs_digest, matrix
from deepscope.io.store import Store, sha256

MAX_EF = 32768


class UnknownId(UserError):
    """An id that the index does not hold (the server answers 404)."""


@dataclass(frozen=True)
class Neighbour:
    row: int
    id: str
    path: str
    label: str | None
    distance: float


def search_params(index, nprobe: int | None = None, ef_search: int | None = None):
    """FAISS per-search parameters for this index (None: the index's own defaults)."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexShards):
        idx = faiss.downcast_index(idx.at(0))  # every shard is the same kind
    pre = isinstance(idx, faiss.IndexPreTransform)
    inner = faiss.downcast_index(idx.index) if pre else idx
    if isinstance(inner, faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    params = None
    if nprobe and isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
    elif ef_search and isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
    if params is not None and pre:
        outer = faiss.SearchParametersPreTransform(index_params=params)
        outer._inner = params  # the C++ object holds a bare pointer: keep the Python one alive
        params = outer
    return params


def verified_bytes(store: Store, rel: str, recorded: str) -> bytes:
    """A file's bytes, only if they match the sha256 recorded when it was written."""
    listed = store.manifest.get("files", {}).get(rel, {}).get("sha256")
    try:
        data = store.read_bytes(rel)
    except OSError as e:
        raise UserError(f"cannot read {store.root}/{rel} ({e.strerror or e}): rebuild with `deepscope index {store.root}`") from None
    if listed != recorded or sha256(data) != recorded:
        raise UserError(f"{store.root}/{rel} does not match the sha256 recorded at build time; refusing to open it "
                        f"(rebuild with `deepscope index {store.root}`)")
    return data


@functools.lru_cache(maxsize=8)  # parts are small (partition_size rows); --id queries cluster in a few
def _part_vectors(url: str, rel: str, sha: str, column: str) -> tuple[list[str], np.ndarray]:
    from deepscope.io.store import Location

    t = Location(url).read_table(rel, columns=["id", column])
    return t.column("id").to_pylist(), matrix(t.column(column))


class Searcher:
    """One space's index (its shards merged by faiss.IndexShards) and its row -> image mapping."""

    def __init__(self, store: Store | str, space: str = "features", info: dict | None = None, load_index: bool = True):
        """info: the space's build record (default: the one in the folder's manifest).  load_index=False:
        the id mapping only; a subclass searches the shards elsewhere (serve --ray: shard replicas)."""
        self.store = store if isinstance(store, Store) else Store(store)
        info = info or ((self.store.summary("index") or {}).get("spaces") or {}).get(space)
        if info is None:
            hint = " --pixels" if space == "pixels" else ""
            raise UserError(f"{self.store.root} has no {space} index: run `deepscope index {self.store.root}{hint}`")
        if inputs_digest(self.store, info["stage"]) != info["inputs"]:
            raise UserError(f"the {info['stage']} results of {self.store.root} changed after the {space} index was "
                            f"built: run `deepscope index {self.store.root}` again")
        self.info, self.space = info, space
        self.dim, self.metric, self.rows = info["dim"], info["metric"], info["rows"]
        self.index = None
        if load_index:
            self._shards = [deserialize(verified_bytes(self.store, f["file"], f["sha256"])) for f in info["shard_files"]]
            if len(self._shards) == 1:
                self.index = self._shards[0]
            else:  # searched together, results merged by distance; rows are global ids
                self.index = faiss.IndexShards(self.dim, True, False)
                for shard in self._shards:
                    self.index.add_shard(shard)
        ids = pq.read_table(pa.BufferReader(verified_bytes(self.store, info["ids"]["file"], info["ids"]["sha256"])))
        self.ids = ids.column("id").to_pylist()
        self.paths = ids.column("path").to_pylist()
        self.labels = ids.column("label").to_pylist()
        self.parts = ids.column("part").to_pylist()
        self.offsets = ids.column("offset").to_pylist()
        self.row_of = {i: r for r, i in enumerate(self.ids)}
        total = self.index.ntotal if self.index is not None else sum(f["rows"] for f in info["shard_files"])
        if total != len(self.ids) or ids.column("row").to_pylist() != list(range(len(self.ids))):
            raise UserError(f"the {space} index of {self.store.root} does not match its id mapping: rebuild it")

    # -- settings -------------------------------------------------------------------
    def setting(self, nprobe: int | None = None, ef_search: int | None = None) -> dict:
        """The tuned search setting, or the caller's override (checked against this index)."""
        kind = self.info["kind"]
        if nprobe is not None:
            if not self.info["nlist"]:
                raise UserError(f"nprobe applies to IVF indexes; the {self.space} index is {kind}")
            if not 1 <= nprobe <= self.info["nlist"]:
                raise UserError(f"nprobe must be between 1 and {self.info['nlist']} (the index's lists), got {nprobe}")
            return {"nprobe": int(nprobe)}
        if ef_search is not None:
            if kind != "hnsw":
                raise UserError(f"ef_search applies to HNSW indexes; the {self.space} index is {kind}")
            if not 1 <= ef_search <= MAX_EF:
                raise UserError(f"ef_search must be between 1 and {MAX_EF}, got {ef_search}")
            return {"ef_search": int(ef_search)}
        return dict(self.info["search"])

    # -- queries ----------------------------------------------------------------------
    def prepare(self, vectors) -> np.ndarray:
        try:
            x = np.array(vectors, dtype=np.float32, ndmin=2)
        except (TypeError, ValueError):
            raise UserError("a query vector must be a list of numbers") from None
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserError(f"a {self.space} query vector has {self.dim} values, got {x.shape[-1] if x.size else 0}")
        if not np.isfinite(x).all():
            raise UserError("a query vector holds NaN or infinite values")
        x = np.ascontiguousarray(x)
        if self.metric == "cosine":
            faiss.normalize_L2(x)
        return x

    def vectors_of(self, ids: list[str]) -> np.ndarray:
        """The stored vectors of images by id, read from the stage's parts (the exact values, not
        an index's reconstruction)."""
        out = np.empty((len(ids), self.dim), np.float32)
        parts = self.store.parts(self.info["stage"])
        for n, image_id in enumerate(ids):
            row = self.row_of.get(image_id)
            if row is None:
                raise UnknownId(f"unknown id {image_id!r}: not in the {self.space} index of {self.store.root}")
            entry = parts[self.parts[row]]
            part_ids, x = _part_vectors(self.store.url, entry["file"], entry["sha256"], self.info["column"])
            if part_ids[self.offsets[row]] != image_id:
                raise UserError(f"{self.store.root}: the index is out of date with its {self.info['stage']}: rebuild it")
            out[n] = x[self.offsets[row]]
        return out

    def search(self, vectors, k: int = 10, nprobe: int | None = None, ef_search: int | None = None,
               ) -> list[list[Neighbour]]:
        """The k nearest images of each query vector, nearest first (fewer when the index has fewer,
        or an approximate search finds fewer: a row it cannot name is never returned)."""
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        x = self.prepare(vectors)
        k = min(k, self.rows)
        dist, rows = self.raw_search(x, k, self.setting(nprobe, ef_search))
        dist = np.sqrt(np.maximum(dist, 0)) if self.metric == "l2" else dist / 2  # |a-b|^2/2 = 1 - cos
        out = []
        for drow, rrow in zip(dist, rows):
            out.append([Neighbour(int(r), self.ids[r], self.paths[r], self.labels[r], float(d))
                        for d, r in zip(drow, rrow) if 0 <= r < len(self.ids)])
        return out

    def raw_search(self, x: np.ndarray, k: int, setting: dict) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's answer for prepared vectors: (squared L2 distances, rows), (n, k)."""
        return self.index.search(x, k, params=search_params(self.index, **setting))

    def describe(self) -> dict:
        i = self.info
        return {"space": self.space, "kind": i["kind"], "rows": i["rows"], "dim": i["dim"], "metric": i["metric"],
                "shards": i["shards"], "nlist": i["nlist"], "search": i["search"],
                f"recall_at_{i['recall_k']}": i[f"recall_at_{i['recall_k']}"]}
