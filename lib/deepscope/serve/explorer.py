"""The explorer (`deepscope app OUT`): one web app over a whole output folder, local or s3://.

  GET  /                         the page (static/explorer.html: gallery, image, units, unit, map)
  GET  /api/info                 the folder: images, fields to filter and sort on, spaces, layers
  GET  /api/images?...           a gallery page: FIELD=v, FIELD.min/.max, FIELD.null, box, q, sort, page, per
  GET  /api/image?id=            one image: its fields, neighbours per space, duplicates, units
  GET  /api/units?layer=&sort=   a layer's units;  GET /api/unit?layer=&unit=  one unit's images
  GET  /api/map, /api/map/points, /api/map/near?box=   the 2-D map (points as binary float32)
  GET  /api/thumb|original|saliency|adversarial|patch|picture   pictures
  POST /api/neighbors            search by upload, id or vector (the `serve` API, index loaded on first use;
                                 with `--ray`, its shards are Ray Serve replicas: serve/cluster.py)
  POST /api/copies               the same query (upload or id): which of its nearest are copies of it (`serve`'s /copies)

Every answer is computed from the folder's tables (serve/explorer_data.py), never from a path a
client sends: ids are looked up, and the files served are the ones the tables name.
"""
from __future__ import annotations

import io
import os
import threading
from importlib import resources
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from deepscope.serve.app import MEDIA, Engine, Limits, _BodyLimit, neighbors_query
from deepscope.serve.explorer_data import BadQuery, Tables, decoded_thumb

CACHE = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


class LazySearch(Engine):
    """The `serve` engine without its in-memory k-NN table (the explorer has its own), and loaded
    on the first search, so that a folder without an index still opens and start-up stays quick."""

    def __init__(self, out: str, limits: Limits, searcher=None):
        self.out, self.limits, self._lock, self._ready = out, limits, threading.Lock(), False
        self.searcher = searcher  # None: the index in this process; else e.g. serve/cluster.py's RemoteSearcher

    def ensure(self):
        with self._lock:
            if not self._ready:
                from deepscope.errors import UserError
                from deepscope.index.encode import Encoder
                from deepscope.index.search import Searcher
                from deepscope.io.decode import DecodeLimits
                from deepscope.io.store import Store
                from deepscope.job import load_spec

                store = Store(self.out)
                self.store, self._thumbs, self._thumbs_lock = store, None, threading.Lock()  # for copies (Engine.copies)
                spaces = ((store.summary("index") or {}).get("spaces") or {})
                if not spaces:
                    raise HTTPException(404, f"this folder has no index: run `deepscope index {self.out}` first")
                try:
                    self.searchers = {space: (self.searcher or Searcher)(store, space) for space in spaces}
                    self.encoder = Encoder(self.out, load_spec(self.out).model,
                                           DecodeLimits(max_pixels=self.limits.max_pixels,
                                                        max_bytes=self.limits.max_upload_bytes))
                except UserError as e:
                    raise HTTPException(503, str(e)) from None
                self._ready = True


def heatmap_png(m: np.ndarray, side: int = 224) -> bytes:
    """A saliency map as a PNG heat map (inferno), upscaled to side x side."""
    import matplotlib
    from PIL import Image

    rgba = (matplotlib.colormaps["inferno"](np.clip(m, 0, 1)) * 255).astype(np.uint8)[..., :3]
    buf = io.BytesIO()
    Image.fromarray(rgba).resize((side, side), Image.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return "application/octet-stream"


def create_explorer(out: str, limits: Limits = Limits(), workdir: str | None = None) -> FastAPI:
    """The app; its search (app.state.search) searches in this process until given another searcher
    class (`deepscope app --ray` sets serve/cluster.py's RemoteSearcher, whose shards are replicas)."""
    tables = Tables(out, workdir)
    search = LazySearch(out, limits)
    app = FastAPI(title="deepscope explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes)
    app.state.tables, app.state.search = tables, search
    static = resources.files("deepscope.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(BadQuery)
    async def bad_query(request, e: BadQuery):
        return JSONResponse({"detail": str(e)}, 400)

    def query(request: Request) -> list[tuple[str, str]]:
        return parse_qsl(request.url.query, keep_blank_values=False)

    def need(value, what: str):
        if value is None:
            raise HTTPException(404, what)
        return value

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (static / "explorer.html").read_text()

    @app.get("/api/info")
    async def info():
        t = tables
        layers = [r[0] for r in t._sql("SELECT DISTINCT layer FROM units ORDER BY 1")]
        spaces = list(((t.store.summary("index") or {}).get("spaces") or {}))
        return {"out": str(t.store.url), "images": t.n, "fields": t.fields, "knn_spaces": t.spaces,
                "index_spaces": spaces, "saliency": t.saliency_methods, "layers": layers,
                "map": any(f["name"] == "map_x" for f in t.fields), "thumbs": t.has_thumbs,
                "map_method": (t.store.summary("map") or {}).get("method"),
                "search_on": "ray serve" if search.searcher else "this process"}

    @app.get("/api/images")
    async def images(request: Request):
        return await run_in_threadpool(tables.gallery, query(request))

    @app.get("/api/image")
    async def image(id: str):
        return need(await run_in_threadpool(tables.image, id), f"unknown image id {id!r}")

    @app.get("/api/units")
    async def units(request: Request):
        return await run_in_threadpool(tables.units, query(request))

    @app.get("/api/unit")
    async def unit(layer: str, unit: int):
        return need(await run_in_threadpool(tables.unit, layer, unit), f"no unit {unit} at layer {layer!r}")

    @app.get("/api/thumb")
    async def thumb(id: str):
        data = await run_in_threadpool(tables.thumb, id)
        if data is None:  # no thumbs stage in this folder: decode the original (cached)
            path = need(await run_in_threadpool(tables.path_of, id), f"unknown image id {id!r}")
            try:
                data = await run_in_threadpool(decoded_thumb, path)
            except (OSError, ValueError):
                raise HTTPException(404, "the original image cannot be read") from None
        return Response(data, media_type=_sniff(data), headers=CACHE)

    @app.get("/api/original")
    async def original(id: str):
        from deepscope.io.sources import read_bytes

        path = need(await run_in_threadpool(tables.path_of, id), f"unknown image id {id!r}")
        try:
            data = await run_in_threadpool(read_bytes, path, 256 * 2**20)
        except OSError:
            raise HTTPException(404, "the original image is missing") from None
        return Response(data, media_type=MEDIA.get(os.path.splitext(path)[1].lower(), _sniff(data)), headers=CACHE)

    @app.get("/api/saliency")
    async def saliency(id: str, method: str):
        got = need(await run_in_threadpool(tables.saliency_map, id, method), f"no {method} saliency map of {id!r}")
        return Response(await run_in_threadpool(heatmap_png, got[0]), media_type="image/png", headers=CACHE)

    @app.get("/api/adversarial")
    async def adversarial(id: str):
        rel = need(await run_in_threadpool(tables.adversarial, id), f"no adversarial image of {id!r}")
        data = await run_in_threadpool(tables.store.read_bytes, rel)
        return Response(data, media_type="image/png", headers=CACHE)

    @app.get("/api/patch")
    async def patch(layer: str, unit: int, rank: int):
        data = need(await run_in_threadpool(tables.patch, layer, unit, rank), "no such patch")
        return Response(data, media_type=_sniff(data), headers=CACHE)

    @app.get("/api/picture")
    async def picture(layer: str, unit: int):
        got = tables._sql("SELECT picture FROM units WHERE layer = ? AND unit = ?", [layer, unit])
        rel = need(got[0][0] if got else None, f"no picture of unit {unit} at {layer!r}")
        data = await run_in_threadpool(tables.store.read_bytes, rel)
        return Response(data, media_type=_sniff(data), headers=CACHE)

    @app.get("/api/map")
    async def map_info():
        meta, _ = await run_in_threadpool(_points)
        return meta

    points_lock = threading.Lock()
    cached: dict = {}

    def _points():
        with points_lock:  # computed once: the map does not change while the server runs
            if "points" not in cached:
                cached["points"] = tables.map_points()
            return cached["points"]

    @app.get("/api/map/points")
    async def map_points():
        _, data = await run_in_threadpool(_points)
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/map/near")
    async def map_near(box: str, limit: int = 200):
        if not 1 <= limit <= 2000:
            raise BadQuery("limit must be between 1 and 2000")
        return await run_in_threadpool(tables.map_near, box, limit)

    @app.post("/api/neighbors")
    async def neighbors(request: Request):
        q, image = await neighbors_query(request, limits)  # the service's own parsing and limits
        await run_in_threadpool(search.ensure)
        return await run_in_threadpool(search.answer, q, image)

    @app.post("/api/copies")
    async def copies(request: Request):
        q, image = await neighbors_query(request, limits)
        await run_in_threadpool(search.ensure)
        return await run_in_threadpool(search.copies, q, image)

    return app
