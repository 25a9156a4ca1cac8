"""The neighbour-search service over an output folder's indexes (FastAPI; `deepscope serve OUT`).

  POST /neighbors      multipart (an `image` upload) or JSON ({"id": ...} or {"vector": [...]}),
                       with k (<= 1000), space (features | pixels), nprobe / ef_search -> JSON
  POST /copies         the same query (an upload or an id, not a vector): which of its k nearest in every
                       space are copies of it, verified on the thumbnails as `deepscope knn` verifies pairs
  GET  /images/{id}    an image of the dataset, by id: only paths in the index's id mapping
  GET  /duplicates/{id} what the k-NN graph says about an image (deepscope knn): its near-duplicate
                       group, nearest image, uniqueness, its label against its neighbours' labels
  GET  /info           the indexes: kind, size, search setting, measured recall
  GET  /               a small search page

Everything is loaded once at start-up: indexes (each file checked against the sha256 recorded
at build time) and the model that computes an uploaded image's features.  Nothing a client
sends is ever fetched or opened as a path: ids are looked up, vectors searched, uploads decoded
in memory under size and pixel limits.  Per-request settings are FAISS search parameters, so the
shared index is never modified.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepscope.errors import UserError
from deepscope.index.search import Searcher, UnknownId
from deepscope.io.decode import DecodeError, DecodeLimits
from deepscope.io.sources import read_bytes
from deepscope.io.store import Store

MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
         ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 16 * 2**20  # whole request body
    max_pixels: int = 40_000_000  # of an uploaded image, checked from its header before decoding
    max_k: int = 1000


class NeighborsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=4096)
    vector: list[float] | None = Field(None, max_length=1 << 20)
    k: int = Field(10, ge=1)
    space: Literal["features", "pixels"] = "features"
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)


class _BodyLimit:
    """ASGI middleware: a request body over the limit is refused with 413, by its Content-Length
    before anything is read, or as soon as the streamed bytes pass the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope, receive, send):
        # read and drop what the client sends (bounded), so that it gets to read our answer
        dropped, more = 0, True
        while more and dropped <= 8 * self.max_bytes:
            message = await receive()
            dropped += len(message.get("body", b""))
            more = message.get("more_body", False)
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, 413,
                                headers={"Connection": "close"} if more else None)
        await response(scope, receive, send)


@contextlib.contextmanager
def _as_http_errors():
    """A query's errors as HTTP answers: an unknown id 404, an image too large 413, one that does not decode 400,
    any other bad request 422."""
    try:
        yield
    except UnknownId as e:
        raise HTTPException(404, str(e)) from None
    except DecodeError as e:
        too_big = "decompression bomb" in str(e) or "larger than limit" in str(e)
        raise HTTPException(413 if too_big else 400, f"bad image: {e}") from None
    except UserError as e:
        raise HTTPException(422, str(e)) from None


class Engine:
    """The folder's searchers and encoder, shared by every request (read-only after start-up)."""

    def __init__(self, out: str, limits: Limits, searcher=Searcher):
        """searcher: the class that searches a space (serve --ray: one that fans out to shard replicas)."""
        from deepscope.index.encode import Encoder
        from deepscope.job import load_spec

        self.store = Store(out)
        spaces = ((self.store.summary("index") or {}).get("spaces") or {})
        if not spaces:
            raise UserError(f"{out} has no index: run `deepscope index {out}` first")
        self.searchers = {space: searcher(self.store, space) for space in spaces}
        self.encoder = Encoder(out, load_spec(out).model,
                               DecodeLimits(max_pixels=limits.max_pixels, max_bytes=limits.max_upload_bytes))
        self.limits = limits
        self.paths: dict[str, str] = {}
        for s in reversed(list(self.searchers.values())):  # the first space's mapping wins
            self.paths.update(zip(s.ids, s.paths))
        self.graph = Graph.load(self.store)
        self._thumbs, self._thumbs_lock = None, threading.Lock()  # POST /copies' thumbnail map (index/copies.py: Thumbs)

    def answer(self, q: NeighborsQuery, image: bytes | None) -> dict:
        s = self.searchers.get(q.space)
        if s is None:
            raise HTTPException(404, f"this folder has no {q.space} index (spaces: {', '.join(self.searchers)})")
        with _as_http_errors():
            if image is not None:
                vector, query = self.encoder.encode(image, q.space), {"image": "upload"}
            elif q.id is not None:
                vector, query = s.vectors_of([q.id]), {"id": q.id}
            else:
                vector, query = q.vector, {"vector": len(q.vector)}
            setting = s.setting(q.nprobe, q.ef_search)
            hits = s.search(vector, q.k, q.nprobe, q.ef_search)[0]
        return {"space": q.space, "query": query, "k": q.k, "index": s.info["kind"], "metric": s.metric,
                "search": setting,
                "neighbors": [{"rank": r + 1, "id": h.id, "label": h.label, "distance": h.distance,
                               "image": "/images/" + quote(h.id)} for r, h in enumerate(hits)]}


    def copies(self, q: NeighborsQuery, image: bytes | None) -> dict:
        """POST /copies: the candidates, copies first, with their tier and evidence (index/copies.py)."""
        import math

        from deepscope.index import copies as C
        from deepscope.stages.knn import KnnConfig

        if q.vector is not None:
            raise HTTPException(422, "copies are checked on pictures: upload an 'image' or give an 'id'")
        with _as_http_errors():
            with self._thumbs_lock:  # the thumbnails' map: read once, on the first request that needs it
                if self._thumbs is None:
                    self._thumbs = C.Thumbs(self.store, next(iter(self.searchers.values())).ids)
            query = (C.query_of_file(self.store, image, self.encoder, list(self.searchers)) if image is not None
                     else C.query_of_id(self.store, q.id, self.searchers, self._thumbs))
            rows, summary, _ = C.find_copies(self.searchers, self._thumbs, query, q.k, KnnConfig.of(self.store))

        def plain(v):  # numpy scalars -> Python; NaN (not measured) -> null
            v = v.item() if hasattr(v, "item") else v
            return None if isinstance(v, float) and math.isnan(v) else v
        return {"query": {"image": "upload"} if image is not None else {"id": q.id}, "k": q.k, **summary,
                "results": [{**{k: plain(v) for k, v in r.items()}, "image": "/images/" + quote(r["id"])} for r in rows]}


class Graph:
    """The k-NN stage's per-image table, duplicate pairs and feature graph (deepscope knn), if any."""

    def __init__(self, images, pairs, neighbours):
        self.images, self.neighbours = images, neighbours
        self.row_of = {i: r for r, i in enumerate(images.column("id").to_pylist())}
        self.pairs: dict[str, list[dict]] = {}
        for p in pairs.to_pylist():
            self.pairs.setdefault(p["group"], []).append(p)

    @classmethod
    def load(cls, store):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from deepscope.index.knn import GRAPH
        from deepscope.index.search import verified_bytes

        summary = store.summary("knn")
        if not summary:
            return None

        def table(rel):
            return pq.read_table(pa.BufferReader(verified_bytes(store, rel, store.manifest["files"][rel]["sha256"])))

        space = "features" if "features" in summary["graphs"] else next(iter(summary["graphs"]))
        neighbours = store.read(GRAPH.format(space=space), columns=["id", "neighbor_ids", "distances"])
        images = table("knn/images.parquet")
        if not neighbours.column("id").equals(images.column("id")):
            raise UserError(f"the k-NN results of {store.root} are out of date: run `deepscope knn {store.root}`")
        return cls(images, table("knn/duplicates.parquet"), neighbours)

    def about(self, image_id: str) -> dict:
        from urllib.parse import quote

        r = self.row_of.get(image_id)
        if r is None:
            raise HTTPException(404, f"unknown id {image_id!r}")
        me = self.images.slice(r, 1).to_pylist()[0]
        members = {}
        for p in self.pairs.get(me["group"], []) if me["group"] else []:
            for x, y in ((p["a"], p["b"]), (p["b"], p["a"])):
                if x != image_id:
                    near = p["distance"] if y == image_id else None
                    old = members.get(x)
                    members[x] = near if old is None else (old if near is None else min(old, near))
        nb = self.neighbours.slice(r, 1).to_pylist()[0] if r < self.neighbours.num_rows else {"neighbor_ids": [], "distances": []}
        labels = self.images.column("label")

        def label_of(i):
            j = self.row_of.get(i)
            return labels[j].as_py() if j is not None else None

        return {
            "id": image_id, "label": me["label"], "image": "/images/" + quote(image_id),
            "group": me["group"], "group_size": me["group_size"],
            "duplicate_of": me.get("duplicate_of"),  # the kept image this one copies (null: keep it)
            "duplicates": [{"id": i, "distance": d, "label": label_of(i), "image": "/images/" + quote(i)}
                           for i, d in sorted(members.items(), key=lambda kv: (kv[1] is None, kv[1] or 0, kv[0]))],
            "nearest": {"id": me["nearest_id"], "distance": me["nearest_distance"]},
            "uniqueness": me["uniqueness"],
            "labels": {"majority": me["majority_label"], "majority_share": me["majority_share"],
                       "own_share": me["own_label_share"], "flagged": me["label_flagged"]},
            "neighbors": [{"rank": n + 1, "id": i, "label": label_of(i), "distance": d, "image": "/images/" + quote(i)}
                          for n, (i, d) in enumerate(zip(nb["neighbor_ids"], nb["distances"]))],
        }


def _validation_message(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()[:5])


async def neighbors_query(request: Request, limits: Limits) -> tuple[NeighborsQuery, bytes | None]:
    """A neighbour query as POSTed: an 'image' upload (multipart) or a JSON id or vector; one clear
    4xx for anything else (the service and the explorer's search both take it this way)."""
    ctype = request.headers.get("content-type", "")
    image = None
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except HTTPException:
            raise
        except Exception as e:  # malformed multipart bodies
            raise HTTPException(400, f"bad multipart form: {e}") from None
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        files = {k: v for k, v in form.items() if not isinstance(v, str)}
        if set(files) - {"image"}:
            raise HTTPException(422, "upload the image in the form field 'image'")
        if "image" in files:
            image = await files["image"].read()
    elif ctype.startswith("application/json"):
        try:
            fields = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise HTTPException(422, "the JSON body must be an object")
    else:
        raise HTTPException(415, "send multipart/form-data (an 'image' upload) or application/json "
                                 "({\"id\": ...} or {\"vector\": [...]})")
    try:
        q = NeighborsQuery.model_validate(fields)
    except ValidationError as e:
        raise HTTPException(422, _validation_message(e)) from None
    if (image is not None) + (q.id is not None) + (q.vector is not None) != 1:
        raise HTTPException(422, "give exactly one query: an 'image' upload, an 'id' or a 'vector'")
    if q.k > limits.max_k:
        raise HTTPException(422, f"k must be at most {limits.max_k}, got {q.k}")
    return q, image


def create_app(out: str, limits: Limits = Limits(), searcher=Searcher) -> FastAPI:
    engine = Engine(out, limits, searcher)
    app = FastAPI(title="deepscope neighbours", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes)
    app.state.engine = engine

    @app.post("/neighbors")
    async def neighbors(request: Request):
        q, image = await neighbors_query(request, limits)
        return await run_in_threadpool(engine.answer, q, image)

    @app.post("/copies")
    async def copies(request: Request):
        q, image = await neighbors_query(request, limits)
        return await run_in_threadpool(engine.copies, q, image)

    @app.get("/images/{image_id:path}")
    async def image(image_id: str):
        path = engine.paths.get(image_id)  # never a path from the client: only the mapping's paths
        if path is None:
            raise HTTPException(404, "unknown image id")
        try:
            data = await run_in_threadpool(read_bytes, path, 256 * 2**20)
        except OSError:
            raise HTTPException(404, "the image file is missing") from None
        media = MEDIA.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
        return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "private, max-age=3600"})

    @app.get("/duplicates/{image_id:path}")
    async def duplicates(image_id: str):
        if engine.graph is None:
            raise HTTPException(404, f"this folder has no k-NN graph: run `deepscope knn {out}`")
        return await run_in_threadpool(engine.graph.about, image_id)

    @app.get("/info")
    async def info():
        return {"spaces": {name: s.describe() for name, s in engine.searchers.items()}, "max_k": limits.max_k,
                "max_upload_bytes": limits.max_upload_bytes, "knn": engine.graph is not None}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        options = "".join(f'<option>{name}</option>' for name in engine.searchers)
        return PAGE.replace("{options}", options).replace("{knn}", "true" if engine.graph is not None else "false")

    return app


PAGE = """<!doctype html><meta charset=utf-8><title>deepscope: nearest neighbours</title>
<link rel="icon" href="data:,">
<style>body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1100px}#out figure,#dups figure{display:inline-block;
margin:4px;text-align:center;font-size:12px}#out img,#dups img{width:128px;height:128px;object-fit:cover;cursor:pointer}
#err{color:#b00}#about{margin:.5em 0}#out figure.copy img{outline:3px solid #1a7f37}#out figure.other{opacity:.6}
#out figcaption{max-width:128px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}</style>
<h1>Nearest neighbours</h1>
<form id=f><input type=file name=image accept="image/*" required> k <input name=k type=number value=10 min=1
max=1000 style="width:5em"> space <select name=space>{options}</select> <select name=what
title="copies: the k nearest in every space, each verified on the thumbnails"
onchange="f.space.disabled = this.value === 'copies'"><option value=neighbors>nearest
neighbours</option><option value=copies>copies of it</option></select> <button>search</button></form>
<p>Click a result to search with it. <span id=err></span></p><div id=about></div><div id=dups></div><div id=out></div>
<script>
const KNN = {knn};
const out = document.getElementById('out'), err = document.getElementById('err'), f = document.getElementById('f');
const about = document.getElementById('about'), dups = document.getElementById('dups');
function figure(n, caption) {
  const fig = document.createElement('figure'), img = document.createElement('img'), cap = document.createElement('figcaption');
  img.src = n.image; img.title = n.id; img.onclick = () => byId(n.id);
  cap.textContent = caption; cap.title = caption; fig.append(img, cap); return fig;
}
async function show(resp) {
  const body = await resp.json();
  out.textContent = ''; err.textContent = resp.ok ? '' : body.detail;
  for (const n of body.neighbors || []) {
    out.append(figure(n, n.rank + ': ' + n.distance.toPrecision(3) + (n.label ? ' ' + n.label : '')));
  }
  if (body.results) {  // POST /copies: copies first, framed; the others say why not
    about.textContent = body.copies + ' of ' + body.candidates + ' candidates are copies (verified in ' + body.seconds + ' s)';
    for (const r of body.results) {
      const fig = figure(r, r.copy ? 'copy, ' + r.tier + ': ' + r.why : 'not a copy: ' + r.why);
      fig.className = r.copy ? 'copy' : 'other'; out.append(fig);
    }
  }
}
async function duplicates(id) {
  about.textContent = ''; dups.textContent = '';
  if (!KNN) return;
  const resp = await fetch('/duplicates/' + id.split('/').map(encodeURIComponent).join('/'));
  if (!resp.ok) return;
  const d = await resp.json(), lab = d.labels;
  about.textContent = id + ': uniqueness ' + d.uniqueness.toPrecision(3) +
    (d.group ? ', near-duplicate group of ' + d.group_size : ', no near-duplicate') +
    (lab.flagged ? ' | label "' + d.label + '" disagrees: neighbours say "' + lab.majority + '" (' +
     Math.round(100 * lab.majority_share) + '%)' : '');
  for (const n of d.duplicates) dups.append(figure(n, 'duplicate' + (n.distance == null ? '' : ' ' + n.distance.toPrecision(2))));
}
function byId(id) {
  const fd = new FormData(f), what = fd.get('what');
  fetch('/' + what, {method: 'POST', headers: {'content-type': 'application/json'},
    body: JSON.stringify({id: id, k: +fd.get('k'), space: fd.get('space') || undefined})}).then(show);
  if (what === 'neighbors') duplicates(id); else dups.textContent = '';
}
f.onsubmit = e => { e.preventDefault(); about.textContent = ''; dups.textContent = '';
  const fd = new FormData(f), what = fd.get('what'); fd.delete('what');
  fetch('/' + what, {method: 'POST', body: fd}).then(show); };
</script>"""
