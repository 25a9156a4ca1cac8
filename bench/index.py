"""Benchmark: exact search vs the auto-chosen FAISS index on generated 1280-d vectors, through the
real build path (features parts in an output folder -> deepscope.index.build), and the HTTP
service's latency for single queries.

    .venv/bin/python bench/index.py                      # 100,000 vectors
    .venv/bin/python bench/index.py --n 1000000 --memory-mb 8192

Each index is built and measured in its own process, so that its peak memory is its own.
Vectors: 2,000 Gaussian clusters in a 64-d latent space mapped to 1280 dims, plus small noise (CNN
features are clustered and of low intrinsic dimension; isotropic 1280-d noise is neither).
Queries: 1,000 fresh points of the same distribution.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

D = 1280


LATENT = 64  # intrinsic dimension: CNN features live near a low-dimensional manifold


def clustered(n, rng, space):
    """Clusters in a 64-d latent space, mapped linearly to 1280 dims, plus a little isotropic noise."""
    centres, lift = space
    z = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, LATENT), np.float32)
    return (z @ lift + 0.1 * rng.standard_normal((n, D), np.float32)).astype(np.float32)


def make_folder(root: Path, n: int, nq: int, part_rows: int = 10_000) -> np.ndarray:
    """An output folder whose features are n generated vectors (parts of part_rows), made to look like
    a lite0 job (lite0's penultimate layer is 1280-d), so that the server can load its model."""
    from deepscope.io.store import Store
    from deepscope.stages.features import Features, FeaturesConfig

    rng = np.random.default_rng(0)
    centres = (rng.standard_normal((2000, LATENT)) * 1.2).astype(np.float32), \
        (rng.standard_normal((LATENT, D)) / np.sqrt(LATENT)).astype(np.float32)
    store = Store(root)
    store.open({"dataset": "bench"})
    store.open_stage("features", {"layer": "penultimate", "dtype": "float32"})
    writer = Features(FeaturesConfig(), None)
    for p, start in enumerate(range(0, n, part_rows)):
        ids = [f"v{i:07d}" for i in range(start, min(n, start + part_rows))]
        store.write_part("features", f"part-{p:05d}", writer.part_table(
            {"id": ids, "path": [f"/bench/{i}.jpg" for i in ids], "label": [""] * len(ids),
             "feature": clustered(len(ids), rng, centres)}))
    store.manifest["spec"] = {"out": str(root), "dataset": {"source": str(root)}, "model": {"name": "lite0"}}
    store.update_summary("bench", {"n": n})
    return clustered(nq, rng, centres)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure(root: str, kind: str, memory_mb: int, queries: np.ndarray, truth, out):
    """In a child process: build, then queries/s (batch and one at a time) and recall@10."""
    import faiss

    from deepscope.index.build import build_space
    from deepscope.index.search import Searcher, search_params
    from deepscope.io.store import Store
    from deepscope.stages.index import IndexConfig

    store = Store(root)
    before = rss_mb()
    t0 = time.time()
    info = build_space(store, "features", IndexConfig(kind=kind, memory_mb=memory_mb), lambda *a: None)
    build_s = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.update_summary("index", {"spaces": {"features": info}})
    s = Searcher(store, "features")
    params = search_params(s.index, **s.setting())
    t0 = time.perf_counter()
    _, found = s.index.search(queries, 10, params=params)
    batch_qps = len(queries) / (time.perf_counter() - t0)
    single = queries[:200]
    t0 = time.perf_counter()
    for i in range(len(single)):
        s.index.search(single[i:i + 1], 10, params=params)
    single_qps = len(single) / (time.perf_counter() - t0)
    recall = 1.0 if truth is None else float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
    out.put({"kind": info["kind"], "factory": info["factory"], "search": info["search"], "build_s": round(build_s, 1),
             "peak_rss_mb": round(peak), "rss_before_mb": round(before), "batch_qps": round(batch_qps),
             "single_qps": round(single_qps), "recall_at_10": round(recall, 4),
             "tuned_recall_at_10": info["recall_at_10"], "index_mb": round(sum(
                 os.path.getsize(store.path(f["file"])) for f in info["shard_files"]) / 2**20), "found": found,
             "threads": faiss.omp_get_max_threads()})


def run_child(root, kind, memory_mb, queries, truth):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=measure, args=(root, kind, memory_mb, queries, truth, q))
    p.start()
    res = q.get()
    p.join()
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_latency(root: str, queries: np.ndarray, n: int, image: str | None) -> dict:
    """p50/p99 of single requests on loopback against `deepscope serve` (a separate process)."""
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "serve", root, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib")})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            for _ in range(600):
                try:
                    if c.get("/info").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            out = {}
            kinds = {"by id": lambda i: c.post("/neighbors", json={"id": f"v{i:07d}", "k": 10}),
                     "by vector": lambda i: c.post("/neighbors", json={"vector": queries[i % len(queries)].tolist(), "k": 10})}
            if image:
                data = Path(image).read_bytes()
                kinds["by image upload"] = lambda i: c.post("/neighbors", files={"image": ("q.jpg", data, "image/jpeg")})
            for name, ask in kinds.items():
                times = []
                for i in range(n if name != "by image upload" else max(n // 5, 20)):
                    t0 = time.perf_counter()
                    r = ask(i)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, r.text
                times = np.array(times[5:])  # warm-up
                out[name] = {"requests": len(times), "p50_ms": round(float(np.percentile(times, 50)), 1),
                             "p99_ms": round(float(np.percentile(times, 99)), 1)}
            return out
    finally:
        server.terminate()
        server.wait(10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--memory-mb", type=int, default=4096)
    ap.add_argument("--http", type=int, default=300, help="requests per HTTP query kind (0: skip)")
    ap.add_argument("--image", default=None, help="an image for upload latency (default: a demo photo)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(dir=a.dir)
    root = str(Path(tmp.name) / "out")
    t0 = time.time()
    queries = make_folder(Path(root), a.n, a.queries)
    print(f"# {a.n} vectors x {D} dims written as features parts in {time.time() - t0:.0f} s", file=sys.stderr)
    exact = run_child(root, "flat", a.memory_mb, queries, None)
    auto = run_child(root, "auto", a.memory_mb, queries, exact["found"])
    rows = [("exact (Flat)", exact), (f"auto: {auto['kind']}", auto)]
    print(f"\n## {a.n:,} vectors x {D} dims, {a.queries} queries, k=10, faiss threads {exact['threads']}, "
          f"memory_mb {a.memory_mb}\n")
    print("| index | factory | search | build s | index MB | peak RSS MB (before build) | queries/s batch "
          "| queries/s one at a time | recall@10 (fresh queries) | recall@10 at build |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | `{r['factory']}` | {r['search'] or 'exact'} | {r['build_s']} | {r['index_mb']} | "
              f"{r['peak_rss_mb']} ({r['rss_before_mb']}) | {r['batch_qps']} | {r['single_qps']} | "
              f"{r['recall_at_10']} | {r['tuned_recall_at_10']} |")
    print(f"\nauto vs exact: {auto['batch_qps'] / exact['batch_qps']:.1f}x queries/s (batch), "
          f"{auto['single_qps'] / exact['single_qps']:.1f}x (one at a time)")
    if a.http:
        image = a.image
        if image is None:
            demo = Path(tmp.name) / "demo"
            from deepscope.io.demo_data import make_demo_data

            make_demo_data(demo, per_photo=1)
            image = str(next(demo.rglob("*.jpg")))
        lat = http_latency(root, queries, a.http, image)
        print(f"\n## HTTP on loopback (`deepscope serve`, {auto['kind']} index, k=10, one request at a time)\n")
        print("| query | requests | p50 ms | p99 ms |\n|---|---|---|---|")
        for name, r in lat.items():
            print(f"| {name} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} |")
    print(json.dumps({"exact": {k: v for k, v in exact.items() if k != "found"},
                      "auto": {k: v for k, v in auto.items() if k != "found"}}), file=sys.stderr)


if __name__ == "__main__":
    main()
