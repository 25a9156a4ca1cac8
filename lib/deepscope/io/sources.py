"""List the images of a dataset (folder, manifest, manifest shards, local or remote) and read
their bytes. Planning (cutting the listing into partitions) lives in io/plan.py.

Every item gets a stable `id`: its path relative to the dataset root, or the manifest's id.
"""
from __future__ import annotations

import os

import fsspec
import pandas as pd

from deepscope.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """Bytes of a local path or any fsspec URL (s3://, gs://, file://, memory://)."""
    if "://" not in path:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1 if max_bytes else -1)
    with fsspec.open(path, "rb") as f:
        return f.read(max_bytes + 1 if max_bytes else -1)


def _is_manifest(source: str) -> bool:
    return source.lower().endswith((".parquet", ".csv"))


def _fs(source: str):
    fs, root = fsspec.core.url_to_fs(source)
    return fs, root


def list_folder(source: str) -> pd.DataFrame:
    """Every image below a folder; label = first-level subfolder when there are subfolders."""
    fs, root = _fs(source)
    if not fs.isdir(root):
        raise UserError(f"dataset not found: {source} is neither a folder nor a .parquet/.csv manifest")
    root = root.rstrip("/")
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS))
    rel = [p[len(root) + 1:] for p in paths]
    has_sub = any("/" in r for r in rel)
    labels = [r.split("/", 1)[0] if has_sub and "/" in r else None for r in rel]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    full = paths if protocol in ("file", "local") else [f"{protocol}://{p}" for p in paths]
    return pd.DataFrame({"id": rel, "path": full, "label": labels}, columns=["id", "path", "label"])


def list_manifest(source: str) -> pd.DataFrame:
    """A Parquet or CSV file with a `path` column and optional `label`, `id` columns.

    Relative paths are taken relative to the manifest's folder.
    """
    fs, root = _fs(source)
    if not fs.exists(root):
        raise UserError(f"manifest not found: {source}")
    with fs.open(root, "rb") as f:
        df = pd.read_parquet(f) if source.lower().endswith(".parquet") else pd.read_csv(f, dtype=str, keep_default_na=False)
    if "path" not in df.columns:
        raise UserError(f"manifest {source} has no 'path' column (columns: {', '.join(map(str, df.columns))})")
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    paths = [p if ("://" in p or os.path.isabs(p)) else f"{base}/{p}" for p in df["path"].astype(str)]
    ids = df["id"].astype(str) if "id" in df.columns else df["path"].astype(str)
    labels = df["label"].astype(str).where(df["label"].notna(), None) if "label" in df.columns else None
    out = pd.DataFrame({"id": list(ids), "path": paths, "label": labels if labels is not None else [None] * len(df)})
    return out


def list_items(source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (items sorted by id, duplicate-id rows that were dropped)."""
    items = list_manifest(source) if _is_manifest(source) else list_folder(source)
    items = items.sort_values("id", kind="stable").reset_index(drop=True)
    dup = items.duplicated("id", keep="first")
    return items[~dup].reset_index(drop=True), items[dup].reset_index(drop=True)


