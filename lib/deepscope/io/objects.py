"""Object annotations of a dataset, for the saliency stage's bias finder: a box (x0,y0,x1,y1 in
original pixels) or a mask file per image id, from an objects table or the manifest's own columns,
and the share of each saliency-map cell an object covers."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from deepscope.errors import UserError


def read_objects(objects: str | None, manifests: list[str]) -> dict[str, tuple[str, object]]:
    """id -> ("box", (x0, y0, x1, y1)) or ("mask", path): from `objects`, else the dataset's own
    manifest tables' `box`/`mask` columns (manifests: Source.manifest_files(): one manifest, every
    shard of a glob, none for a folder).  Ids follow the manifest rule: the `id` column, else `path`.
    A mask wins over a box."""
    out: dict[str, tuple[str, object]] = {}
    for table in ([objects] if objects else manifests):
        out.update(_read_table(table, required=bool(objects)))
    return out


def _read_table(table: str, required: bool) -> dict[str, tuple[str, object]]:
    import fsspec
    import pandas as pd

    try:
        with fsspec.open(table, "rb") as f:
            if table.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)  # only the columns that matter (a shard may hold many more)
                cols = [c for c in ("id", "path", "box", "mask") if c in pf.schema_arrow.names]
                df = pf.read(columns=cols).to_pandas()
            else:
                df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"objects table not found: {table}") from None
    except Exception as e:
        raise UserError(f"cannot read objects table {table}: {type(e).__name__}: {e}") from None
    if "box" not in df.columns and "mask" not in df.columns:
        if required:
            raise UserError(f"objects table {table} has neither a 'box' nor a 'mask' column")
        return {}
    key = "id" if "id" in df.columns else "path"
    if key not in df.columns:
        raise UserError(f"objects table {table} has no 'id' (or 'path') column")
    base = table.rsplit("/", 1)[0] if "/" in table else "."
    out = {}
    for rec in df.to_dict("records"):
        rid, mask, box = str(rec[key]), rec.get("mask"), rec.get("box")
        if isinstance(mask, str) and mask.strip():
            mask = mask.strip()
            out[rid] = ("mask", mask if ("://" in mask or mask.startswith("/")) else f"{base}/{mask}")
        elif box is not None and not (isinstance(box, str) and not box.strip()) and not _isnan(box):
            out[rid] = ("box", parse_box(box, rid, table))
    return out


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def parse_box(box, rid: str, table: str) -> tuple[float, float, float, float]:
    try:
        vals = [float(v) for v in (box.split(",") if isinstance(box, str) else box)]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 4 or not (vals[2] > vals[0] and vals[3] > vals[1]) or not all(map(math.isfinite, vals)):
        raise UserError(f"{table}: box of {rid!r} is {box!r}: write x0,y0,x1,y1 in original pixels, x1 > x0, y1 > y0")
    return tuple(vals)


def object_coverage(obj, width: int, height: int, transform, S: int) -> tuple[str, np.ndarray]:
    """The share of each of the S x S map cells (over the model's centre crop) that the object covers."""
    kind, value = obj
    if kind == "box":
        x0, y0, x1, y1 = value
        scale, left, top = transform.crop_box_in_original(width, height)
        edges = np.arange(S + 1) * transform.crop / S * scale  # cell edges in original pixels, from the crop corner

        def share(a, b, lo, hi):
            return np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None) / (b - a)

        fx = share(left + edges[:-1], left + edges[1:], x0, x1)
        fy = share(top + edges[:-1], top + edges[1:], y0, y1)
        return "box", np.outer(fy, fx)
    from PIL import Image

    from deepscope.io.decode import DecodeError, decode
    from deepscope.io.sources import read_bytes

    try:
        img, w, h = decode(read_bytes(value))
    except DecodeError as e:
        raise ValueError(f"mask {value}: {e}") from None
    if (w, h) != (width, height):
        raise ValueError(f"mask {value} is {w}x{h}, its image {width}x{height}")
    binary = Image.fromarray(((np.asarray(img.convert("L")) > 127) * 255).astype(np.uint8)).convert("RGB")
    crop = transform.geometry(binary)[0].astype(np.float32) / 255
    cover = F.adaptive_avg_pool2d(torch.from_numpy(crop)[None, None], S)[0, 0]
    return "mask", cover.numpy().astype(np.float64)
