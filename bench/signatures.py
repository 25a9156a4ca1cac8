"""Benchmark: what the knn stage's near-duplicate candidates cost in pixel space besides the two graphs, at
a dataset's size: each image's pixel signature, sketch and rank signature (`index/knn.py: _signatures`,
made chunk by chunk as the pixels parts are streamed), and the two searches for each image's nearest by
signature and by rank signature, as it is or mirrored (`algos/knn.py: signature_nearest`: exact up to
100,000 images, an IVF index beyond: the pixel signature's lists scanned as matrix products, side by side
with its search until 8 December, an IVF of bytes; `--baseline`: FAISS's IVF-Flat search as well).  Pictures: bench/knn.py's generated tiny pictures (1/f^1.3).
Planted among them: 1,000 copies (mirrored, lightened by 20% and clipped, shifted a pixel), and the share
of them found (the pair copy-original among the search's); and on a sample, the share of images whose
nearest is the exact nearest, or as near (the IVF's answers against exact search).

    .venv/bin/python bench/signatures.py --n 1000000
    .venv/bin/python bench/signatures.py --n 1000000 --memory   # the pixel signature's search: peak RSS, each way
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average: ")[-1]


def nearest_agreement(sig: np.ndarray, grid: int, a: np.ndarray, b: np.ndarray, sample: int, rng) -> float:
    """Share of sampled images whose pair from the search is as near as their exact nearest (either way round)."""
    n = len(sig)
    x = sig.astype(np.float32)
    mirrored = x.reshape(n, -1, grid, grid)[..., ::-1].reshape(n, -1)
    rows = rng.choice(n, min(sample, n), replace=False)
    best = np.full((len(rows),), -np.inf, np.float32)
    for s in range(0, n, 65536):  # exact: each sampled image (as it is or mirrored) against every image
        block = x[s:s + 65536]
        sims = np.maximum(x[rows] @ block.T, mirrored[rows] @ block.T)
        own = (rows[:, None] == np.arange(s, s + len(block))[None, :])
        sims[own] = -np.inf
        best = np.maximum(best, sims.max(1))
    partner = {}
    for i, j in zip(a.tolist(), b.tolist()):
        partner.setdefault(i, []).append(j)
        partner.setdefault(j, []).append(i)
    ok = 0
    for r, want in zip(rows.tolist(), best):
        got = max((max(float(x[r] @ x[j]), float(mirrored[r] @ x[j])) for j in partner.get(r, [])), default=-np.inf)
        ok += got >= want - 1e-4
    return ok / len(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--baseline", action="store_true", help="the pixel signature's search as it was too (IVF-Flat)")
    ap.add_argument("--memory", action="store_true", help="only the peak memory of the pixel signature's search, each "
                    "way (bytes, lists) in its own process, on n random unit signatures")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_of:
        return memory_of(a.n, a.memory_of)
    if a.memory:
        print(f"# peak memory (RSS) of one process searching {a.n:,} random unit signatures; load {load()}")
        for codes in ("sq8", "lists"):
            subprocess.run([sys.executable, __file__, "--n", str(a.n), "--memory-of", codes], check=True)
        print(f"# load {load()}")
        return

    from knn import tiny_pictures

    from deepscope.algos import knn as K

    rng = np.random.default_rng(0)
    print(f"# {a.n:,} generated 32 x 32 pictures; load {load()}", flush=True)
    sig = np.empty((a.n, 3 * K.SIGNATURE_GRID ** 2), np.float16)
    ranks = np.empty((a.n, K.RANK_GRID ** 2), np.float16)
    sketches = np.empty((a.n, K.SKETCH_SIDE, K.SKETCH_SIDE, 3), np.int8)
    t = {"signature": 0.0, "sketch": 0.0, "rank": 0.0}
    planted = min(1000, a.n // 10)
    n0 = a.n - planted  # the last `planted` pictures copy the first `planted`
    first = None
    for s in range(0, a.n, 16384):  # the stage's chunk
        x = tiny_pictures(min(16384, a.n - s), rng).astype(np.float32)
        if first is None:
            first = x[:planted].copy()
        if s + len(x) > n0:  # mirrored, lightened by 20% (clipped), shifted a pixel
            copies = np.clip(np.roll(first.reshape(-1, 3, 32, 32)[..., ::-1] * 1.2 + 10, 1, axis=3), 0, 255).reshape(planted, -1)
            x[max(0, n0 - s):] = copies[max(0, s - n0):max(0, s - n0) + len(x) - max(0, n0 - s)]
        for name, fn, out in (("signature", lambda v: K.pixel_signature(v, 32), sig),
                              ("sketch", lambda v: K.pixel_sketch(np.clip(v, 0, 255).astype(np.uint8), 32), sketches),
                              ("rank", lambda v: K.rank_signature(v, 32), ranks)):
            t0 = time.process_time()
            out[s:s + len(x)] = fn(x)
            t[name] += time.process_time() - t0
    print(f"# made; load {load()}", flush=True)
    rows = []
    truth = {(i, n0 + i) for i in range(planted)}
    runs = [("signature, IVF of bytes (SQ8, until 8 December)", sig, K.SIGNATURE_GRID, "sq8", 2),
            ("signature, IVF lists scanned as matrix products (now)", sig, K.SIGNATURE_GRID, "lists", 2),
            ("rank", ranks, K.RANK_GRID, K.RANK_CODES, K.RANK_SHORTLIST)]
    if a.baseline:
        runs = [("signature, IVF-Flat, FAISS's scan", sig, K.SIGNATURE_GRID, "flat", 2)] + runs
    for name, v, grid, codes, shortlist in runs:
        before = load()
        t0 = time.time()
        pa, pb = K.signature_nearest(v, grid=grid, codes=codes, shortlist=shortlist)
        search = time.time() - t0
        found = len(truth & set(zip(pa.tolist(), pb.tolist())))
        agree = nearest_agreement(v, grid, pa, pb, a.sample, rng)
        rows.append((name, v.shape[1], t[name.split(",")[0]], search, len(pa), f"{found} of {planted}", agree, before, load()))
        print(f"# {name} searched in {search:.0f} s; load {load()}", flush=True)
    print(f"\n## Each image's nearest by signature at {a.n:,} images (2 cores)\n")
    print("| signature | dims | made (s of one core) | searched (s, wall) | pairs | planted copies found | nearest as exact search's (sample) | load before -> after |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, d, made, search, pairs, found, agree, before, after in rows:
        print(f"| {name} | {d} | {made:.0f} | {search:.0f} | {pairs:,} | {found} | {agree:.3f} | {before} -> {after} |")
    print(f"| (sketch, for the first look) | 768 B | {t['sketch']:.0f} | - | - | - | - | |")


def memory_of(n: int, codes: str) -> None:
    import resource

    from deepscope.algos import knn as K

    x = np.random.default_rng(0).standard_normal((n, 3 * K.SIGNATURE_GRID ** 2), dtype=np.float32)
    sig = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    a, _ = K.signature_nearest(sig, codes=codes)
    print(f"| {codes} | {time.time() - t0:.0f} s | {len(a):,} pairs | peak RSS before the search {before:,.0f} MB, "
          f"after {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
