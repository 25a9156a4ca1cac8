"""deepscope.io.decode against the image zoo and its independently computed references."""
import io
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from deepscope.io import decode as decode_module
from deepscope.io.decode import DecodeError, DecodeLimits, decode, decode_batch
from deepscope.models.transform import Transform
from imagezoo import STORED, chelsea, gray16, make_zoo, png_bytes, reference_rgb, upright_picture


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    return d, make_zoo(d)


def ints(img) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(chelsea((2000, 1500)), "JPEG", quality=85)


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    """12 MB of incompressible pixels: takes tens of ms to decode, in many small chunks."""
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (2000, 2000, 3), dtype=np.uint8)), "PNG", compress_level=0)


def test_zoo_has_every_case(zoo):
    _, z = zoo
    good = [n for n, e in z.items() if e is None]
    bad = [n for n, e in z.items() if e is not None]
    assert len(good) >= 15 and len(bad) == 5
    assert {f"orient_{k}.jpg" for k in range(1, 9)} <= set(good)


def test_good_files_match_reference(zoo):
    d, z = zoo
    for name in (n for n, e in z.items() if e is None):
        img, w, h = decode((d / name).read_bytes())
        ref = reference_rgb(d / name)
        assert img.mode == "RGB", name
        assert img.size == ref.size == (w, h), name
        assert np.abs(ints(img) - ints(ref)).max() <= 1, name


def test_bad_files_raise_readable_errors(zoo):
    d, z = zoo
    for name in (n for n, e in z.items() if e is not None):
        with pytest.raises(DecodeError) as info:
            decode((d / name).read_bytes())
        assert z[name] in str(info.value), (name, str(info.value))
        assert len(str(info.value)) < 200


def test_truncated_is_not_padded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    whole = encode(chelsea(), "JPEG")
    for cut in (len(whole) // 2, len(whole) - 10):
        with pytest.raises(DecodeError, match="truncated JPEG"):
            decode(whole[:cut])


def test_file_larger_than_limit(zoo):
    with pytest.raises(DecodeError, match="file larger than limit"):
        decode(encode(chelsea(), "JPEG"), DecodeLimits(max_bytes=100))


def test_special_modes(zoo):
    d, _ = zoo
    assert Image.open(d / "animated.gif").n_frames == 2
    img, _, _ = decode((d / "animated.gif").read_bytes())  # first frame: red with a blue box
    assert img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((20, 20)) == (0, 0, 255)
    img, _, _ = decode((d / "palette_alpha.png").read_bytes())  # transparent window -> white
    assert (np.asarray(img)[60:140, 110:190] == 255).all()
    img, _, _ = decode((d / "rgba.png").read_bytes())  # alpha 0 in the first column -> white
    assert (np.asarray(img)[:, 0] == 255).all()


def test_16bit_grey_is_scaled_not_clamped(zoo):
    d, _ = zoo
    img, _, _ = decode((d / "gray16.png").read_bytes())
    a = np.asarray(img)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    assert abs(a.mean() - gray16().mean() / 257) < 0.5  # Pillow's convert("L") would give ~255
    assert (a == 255).mean() < 0.05
    grey = a[..., 0]
    assert grey[:, 0].max() == 0 and grey[0, -1] == 191 and grey[-1, -1] == 255


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", [0, 128, 257, 32767, 65535], [0, 0, 1, 127, 255]),  # value/257, rounded
    ("I;16B", [0, 128, 257, 32767, 65535], [0, 0, 1, 127, 255]),
    ("I", [0, 128, 257, 32767, 65535, 70000], [0, 0, 1, 127, 255, 255]),  # and clipped
    ("F", [-5.0, 0.4, 0.6, 127.5, 254.6, 300.0], [0, 0, 1, 128, 255, 255]),  # rounded, clipped
])
def test_wide_grey_modes(mode, values, expected):
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "=i4", "F": "=f4"}[mode]
    img = Image.frombytes(mode, (len(values), 1), np.array(values, dtype).tobytes())
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    out, w, h = decode(data)
    assert (w, h) == (len(values), 1)
    assert np.asarray(out)[0].tolist() == [[v] * 3 for v in expected]


def test_all_orientations_upright_exact_png():
    up = upright_picture()
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        data = encode(Image.fromarray(np.ascontiguousarray(STORED[k](up))), "PNG", exif=exif)
        img, w, h = decode(data)
        assert (w, h) == (up.shape[1], up.shape[0]), k
        assert np.array_equal(np.asarray(img), up), k


def test_all_orientations_upright_jpeg(zoo):
    d, _ = zoo
    first = ints(decode((d / "orient_1.jpg").read_bytes())[0])
    for k in range(2, 9):
        img, w, h = decode((d / f"orient_{k}.jpg").read_bytes())
        diff = np.abs(ints(img) - first)
        assert (w, h) == img.size == (200, 152), k
        assert diff.mean() < 2 and diff.max() <= 16, k  # JPEG loss differs once the block grid turns


def test_bomb_checked_from_header_before_decoding(monkeypatch):
    # Only the header is real: decoding it would fail, so the message proves nothing was decoded.
    header_only = png_bytes(20000, 20000, rows=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # take Pillow's own guard out of the way
    with pytest.raises(DecodeError, match=r"decompression bomb: 20000x20000 = 400.0 Mpx > limit 179.0 Mpx"):
        decode(header_only)
    with pytest.raises(DecodeError, match=r"decompression bomb: 2000x1500 = 3.0 Mpx > limit 1.0 Mpx"):
        decode(encode(chelsea((2000, 1500)), "PNG", compress_level=0), DecodeLimits(max_pixels=1_000_000))


def test_pillow_bomb_guards_become_decode_errors():
    with pytest.raises(DecodeError, match="decompression bomb"):  # Pillow's DecompressionBombError
        decode(png_bytes(30000, 30000, rows=1), DecodeLimits(max_pixels=10**12))
    with warnings.catch_warnings():  # Pillow's DecompressionBombWarning, when filters make it raise
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DecodeError, match="decompression bomb"):
            decode(png_bytes(10000, 10000, rows=1))


def test_timeout_on_a_real_decode_restores_handler_and_timer(noisy_png):
    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGALRM, mine)
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        start = time.monotonic()
        with pytest.raises(DecodeError, match=r"decode timed out after 0\.001 s"):
            decode(noisy_png, DecodeLimits(timeout_s=0.001))
        assert time.monotonic() - start < 1
        assert signal.getsignal(signal.SIGALRM) is mine
        assert 98 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100  # the outer timer keeps running
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    img, _, _ = decode(noisy_png, DecodeLimits(timeout_s=30))  # a generous limit changes nothing
    assert img.size == (2000, 2000)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _swallowing_step(img):
    # an alarm's raise that lands in a weakref callback or __del__ is swallowed ("Exception ignored in")
    deadline = time.monotonic() + 0.5
    try:
        while time.monotonic() < deadline:  # the first alarm lands here...
            pass
    except BaseException:  # ...and is lost, as in a callback
        pass
    time.sleep(5)  # still stuck


@pytest.mark.parametrize("step", [lambda img: time.sleep(5), _swallowing_step], ids=["slow", "first-alarm-lost"])
def test_timeout_on_a_slow_step(monkeypatch, step):
    """A slow step is stopped at the limit, also when the first alarm's raise is lost: the decode is
    never left to run unbounded, and the handler and timer are restored."""
    monkeypatch.setattr(decode_module, "_to_rgb", step)
    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(DecodeError, match=r"decode timed out after 0\.2 s"):
        decode(encode(chelsea(), "PNG"), DecodeLimits(timeout_s=0.2))
    assert time.monotonic() - start < 2
    assert signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_no_timer_outside_main_thread(noisy_png):
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=decode(noisy_png, DecodeLimits(timeout_s=0.001))))
    thread.start()
    thread.join()
    assert result["out"][0].size == (2000, 2000)


def test_draft_mode(big_jpeg):
    img, w, h = decode(big_jpeg, draft_size=256)
    assert (w, h) == (2000, 1500)
    assert img.size == (500, 375)  # 1/4 scale: the smallest that keeps both sides >= 256
    assert decode(big_jpeg, DecodeLimits(draft=False), draft_size=256)[0].size == (2000, 2000 * 3 // 4)
    assert decode(big_jpeg)[0].size == (2000, 1500)
    # rotated: the original size is reported upright, the draft still keeps both sides >= 256
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(chelsea((2000, 1500)), "JPEG", quality=85, exif=exif)
    img, w, h = decode(rotated, draft_size=256)
    assert (w, h) == (1500, 2000) and img.size == (375, 500)


def test_decode_batch_over_the_zoo(zoo, monkeypatch):
    d, z = zoo
    names = list(z) + ["missing.jpg"]
    batch = {
        "path": np.array([str(d / n) for n in names], dtype=object),
        "id": np.array(names, dtype=object),
        "label": np.arange(len(names), dtype=np.int64),
    }
    transform = Transform(resize=160, crop=128)
    draft_sizes = []
    real_decode = decode_module.decode
    monkeypatch.setattr(decode_module, "decode",
                        lambda data, limits, draft_size=None: draft_sizes.append(draft_size) or real_decode(data, limits, draft_size))
    out = decode_batch(batch, transform, DecodeLimits())

    assert set(out) == {"path", "id", "label", "pixels", "width", "height", "error", "decode_ms"}
    for col in ("path", "id", "label"):
        assert out[col] is batch[col]
    n = len(names)
    assert out["pixels"].shape == (n, 3, 128, 128) and out["pixels"].dtype == np.uint8
    assert out["width"].dtype == out["height"].dtype == np.int32
    assert out["decode_ms"].dtype == np.float32 and (out["decode_ms"] >= 0).all()
    assert set(draft_sizes) == {160}
    ok = out["error"] == ""
    assert ok.sum() == sum(e is None for e in z.values()) and (~ok).sum() == n - ok.sum()
    for i, name in enumerate(names):
        if z.get(name) is None and name in z:
            ref = reference_rgb(d / name)
            assert (out["width"][i], out["height"][i]) == ref.size, name
            assert np.abs(out["pixels"][i].astype(np.int16) - transform.geometry(ref)).max() <= 1, name
        else:
            assert z.get(name, "read failed: FileNotFoundError") in out["error"][i], name
            assert out["width"][i] == out["height"][i] == 0 and not out["pixels"][i].any(), name


def test_decode_batch_enforces_max_bytes(zoo):
    d, _ = zoo
    batch = {"path": np.array([str(d / "chelsea.jpg"), str(d / "empty.jpg")], dtype=object)}
    out = decode_batch(batch, Transform(), DecodeLimits(max_bytes=1000))
    assert out["error"].tolist() == ["file larger than limit", "empty file"]
