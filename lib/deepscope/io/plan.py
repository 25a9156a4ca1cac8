"""Partitions: the unit of work, retry and resume, cut so that they stay put when a dataset grows.

Four kinds of source, each listed lazily:
- a folder (local or fsspec URL): walked directory by directory in a fixed order; the ids are cut
  into content-defined chunks (a cut falls after an id whose hash says so, as rsync and dedup
  stores cut byte streams), so adding images anywhere changes only the chunk they fall in and the
  names of all the others stay the same: a grown folder recomputes only what it must;
- one manifest (.parquet or .csv with `path`, optional `id`, `label`): read on the driver, cut the
  same way;
- manifest shards (a glob such as `shards/*.parquet`, the img2dataset / LAION layout): the driver
  reads only each shard's row count; a partition is a row range of one shard that the decode task
  reads itself, so no item travels from the driver and a new shard adds partitions of its own;
- `synthetic:N`: N generated images (benchmarks, scale tests): ranges, generated in the decode tasks.

A partition travels to its read task as a small descriptor (`Partition.desc`).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from deepscope.errors import UserError
from deepscope.io.sources import IMAGE_EXTENSIONS, _fs, _is_manifest, list_manifest

SYNTHETIC = "synthetic:"


@dataclass(frozen=True)
class Partition:
    name: str  # p-<digest of its ids>, s-<shard digest>-<first row>, or y-<first index>: never a run id
    size: int  # items
    desc: dict = field(repr=False)  # what its read task needs, JSON-able

    @property
    def items(self) -> pd.DataFrame:
        """The partition's items (id, path, label), read as its task reads them."""
        return read_partition(self.desc)


def _hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


def chunks(ids: Iterator[str], size: int) -> Iterator[list[str]]:
    """Content-defined chunks of a stream of ids, about `size` long on average.

    A chunk ends after an id whose hash is 0 modulo (size - size/4) once it holds size/4 ids, or at
    3 x size. Where a chunk ends depends on its own ids only (and, after a forced cut, on the
    previous chunk's end until the next natural cut), so an insertion changes one or two chunks."""
    floor = max(1, size // 4)
    modulus = max(1, size - floor)
    chunk: list[str] = []
    for i in ids:
        chunk.append(i)
        if (len(chunk) >= floor and _hash(i) % modulus == 0) or len(chunk) >= 3 * size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _items_partition(df: pd.DataFrame) -> Partition:
    name = "p-" + hashlib.blake2b("\n".join(df["id"]).encode(), digest_size=8).hexdigest()
    return Partition(name, len(df), {"kind": "items", "items": json.dumps(
        {"id": df["id"].tolist(), "path": df["path"].tolist(), "label": df["label"].tolist()})})


def walk_folder(source: str) -> Iterator[tuple[str, str, str | None]]:
    """(id, path, label) of every image below a folder, one directory at a time, in a fixed order
    (a directory's files by name, then its subdirectories by name). label = first-level subfolder."""
    fs, root = _fs(source)
    if not fs.isdir(root):
        raise UserError(f"dataset not found: {source} is neither a folder, a .parquet/.csv manifest, "
                        f"a glob of manifest shards nor {SYNTHETIC}N")
    root = root.rstrip("/")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")

    def emit(rel_dir: str, names: list[str]):
        for n in sorted(names):
            if n.lower().endswith(IMAGE_EXTENSIONS):
                rel = f"{rel_dir}/{n}" if rel_dir else n
                full = f"{root}/{rel}"
                yield rel, full if local else f"{protocol}://{full}", rel.split("/", 1)[0] if "/" in rel else None

    if local:
        def walk(rel_dir: str):
            files, dirs = [], []
            with os.scandir(f"{root}/{rel_dir}" if rel_dir else root) as it:
                for e in it:
                    (dirs if e.is_dir() else files).append(e.name)
            yield from emit(rel_dir, files)
            for d in sorted(dirs):
                yield from walk(f"{rel_dir}/{d}" if rel_dir else d)
        yield from walk("")
    else:  # object stores list whole prefixes at once
        by_dir: dict[str, list[str]] = {}
        for p in fs.find(root):
            rel = p[len(root) + 1:]
            d, _, n = rel.rpartition("/")
            by_dir.setdefault(d, []).append(n)
        for d in sorted(by_dir, key=lambda d: [x for x in d.split("/") if x]):
            yield from emit(d, by_dir[d])


def _shards(source: str) -> list[str]:
    fs, pattern = _fs(source)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = sorted(fs.glob(pattern))
    if not found:
        raise UserError(f"no manifest shard matches {source}")
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in found]


def _shard_rows(shard: str) -> tuple[int, str]:
    """(rows, a digest of the shard's identity: path, size, modification) without reading its data."""
    import fsspec
    import pyarrow.parquet as pq

    fs, p = fsspec.core.url_to_fs(shard)
    info = fs.info(p)
    ident = json.dumps([shard, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))])
    with fs.open(p, "rb") as f:
        if shard.lower().endswith(".parquet"):
            rows = pq.ParquetFile(f).metadata.num_rows
        else:
            rows = max(0, sum(1 for _ in f) - 1)  # a header line, then one line per row (streamed)
    return rows, hashlib.blake2b(ident.encode(), digest_size=5).hexdigest()


def plan(source: str, size: int) -> Iterator[Partition | pd.DataFrame]:
    """Partitions of a dataset, lazily. A DataFrame yielded among them holds duplicate-id rows
    that were dropped (a single manifest only)."""
    if source.startswith(SYNTHETIC):
        try:
            n = int(source[len(SYNTHETIC):])
        except ValueError:
            raise UserError(f"dataset {source!r}: write synthetic:N with N images") from None
        for start in range(0, n, size):
            stop = min(n, start + size)
            yield Partition(f"y-{start:012d}", stop - start, {"kind": "synthetic", "start": start, "stop": stop})
    elif "*" in source or "?" in source:
        for shard in _shards(source):
            rows, digest = _shard_rows(shard)
            stem = os.path.basename(shard).split(".")[0][:40]
            for start in range(0, rows, size):
                stop = min(rows, start + size)
                yield Partition(f"s-{stem}-{digest}-{start:09d}", stop - start,
                                {"kind": "shard", "shard": shard, "start": start, "stop": stop})
    elif _is_manifest(source):
        items = list_manifest(source).sort_values("id", kind="stable").reset_index(drop=True)
        dup = items.duplicated("id", keep="first")
        if dup.any():
            yield items[dup].reset_index(drop=True)
        items = items[~dup].reset_index(drop=True)
        start = 0
        for chunk in chunks(iter(items["id"]), size):
            yield _items_partition(items.iloc[start:start + len(chunk)])
            start += len(chunk)
    else:
        rows = walk_folder(source)
        buf: list[tuple] = []

        def ids():
            for r in rows:
                buf.append(r)
                yield r[0]
        for chunk in chunks(ids(), size):
            part, rest = buf[:len(chunk)], buf[len(chunk):]
            buf[:] = rest
            yield _items_partition(pd.DataFrame(part, columns=["id", "path", "label"]))


def partition_items(items: pd.DataFrame, size: int) -> list[Partition]:
    """Partitions of an in-memory listing (a concept set), cut as a folder's would be."""
    parts, start = [], 0
    for chunk in chunks(iter(items["id"]), size):
        parts.append(_items_partition(items.iloc[start:start + len(chunk)]))
        start += len(chunk)
    return parts


def read_partition(desc: dict) -> pd.DataFrame:
    """The items (id, path, label) of one partition, in its read task."""
    kind = desc["kind"]
    if kind == "items":
        return pd.DataFrame(json.loads(desc["items"]), columns=["id", "path", "label"])
    if kind == "synthetic":
        idx = range(desc["start"], desc["stop"])
        return pd.DataFrame({"id": [f"{i:012d}" for i in idx], "path": [f"{SYNTHETIC}{i}" for i in idx],
                             "label": [f"c{i % 10}" for i in idx]})
    df = _read_shard_rows(desc["shard"], desc["start"], desc["stop"])
    return df.drop_duplicates("id", keep="first").reset_index(drop=True)


def _read_shard_rows(shard: str, start: int, stop: int) -> pd.DataFrame:
    import fsspec
    import pyarrow.parquet as pq

    fs, p = fsspec.core.url_to_fs(shard)
    with fs.open(p, "rb") as f:
        if shard.lower().endswith(".parquet"):
            pf = pq.ParquetFile(f)
            cols = [c for c in ("path", "id", "label") if c in pf.schema_arrow.names]
            if "path" not in cols:
                raise UserError(f"manifest shard {shard} has no 'path' column")
            df = _row_range(pf, start, stop, cols)
        else:
            df = pd.read_csv(f, dtype=str, keep_default_na=False, skiprows=range(1, start + 1), nrows=stop - start)
    base = shard.rsplit("/", 1)[0]
    paths = [p if ("://" in p or os.path.isabs(p)) else f"{base}/{p}" for p in df["path"].astype(str)]
    ids = df["id"].astype(str) if "id" in df.columns else df["path"].astype(str)
    labels = df["label"].astype(str).where(df["label"].notna(), None) if "label" in df.columns else [None] * len(df)
    return pd.DataFrame({"id": list(ids), "path": paths, "label": list(labels)})


def _row_range(pf, start: int, stop: int, cols: list[str]) -> pd.DataFrame:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    import pyarrow as pa

    tables, offset = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > start and offset < stop:
            t = pf.read_row_group(g, columns=cols)
            tables.append(t.slice(max(0, start - offset), min(n, stop - offset) - max(0, start - offset)))
        offset += n
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=cols)


def synthetic_image(i: int, side: int = 8) -> np.ndarray:
    """The i-th synthetic image: side x side RGB noise, the same for the same i everywhere."""
    return np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
