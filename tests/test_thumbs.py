"""The thumbs stage: made in the decode task from the whole upright image; its table equals a
direct computation (size, hash of the decoded pixels), and a bad image is an error row."""
import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def smooth(rng, h, w):
    """A picture of large blobs (random 6x6 colours, smoothly enlarged): JPEG keeps it close."""
    return Image.fromarray(rng.integers(0, 255, (6, 6, 3), np.uint8)).resize((w, h), Image.Resampling.BICUBIC)


def make_folder(root):
    rng = np.random.default_rng(0)
    root.mkdir()
    wide = smooth(rng, 120, 300)
    wide.save(root / "wide.png")
    wide.save(root / "same_pixels.bmp")  # another file, the same decoded pixels: the same hash
    tall = smooth(rng, 400, 90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright image is 400 wide, 90 high
    tall.save(root / "rotated.jpg", quality=95, exif=exif)
    smooth(rng, 40, 50).save(root / "small.png")  # below size: kept as is
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")


def test_thumbs_table_equals_a_direct_computation(tmp_path):
    from deepscope import job as jobmod
    from deepscope.io.decode import decode
    from deepscope.runner import run

    data = tmp_path / "data"
    make_folder(data)
    out = tmp_path / "out"
    run(jobmod.validate({"out": str(out), "dataset": {"source": str(data)}, "model": {"name": "lite0"},
                         "run": {"executor": "local", "partition_size": 3},
                         "thumbs": {"size": 64, "quality": 90}}))
    t = pq.read_table(out / "thumbs").to_pylist()
    assert [r["id"] for r in sorted(t, key=lambda r: r["id"])] == ["rotated.jpg", "same_pixels.bmp", "small.png", "wide.png"]
    for r in t:
        # lite0 resizes to 256 at least: no image here is large enough for JPEG draft mode, so the
        # hash is of the full decoded image
        img, w, h = decode((data / r["id"]).read_bytes())
        import hashlib
        want = hashlib.blake2b(f"{img.width}x{img.height}:".encode() + np.asarray(img).tobytes(), digest_size=16).hexdigest()
        assert r["pixel_hash"] == want and (r["width"], r["height"]) == (w, h) == img.size
        thumb = Image.open(io.BytesIO(r["thumb"]))
        assert thumb.format == "JPEG"
        scale = min(64 / max(w, h), 1.0)
        assert thumb.size == (max(1, round(w * scale)), max(1, round(h * scale))), (r["id"], thumb.size, (w, h))
        # the whole image, not a crop: the thumbnail looks like the image shrunk
        small = np.asarray(img.resize(thumb.size, Image.Resampling.BOX).convert("L"), np.float32)
        assert np.abs(np.asarray(thumb.convert("L"), np.float32) - small).mean() < 6
    by = {r["id"]: r for r in t}
    assert by["rotated.jpg"]["width"] == 400 and by["rotated.jpg"]["height"] == 90
    assert by["wide.png"]["pixel_hash"] == by["same_pixels.bmp"]["pixel_hash"] != by["small.png"]["pixel_hash"]
    errors = pq.read_table(out / "errors").to_pylist()
    assert [e["id"] for e in errors] == ["broken.jpg"]
    import json
    s = json.loads((out / "manifest.json").read_text())["summary"]["thumbs"]
    assert s["rows"] == 4 and s["exact_duplicate_images"] == 2
