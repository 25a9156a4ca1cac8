"""Feature space: `index`, `query`, `serve`, `map` (and `knn`) over an output folder."""
from __future__ import annotations


KINDS = ("flat", "ivf_flat", "ivf_pq", "opq_ivf_pq", "hnsw")  # = deepscope.index.build.KINDS (a test says so), without FAISS


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
    i.set_defaults(fn="deepscope.index.commands:cmd_index")

    q = sub.add_parser("query", help="nearest neighbours of an image, an id, or a batch of queries")
    q.add_argument("out", help="an output folder with an index")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="an image file")
    what.add_argument("--id", help="the id of an indexed image")
    what.add_argument("--batch", help="a Parquet file with an 'id' column and/or a 'vector' column")
    q.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    q.add_argument("--space", choices=["features", "pixels"], default="features")
    q.add_argument("--nprobe", type=int, help="IVF lists to visit (default: the tuned value)")
    q.add_argument("--ef-search", type=int, help="HNSW search breadth (default: the tuned value)")
    q.add_argument("--out", dest="result", help="RESULT.parquet for --batch")
    q.set_defaults(fn="deepscope.index.commands:cmd_query")

    s = sub.add_parser("serve", help="HTTP neighbour search over OUT's indexes (FastAPI + uvicorn)")
    s.add_argument("out")
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=16.0)
    s.add_argument("--max-pixels", type=int, default=40_000_000, help="of an uploaded image")
    s.set_defaults(fn="deepscope.index.commands:cmd_serve")

    m = sub.add_parser("map", help="2-D maps of OUT's features: PCA, t-SNE, a thumbnail grid and a scatter")
    m.add_argument("out")
    m.add_argument("--method", choices=["pca", "tsne"], help="layout of the thumbnail grid (default tsne)")
    m.add_argument("--tsne-max", type=int, help="t-SNE on at most this many images (default 5000)")
    m.add_argument("--grid", type=int, help="thumbnails per side of the grid (default 20)")
    m.set_defaults(fn="deepscope.index.commands:cmd_map")
