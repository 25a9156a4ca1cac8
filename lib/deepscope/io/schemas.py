"""Every Parquet schema deepscope writes or reads: the contracts between stages.

A schema change is made here and nowhere else.
"""
from __future__ import annotations

import pyarrow as pa

# The items of a dataset, as listed by io/sources.py.
ITEMS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
])

# One row per input that could not be turned into a result, whatever the stage.
ERRORS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # "list", "decode", "model", ...
    pa.field("error", pa.string(), nullable=False),
])

FEATURE_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def features(dim: int, dtype: str = "float32") -> pa.Schema:
    """features/*.parquet: one row per image, the layer's activations flattened."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("feature", pa.list_(FEATURE_DTYPES[dtype], dim), nullable=False),
    ])
