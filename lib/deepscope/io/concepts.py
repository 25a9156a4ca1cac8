"""Concept datasets in the Broden format (Bau et al. 2017), and a synthetic one to test and demo with.

Broden layout (what the reader needs, so that a downloaded Broden runs as is):
  index.csv     image,split,ih,iw,sh,sw,<category>,...  one row per image; `image` is relative to
                images/; a category cell lists mask files (';'-separated PNGs relative to images/)
                or, for image-level categories (scene, texture in Broden), label numbers
  label.csv     number,name,category,frequency,...  global label numbers (0 = unlabelled); category
                reads "object(120);part(3)": the label's primary category is the one it has most
  category.csv  name,first,last,count,frequency  (optional: the index columns give the categories)
  images/       the images, and masks whose pixel (R, G, B) holds label number R + 256 * G

`deepscope concept-data DIR` writes a synthetic dataset in that format: solid, gradient or textured
backgrounds with a few shapes on them, every pixel labelled with its colour; shapes (object),
textures (stripes, checks, dots) as pixel masks and the background kind (scene) per image.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from deepscope.errors import UserError

MASK_SUFFIX = ".png"


def decode_mask(data: bytes) -> np.ndarray:
    """Broden mask bytes -> label numbers (H, W) int32: R + 256 * G."""
    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int32)
    return a[:, :, 0] + 256 * a[:, :, 1]


def encode_mask(labels: np.ndarray) -> bytes:
    labels = np.asarray(labels, np.int64)
    rgb = np.stack([labels % 256, labels // 256 % 256, np.zeros_like(labels)], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class ImageEntry:
    image: str  # relative to images/ (the pipeline's id)
    size: tuple[int, int]  # (width, height) of the image as indexed
    masks: tuple[tuple[int, str], ...]  # (category index, mask file relative to images/)
    labels: tuple[tuple[int, int], ...]  # (category index, label number) of the whole image
    mask_size: tuple[int, int]  # (height, width) of its masks: where image-level labels are counted


@dataclass
class Concepts:
    """A Broden-format concept dataset, indexed (small enough to ship to the model actors)."""

    root: str
    categories: list[str]
    names: list[str]  # label number -> name ("-" for 0)
    label_category: np.ndarray  # label number -> primary category index (-1: none)
    entries: dict[str, ImageEntry] = field(repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Concepts":
        root = Path(root)
        for f in ("index.csv", "label.csv"):
            if not (root / f).is_file():
                raise UserError(f"{root} is not a Broden-format concept dataset: {f} is missing "
                                f"(make one with `deepscope concept-data {root}`)")
        index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
        labels = pd.read_csv(root / "label.csv", dtype=str, keep_default_na=False)
        if "image" not in index.columns or not {"number", "name"} <= set(labels.columns):
            raise UserError(f"{root}: index.csv needs an image column, label.csv number and name columns")
        fixed = {"image", "split", "ih", "iw", "sh", "sw"}
        columns = [c for c in index.columns if c not in fixed]
        if (root / "category.csv").is_file():
            listed = list(pd.read_csv(root / "category.csv", dtype=str, keep_default_na=False)["name"])
            categories = [c for c in listed if c in columns] + [c for c in columns if c not in listed]
        else:
            categories = columns
        cat_index = {c: k for k, c in enumerate(categories)}
        numbers = labels["number"].astype(int).to_numpy()
        n = int(numbers.max()) + 1 if len(numbers) else 1
        names = ["-"] * n
        label_category = np.full(n, -1, np.int64)
        for num, name, cat in zip(numbers, labels["name"], labels.get("category", [""] * len(labels))):
            names[num] = name
            counts = {m.group(1): int(m.group(2) or 0) for m in re.finditer(r"([\w-]+)(?:\((\d+)\))?", cat or "")}
            counts = {c: v for c, v in counts.items() if c in cat_index}
            if counts and num > 0:
                label_category[num] = cat_index[max(counts, key=lambda c: (counts[c], -cat_index[c]))]
        entries = {}
        for row in index.to_dict("records"):
            masks, image_labels = [], []
            for c in categories:
                for cell in filter(None, (row.get(c) or "").split(";")):
                    if cell.lower().endswith(MASK_SUFFIX):
                        masks.append((cat_index[c], cell))
                    else:
                        image_labels.append((cat_index[c], int(cell)))
            size = (int(row.get("iw") or 0), int(row.get("ih") or 0))
            mask_size = (int(row.get("sh") or row.get("ih") or 112), int(row.get("sw") or row.get("iw") or 112))
            entries[row["image"]] = ImageEntry(row["image"], size, tuple(masks), tuple(image_labels), mask_size)
        # labels used in the index but unknown to label.csv get the category they appear in
        for e in entries.values():
            for k, lab in e.labels:
                if lab >= n:
                    raise UserError(f"{root}/index.csv: {e.image} has label {lab}, which label.csv does not list")
                if label_category[lab] < 0 and lab > 0:
                    label_category[lab] = k
        return cls(str(root), categories, names, label_category, entries)

    def items(self) -> pd.DataFrame:
        """The images, as the pipeline lists a dataset: id (Broden image name), path, label (the split)."""
        ids = sorted(self.entries)
        return pd.DataFrame({"id": ids, "path": [str(Path(self.root) / "images" / i) for i in ids],
                             "label": [None] * len(ids)}, columns=["id", "path", "label"])

    def category_of(self, label: int) -> str:
        k = int(self.label_category[label]) if 0 <= label < len(self.label_category) else -1
        return self.categories[k] if k >= 0 else ""

    def read(self, image: str) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, int]], set[int]]:
        """One image's annotations -> ([(category, label map)], [(category, image label)], annotated categories)."""
        from deepscope.io.sources import read_bytes

        e = self.entries.get(image)
        if e is None:
            raise KeyError(f"{image} is not in {self.root}/index.csv")
        maps = [(k, decode_mask(read_bytes(str(Path(self.root) / "images" / f)))) for k, f in e.masks]
        return maps, list(e.labels), {k for k, _ in e.masks} | {k for k, _ in e.labels}


# -- the synthetic concept dataset ------------------------------------------------------------
COLOURS = {  # name -> RGB; far apart, so that each pixel's colour label is unambiguous
    "red": (200, 30, 30), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 40),
    "purple": (120, 50, 160), "white": (240, 240, 240), "black": (20, 20, 20), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "ring")
TEXTURES = ("stripes", "checks", "dots")
SCENES = ("plain", "gradient", "textured")  # the background kind, an image-level label
CATEGORIES = {"color": list(COLOURS), "object": list(SHAPES), "texture": list(TEXTURES), "scene": list(SCENES)}


def _texture(kind: str, size: int, rng) -> np.ndarray:
    """0/1 pattern (size, size) of a texture at a random period and phase."""
    period = int(rng.integers(6, 14))
    y, x = np.mgrid[0:size, 0:size] + rng.integers(0, period, 2)[:, None, None]
    if kind == "stripes":
        return ((x if rng.random() < 0.5 else y) // (period // 2)) % 2
    if kind == "checks":
        return ((x // (period // 2)) + (y // (period // 2))) % 2
    return (((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2 < (period / 3.2) ** 2).astype(int)


def _shape_mask(kind: str, size: int, rng) -> np.ndarray:
    side = int(rng.integers(size // 4, size // 2))
    x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
    box = (x0, y0, x0 + side, y0 + side)
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    if kind == "circle":
        d.ellipse(box, fill=1)
    elif kind == "square":
        d.rectangle(box, fill=1)
    elif kind == "triangle":
        d.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=1)
    else:
        d.ellipse(box, fill=1)
        t = side // 4
        d.ellipse((x0 + t, y0 + t, x0 + side - t, y0 + side - t), fill=0)
    return np.asarray(img, bool)


def synthetic_image(rng, size: int):
    """-> (RGB uint8, colour label map, shape label map, texture label map, scene) with label
    numbers local to each category (1-based; 0: none)."""
    palette = np.array(list(COLOURS.values()), np.float64)
    colour = np.zeros((size, size), np.int64)  # palette index per pixel
    shape = np.zeros((size, size), np.int64)
    texture = np.zeros((size, size), np.int64)
    scene = int(rng.integers(len(SCENES)))
    c1, c2 = rng.choice(len(COLOURS), 2, replace=False)
    rgb = np.empty((size, size, 3))
    if scene == 0:
        colour[:] = c1
        rgb[:] = palette[c1]
    elif scene == 1:  # a smooth blend of two colours; each pixel is labelled with the nearer one
        ramp = np.linspace(0, 1, size)
        t = np.broadcast_to(ramp[None, :] if rng.random() < 0.5 else ramp[:, None], (size, size))
        rgb = palette[c1] * (1 - t[..., None]) + palette[c2] * t[..., None]
        colour[:] = np.where(t < 0.5, c1, c2)
    else:
        k = int(rng.integers(len(TEXTURES)))
        pattern = _texture(TEXTURES[k], size, rng)
        colour[:] = np.where(pattern, c2, c1)
        rgb = palette[colour]
        texture[:] = k + 1
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(SHAPES)))
        inside = _shape_mask(SHAPES[k], size, rng)
        a, b = rng.choice(len(COLOURS), 2, replace=False)
        if rng.random() < 0.35:  # a textured shape
            t = int(rng.integers(len(TEXTURES)))
            fill = np.where(_texture(TEXTURES[t], size, rng), b, a)
            texture[inside] = t + 1
        else:
            fill = np.full((size, size), a)
            texture[inside] = 0
        colour[inside] = fill[inside]
        rgb[inside] = palette[fill[inside]]
        shape[inside] = k + 1
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)  # sensor noise
    return rgb, colour + 1, shape, texture, scene + 1


def make_concept_data(root: str | os.PathLike, n: int = 200, size: int = 128, seed: int = 0) -> int:
    """Write a synthetic Broden-format concept dataset of n images (masks at half resolution, as
    Broden's 224 px images have 112 px masks). index.csv is written last: it marks a complete
    dataset. Returns n."""
    root = Path(root)
    if n < 1 or size < 32:
        raise UserError("concept-data: --n must be >= 1 and --size >= 32")
    if (root / "index.csv").exists():
        raise UserError(f"{root} already holds a concept dataset (index.csv); choose another folder or delete it")
    rng = np.random.default_rng(seed)
    first, number, label_rows, category_rows = {}, 1, [], []
    for cat, names in CATEGORIES.items():
        first[cat] = number
        category_rows.append({"name": cat, "first": number, "last": number + len(names) - 1, "count": len(names)})
        number += len(names)
    frequency = np.zeros(number, np.int64)
    rows, half = [], max(size // 2, 1)
    for i in range(n):
        rgb, colour, shape, texture, scene = synthetic_image(rng, size)
        name = f"synthetic/{i:05d}"
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=92)
        _put(root / "images" / f"{name}.jpg", buf.getvalue())
        row = {"image": f"{name}.jpg", "split": "train", "ih": size, "iw": size, "sh": half, "sw": half,
               "color": "", "object": "", "texture": "", "scene": str(first["scene"] + scene - 1)}
        for cat, local in (("color", colour), ("object", shape), ("texture", texture)):
            sub = local[1::2, 1::2][:half, :half]  # nearest sample at the mask pixel centres
            if not sub.any():
                continue
            labels = np.where(sub > 0, sub + first[cat] - 1, 0)
            _put(root / "images" / f"{name}_{cat}.png", encode_mask(labels))
            row[cat] = f"{name}_{cat}.png"
            frequency[np.unique(labels[labels > 0])] += 1
        frequency[first["scene"] + scene - 1] += 1
        rows.append(row)
    for cat, names in CATEGORIES.items():
        for j, nm in enumerate(names):
            num = first[cat] + j
            label_rows.append({"number": num, "name": f"{nm}-{cat[0]}" if cat == "color" else nm,
                               "category": f"{cat}({frequency[num]})", "frequency": int(frequency[num])})
    label_rows.insert(0, {"number": 0, "name": "-", "category": "", "frequency": 0})
    for rel, table in (("label.csv", label_rows), ("category.csv", category_rows), ("index.csv", rows)):
        _put(root / rel, _csv(table))
    return n


def _put(path: Path, data: bytes) -> None:
    """A dataset file (not an output): whole or absent, like the demo data's (no fsync: cheap to redo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()
