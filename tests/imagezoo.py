"""A small folder of awkward test images, and the independently computed correct decode of each.

`make_zoo(dir)` writes the files and returns {filename: expected error substring, or None}.
`reference_rgb(path)` is what a correct decoder must return for a good file.  It reads the raw
stored pixels with Pillow, then does the parts under test (EXIF orientation, 16-bit scaling,
alpha over white, palettes, CMYK) itself in numpy, so it does not share code with
deepscope.io.decode.  No image is larger than 300x400 and no shorter side exceeds 200, so JPEG
draft mode (which needs a shorter side >= 2x the resize) never kicks in for resize > 100.
"""
from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

# EXIF orientation k: how to turn the stored pixels into the upright picture (EXIF 2.3 spec, 0x0112).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, *range(2, a.ndim)),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # needs 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, *range(2, a.ndim)),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, 1),  # needs 90 degrees counter-clockwise
}
# The stored pixels for orientation k, from the upright picture (6 and 8 undo each other, the rest undo themselves).
STORED = {k: UPRIGHT[{6: 8, 8: 6}.get(k, k)] for k in UPRIGHT}


@functools.cache
def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)())


def chelsea(size=(300, 200)) -> Image.Image:
    return _photo("chelsea").resize(size, Image.Resampling.BILINEAR)


def coffee(size=(300, 200)) -> Image.Image:
    return _photo("coffee").resize(size, Image.Resampling.BILINEAR)


def upright_picture() -> np.ndarray:
    """Asymmetric under every flip and rotation: a cat, plus a red block in the top-left corner."""
    a = np.asarray(chelsea((200, 152))).copy()
    a[:24, :40] = (255, 0, 0)
    return a


def gray16() -> np.ndarray:
    """A horizontal gradient covering 0..65535 exactly, with a little vertical variation."""
    x = np.linspace(0, 65535, 300)
    y = np.linspace(0, 1, 200)[:, None]
    return np.rint(x[None, :] * (0.75 + 0.25 * y)).astype(np.uint16)


def png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """A 1-bit black PNG built by hand, so a huge one costs no memory.

    `rows` < height stores only that many rows: the header still claims the full size.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_zoo(dir: Path) -> dict[str, str | None]:
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    zoo: dict[str, str | None] = {}

    def good(name: str) -> Path:
        zoo[name] = None
        return dir / name

    # ordinary pictures, one per allowed container
    chelsea().save(good("chelsea.jpg"), quality=90)
    coffee().save(good("coffee.png"))
    coffee((240, 160)).save(good("coffee.webp"), lossless=True)
    chelsea((160, 120)).save(good("chelsea.bmp"))
    chelsea((160, 120)).save(good("chelsea.tif"))
    # modes
    coffee().convert("L").save(good("gray.jpg"), quality=90)
    chelsea().convert("CMYK").save(good("cmyk.jpg"), quality=90)
    Image.fromarray(gray16()).save(good("gray16.png"))  # mode I;16
    (Image.fromarray(np.asarray(coffee().convert("L")) > 128)).save(good("bilevel.png"))  # mode 1
    rgba = np.dstack([np.asarray(chelsea()), np.linspace(0, 255, 300).astype(np.uint8)[None, :].repeat(200, 0)])
    Image.fromarray(rgba).save(good("rgba.png"))
    quantized = coffee().quantize(64)
    idx = np.asarray(quantized).copy()
    idx[50:150, 100:200] = 0  # a fully transparent window (index 0); index 1 is half transparent
    pal = Image.frombytes("P", quantized.size, idx.tobytes())
    pal.putpalette(quantized.getpalette())
    pal.save(good("palette_alpha.png"), transparency=bytes([0, 128] + [255] * 62))
    frames = [Image.new("RGB", (120, 90), (255, 0, 0)), Image.new("RGB", (120, 90), (0, 200, 0))]
    frames[0].paste((0, 0, 255), (10, 10, 50, 40))
    frames[0].save(good("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    # EXIF orientations: every file shows the same upright picture
    up = upright_picture()
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        Image.fromarray(np.ascontiguousarray(STORED[k](up))).save(
            good(f"orient_{k}.jpg"), exif=exif, quality=95, subsampling=0)

    # bad files
    (dir / "empty.jpg").write_bytes(b"")
    zoo["empty.jpg"] = "empty file"
    (dir / "text.jpg").write_text("hello, I am a text file wearing a .jpg extension\n")
    zoo["text.jpg"] = "not an image"
    whole = (dir / "chelsea.jpg").read_bytes()
    (dir / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    zoo["truncated.jpg"] = "truncated"
    # 15000x15000 = 225 Mpx of 1-bit black: ~27 KB on disk, over the 179 Mpx default limit
    (dir / "bomb.png").write_bytes(png_bytes(15000, 15000))
    zoo["bomb.png"] = "decompression bomb"
    buf = io.BytesIO()
    coffee((60, 40)).save(buf, "PPM")  # a format Pillow reads but deepscope refuses
    (dir / "netpbm.png").write_bytes(buf.getvalue())
    zoo["netpbm.png"] = "unsupported format: PPM"
    return zoo


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def reference_rgb(path) -> Image.Image:
    """The correct upright 8-bit RGB picture of a good zoo file (full resolution, first frame)."""
    raw = Image.open(path)
    raw.load()
    mode, info = raw.mode, raw.info
    a = np.asarray(raw)
    if mode in ("I;16", "I;16B", "I"):
        grey = np.clip(np.rint(a / 257), 0, 255).astype(np.uint8)
        rgb = np.dstack([grey] * 3)
    elif mode == "P":
        palette = np.array(raw.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
        rgb = palette[a]
        if "transparency" in info:
            t = info["transparency"]
            alpha = np.full(256, 255, np.uint8)
            if isinstance(t, int):
                alpha[t] = 0
            else:
                alpha[: len(t)] = np.frombuffer(t, np.uint8)
            rgb = _over_white(rgb, alpha[a])
    elif mode == "RGBA":
        rgb = _over_white(a[..., :3], a[..., 3])
    elif mode == "CMYK":
        c = a.astype(np.float64)
        rgb = np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.uint8)
    elif mode in ("L", "1"):
        rgb = np.dstack([a.astype(np.uint8) * (255 if mode == "1" else 1)] * 3)
    elif mode == "RGB":
        rgb = a
    else:
        raise ValueError(f"no reference for mode {mode}")
    orientation = raw.getexif().get(0x0112, 1)
    return Image.fromarray(np.ascontiguousarray(UPRIGHT[orientation](rgb)))
