"""Feature space: `index`, `query`, `knn`, `serve`, `map` over an output folder."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from deepscope.errors import UserError

KINDS = ("flat", "ivf_flat", "ivf_sq8", "ivf_pq", "opq_ivf_pq", "hnsw")  # = deepscope.index.build.KINDS (a test says so), without FAISS
QUERY_GRID_MAX = 20  # neighbours shown in a query's PNG (all of them are printed)


def add_commands(sub) -> None:
    i = sub.add_parser("index", help="FAISS indexes over OUT's features (and pixels) for neighbour search")
    i.add_argument("out", help="an output folder with features")
    i.add_argument("--pixels", action="store_true",
                   help="also index pixel space (runs the pixels stage first when OUT has none)")
    i.add_argument("--kind", choices=["auto", *KINDS], help="index kind (default auto: by size and memory)")
    i.add_argument("--metric", choices=["l2", "cosine"], help="feature-space metric (default l2)")
    i.add_argument("--memory-mb", type=int, help="RAM one index or shard may take (default 4096)")
    i.add_argument("--shards", type=int, help="shards built in parallel Ray tasks (default 0: as memory needs)")
    i.add_argument("--nlist", type=int, help="IVF lists (default about 4 sqrt(n))")
    i.add_argument("--flat-max", type=int, help="exact search up to this many vectors (default 20000)")
    i.add_argument("--target-recall", type=float, help="recall@10 the search setting is tuned to (default 0.95)")
    i.set_defaults(fn="deepscope.commands.space:cmd_index")

    q = sub.add_parser("query", help="nearest neighbours of an image, an id, or a batch of queries")
    q.add_argument("out", help="an output folder with an index")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="an image file")
    what.add_argument("--id", help="the id of an indexed image")
    what.add_argument("--batch", help="a Parquet file with an 'id' column and/or a 'vector' column")
    what.add_argument("--images", help="with --copies: a folder of new image files, each checked (into --out RESULT.parquet)")
    q.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    q.add_argument("--space", choices=["features", "pixels"], default="features")
    q.add_argument("--nprobe", type=int, help="IVF lists to visit (default: the tuned value)")
    q.add_argument("--ef-search", type=int, help="HNSW search breadth (default: the tuned value)")
    q.add_argument("--out", dest="result", help="RESULT.parquet for --batch or --images")
    q.add_argument("--copies", action="store_true",
                   help="with --image, --id or --images: which of the k nearest in every indexed space (and of its mirror image in "
                        "pixels) are copies of it, verified "
                        "on the thumbnails as `deepscope knn` verifies pairs (needs a [thumbs] stage)")
    q.set_defaults(fn="deepscope.commands.space:cmd_query")

    s = sub.add_parser("serve", help="HTTP neighbour search over OUT's indexes (FastAPI + uvicorn)")
    s.add_argument("out")
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=16.0)
    s.add_argument("--max-pixels", type=int, default=40_000_000, help="of an uploaded image")
    s.add_argument("--ray", action="store_true",
                   help="run as a Ray Serve application: shards held by replicas, a router that fans out")
    s.add_argument("--replicas", type=int, default=2, help="with --ray: replicas per shard (default 2)")
    s.add_argument("--address", help="with --ray: the Ray cluster (default: RAY_ADDRESS or a local one)")
    s.set_defaults(fn="deepscope.commands.space:cmd_serve")

    g = sub.add_parser("knn", help="every image's k nearest neighbours, near-duplicates, uniqueness, label disagreement")
    g.add_argument("out", help="an output folder with an index (deepscope index OUT)")
    g.add_argument("--k", type=int, help="neighbours per image (default 10)")
    g.add_argument("--space", choices=["features", "pixels"], action="append",
                   help="the graph's space (repeatable; default: every indexed space)")
    g.add_argument("--dup-threshold", type=float, help="near-duplicate distance threshold, when pairs are not verified "
                                                       "on thumbnails (default: from the data)")
    g.add_argument("--no-verify", action="store_true", help="decide duplicates by the threshold even when there are thumbnails")
    g.add_argument("--verify-top", type=int, help="each image's nearest pairs verified on the thumbnails (default 2)")
    g.add_argument("--verify-nearest", action=argparse.BooleanOptionalAction, default=None,
                   help="also verify each image's nearest in each graph (default: yes; copies under a common caption or watermark)")
    g.add_argument("--sample", type=int, help="images whose neighbours are checked against exact search (default 1000)")
    g.add_argument("--block-rows", type=int, help="images per search task (default 65536)")
    g.set_defaults(fn="deepscope.commands.space:cmd_knn")

    m = sub.add_parser("map", help="2-D maps of OUT's features: PCA, t-SNE, a thumbnail grid and a scatter")
    m.add_argument("out")
    m.add_argument("--method", choices=["pca", "tsne", "graph"], help="layout of the thumbnail grid (default tsne; graph: every image, from the k-NN graph)")
    m.add_argument("--tsne-max", type=int, help="t-SNE on at most this many images (default 5000)")
    m.add_argument("--grid", type=int, help="thumbnails per side of the grid (default 20)")
    m.set_defaults(fn="deepscope.commands.space:cmd_map")


def _given(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def cmd_index(a):
    from deepscope.index.build import inputs_digest
    from deepscope.io.store import Store
    from deepscope.runner import load_spec, run_stage

    load_spec(a.out)  # a clear error when OUT is not an output folder
    cfg = _given(kind=a.kind, metric=a.metric, memory_mb=a.memory_mb, shards=a.shards, nlist=a.nlist,
                 flat_max=a.flat_max, target_recall=a.target_recall)
    if a.pixels:
        cfg["spaces"] = ["features", "pixels"]
        if not Store(a.out).parts("pixels"):
            run_stage(a.out, "pixels", {})
    # the runner re-runs a post stage when its settings change; rebuild also when its inputs changed
    store = Store(a.out)
    built = (store.summary("index") or {}).get("spaces", {})
    if any(inputs_digest(store, info["stage"]) != info["inputs"] for info in built.values()):
        store.update_summary("index", None)
    run_stage(a.out, "index", cfg)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "query"


def cmd_query(a):
    from deepscope.index.figures import grid, thumbnail
    from deepscope.index.search import Searcher
    from deepscope.io.store import Store

    store = Store(a.out)
    if not store.manifest.get("spec"):
        raise UserError(f"{a.out} is not a deepscope output folder (no manifest.json with a job)")
    if a.copies:
        return _copies(a, store)
    if a.images:
        raise UserError("--images goes with --copies (a folder of new images, each checked for copies in OUT)")
    searcher = Searcher(store, a.space)
    if a.batch:
        return _batch(a, searcher)
    if a.result:
        raise UserError("--out RESULT.parquet goes with --batch")
    if a.image:
        from deepscope.index.encode import Encoder
        from deepscope.io.decode import DecodeError
        from deepscope.job import load_spec

        data = _read_image(a.image)
        try:
            vector = Encoder(a.out, load_spec(a.out).model).encode(data, a.space)
        except DecodeError as e:
            raise UserError(f"{a.image}: {e}") from None
        name, query_tile = Path(a.image).name, thumbnail(data, 96)
    else:
        vector = searcher.vectors_of([a.id])
        name, query_tile = a.id, thumbnail(searcher.paths[searcher.row_of[a.id]], 96)
    hits = searcher.search(vector, a.k, a.nprobe, a.ef_search)[0]
    print("rank\tdistance\tid\tpath")
    for rank, h in enumerate(hits, 1):
        print(f"{rank}\t{h.distance:.6g}\t{h.id}\t{h.path}")
    tiles = [(query_tile, "query")] + [(thumbnail(h.path, 96), f"{r}: {h.distance:.3g}")
                                       for r, h in enumerate(hits[:QUERY_GRID_MAX], 1)]
    rel = f"queries/{_slug(name)}-{a.space}.png"
    store.write_file(rel, grid([tiles], 96))
    setting = searcher.setting(a.nprobe, a.ef_search)
    print(f"# {len(hits)} nearest in {a.space} space ({searcher.info['kind']}"
          f"{', ' + ', '.join(f'{k}={v}' for k, v in setting.items()) if setting else ''}); grid: {store.path(rel)}",
          file=sys.stderr)


def _copies(a, store):
    """deepscope query OUT --image FILE --copies (or --id ID): the candidates, copies first, one line each."""
    from deepscope.index import copies as C
    from deepscope.index.figures import grid, thumbnail
    from deepscope.index.knn import indexed_spaces
    from deepscope.index.search import Searcher
    from deepscope.stages.knn import KnnConfig

    if a.batch:
        raise UserError("--copies goes with --image FILE, --id ID or --images DIR (a Parquet batch holds vectors, not pictures)")
    if a.images and not a.result:
        raise UserError("--images needs --out RESULT.parquet")
    if a.result and not a.images:
        raise UserError("--out RESULT.parquet goes with --images DIR")
    files = _image_files(a.images) if a.images else None
    spaces = indexed_spaces(store)
    if not spaces:
        raise UserError(f"{a.out} has no index: run `deepscope index {a.out}` first")
    C.thumb_spec(store)  # no thumbnails: one line before any model is loaded
    searchers = {s: Searcher(store, s) for s in spaces}
    thumbs = C.Thumbs(store, searchers[spaces[0]].ids)
    cfg = KnnConfig.of(store)  # the settings the knn stage ran with: its decision for these pairs
    if files is not None:
        return _copies_of_files(a, store, searchers, thumbs, files, cfg)
    if a.image:
        from deepscope.index.encode import Encoder
        from deepscope.io.decode import DecodeError
        from deepscope.job import load_spec

        data = _read_image(a.image)
        try:
            query = C.query_of_file(store, data, Encoder(a.out, load_spec(a.out).model), spaces)
        except DecodeError as e:
            raise UserError(f"{a.image}: {e}") from None
        name = Path(a.image).name
    else:
        query, name = C.query_of_id(store, a.id, searchers, thumbs), a.id
    rows, summary, pictures = C.find_copies(searchers, thumbs, query, a.k, cfg)
    print("copy\ttier\tid\tpath\twhy")
    for r in rows:
        print(f"{'yes' if r['copy'] else 'no'}\t{r['tier'] or ''}\t{r['id']}\t{r['path']}\t{r['why']}")
    shown = [r for r in rows if r["id"] in pictures][:QUERY_GRID_MAX]  # from the thumbnails: the dataset may be gone
    tiles = [(thumbnail(query.thumb, 96), "query")] + [
        (thumbnail(pictures[r["id"]], 96), r["tier"] if r["copy"] else "not a copy") for r in shown]
    rel = f"queries/{_slug(name)}-copies.png"
    store.write_file(rel, grid([tiles], 96, framed=[[True] + [r["copy"] for r in shown]]))
    where = list(spaces) + (["pixels mirrored"] if "pixels" in spaces else [])
    where = where[0] if len(where) == 1 else ", ".join(where[:-1]) + " and " + where[-1]
    print(f"# {summary['copies']} cop{'y' if summary['copies'] == 1 else 'ies'} among {summary['candidates']} candidates "
          f"(the {a.k} nearest in {where}), verified on thumbnails in {summary['seconds']:.2f} s; "
          f"grid: {store.path(rel)}", file=sys.stderr)


def _read_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def _image_files(folder: str) -> list[tuple[str, str]]:
    """The image files under a folder, local or in an object store, as (name under the folder, path), in the
    order a dataset folder is read (io/sources.py: FolderSource)."""
    from deepscope.io.sources import FolderSource

    try:
        files = [(name, path) for name, path, _ in FolderSource(folder).walk()]
    except UserError:
        raise UserError(f"--images: not a folder: {folder}") from None
    if not files:
        raise UserError(f"--images: no image files under {folder}")
    return files


def _copies_of_files(a, store, searchers, thumbs, files, cfg):
    """deepscope query OUT --images DIR --copies --out RESULT.parquet."""
    import pyarrow as pa

    from deepscope.index import copies as C
    from deepscope.index.encode import Encoder
    from deepscope.io import schemas
    from deepscope.io.location import write_single_file
    from deepscope.io.store import table_bytes
    from deepscope.job import load_spec

    encoder = Encoder(a.out, load_spec(a.out).model)
    log = lambda line: print(line, file=sys.stderr, flush=True)
    rows, s = C.copies_of_files(store, searchers, thumbs, encoder, files, a.k, cfg, log)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schemas.COPIES}
    write_single_file(a.result, table_bytes(pa.table(cols, schema=schemas.COPIES)))
    print(f"copies: {s['images']} images, {s['with_copies']} with a copy in {a.out} ({s['pairs']} pairs), {s['failed']} unreadable, "
          f"in {s['seconds']:.1f} s ({s['images'] / max(s['seconds'], 1e-9):.1f} images/s) -> {a.result}", file=sys.stderr)


def _batch(a, searcher):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepscope.io import schemas
    from deepscope.io.location import write_single_file
    from deepscope.io.store import table_bytes

    if not a.result:
        raise UserError("--batch needs --out RESULT.parquet")
    try:
        t = pq.read_table(a.batch)
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"cannot read {a.batch} as Parquet: {e}") from None
    if "id" not in t.column_names and "vector" not in t.column_names:
        raise UserError(f"{a.batch} needs an 'id' column (indexed images) or a 'vector' column "
                        f"(columns: {', '.join(t.column_names)})")
    ids = t.column("id").to_pylist() if "id" in t.column_names else [None] * t.num_rows
    vecs = t.column("vector").to_pylist() if "vector" in t.column_names else [None] * t.num_rows
    names, rows = [], np.empty((t.num_rows, searcher.dim), np.float32)
    by_id = [n for n, v in enumerate(vecs) if v is None]
    for n in by_id:
        if ids[n] is None:
            raise UserError(f"{a.batch} row {n}: neither an id nor a vector")
    if by_id:
        rows[by_id] = searcher.vectors_of([str(ids[n]) for n in by_id])
    for n, v in enumerate(vecs):
        if v is not None:
            rows[n] = searcher.prepare(v)[0]  # checks the length and values
        names.append(str(ids[n]) if ids[n] is not None else f"#{n}")
    hits = searcher.search(rows, a.k, a.nprobe, a.ef_search) if t.num_rows else []
    out = {"query": [], "rank": [], "id": [], "path": [], "label": [], "distance": []}
    for name, hs in zip(names, hits):
        for r, h in enumerate(hs, 1):
            for k, v in (("query", name), ("rank", r), ("id", h.id), ("path", h.path), ("label", h.label),
                         ("distance", h.distance)):
                out[k].append(v)
    write_single_file(a.result, table_bytes(pa.table(out, schema=schemas.NEIGHBOURS)))
    print(f"{t.num_rows} queries, {len(out['id'])} neighbours -> {a.result}", file=sys.stderr)


def cmd_serve(a):
    import faiss
    import uvicorn

    from deepscope.serve.app import Limits, create_app

    # one query cannot use a second FAISS thread, and an idle OpenMP team only adds tail latency on a
    # busy machine: requests run in parallel on uvicorn's thread pool instead
    faiss.omp_set_num_threads(1)

    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"deepscope: warning: serving on {a.host}: reachable from other machines", file=sys.stderr)
    limits = Limits(max_upload_bytes=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels)
    if a.ray:
        from deepscope.serve import cluster

        if a.replicas < 1:
            raise UserError(f"--replicas must be at least 1, got {a.replicas}")
        from deepscope.index.search import Searcher
        from deepscope.io.store import Store

        store = Store(a.out)  # fail here, in one line, on a folder that cannot be served
        spaces = (store.summary("index") or {}).get("spaces") or {}
        if not spaces:
            raise UserError(f"{a.out} has no index: run `deepscope index {a.out}` first")
        for space in spaces:
            Searcher(store, space, load_index=False)
        return cluster.run(a.out, a.host, a.port, limits, a.replicas, a.address,
                           lambda m: print(m, file=sys.stderr, flush=True))
    app = create_app(a.out, limits)
    print(f"serving {a.out} on http://{a.host}:{a.port}/", file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


def cmd_knn(a):
    from deepscope.index.knn import index_info, indexed_spaces
    from deepscope.io.store import Store
    from deepscope.runner import load_spec, run_stage

    load_spec(a.out)
    store = Store(a.out)
    spaces = a.space or indexed_spaces(store) or ["features"]
    infos = {space: index_info(store, space) for space in spaces}  # one line naming what to run first
    k = 10 if a.k is None else a.k
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    for space, info in infos.items():
        if k >= info["rows"]:
            raise UserError(f"--k {k} is not below the number of images ({info['rows']}) in {a.out}'s {space} index")
    made = store.summary("knn")
    if made and any(g.get("inputs") != infos.get(sp, {}).get("inputs") for sp, g in made.get("graphs", {}).items()):
        store.update_summary("knn", None)  # the index was rebuilt since: search again
    cfg = _given(k=a.k, dup_threshold=a.dup_threshold, sample=a.sample, block_rows=a.block_rows,
                 verify=False if a.no_verify else None, verify_top=a.verify_top,
                 verify_nearest=a.verify_nearest)
    if a.space:
        cfg["spaces"] = list(dict.fromkeys(a.space))
    run_stage(a.out, "knn", cfg)


def cmd_map(a):
    from deepscope.index.build import inputs_digest
    from deepscope.io.store import Store
    from deepscope.runner import load_spec, run_stage

    load_spec(a.out)
    store = Store(a.out)
    made = store.summary("map")
    if made and made.get("inputs") != inputs_digest(store, "features"):
        store.update_summary("map", None)  # the features changed since: map them again
    run_stage(a.out, "map", _given(method=a.method, tsne_max=a.tsne_max, grid=a.grid))
