"""The embedded demo dataset: crops, flips and colour jitter of scikit-image's bundled photos,
labelled by source photo (one subfolder per photo)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "hubble")


def _photo(name: str) -> Image.Image:
    from skimage import data

    if name == "motorcycle":
        return Image.fromarray(data.stereo_motorcycle()[0])
    if name == "hubble":
        return Image.fromarray(data.hubble_deep_field())
    return Image.fromarray(getattr(data, name)())


def make_demo_data(out: str | os.PathLike, per_photo: int = 50, seed: int = 0) -> int:
    """Write per_photo variants of each photo as JPEGs under out/<photo>/; returns the count."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    n = 0
    for name in PHOTOS:
        src = _photo(name).convert("RGB")
        (out / name).mkdir(parents=True, exist_ok=True)
        w, h = src.size
        for i in range(per_photo):
            frac = rng.uniform(0.45, 0.95)
            cw, ch = int(w * frac), int(h * frac * rng.uniform(0.8, 1.2))
            ch = min(ch, h)
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            img = src.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
            img.thumbnail((320, 320))
            path = out / name / f"{name}_{i:03d}.jpg"
            tmp = path.with_suffix(".tmp")
            img.save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
            n += 1
    return n
