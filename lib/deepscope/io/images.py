"""Pictures the stages and commands write, and their file names: PNG bytes that hold exactly
the pixels, a file name for an image id or a layer, and an id's random stream (the same in any batch)."""
from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import torch


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (3, H, W) -> PNG bytes (lossless: the file holds exactly these pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.asarray(pixels, np.uint8).transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def read_png(path) -> torch.Tensor:
    """A PNG written by png_bytes -> uint8 (1, 3, H, W)."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), np.uint8).transpose(2, 0, 1).copy())[None]


def file_stem(item_id: str) -> str:
    """A file name for an image id (ids may hold slashes): readable tail + hash, the same every run."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", str(item_id))[-48:].strip("._") or "img"
    return f"{tail}-{hashlib.sha1(str(item_id).encode()).hexdigest()[:8]}"


def item_seed(item_id: str, seed: int) -> int:
    """An image's random stream (jitter, noise) from its id: the same in any batch."""
    return seed * 1_000_003 + int(hashlib.sha1(str(item_id).encode()).hexdigest()[:8], 16)


def file_name(layer: str) -> str:
    """A layer name as a file name part ('features.10' stays, 'fc:input' -> 'fc_input')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", layer)
