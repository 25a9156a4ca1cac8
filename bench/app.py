"""Benchmark: the explorer (`deepscope app`) over generated outputs of N images, written with the real
schemas (io/schemas.py) through the store, as the stages would leave them: features, errors, knn
(images, duplicates, feature and pixel graphs), saliency (two methods), robustness, map coordinates,
patches, dissection, unit pictures and thumbnails.

    .venv/bin/python bench/app.py                  # 1,000,000 images
    .venv/bin/python bench/app.py --n 100000

The server runs in a process of its own (uvicorn, as `deepscope app` runs it); requests come from
this one, one at a time, and each kind is timed 50 times (p50, p95). Server memory: the process's
peak RSS (VmHWM) after start-up and after every request. The load average is printed beside
every number: a latency measured at load above 1 on this 2-core machine is an upper bound.

`generate()` is also the tests' writer of small outputs (tests/test_app.py).
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

LABELS = [f"class_{i}" for i in range(10)]
LAYER = "_blocks.4"
ODD_IDS = ["a b/c d.jpg", "x/ü ñ 日本.png", "q?a=1&b=2#frag%20.jpg", "../up/./dots..jpg"]


# lassos on the generated map (clusters 4 apart around 0): a star of 64 vertices, at five places
LASSO = [",".join(f"{cx + r * np.cos(t):.4g},{cy + r * np.sin(t):.4g}" for t, r in
                  zip(np.linspace(0, 2 * np.pi, 64, endpoint=False), np.tile([2.0, 1.0], 32)))
         for cx, cy in ((0, 0), (4, 0), (-2, 3), (1, -4), (-3, -2))]


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def _png(rgb: tuple[int, int, int], side: int = 16, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), rgb).save(buf, fmt)
    return buf.getvalue()


def generate(out: str, n: int, part_rows: int = 10_000, images_dir: str | None = None, thumbs: bool = True,
             units: int = 32, k: int = 10, seed: int = 0) -> dict:
    """Write an output folder of n images (plus 3 failed ones) with every per-image table. images_dir:
    also write each image as a small PNG there (their paths in the tables), else paths are made up.
    Returns the truths a test compares with: ids, labels, and the dataset's ids per part."""
    from deepscope.io import schemas
    from deepscope.io.store import Store

    rng = np.random.default_rng(seed)
    ids = [f"{LABELS[i % 10]}/img {i:07d}.jpg" for i in range(n)]
    ids[1:1 + len(ODD_IDS)] = ODD_IDS[: max(0, min(len(ODD_IDS), n - 1))]
    labels = [LABELS[i % 10] for i in range(n)]
    colours = rng.integers(0, 256, (n, 3))
    if images_dir:
        os.makedirs(images_dir, exist_ok=True)
        paths = [os.path.join(images_dir, f"{i:07d}.png") for i in range(n)]
        for p, c in zip(paths, colours):
            Path(p).write_bytes(_png(tuple(int(v) for v in c), 32))
    else:
        paths = [f"/data/made-up/{i:07d}.jpg" for i in range(n)]
    store = Store(out)
    store.open({"generated": "bench/app.py", "n": n})

    # per image: the knn stage's judgement, saliency statistics, robustness, map position
    flagged = rng.random(n) < 0.1
    uniq = rng.gamma(4, 0.25, n).astype(np.float32)
    group = np.array([None] * n, object)
    size = np.ones(n, np.int32)
    pairs = []
    for g in range(0, n - 1, 50):  # every 50th image has a near-duplicate: the next one
        group[g] = group[g + 1] = ids[g]
        size[g] = size[g + 1] = 2
        pairs.append((ids[g], ids[g], ids[g + 1], float(rng.random() * 0.05)))
    majority = [LABELS[(i + 1) % 10] if f else labels[i] for i, f in enumerate(flagged)]
    pred = rng.integers(0, 1000, n).astype(np.int32)
    min_eps = np.where(rng.random(n) < 0.3, np.nan, rng.choice([1.0, 2.0, 4.0], n)).astype(np.float32)
    xy = rng.normal(size=(n, 2)).astype(np.float32) + np.array([[np.cos(i), np.sin(i)] for i in range(10)],
                                                               np.float32)[np.arange(n) % 10] * 4

    def col(a, t):
        return pa.array(a, t)

    for start in range(0, n, part_rows):
        sl = slice(start, min(n, start + part_rows))
        m = sl.stop - sl.start
        part = f"part-{start // part_rows:06d}"
        base = {"id": col(ids[sl], pa.string()), "path": col(paths[sl], pa.string()), "label": col(labels[sl], pa.string())}
        feats = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(m * 4, np.float32)), 4)
        store.write_part("features", part, pa.table({**base, "feature": feats}, schema=schemas.features(4)))
        for space, kk in (("features", k), ("pixels", 5)):
            nb = (np.arange(sl.start, sl.stop)[:, None] + rng.integers(1, n, (m, kk))) % n
            dist = np.sort(rng.random((m, kk)).astype(np.float32), 1)
            store.write_part(f"knn/{space}", part, pa.table({
                **base, "row": pa.array(np.arange(sl.start, sl.stop, dtype=np.int64)),
                "neighbor_ids": pa.array([[ids[j] for j in r] for r in nb], pa.list_(pa.string())),
                "neighbor_rows": pa.array(list(nb), pa.list_(pa.int64())),
                "distances": pa.array(list(dist), pa.list_(pa.float32()))}, schema=schemas.KNN_GRAPH))
        rows = []
        for method in ("backprop", "gradcam"):
            maps = rng.random((m, 49)).astype(np.float16)
            rows.append(pa.table({
                **base, "width": col(np.full(m, 32), pa.int32()), "height": col(np.full(m, 32), pa.int32()),
                "method": col([method] * m, pa.string()), "target": col(pred[sl], pa.int32()),
                "target_name": col([f"imagenet_{p}" for p in pred[sl]], pa.string()), "pred": col(pred[sl], pa.int32()),
                "score": col(rng.random(m), pa.float32()),
                "map": pa.FixedSizeListArray.from_arrays(pa.array(maps.ravel()), 49),
                "entropy": col(rng.random(m) * 10, pa.float32()), "top_mass": col(rng.random(m), pa.float32()),
                "com_x": col(rng.random(m), pa.float32()), "com_y": col(rng.random(m), pa.float32()),
                "grabcut": pa.nulls(m, pa.list_(pa.bool_(), 49)),
                "ig_delta": pa.nulls(m, pa.float32()), "ig_steps": pa.nulls(m, pa.int32())},  # IG only
                schema=schemas.saliency(7)))
        store.write_part("saliency", part, pa.concat_tables(rows))
        adv = [f"robustness/images/{start + j:07d}.png" if images_dir and np.isfinite(e) else None
               for j, e in enumerate(min_eps[sl])]
        files = {a: _png((255, 0, 255)) for a in adv if a}
        store.write_part("robustness", part, pa.table({
            **base, "pred": col(pred[sl], pa.int32()), "margin": col(rng.random(m), pa.float32()),
            "min_eps": pa.array(min_eps[sl], pa.float32(), mask=~np.isfinite(min_eps[sl])),
            "adv_pred": pa.array((pred[sl] + 1) % 1000, pa.int32(), mask=~np.isfinite(min_eps[sl])),
            "changed": pa.nulls(m, pa.list_(pa.bool_(), 3)), "adversarial": col(adv, pa.string()),
            "universal_pred": pa.nulls(m, pa.int32())}, schema=schemas.robustness(3)), files)
        if thumbs:
            thumb = [_png(tuple(int(v) for v in c), 24, "JPEG") for c in colours[sl]] if images_dir else \
                [b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 2000, np.uint8)) for _ in range(m)]
            store.write_part("thumbs", part, pa.table({
                "id": col(ids[sl], pa.string()), "path": col(paths[sl], pa.string()), "thumb": col(thumb, pa.binary()),
                "width": col(np.full(m, 32), pa.int32()), "height": col(np.full(m, 32), pa.int32()),
                "pixel_hash": col([f"{h:016x}" for h in rng.integers(0, 2**62, m)], pa.string())}))
    failed = [f"broken/{i}.jpg" for i in range(3)]
    store.write_part("errors", "part-000000", pa.table({
        "id": failed, "path": [f"/data/broken/{i}.jpg" for i in range(3)], "stage": ["decode"] * 3,
        "error": ["cannot identify image file"] * 3}, schema=schemas.ERRORS))
    store.flush()
    store.write_table("knn/images.parquet", pa.table({
        "id": ids, "path": paths, "label": labels, "uniqueness": uniq,
        "nearest_id": [ids[(i + 1) % n] for i in range(n)], "nearest_distance": rng.random(n).astype(np.float32),
        "group": pa.array(group, pa.string()), "group_size": size, "majority_label": majority,
        "duplicate_of": pa.array([g if g is not None and g != i else None for g, i in zip(group, ids)], pa.string()),
        "majority_share": rng.random(n).astype(np.float32), "own_label_share": rng.random(n).astype(np.float32),
        "label_flagged": flagged}, schema=schemas.KNN_IMAGES))
    store.write_table("knn/duplicates.parquet", pa.table({
        "group": [p[0] for p in pairs], "a": [p[1] for p in pairs], "b": [p[2] for p in pairs],
        "distance": pa.array([p[3] for p in pairs], pa.float32()), "feature_distance": pa.array([p[3] for p in pairs], pa.float32()),
        "feature_exact": [True] * len(pairs), "pixel_distance": pa.array([p[3] for p in pairs], pa.float32()),
        "tier": ["near-identical"] * len(pairs), "mutual": [True] * len(pairs), "verified": [False] * len(pairs),
        **{f.name: pa.nulls(len(pairs), f.type) for f in schemas.KNN_DUPLICATES if f.nullable and f.name not in
           ("pixel_distance",)}}, schema=schemas.KNN_DUPLICATES))
    store.write_table("map/coords.parquet", pa.table({
        "id": ids, "path": paths, "label": labels, "pca_x": xy[:, 0], "pca_y": xy[:, 1], "tsne_x": xy[:, 0],
        "tsne_y": xy[:, 1], "tsne_sample": np.ones(n, bool)}, schema=schemas.MAP_COORDS))
    store.update_summary("map", {"rows": n, "method": "tsne"})
    top_k = 8
    ch = np.repeat(np.arange(units), top_k)
    who = rng.integers(0, n, units * top_k)
    store.write_table(f"patches/top-{LAYER}.parquet", pa.table({
        "layer": [LAYER] * len(ch), "channel": ch.astype(np.int32), "rank": np.tile(np.arange(top_k), units).astype(np.int32),
        "id": [ids[j] for j in who], "path": [paths[j] for j in who],
        "score": (100 - np.tile(np.arange(top_k), units) - ch * 0.01).astype(np.float32),
        "row": np.zeros(len(ch), np.int32), "col": np.zeros(len(ch), np.int32), "x0": np.zeros(len(ch), np.int32),
        "y0": np.zeros(len(ch), np.int32), "x1": np.full(len(ch), 16, np.int32), "y1": np.full(len(ch), 16, np.int32),
        "patch": [_png((int(c) * 7 % 256, 100, 200)) for c in ch]}, schema=schemas.PATCHES))
    concepts = ["sky", "grass", "stripes", "wheel", "red", "fur"]
    store.write_table(f"dissection/iou-{LAYER}.parquet", pa.table({
        "layer": [LAYER] * units, "unit": np.arange(units, dtype=np.int32), "rank": np.ones(units, np.int32),
        "concept": [concepts[u % 6] for u in range(units)], "label": np.arange(units, dtype=np.int32) % 6,
        "category": ["object" if u % 2 else "color" for u in range(units)],
        "iou": rng.random(units).astype(np.float32) * 0.2, "intersection": np.ones(units, np.int64),
        "union": np.full(units, 10, np.int64), "threshold": np.ones(units, np.float32),
        "detector": rng.random(units) < 0.5}, schema=schemas.DISSECTION))
    store.write_table(f"dissection/top-{LAYER}.parquet", pa.table({
        "layer": [LAYER] * units, "unit": np.arange(units, dtype=np.int32), "rank": np.zeros(units, np.int32),
        "id": [ids[j] for j in who[:units]], "path": [paths[j] for j in who[:units]],
        "score": np.ones(units, np.float32)}, schema=schemas.DISSECTION_TOP_IMAGES))
    pics = {f"visualize/images/unit-{u}.png": _png((u * 8 % 256, 0, 0)) for u in range(0, units, 4)}
    store.write_part("visualize", "part-000000", pa.table({
        "layer": [LAYER] * len(pics), "kind": ["unit"] * len(pics), "target": pa.array(range(0, units, 4), pa.int32()),
        "name": pa.nulls(len(pics), pa.string()), "image": list(pics), "start": pa.nulls(len(pics), pa.float32()),
        "score": pa.nulls(len(pics), pa.float32()), "top1": pa.nulls(len(pics), pa.int32()),
        "facet": pa.array([0] * len(pics), pa.int32()), "selectivity": pa.nulls(len(pics), pa.float32()),
        "peak": pa.nulls(len(pics), pa.float32())}, schema=schemas.VISUALIZE), pics)
    store.flush()
    return {"ids": ids, "labels": labels, "failed": failed, "paths": paths}


def bench_map(n: int, k: int = 10, dim: int = 64, iterations: int = 750) -> None:
    """The map method `graph` alone: t-SNE of n clustered vectors from their exact k-NN graph (FAISS,
    as the knn stage gives it), timed, with how well 2-D neighbours keep the clusters (1,000 points)."""
    import faiss

    from deepscope.algos.embed import graph_tsne

    rng = np.random.default_rng(0)
    cluster = rng.integers(0, 100, n)
    centres = rng.normal(size=(100, dim)).astype(np.float32) * 3
    x = centres[cluster] + rng.normal(size=(n, dim)).astype(np.float32)
    t = time.time()
    if n <= 50_000:
        index = faiss.IndexFlatL2(dim)
    else:  # exact search of a few hundred thousand points costs most of an hour here: IVF, as the knn stage does
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, 1024)
        index.train(x[rng.choice(n, 50_000, replace=False)])
        index.nprobe = 8
    index.add(x)
    d, nb = index.search(x, k + 1)
    print(f"{type(index).__name__} {k}-NN graph of {n} x {dim}: {time.time() - t:.0f} s (load {load()})", flush=True)
    t = time.time()
    xy = graph_tsne(nb[:, 1:], np.sqrt(np.maximum(d[:, 1:], 0)), x[:, :2], iterations=iterations,
                    log=lambda m: print(f"  {m} ({time.time() - t:.0f} s, load {load()})", flush=True)
                    if "iteration 250" in m or "iteration 500" in m else None)
    took = time.time() - t
    sample = rng.choice(n, 1000, replace=False)
    d2 = ((xy[sample, None] - xy[None]) ** 2).sum(-1)
    d2[np.arange(1000), sample] = np.inf
    agree = (cluster[np.argsort(d2, 1)[:, :10]] == cluster[sample, None]).mean()
    print(f"map method graph, {n} images, {iterations} iterations: {took:.0f} s; 10 nearest on the map in the "
          f"same cluster: {agree:.1%} (load {load()})", flush=True)


def main():
    import httpx
    import psutil

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--out", default=None, help="reuse (or keep) the generated outputs here")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--port", type=int, default=8731)
    p.add_argument("--map", type=int, help="instead: time the map method graph on this many images")
    a = p.parse_args()
    if a.map:
        return bench_map(a.map)
    import tempfile

    out = a.out or tempfile.mkdtemp(prefix="bench-app-")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        t = time.time()
        generate(out, a.n, part_rows=max(1000, a.n // 100))
        print(f"generated {a.n} images' outputs in {time.time() - t:.0f} s -> {out} (load {load()})", flush=True)
    t = time.time()
    server = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "app", out, "--port", str(a.port)],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib")})
    proc = psutil.Process(server.pid)
    client = httpx.Client(base_url=f"http://127.0.0.1:{a.port}", timeout=120)
    while True:
        try:
            info = client.get("/api/info").json()
            break
        except httpx.TransportError:
            if server.poll() is not None:
                sys.exit("the server did not start")
            time.sleep(0.5)
    print(f"server up in {time.time() - t:.1f} s (tables joined; {info['images']} images), "
          f"peak RSS {_hwm(proc):.0f} MB (load {load()})", flush=True)
    rng = np.random.default_rng(1)
    some = [r["id"] for r in client.get("/api/images", params={"per": 500, "sort": "-uniqueness"}).json()["rows"]]
    kinds = {
        "gallery first page": lambda i: ("/api/images", {"per": 60}),
        "sort by uniqueness": lambda i: ("/api/images", {"per": 60, "sort": "-uniqueness", "page": i % 5}),
        "filter label flag": lambda i: ("/api/images", {"per": 60, "label_flagged": "true", "sort": "uniqueness", "page": i % 5}),
        "filter+sort combined": lambda i: ("/api/images", [("label", LABELS[i % 10]), ("min_eps.max", "2"),
                                                           ("sort", "-saliency_backprop_entropy"), ("per", "60")]),
        "lasso, 64 vertices": lambda i: ("/api/images", {"per": 60, "lasso": LASSO[i % len(LASSO)]}),
        "image page": lambda i: ("/api/image", {"id": some[int(rng.integers(len(some)))]}),
        "unit page": lambda i: ("/api/unit", {"layer": LAYER, "unit": i % 32}),
        "thumbnail": lambda i: ("/api/thumb", {"id": some[int(rng.integers(len(some)))]}),
    }
    print(f"\n{'request':<24}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}  {'server peak RSS':>16}  load (1, 5, 15 min)")
    for name, make in kinds.items():
        times = []
        for i in range(a.repeat):
            url, params = make(i)
            t = time.perf_counter()
            r = client.get(url, params=params)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, (name, r.status_code, r.text[:200])
        print(f"{name:<24}{np.percentile(times, 50):8.1f}{np.percentile(times, 95):8.1f}{max(times):8.1f}"
              f"  {_hwm(proc):13.0f} MB  {load()}", flush=True)
    t = time.perf_counter()
    meta = client.get("/api/map").json()
    pts = client.get("/api/map/points").content
    print(f"\nmap points: {meta['n']} images, {len(pts) / 2**20:.1f} MB binary, fetched in "
          f"{(time.perf_counter() - t) * 1000:.0f} ms (first call computes them), peak RSS {_hwm(proc):.0f} MB (load {load()})")
    browser_first_view(a.port, proc)
    server.terminate()
    server.wait(30)


def browser_first_view(port: int, proc) -> None:
    """The map's first view in headless Chromium: page load to the points drawn (3 fresh loads)."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("no chromium here: map first view in the browser not measured")
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        opts.add_argument(arg)
    for view in ("map", "gallery"):
        times = []
        for _ in range(3):
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
            try:
                t = time.perf_counter()
                driver.get(f"http://127.0.0.1:{port}/?view={view}")
                while driver.execute_script("return document.body.dataset.ready") != view:
                    time.sleep(0.02)
                times.append(time.perf_counter() - t)
            finally:
                driver.quit()
        print(f"browser, first view of the {view}: {', '.join(f'{x:.2f}' for x in times)} s "
              f"(page load to drawn; server peak RSS {_hwm(proc):.0f} MB, load {load()})", flush=True)


def _hwm(proc) -> float:
    """Peak resident memory of the process (VmHWM), MB."""
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
