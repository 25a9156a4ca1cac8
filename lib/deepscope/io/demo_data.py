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


# ---------------------------------------------------------------------------- generated style images

PAINTINGS = ("swirls", "glass")
SWIRL_PALETTE = [(18, 32, 96), (32, 72, 170), (60, 120, 215), (130, 180, 235), (250, 212, 64), (245, 150, 35),
                 (240, 236, 190), (30, 130, 140)]
GLASS_PALETTE = [(200, 30, 40), (250, 190, 20), (30, 90, 200), (40, 160, 70), (240, 110, 20), (130, 40, 160),
                 (20, 170, 200), (250, 240, 220)]


def painting(name: str = "swirls", size: int = 384, seed: int = 0) -> Image.Image:
    """A vivid, painting-like style image, generated (no file needed): "swirls" (thick brush strokes
    along a field of vortices, a Starry-Night palette) or "glass" (stained glass: flat vivid cells
    with dark leading)."""
    rng = np.random.default_rng(seed)
    if name == "swirls":
        return _swirls(size, rng)
    if name == "glass":
        return _glass(size, rng)
    raise ValueError(f"unknown painting {name!r}: {', '.join(PAINTINGS)}")


def _swirls(size: int, rng) -> Image.Image:
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), SWIRL_PALETTE[0])
    draw = ImageDraw.Draw(img)
    centres = rng.uniform(0.1, 0.9, (5, 2)) * size
    spins = rng.choice([-1.0, 1.0], 5) * rng.uniform(0.6, 1.2, 5)

    def flow(p):
        d = p[None, :] - centres
        r2 = (d * d).sum(1) + (0.06 * size) ** 2
        v = (spins[:, None] * np.stack([-d[:, 1], d[:, 0]], 1) / r2[:, None]).sum(0) + np.array([0.004, 0.001])
        return v / (np.linalg.norm(v) + 1e-9)

    # colour varies smoothly across the canvas (bands of the palette), with a little noise per stroke
    fx, fy, ph = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5), rng.uniform(0, 6.3, 2)
    width = max(2, size // 64)
    for _ in range(int(3.2 * size)):
        p = rng.uniform(0, size, 2)
        pts = [tuple(p)]
        for _ in range(int(rng.integers(4, 10))):
            p = p + flow(p) * width * 1.3
            pts.append(tuple(p))
        u = 0.5 + 0.25 * np.sin(fx * pts[0][0] / size * 6.3 + ph[0]) + 0.25 * np.sin(fy * pts[0][1] / size * 6.3 + ph[1])
        k = int(np.clip(u * len(SWIRL_PALETTE) + rng.normal(0, 1.0), 0, len(SWIRL_PALETTE) - 1))
        colour = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in SWIRL_PALETTE[k])
        dark = tuple(int(c * 0.45) for c in colour)
        draw.line(pts, fill=dark, width=width + 2, joint="curve")
        draw.line(pts, fill=colour, width=width, joint="curve")
    return img


def _glass(size: int, rng) -> Image.Image:
    n = 90
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = (yy[None] - seeds[:, 1, None, None]) ** 2 + (xx[None] - seeds[:, 0, None, None]) ** 2
    label = d.argmin(0)
    colours = np.array(GLASS_PALETTE, np.float32)[rng.integers(0, len(GLASS_PALETTE), n)]
    shade = 0.75 + 0.25 * np.sin(xx / size * 9 + yy / size * 5)  # light through uneven glass
    a = colours[label] * shade[..., None]
    edge = np.zeros((size, size), bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    for _ in range(max(1, size // 160)):  # thicken the leading
        edge[1:] |= edge[:-1].copy()
        edge[:, 1:] |= edge[:, :-1].copy()
    a[edge] = (25, 22, 20)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
# ---------------------------------------------------------------------------- near-duplicates

def random_scene(rng, size: int = 192) -> Image.Image:
    """A scene of 3 to 7 random shapes (ellipses, boxes, triangles, bars) on a plain or two-tone
    background: many scenes share shapes and colours, so a network's features call some of them
    alike."""
    from PIL import ImageDraw

    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # a second tone on one side
        x = int(rng.integers(size // 4, 3 * size // 4))
        d.rectangle((x, 0, size, size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        x0, y0 = int(rng.integers(-w // 3, size - 2 * w // 3)), int(rng.integers(-h // 3, size - 2 * h // 3))
        kind = int(rng.integers(4))
        if kind == 0:
            d.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif kind == 1:
            d.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif kind == 2:
            d.polygon([(x0 + w / 2, y0), (x0, y0 + h), (x0 + w, y0 + h)], fill=colour)
        else:
            d.line((x0, y0, x0 + w, y0 + h), fill=colour, width=int(rng.integers(3, 12)))
    return img


def near_copy(img: Image.Image, rng) -> Image.Image:
    """The planted copy of a scene: cropped by 5% (from a random side mix), resized to 80%, lightened
    (brightness x1.1-1.3); the caller saves it at JPEG quality 60."""
    from PIL import ImageEnhance

    w, h = img.size
    dx, dy = int(round(w * 0.05)), int(round(h * 0.05))
    left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    out = img.crop((left, top, left + w - dx, top + h - dy))
    out = out.resize((int(round(out.width * 0.8)), int(round(out.height * 0.8))), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(out).enhance(float(rng.uniform(1.1, 1.3)))


def make_duplicates_data(out: str | os.PathLike, n: int = 5000, copies: int = 200, seed: int = 0,
                         size: int = 192) -> dict[str, str]:
    """n - copies random scenes (PNG, under out/scenes/) plus `copies` near-copies of distinct ones
    (JPEG quality 60, under out/copies/).  Returns {copy id: original id} (ids relative to out)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    (out / "copies").mkdir(parents=True, exist_ok=True)
    originals = n - copies
    copied = set(rng.choice(originals, copies, replace=False).tolist())
    truth = {}
    for i in range(originals):
        img = random_scene(rng, size)
        img.save(out / "scenes" / f"scene_{i:05d}.png")
        if i in copied:
            rel = f"copies/copy_of_{i:05d}.jpg"
            near_copy(img, rng).save(out / rel, format="JPEG", quality=60)
            truth[rel] = f"scenes/scene_{i:05d}.png"
    return truth
