"""Decode untrusted image bytes into upright RGB images, one bad file never failing a batch.

What `decode` guarantees:
- Only JPEG, PNG, WEBP, BMP, TIFF, GIF and MPO are decoded; anything else is a `DecodeError`.
- The pixel count is checked from the header (Image.open is lazy) before any pixel is decoded.
- Truncated files are errors, never grey-padded (ImageFile.LOAD_TRUNCATED_IMAGES stays False).
- Each decode has a wall-clock limit (SIGALRM, main thread only: signals can't be used elsewhere).
- EXIF orientation is applied; the returned width/height are the oriented full-resolution size.
- Every mode becomes 8-bit RGB:
    * transparent images (RGBA, LA, PA, palette or grey with a transparent colour) are
      composited over a WHITE background, the usual look of a transparent image on a page;
    * 16-bit / 32-bit integer grey ('I;16', 'I;16B', 'I') is scaled by value/257, rounded,
      because Pillow's convert() clamps at 255 and would turn 16-bit photos white;
    * float grey ('F') is rounded and clipped to [0, 255];
    * CMYK, 1-bit, grey and the rest use Pillow's convert("RGB");
    * animated images give their first frame.
- JPEG draft mode: when the caller will shrink the image by at least 2x anyway, libjpeg decodes
  at 1/2, 1/4 or 1/8 scale directly (much faster); both sides stay >= `draft_size`.
"""
from __future__ import annotations

import io
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from deepscope.io.sources import SYNTHETIC, read_bytes, read_partition, synthetic_image
from deepscope.models.transform import Transform

# A truncated file must raise, not decode with a grey bottom.
ImageFile.LOAD_TRUNCATED_IMAGES = False

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ORIENTATION = 0x0112


class DecodeError(Exception):
    """An image that can't be decoded; str() is a short reason to show the user."""


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 178_956_970  # checked from the header, BEFORE decoding
    max_bytes: int = 256 * 2**20
    timeout_s: float = 10.0  # per image
    draft: bool = True  # JPEG draft mode (reduced-scale DCT decode) when the transform shrinks >= 2x anyway


class _Timeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so no `except Exception` inside PIL swallows it."""


@contextmanager
def _time_limit(seconds: float):
    """Raise _Timeout after `seconds` of wall time; a no-op outside the main thread (no signals there)."""
    if (not seconds or seconds <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise _Timeout

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    # the alarm repeats: a raise that lands in a weakref callback or a __del__ run by the decode is
    # printed and lost ("Exception ignored in"), and the next one stops the decode all the same
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, min(seconds, 0.1))
    try:
        yield
    finally:
        try:
            armed[0] = False  # alarms from here on do nothing
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:  # nested: an alarm landing just as we cancel must not skip the restore
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            # None means a handler installed from C that we can't reinstall; the default is closest.
            signal.signal(signal.SIGALRM, signal.SIG_DFL if old_handler is None else old_handler)
            if old_delay:  # someone else's timer was running: give it back what is left of it
                left = max(old_delay - (time.monotonic() - start), 1e-6)
                signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def decode(data: bytes, limits: DecodeLimits = DecodeLimits(),
           draft_size: int | None = None) -> tuple[Image.Image, int, int]:
    """-> (RGB image, EXIF-oriented, possibly draft-reduced), original_width, original_height
    (after orientation, at full resolution). Raises DecodeError."""
    if not data:
        raise DecodeError("empty file")
    if len(data) > limits.max_bytes:
        raise DecodeError("file larger than limit")
    try:
        with _time_limit(limits.timeout_s):
            return _decode(data, limits, draft_size)
    except DecodeError:
        raise
    except _Timeout:
        raise DecodeError(f"decode timed out after {float(limits.timeout_s)} s") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own guard: Image.open raises above 2 * Image.MAX_IMAGE_PIXELS (= our default
        # limit) before our header check gets to run.  Its warning above MAX_IMAGE_PIXELS is left alone (images that size
        # are within our limit), unless warning filters turn it into an exception.
        raise DecodeError(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (text/unknown format)") from None
    except Exception as e:  # corrupt headers, bad EXIF, odd modes: all per-image problems
        raise DecodeError(f"corrupt image: {type(e).__name__}: {e}") from None


def _decode(data: bytes, limits: DecodeLimits, draft_size: int | None) -> tuple[Image.Image, int, int]:
    img = Image.open(io.BytesIO(data))
    fmt = img.format
    if fmt not in ALLOWED_FORMATS:
        raise DecodeError(f"unsupported format: {fmt}")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise DecodeError(f"decompression bomb: {width}x{height} = {width * height / 1e6:.1f} Mpx"
                          f" > limit {limits.max_pixels / 1e6:.1f} Mpx")
    # Orientations 5-8 swap the axes; read it now, exif_transpose drops the tag.
    if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    if limits.draft and draft_size and fmt in ("JPEG", "MPO"):
        # A square request keeps both sides >= draft_size whatever the orientation.
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()  # explicit, so truncation raises here rather than being silently padded
    except OSError as e:
        if "truncated" in str(e).lower():
            raise DecodeError(f"truncated {fmt}") from None
        raise DecodeError(f"corrupt {fmt}: {e}") from None
    ImageOps.exif_transpose(img, in_place=True)
    return _to_rgb(img), width, height


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_GREY_MODES or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            a = a / 257  # 65535 -> 255; Pillow's convert would clamp instead of scale
        grey = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr...


@dataclass(frozen=True)
class ThumbSpec:
    """What the decode task adds when the pass includes the thumbs stage."""
    size: int = 256  # longest side
    quality: int = 85
    format: str = "JPEG"  # or "WEBP"


def pixel_hash(img: Image.Image) -> str:
    """Hex digest of the decoded RGB pixels and their shape: equal for exact duplicates."""
    import hashlib

    return hashlib.blake2b(f"{img.width}x{img.height}:".encode() + img.tobytes(), digest_size=16).hexdigest()


def thumbnail_bytes(img: Image.Image, spec: ThumbSpec) -> bytes:
    """The whole image shrunk to spec.size on its longest side (never enlarged), encoded."""
    t = img.copy()
    t.thumbnail((spec.size, spec.size), Image.Resampling.LANCZOS, reducing_gap=2.0)  # reducing_gap: box-shrink first
    buf = io.BytesIO()
    t.save(buf, format=spec.format, quality=spec.quality)
    return buf.getvalue()


def open_image(path: str, what: str = "image") -> Image.Image:
    """One image file a user named on the command line, as RGB; a missing or unreadable file is
    one clear error line (UserError), not a traceback."""
    from deepscope.errors import UserError

    try:
        rgb, _, _ = decode(read_bytes(path))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, DecodeError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
    return rgb


def decode_batch(batch: dict[str, np.ndarray], transform: Transform,
                 limits: DecodeLimits, thumbs: ThumbSpec | None = None) -> dict[str, np.ndarray]:
    """Ray Data map_batches function (numpy batch format).

    Passes every input column through and adds `pixels` uint8 (N, 3, crop, crop) (zeros on
    failure), `width`/`height` int32 (original oriented size, 0 on failure), `error` ('' or the
    reason) and `decode_ms` float32 (read + decode + resize/crop wall time of the row).
    thumbs: also `thumb` (encoded bytes of the whole image), `pixel_hash` (of the image as decoded
    here: a JPEG large enough for draft mode is hashed at its draft scale, the same for the same file)
    and `file_bytes` (the encoded file's size, 0 when generated: at equal pixels, the less compressed copy).
    """
    paths = batch["path"]
    n = len(paths)
    pixels = np.zeros((n, 3, transform.crop, transform.crop), dtype=np.uint8)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    error = np.full(n, "", dtype=object)
    decode_ms = np.zeros(n, dtype=np.float32)
    thumb, digest = np.full(n, b"", dtype=object), np.full(n, "", dtype=object)
    file_bytes = np.zeros(n, dtype=np.int64)
    for i, path in enumerate(paths):
        start = time.perf_counter()
        try:
            if str(path).startswith(SYNTHETIC):  # generated here: no file behind it
                img = Image.fromarray(synthetic_image(int(str(path)[len(SYNTHETIC):])))
                width[i], height[i] = img.size
            else:
                data = read_bytes(str(path), limits.max_bytes)
                file_bytes[i] = len(data)
                img, width[i], height[i] = decode(data, limits, draft_size=transform.resize)
            pixels[i] = transform.geometry(img)
            if thumbs is not None:
                thumb[i], digest[i] = thumbnail_bytes(img, thumbs), pixel_hash(img)
        except DecodeError as e:
            error[i] = str(e)
        except Exception as e:  # unreadable file (missing, permissions, network): still one row
            error[i] = f"read failed: {type(e).__name__}: {e}"
            width[i] = height[i] = 0
        decode_ms[i] = (time.perf_counter() - start) * 1000
    extra = {"thumb": thumb, "pixel_hash": digest, "file_bytes": file_bytes} if thumbs is not None else {}
    return {**batch, "pixels": pixels, "width": width, "height": height,
            "error": error, "decode_ms": decode_ms, **extra}


def decode_partition(part, transform: Transform, limits: DecodeLimits,
                     thumbs: ThumbSpec | None = None) -> dict[str, np.ndarray]:
    """A read task: every item of one partition (a shard's rows are read here, not on the driver),
    read and decoded as one block, so that the partition reaches one model worker whole."""
    items = read_partition(part.desc)
    rows = {"id": items["id"].to_numpy(dtype=object), "path": items["path"].to_numpy(dtype=object),
            "label": items["label"].fillna("").to_numpy(dtype=object)}
    return decode_batch(rows, transform, limits, thumbs)
