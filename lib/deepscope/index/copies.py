"""Is an image a copy of images in an output folder?  A new image (a file, an upload) or one of the
folder's own: its nearest images in each indexed space are the candidates, and each candidate's thumbnail
is checked against the query's, made as the thumbs stage made the folder's, by the knn stage's own first
look (the pixel sketches) and verification (algos/verify.py).  One image, in-process, no Ray: the answer
`deepscope knn` would give for these pairs, without running it (or for an image that is not in the folder).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import cv2
import numpy as np

from deepscope.algos import knn as K
from deepscope.algos import verify as V
from deepscope.errors import UserError
from deepscope.index import knn as IK
from deepscope.io.decode import ThumbSpec, decode, pixel_hash, thumbnail_bytes


@dataclass
class Query:
    vectors: dict[str, np.ndarray]  # space -> (dim,) float32, as the folder's stages computed theirs
    thumb: bytes  # encoded as the folder's thumbnails are
    digest: str  # hash of the decoded pixels ("" unknown): equal for an exact copy
    id: str | None = None  # one of the folder's images: never its own candidate


def thumb_spec(store) -> ThumbSpec:
    """How the folder's thumbnails were made; one clear line when it has none."""
    cfg = store.stage_config("thumbs")
    if not cfg or not store.parts("thumbs"):
        raise UserError(f"{store.root} has no thumbnails to check copies on: add a [thumbs] stage to its job and run it again")
    d = ThumbSpec()
    return ThumbSpec(int(cfg.get("size", d.size)), int(cfg.get("quality", d.quality)), str(cfg.get("format", d.format)).upper())


class Thumbs:
    """The folder's thumbnails by id, read for many queries: where each one is and its pixel hash (the knn
    stage's map of the thumbs parts, index/knn.py: _thumb_rows, read once), and the recently used parts' pictures."""

    def __init__(self, store, ids: list[str], keep_parts: int = 8):
        """ids: the index's (every candidate is one of them)."""
        thumb_spec(store)  # no thumbnails: one line
        self.at = {i: n for n, i in enumerate(ids)}
        self.rows = IK._thumb_rows(store, np.array(ids, object))  # None: no image of the index has one
        self._part = functools.lru_cache(keep_parts)(lambda f: store.loc.read_table(f, columns=["thumb"]).column("thumb"))

    def _where(self, image_id: str) -> int | None:
        n = self.at.get(image_id)
        return None if n is None or self.rows is None or not self.rows["file"][n] else n

    def hash(self, image_id: str) -> str:
        n = self._where(image_id)
        return "" if n is None else str(self.rows["hash"][n])

    def picture(self, image_id: str) -> bytes | None:
        n = self._where(image_id)
        return None if n is None else self._part(self.rows["file"][n])[int(self.rows["row"][n])].as_py()


def query_of_file(store, data: bytes, encoder, spaces: list[str]) -> Query:
    """An image file's bytes -> its vectors (the encoder: the folder's model and transform), its thumbnail
    and pixel hash from the image decoded as the features pass decoded the folder's (the same draft scale)."""
    img, _, _ = decode(data, encoder.limits, draft_size=encoder.transform.resize)
    return Query({s: encoder.encode(data, s) for s in spaces}, thumbnail_bytes(img, thumb_spec(store)), pixel_hash(img))


def query_of_id(store, image_id: str, searchers: dict, thumbs: Thumbs) -> Query:
    """One of the folder's images -> its stored vectors, thumbnail and pixel hash."""
    vectors = {s: sr.vectors_of([image_id])[0] for s, sr in searchers.items()}
    picture = thumbs.picture(image_id)
    if picture is None:
        raise UserError(f"{image_id} has no thumbnail in {store.root}: it failed to decode, or the thumbs stage did not reach it")
    return Query(vectors, picture, thumbs.hash(image_id), image_id)


def _prepared(thumb: bytes, settings: V.VerifySettings) -> dict:
    bgr = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)  # as the knn stage's tasks decode them
    return V.prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), settings)


def _sketches(query: Query, searchers: dict, ids: list[str]) -> np.ndarray:
    """The first look's agreement of the query's pixel sketch with each candidate's (NaN without a pixels index)."""
    if "pixels" not in searchers or not ids:
        return np.full(len(ids), np.nan, np.float32)
    x = np.vstack([query.vectors["pixels"][None], searchers["pixels"].vectors_of(ids)])
    size = int(round((x.shape[1] / 3) ** 0.5))
    sketches = K.pixel_sketch(np.clip(x, 0, 255).astype(np.uint8), size)
    return K.sketch_agreement(sketches, np.zeros(len(ids), np.int64), np.arange(1, len(ids) + 1))


def describe(ev: dict) -> str:
    """A copy's evidence in words: how the query maps onto the image."""
    words = (["mirrored"] if ev["flip"] else []) + [f"scale {ev['scale']:.2f}"]
    if abs(ev["rotation"]) >= 0.5:
        words.append(f"turned {ev['rotation']:.1f} deg")
    words += [f"overlap {ev['overlap']:.2f}", f"{ev['inliers']} matches" if ev["inliers"] else "laid by its frames"]
    if ev["differing"] > 0:
        words.append(f"{ev['differing']:.0%} of the cells differ (overlay {ev['overlay']:.2f})")
    return ", ".join(words)


MIRRORED = "mirrored"  # the candidates' ranks among the nearest of the query mirrored, in the pixels space


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """A tiny image's vector (3 * size * size, CHW: the pixels stage) -> its mirror image's."""
    size = int(round((pixels.shape[-1] / 3) ** 0.5))
    return np.ascontiguousarray(pixels.reshape(3, size, size)[:, :, ::-1]).reshape(-1)


def find_copies(searchers: dict, thumbs: Thumbs, query: Query, k: int, cfg) -> tuple[list[dict], dict, dict[str, bytes]]:
    """The query against its k nearest images in each space and, with a pixels index, the k nearest of its
    mirror image there (the query itself left out): for each candidate {id, path, label, <space>_rank,
    <space>_distance (space: each index's, and `mirrored`), sketch, copy, tier, why, and the evidence (V.EVIDENCE)},
    copies first, then by their best rank; {candidates, copies, seconds}; and the candidates' thumbnails by id.
    cfg: the knn stage's settings (min_sketch, min_frames_sketch, the verification's limits): the stage's decision."""
    t0 = time.perf_counter()
    found: dict[str, dict] = {}
    searches = [(space, sr, query.vectors[space]) for space, sr in searchers.items()]
    if "pixels" in searchers:  # and the query's mirror image: a flipped copy's tiny picture is near its original's mirrored
        searches.append((MIRRORED, searchers["pixels"], mirrored(query.vectors["pixels"])))
    for space, sr, vector in searches:
        for rank, h in enumerate((h for h in sr.search(vector, k + (query.id is not None))[0] if h.id != query.id), 1):
            if rank > k:
                break
            row = found.setdefault(h.id, {"id": h.id, "path": h.path, "label": h.label})
            row[f"{space}_rank"], row[f"{space}_distance"] = rank, h.distance
    rows = list(found.values())
    ids = [r["id"] for r in rows]
    pictures = {n: p for n, p in enumerate(map(thumbs.picture, ids)) if p is not None}
    sketch = _sketches(query, searchers, ids)
    settings = V.VerifySettings(**IK.verify_settings(cfg))
    q = _prepared(query.thumb, settings)
    order = (searchers.get("features") or next(iter(searchers.values()))).row_of  # the knn stage's rows: its pairs list the lower first
    for n, row in enumerate(rows):
        exact = bool(query.digest) and thumbs.hash(row["id"]) == query.digest
        ev = {key: v[0] for key, v in V.no_evidence(1).items()}  # a pair not verified: no evidence
        if exact:
            why = "the same decoded pixels"
        elif n not in pictures:
            why = "no thumbnail of this image"
        elif sketch[n] < cfg.min_sketch:  # the stage's first look: NaN (no detail to compare) is verified
            why = f"first look: the pixel sketches agree under {cfg.min_sketch}"
        else:  # the query laid on the image, or for two of the folder's images the stage's order (the lower row first)
            image = _prepared(pictures[n], settings)
            pair = (q, image) if query.id is not None and order[query.id] < order[row["id"]] else (image, q)
            frames, close = IK.frames_rule(np.float32(sketch[n]), cfg)
            ev = V.verify_pair(*pair, settings, frames=bool(frames), close=bool(close))
            why = describe(ev) if ev["same"] else ev["failed"]
        same = exact or bool(ev["same"])
        row.update({"sketch": float(sketch[n]), "copy": same, "tier": V.tier(exact, ev) if same else None, "why": why,
                    **{key: ev[key] for key in V.EVIDENCE if key not in ("same", "failed")}})
    best = lambda r: min(r.get(f"{s}_rank", np.inf) for s, _, _ in searches)
    rows.sort(key=lambda r: (not r["copy"], best(r)))
    summary = {"candidates": len(rows), "copies": sum(r["copy"] for r in rows), "seconds": round(time.perf_counter() - t0, 3)}
    return rows, summary, {ids[n]: b for n, b in pictures.items()}


def copies_of_files(store, searchers: dict, thumbs: Thumbs, encoder, files: list[tuple[str, str]], k: int, cfg,
                    log=lambda line: None) -> tuple[list[dict], dict]:
    """Many new images, (name, path) each -> one row per (query, candidate) as find_copies gives them, with the
    query's name and an `error` (a file that cannot be read or decoded: one row, no candidate); and
    {images, with_copies, pairs, failed, seconds}.  The encoder, searchers and thumbnail map are shared."""
    from deepscope.io.decode import DecodeError
    from deepscope.io.sources import read_bytes

    t0, last, out = time.time(), time.time(), []
    with_copies = failed = pairs = 0
    for n, (name, path) in enumerate(files, 1):
        try:
            rows, summary, _ = find_copies(searchers, thumbs, query_of_file(store, read_bytes(path, encoder.limits.max_bytes), encoder,
                                                                           list(searchers)), k, cfg)
            out += [{"query": name, "error": None, **r} for r in rows]
            with_copies += summary["copies"] > 0
            pairs += summary["copies"]
        except (DecodeError, OSError) as e:  # one bad file is one row, and the rest goes on
            out.append({"query": name, "error": str(e) or type(e).__name__})
            failed += 1
        if time.time() - last > 10:
            last = time.time()
            log(f"copies: {n} of {len(files)} images checked ({n / (last - t0):.1f} images/s)")
    return out, {"images": len(files), "with_copies": with_copies, "pairs": pairs, "failed": failed,
                 "seconds": round(time.time() - t0, 2)}
