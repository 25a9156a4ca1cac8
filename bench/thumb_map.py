"""The thumbnails' map at scale: where each index row's thumbnail is and its pixel hash (index/knn.py:
_thumb_rows, built by the knn stage's driver and once per copies command or service), with the copies
query's lookup of a row by id (index/copies.py: Thumbs; 1,000 ids looked up), beside reading the parts'
columns alone (its floor), on generated thumbs parts of 256 rows (id, pixel hash, size, file size: the
columns the map reads).

    .venv/bin/python bench/thumb_map.py [--sizes 100000 1000000] [--dir /tmp/thumb-map]

Each build runs in its own process (peak memory = its maximum RSS less the process's before it)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PER_PART = 256


class _Loc:
    def read_table(self, f, columns=None):
        return pq.read_table(f, columns=columns)


class FolderOfParts:
    """The two things _thumb_rows asks of a store: its thumbs parts and a way to read them."""

    def __init__(self, root: str, n: int):
        self.loc, self._parts = _Loc(), {}
        os.makedirs(root, exist_ok=True)
        rng = np.random.default_rng(0)
        for k, s in enumerate(range(0, n, PER_PART)):
            m, f = min(PER_PART, n - s), os.path.join(root, f"part-{k:06d}.parquet")
            if not os.path.exists(f):
                pq.write_table(pa.table({"id": [image_id(s + i) for i in range(m)],
                                         "pixel_hash": [f"{x:032x}" for x in rng.integers(0, 2 ** 62, m)],
                                         "width": rng.integers(100, 4000, m).astype(np.int32),
                                         "height": rng.integers(100, 4000, m).astype(np.int32),
                                         "file_bytes": rng.integers(1000, 10 ** 7, m)}), f)
            self._parts[f"part-{k:06d}"] = {"file": f}

    def parts(self, stage):
        return self._parts


def image_id(i: int) -> str:
    return f"images/dir{i // 1000:04d}/img_{i:08d}.jpg"


def one(root: str, n: int, how: str) -> dict:
    store = FolderOfParts(root, n)
    ids = np.array([image_id(i) for i in range(n - 1, -1, -1)], object)  # the index's order is not the parts'
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if how == "reading the parts alone":
        for _, entry in sorted(store.parts("thumbs").items()):
            store.loc.read_table(entry["file"], columns=["id", "pixel_hash", "width", "height", "file_bytes"])
        found = n
    else:
        from deepscope.index.copies import Thumbs
        from deepscope.index.knn import _thumb_rows

        rows = _thumb_rows(store, ids)
        at = Thumbs.__new__(Thumbs)  # its lookup by id, without a real folder's manifest
        at.at, at.rows = {i: k for k, i in enumerate(ids)}, rows
        found = sum(at._where(image_id(k)) is not None for k in range(0, n, max(1, n // 1000))) * max(1, n // 1000)
    seconds = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"seconds": seconds, "peak_mb": peak, "found": found}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dir", default="/tmp/thumb-map")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: n and how, in a fresh process
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(os.path.join(a.dir, a.one[0]), int(a.one[0]), a.one[1])))
        return
    print("| images | what | seconds | peak memory MB | load before |")
    print("|---|---|---|---|---|")
    for n in a.sizes:
        FolderOfParts(os.path.join(a.dir, str(n)), n)  # the parts, written once
        for how in ("reading the parts alone", "the map (_thumb_rows) and Thumbs' lookup"):
            load = os.getloadavg()[0]
            r = json.loads(subprocess.run([sys.executable, __file__, "--dir", a.dir, "--one", str(n), how],
                                          check=True, capture_output=True, text=True).stdout)
            assert r["found"] == n, r  # every id found (1,000 looked up)
            print(f"| {n:,} | {how} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {load:.2f} |", flush=True)


if __name__ == "__main__":
    main()
