"""Benchmark: the whole dataset's k-NN graph (`[knn]`, k = 10) over generated 1280-d vectors as hard
as real CNN features, through the real paths (features parts -> deepscope.index.build -> the sharded
graph search of deepscope.index.knn, Ray tasks), against exact blocked search.

    .venv/bin/python bench/knn.py                          # 1,000,000 x 1280
    .venv/bin/python bench/knn.py --n 100000 --shards 1
    .venv/bin/python bench/knn.py --space pixels --n 250000   # 32 x 32 x 3 tiny images, the index's defaults

Vectors: a power-law spectrum (the i-th of 1280 directions has scale i^-0.75) in a random rotation,
1,000 weak clusters (centre spread 0.5 of the within-cluster spread, in the 64 leading directions),
then ReLU-like non-negativity (the penultimate layer of a CNN is non-negative).
`--space pixels`: the [pixels] stage's 32 x 32 RGB vectors (3,072 uint8) of generated pictures with the
spectrum of tiny natural pictures (amplitude 1/f^1.3, measured 1.1-1.5 on the photos; random phases, a luminance field and two weaker colour ones),
indexed with the index stage's defaults (auto kind under memory_mb 4096, as a job would; --kind forces).
An IVF index's list scan is also timed side by side on one core (--scan-rows, the first 8,192 images
against the first shard): FAISS's own scan (search_preassigned) and the graph task's list by list.
Recall@10 of the graph: on a 1,000-image sample against exact blocked search over all n vectors,
the same search the stage records.  The exact search of all n images is that sample's time
scaled by n / 1,000 (the blocked search is linear in the queries); running it whole would take
hours here.  Peak memory: RSS, PSS and USS of this process and its descendants (the local Ray
cluster), sampled every second by a thread of this process (RSS counts every object-store page a
process maps, which all processes share; PSS divides those among them; USS is the process's own).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

D = 1280
CLUSTERS = 1000
LEAD = 64  # the clusters live in the leading directions


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Space:
    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.scale = (np.arange(1, D + 1, dtype=np.float32) ** -0.75)
        q, r = np.linalg.qr(rng.standard_normal((D, D)))
        self.rot = (q * np.sign(np.diag(r))).astype(np.float32)  # a uniformly random rotation
        self.centres = (rng.standard_normal((CLUSTERS, LEAD)) * 0.5).astype(np.float32)
        self.shift = 0.02  # after the rotation, the vectors are centred; a small shift, then ReLU

    def sample(self, n: int, rng) -> np.ndarray:
        z = rng.standard_normal((n, D), dtype=np.float32)
        z[:, :LEAD] += self.centres[rng.integers(0, CLUSTERS, n)]
        x = (z * self.scale) @ self.rot
        return np.maximum(x + self.shift, 0, out=x)


def tiny_pictures(n: int, rng, side: int = 32) -> np.ndarray:
    """n generated pictures as the [pixels] stage writes them: (n, 3 * side * side) uint8, CHW."""
    fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.rfftfreq(side), indexing="ij")
    amp = np.maximum(np.hypot(fy, fx), 1 / side) ** -1.3  # as the demo's and skimage's tiny pictures: ~ 1/f^1.1-1.5
    amp[0, 0] = 0
    out = np.empty((n, 3, side, side), np.uint8)
    mix = np.array([[1, 1, 1], [0.5, 0, -0.5], [0.25, -0.5, 0.25]], np.float32)  # luminance, two colour axes
    for s in range(0, n, 4096):
        m = min(4096, n - s)
        phase = rng.uniform(0, 2 * np.pi, (m, 3, side, side // 2 + 1))
        fields = np.fft.irfft2(amp * np.exp(1j * phase) * np.array([1, 0.35, 0.2])[None, :, None, None], s=(side, side))
        fields /= fields[:, :1].std(axis=(2, 3), keepdims=True) + 1e-9
        rgb = np.einsum("mc...,cr->mr...", fields.astype(np.float32), mix) * 40 + rng.uniform(60, 190, (m, 1, 1, 1))
        out[s:s + m] = np.clip(rgb, 0, 255).astype(np.uint8)
    return out.reshape(n, -1)


def make_folder(root: Path, n: int, part_rows: int = 10_000, space_name: str = "features") -> None:
    from deepscope.io.store import Store
    from deepscope.stages.features import Features, FeaturesConfig
    from deepscope.stages.pixels import Pixels, PixelsConfig

    space, rng = Space(0), np.random.default_rng(1)
    store = Store(root)
    store.open({"dataset": "bench-knn"})
    if space_name == "pixels":
        store.open_stage("pixels", {"size": 32})
        writer = Pixels(PixelsConfig(), None)
        for p, start in enumerate(range(0, n, part_rows)):
            ids = [f"v{i:07d}" for i in range(start, min(n, start + part_rows))]
            store.write_part("pixels", f"part-{p:05d}", writer.part_table(
                {"id": ids, "path": [f"/bench/{i}.jpg" for i in ids], "label": [""] * len(ids),
                 "pixels": tiny_pictures(len(ids), rng)}))
        return
    store.open_stage("features", {"layer": "penultimate", "dtype": "float32"})
    writer = Features(FeaturesConfig(), None)
    for p, start in enumerate(range(0, n, part_rows)):
        ids = [f"v{i:07d}" for i in range(start, min(n, start + part_rows))]
        store.write_part("features", f"part-{p:05d}", writer.part_table(
            {"id": ids, "path": [f"/bench/{i}.jpg" for i in ids], "label": [""] * len(ids),
             "feature": space.sample(len(ids), rng)}))


class PeakMemory:
    """Peak RSS (and RSS less shared) of this process and every process started since, sampled."""

    def __init__(self, every: float = 1.0):
        import psutil

        self.psutil, self.every, self.stop = psutil, every, threading.Event()
        self.peak: dict[int, tuple[str, float, float, float]] = {}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        me = self.psutil.Process()
        while not self.stop.is_set():
            try:  # this process and its descendants (the local Ray cluster it started), no one else's
                procs = [me] + me.children(recursive=True)
            except self.psutil.NoSuchProcess:
                procs = [me]
            for p in procs:
                try:
                    m = p.memory_full_info()  # uss: private; pss: private + a share of shared pages
                    cmd = " ".join(p.cmdline() or [])
                    name = "driver" if p.pid == me.pid else (cmd.split()[0] if cmd.startswith("ray::") else
                                                             cmd.split(" ")[0].rsplit("/", 1)[-1][:40])
                    old = self.peak.get(p.pid, (name, 0, 0, 0))
                    if cmd.startswith("ray::") and cmd.split()[0] not in ("ray::IDLE",):
                        name = cmd.split()[0]
                    self.peak[p.pid] = (name if old[0] in ("ray::IDLE", name) else old[0], max(old[1], m.rss / 2**20),
                                        max(old[2], m.pss / 2**20), max(old[3], m.uss / 2**20))
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    pass
            time.sleep(self.every)

    def top(self, n=5):
        return sorted(self.peak.values(), key=lambda v: -v[2])[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", type=int, default=5, help="index shards (5 x 200k IVF-Flat: 1 GB each at 1M)")
    ap.add_argument("--nlist", type=int, default=2048)
    ap.add_argument("--target-recall", type=float, default=0.92, help="recall@10 the index's nprobe is tuned to")
    ap.add_argument("--block-rows", type=int, default=32768)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--space", choices=("features", "pixels"), default="features")
    ap.add_argument("--kind", default=None, help="pixels: force an index kind (default: the index stage's auto)")
    ap.add_argument("--scan-rows", type=int, default=8192, help="IVF: the first N images searched both ways on one core "
                    "(FAISS's scan and the graph's list-by-list one), side by side; 0: not")
    ap.add_argument("--scan-only", default=None, metavar="OUT", help="only the side-by-side list scan, on a folder "
                    "whose index is built (e.g. one kept with --keep), --space's index; twice, the order alternated")
    a = ap.parse_args()
    if a.scan_only:
        from deepscope.io.store import Store

        from deepscope.errors import UserError

        try:
            for i in range(2):
                scan_side_by_side(Store(Path(a.scan_only)), a.space, a.k, a.scan_rows, faiss_first=i == 0)
        except (UserError, KeyError, FileNotFoundError, RuntimeError) as e:
            sys.exit(f"knn.py: error: {a.scan_only} has no built IVF {a.space} index to scan ({e})")
        return

    import faiss
    import ray

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    mem = PeakMemory()
    tmp = tempfile.mkdtemp(dir=a.dir, prefix="bench-knn-")
    root = Path(tmp) / "out"
    print(f"# {load()}", flush=True)
    t0 = time.time()
    make_folder(root, a.n, space_name=a.space)
    gen_s = time.time() - t0
    print(f"# {a.n:,} vectors x {D if a.space == 'features' else 3072} written as {a.space} parts in {gen_s:.0f} s  [{load()}]", flush=True)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        measure(a, root, mem, gen_s)
    finally:
        ray.shutdown()
        if not a.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def measure(a, root, mem, gen_s):
    from deepscope.executor import make_executor
    from deepscope.index.build import build_space
    from deepscope.index.knn import graph_space
    from deepscope.io.store import Store
    from deepscope.stages.index import IndexConfig
    from deepscope.stages.knn import KnnConfig

    store = Store(root)
    executor = make_executor()  # Ray, started by main(): the shards' and the blocks' tasks
    kind = "flat" if a.n <= 20_000 else "ivf_flat"
    t0 = time.time()
    if a.space == "pixels":  # the index stage's defaults, as a job at this size gets them
        cfg = IndexConfig(spaces=["pixels"], target_recall=a.target_recall, **({"kind": a.kind} if a.kind else {}))
    else:
        cfg = IndexConfig(kind=kind, shards=a.shards, nlist=a.nlist, train_max=max(100_000, 40 * a.nlist),
                          target_recall=a.target_recall, tune_queries=500)
    info = build_space(store, a.space, cfg, lambda m: print("#", m, flush=True), executor)
    store.update_summary("index", {"spaces": {a.space: info}})
    build_s = time.time() - t0
    print(f"# index built in {build_s:.0f} s: {info['factory']} x {info['shards']} shards, {info['search']}, "
          f"recall@10 at build {info['recall_at_10']}  [{load()}]", flush=True)
    scan = scan_side_by_side(store, a.space, a.k, a.scan_rows) if a.scan_rows and info["search"].get("nprobe") else None
    # the build's peaks on their own: a run stopped during the (much longer) graph step still has them
    print("# peak memory so far, build (MB, name RSS PSS USS): "
          + "; ".join(f"{name} {rss:.0f} {pss:.0f} {uss:.0f}" for name, rss, pss, uss in mem.top(6)), flush=True)
    t0 = time.time()
    rec = graph_space(store, a.space, a.k, KnnConfig(k=a.k, block_rows=a.block_rows, sample=a.sample),
                      lambda m: print("#", m, flush=True), executor)
    graph_s = time.time() - t0
    after = load()
    mem.stop.set()
    mem.thread.join()
    exact_sample_s = rec["recall_s"]
    exact_all_s = exact_sample_s * a.n / rec["recall_sample"]
    print(f"\n## k-NN graph of {a.n:,} x {D if a.space == 'features' else 3072} {a.space} (k = {a.k}) on {os.cpu_count()} CPUs\n")
    print(f"load average: {after}\n")
    print("| step | seconds | notes |\n|---|---:|---|")
    print(f"| generate + write {a.space} | {gen_s:.0f} | {a.n // 10_000} parts of 10,000 |")
    print(f"| build index | {build_s:.0f} | `{info['factory']}` x {info['shards']} shards, train {info['train_s']} s, "
          f"add {info['add_s']} s, tune {info['tune_s']} s -> {info['search']} |")
    print(f"| graph: sharded search (Ray tasks) | {rec['search_s']:.0f} | blocks of {a.block_rows:,} x {info['shards']} shards |")
    print(f"| exact blocked search of the {rec['recall_sample']:,}-image sample | {exact_sample_s:.0f} | "
          f"recall@{a.k} of the graph: **{rec['recall_at_' + str(a.k)]}** |")
    print(f"| exact blocked search of all {a.n:,} (projected: sample x {a.n // rec['recall_sample']:,}) | "
          f"{exact_all_s:.0f} | {exact_all_s / max(rec['search_s'], 1e-9):.1f}x the graph's search |")
    if scan:
        print(f"\nThe first {scan['rows']:,} images' search against the index's shard {scan['shard']}, side by side on one "
              f"core in this process (the lists each probes found once, nprobe {scan['nprobe']}; load {scan['load']}):\n")
        print("| list scan | seconds | ms an image | the same k+1 neighbours as FAISS's scan |\n|---|---:|---:|---:|")
        for name, sec, same in (("FAISS's `search_preassigned` (the graph's until 8 December for this index)", scan["faiss_s"], 1.0),
                                ("list by list, matrix products (`search_lists`: the graph's now)", scan["lists_s"], scan["same"])):
            print(f"| {name} | {sec:.1f} | {sec * 1000 / scan['rows']:.2f} | {same:.4f} |")
        print(f"\nlists / FAISS: {scan['faiss_s'] / scan['lists_s']:.2f}x faster; max relative distance difference "
              f"{scan['max_rel']:.2g} (float32 rounding)")
    print("\npeak memory per process (MB; RSS counts the object store's shared pages a process maps, PSS a share "
          "of them, USS only its own):\n")
    print("| process | RSS | PSS | USS |\n|---|---:|---:|---:|")
    for name, rss, pss, uss in mem.top(6):
        print(f"| {name} | {rss:.0f} | {pss:.0f} | {uss:.0f} |")
    print(json.dumps({"n": a.n, "graph": rec, "index": {k: info[k] for k in ("factory", "shards", "search", "recall_at_10",
                                                                             "train_s", "add_s", "tune_s", "build_s")},
                      "graph_s": round(graph_s, 1), "peak": mem.top(6), "load": after}), file=sys.stderr)


def scan_side_by_side(store, space: str, k: int, rows: int, faiss_first: bool = True) -> dict:
    """The first `rows` images searched against the first shard both ways, on one core: FAISS's
    search_preassigned (the baseline) and the graph task's list-by-list scan, with the same probed lists."""
    import faiss
    from threadpoolctl import threadpool_limits

    from deepscope.algos.knn import ivf_lists, search_lists
    from deepscope.index.build import load_shard, parts_with_starts
    from deepscope.index.knn import _read_block, index_info

    info = index_info(store, space)
    shard = (info["shard_files"][0]["file"], info["shard_files"][0]["sha256"])
    index = load_shard(store.url, *shard)
    ivf = faiss.extract_index_ivf(index)
    files, got = [], 0
    for rel, entry, _ in parts_with_starts(store, info["stage"]):
        files.append((entry["file"], entry["sha256"]))
        got += entry["rows"]
        if got >= rows:
            break
    x = _read_block(store.url, files, info["column"], info["metric"] == "cosine")[:rows]
    nprobe = info["search"]["nprobe"]
    faiss.omp_set_num_threads(1)
    before = load().split("load average: ")[-1]
    with threadpool_limits(1):
        dq, iq = ivf.quantizer.search(x, nprobe)
        ivf.nprobe = nprobe
        read = ivf_lists(ivf)
        for way in ((0, 1) if faiss_first else (1, 0)):
            t0 = time.time()
            if way == 0:
                d_faiss, i_faiss = ivf.search_preassigned(x, k + 1, iq, dq)
                faiss_s = time.time() - t0
            else:
                d_lists, i_lists = search_lists(x, iq, read, k + 1)
                lists_s = time.time() - t0
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    differs = np.abs(d_lists - d_faiss) / np.maximum(d_faiss, 1.0)
    out = {"rows": len(x), "shard": shard[0], "nprobe": nprobe, "faiss_first": faiss_first, "faiss_s": faiss_s, "lists_s": lists_s,
           "same": float((i_lists == i_faiss).mean()), "max_rel": float(differs.max()),
           "load": f"{before} -> {load().split('load average: ')[-1]}"}
    print(f"# scan side by side: {json.dumps(out)}", flush=True)
    return out


if __name__ == "__main__":
    main()
