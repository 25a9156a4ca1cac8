"""Datasets: one source class per kind, each with its partitions and its reader. Every stage that
needs the dataset goes through these (there is no second listing).

- FolderSource: a folder (local or fsspec URL), walked directory by directory in a fixed order;
  label = first-level subfolder. Ids are cut into content-defined chunks (io/plan.py), so adding
  images changes only the chunk they fall in.
- ManifestSource: one .parquet/.csv with `path`, optional `id`, `label` (and `box`/`mask` object
  columns); read on the driver, cut the same way; duplicate ids are dropped and reported.
- ShardsSource: a glob of manifest shards (`shards/*.parquet`, the img2dataset / LAION layout):
  the driver reads only each shard's row count; a partition is a row range of one shard, read by
  its read task, so no item travels from the driver.
- SyntheticSource: `synthetic:N`, N generated images (benchmarks, scale tests).

Every item gets a stable `id`: its path relative to the dataset root, or the manifest's id.
A partition travels to its read task as a small descriptor (Partition.desc), read back with
read_partition() wherever the task runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterator

import fsspec
import numpy as np
import pandas as pd

from deepscope.errors import UserError
from deepscope.io.plan import Partition, content_defined_chunks

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SYNTHETIC = "synthetic:"
COLUMNS = ["id", "path", "label"]


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """Bytes of a local path or any fsspec URL (s3://, gs://, file://, memory://)."""
    if "://" not in path:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1 if max_bytes else -1)
    with fsspec.open(path, "rb") as f:
        return f.read(max_bytes + 1 if max_bytes else -1)


def _fs(url: str):
    fs, root = fsspec.core.url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fs, root, protocol in ("file", "local"), protocol


def _relative_to(base: str, paths) -> list[str]:
    """A manifest's paths: relative ones are taken from the manifest's folder (`..` resolved here:
    an object store has no parent folders to resolve it)."""
    if "://" in base:
        protocol, rest = base.split("://", 1)
        return [p if ("://" in p or os.path.isabs(p)) else f"{protocol}://{posixpath.normpath(f'{rest}/{p}')}"
                for p in paths]
    return [p if ("://" in p or os.path.isabs(p)) else os.path.normpath(f"{base}/{p}") for p in paths]


def _frame(df: pd.DataFrame, base: str) -> pd.DataFrame:
    """(id, path, label) of a manifest table: id = the `id` column, else the path as written."""
    paths = df["path"].astype(str)
    ids = df["id"].astype(str) if "id" in df.columns else paths
    labels = (df["label"].astype(str).where(df["label"].notna(), None).tolist() if "label" in df.columns
              else [None] * len(df))
    return pd.DataFrame({"id": list(ids), "path": _relative_to(base, paths), "label": labels}, columns=COLUMNS)


def items_partition(df: pd.DataFrame) -> Partition:
    """A partition that carries its items (folders, one manifest, concept sets): named by their ids."""
    name = "p-" + hashlib.blake2b("\n".join(df["id"]).encode(), digest_size=8).hexdigest()
    return Partition(name, len(df), {"kind": "items", "id": df["id"].tolist(), "path": df["path"].tolist(),
                                     "label": df["label"].tolist()})


def partition_items(items: pd.DataFrame, size: int) -> list[Partition]:
    """Partitions of an in-memory listing (a concept set), cut as a folder's would be."""
    parts, start = [], 0
    for chunk in content_defined_chunks(iter(items["id"]), size):
        parts.append(items_partition(items.iloc[start:start + len(chunk)]))
        start += len(chunk)
    return parts


class Source:
    """A dataset of one kind: its partitions (lazily), every item, and its manifest files."""
    url: str

    def partitions(self, size: int) -> Iterator[Partition | pd.DataFrame]:
        """Partitions, lazily. A DataFrame yielded among them holds duplicate-id rows that were dropped."""
        raise NotImplementedError

    def items(self, size: int = 4096) -> Iterator[pd.DataFrame]:
        """Every item (id, path, label), a partition at a time (memory: one partition)."""
        for p in self.partitions(size):
            if isinstance(p, Partition):
                yield read_partition(p.desc)

    def manifest_files(self) -> list[str]:
        """The tables that list the dataset (their other columns, e.g. object boxes, belong to it)."""
        return []

    def check(self) -> None:
        """One clear line when the dataset cannot be reached (before any work)."""
        next(iter(self.partitions(1 << 30)), None)


class SyntheticSource(Source):
    def __init__(self, url: str):
        self.url = url
        try:
            self.n = int(url[len(SYNTHETIC):])
        except ValueError:
            raise UserError(f"dataset {url!r}: write synthetic:N with N images") from None

    def partitions(self, size):
        for start in range(0, self.n, size):
            stop = min(self.n, start + size)
            yield Partition(f"y-{start:012d}", stop - start, {"kind": "synthetic", "start": start, "stop": stop})

    def check(self) -> None:
        pass

    @staticmethod
    def read(desc: dict) -> pd.DataFrame:
        idx = range(desc["start"], desc["stop"])
        return pd.DataFrame({"id": [f"{i:012d}" for i in idx], "path": [f"{SYNTHETIC}{i}" for i in idx],
                             "label": [f"c{i % 10}" for i in idx]})


class FolderSource(Source):
    def __init__(self, url: str):
        self.url = url

    def walk(self) -> Iterator[tuple[str, str, str | None]]:
        """(id, path, label) of every image below the folder, one directory at a time, in a fixed order
        (a directory's files by name, then its subdirectories by name). label = first-level subfolder."""
        fs, root, local, protocol = _fs(self.url)
        if not fs.isdir(root):
            raise UserError(f"dataset not found: {self.url} is neither a folder, a .parquet/.csv manifest, "
                            f"a glob of manifest shards nor {SYNTHETIC}N")
        root = root.rstrip("/")

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

    def partitions(self, size):
        rows = self.walk()
        buf: list[tuple] = []

        def ids():
            for r in rows:
                buf.append(r)
                yield r[0]
        for chunk in content_defined_chunks(ids(), size):
            part, rest = buf[:len(chunk)], buf[len(chunk):]
            buf[:] = rest
            yield items_partition(pd.DataFrame(part, columns=COLUMNS))

    def check(self) -> None:
        fs, root, _, _ = _fs(self.url)
        if not fs.isdir(root):
            next(self.walk(), None)  # raises the one-line error


class ManifestSource(Source):
    def __init__(self, url: str):
        self.url = url

    def table(self) -> pd.DataFrame:
        fs, root, _, _ = _fs(self.url)
        if not fs.exists(root):
            raise UserError(f"manifest not found: {self.url}")
        with fs.open(root, "rb") as f:
            df = (pd.read_parquet(f) if self.url.lower().endswith(".parquet")
                  else pd.read_csv(f, dtype=str, keep_default_na=False))
        if "path" not in df.columns:
            raise UserError(f"manifest {self.url} has no 'path' column (columns: {', '.join(map(str, df.columns))})")
        return df

    def partitions(self, size):
        base = self.url.rsplit("/", 1)[0] if "/" in self.url else "."
        items = _frame(self.table(), base).sort_values("id", kind="stable").reset_index(drop=True)
        dup = items.duplicated("id", keep="first")
        if dup.any():
            yield items[dup].reset_index(drop=True)
        items = items[~dup].reset_index(drop=True)
        start = 0
        for chunk in content_defined_chunks(iter(items["id"]), size):
            yield items_partition(items.iloc[start:start + len(chunk)])
            start += len(chunk)

    def manifest_files(self) -> list[str]:
        return [self.url]

    def check(self) -> None:
        fs, root, _, _ = _fs(self.url)
        if not fs.exists(root):
            raise UserError(f"manifest not found: {self.url}")


class ShardsSource(Source):
    def __init__(self, url: str):
        self.url = url

    def shards(self) -> list[str]:
        fs, pattern, local, protocol = _fs(self.url)
        found = sorted(fs.glob(pattern))
        if not found:
            raise UserError(f"no manifest shard matches {self.url}")
        return [p if local else f"{protocol}://{p}" for p in found]

    def partitions(self, size):
        for shard in self.shards():
            rows, digest = _shard_rows(shard)
            stem = os.path.basename(shard).split(".")[0][:40]
            for start in range(0, rows, size):
                stop = min(rows, start + size)
                yield Partition(f"s-{stem}-{digest}-{start:09d}", stop - start,
                                {"kind": "shard", "shard": shard, "start": start, "stop": stop})

    def manifest_files(self) -> list[str]:
        return self.shards()

    def check(self) -> None:
        self.shards()

    @staticmethod
    def read(desc: dict) -> pd.DataFrame:
        shard = desc["shard"]
        fs, p, _, _ = _fs(shard)
        with fs.open(p, "rb") as f:
            if shard.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                cols = [c for c in ("path", "id", "label") if c in pf.schema_arrow.names]
                if "path" not in cols:
                    raise UserError(f"manifest shard {shard} has no 'path' column")
                df = _row_range(pf, desc["start"], desc["stop"], cols)
            else:
                df = pd.read_csv(f, dtype=str, keep_default_na=False, skiprows=range(1, desc["start"] + 1),
                                 nrows=desc["stop"] - desc["start"])
        return _frame(df, shard.rsplit("/", 1)[0]).drop_duplicates("id", keep="first").reset_index(drop=True)


def _shard_rows(shard: str) -> tuple[int, str]:
    """(rows, a digest of the shard's identity: path, size, modification) without reading its data."""
    import pyarrow.parquet as pq

    fs, p, _, _ = _fs(shard)
    info = fs.info(p)
    ident = json.dumps([shard, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))])
    with fs.open(p, "rb") as f:
        if shard.lower().endswith(".parquet"):
            rows = pq.ParquetFile(f).metadata.num_rows
        else:
            rows = max(0, sum(1 for _ in f) - 1)  # a header line, then one line per row (streamed)
    return rows, hashlib.blake2b(ident.encode(), digest_size=5).hexdigest()


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


def open_source(url: str) -> Source:
    """The source of a dataset URL: synthetic:N, a glob of shards, a manifest, or a folder."""
    if url.startswith(SYNTHETIC):
        return SyntheticSource(url)
    if "*" in url or "?" in url:
        return ShardsSource(url)
    if url.lower().endswith((".parquet", ".csv")):
        return ManifestSource(url)
    return FolderSource(url)


def read_partition(desc: dict) -> pd.DataFrame:
    """The items (id, path, label) of one partition, in its read task."""
    kind = desc["kind"]
    if kind == "items":
        return pd.DataFrame({k: desc[k] for k in COLUMNS}, columns=COLUMNS)
    if kind == "synthetic":
        return SyntheticSource.read(desc)
    return ShardsSource.read(desc)


def synthetic_image(i: int, side: int = 8) -> np.ndarray:
    """The i-th synthetic image: side x side RGB noise, the same for the same i everywhere."""
    return np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
