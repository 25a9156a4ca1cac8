"""The knn stage's verification replayed on one core, task by task, from a finished stage's knn/verified parts: the
time a pair takes under this checkout's code (or --lib's), and every pair whose decision or evidence differs from
what the stage committed.  Run it once per version on the same folder to compare two versions side by side: the
decisions are exact, the times are one core's CPU time (print the load beside them: this machine is shared).

    .venv/bin/python bench/verify_replay.py OUT [--tasks 2] [--every 2] [--lib /path/to/other/checkout/lib]

--tasks: how many of the committed tasks (spread over them); --every: every k-th pair of each (faster; an image
then serves fewer pairs than in the stage, so preparations weigh more)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a deepscope output folder whose knn stage verified pairs on thumbnails")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--lib", default=None, help="import deepscope from this folder instead (another version, one with index/knn.py's verify_thumbs)")
    a = ap.parse_args()
    if a.tasks < 1 or a.every < 1:
        ap.error("--tasks and --every must be at least 1")
    if a.lib:
        sys.path.insert(0, a.lib)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2
    import faiss
    import numpy as np
    import pyarrow as pa

    from deepscope.algos import verify as V
    from deepscope.index import knn as KN
    from deepscope.io.store import Store

    cv2.setNumThreads(1)
    faiss.omp_set_num_threads(1)
    store = Store(a.out)
    parts = sorted(store.parts(KN.VERIFIED).items())
    if not parts:
        sys.exit(f"verify_replay.py: error: {a.out} has no knn/verified parts (run the knn stage with [thumbs] first)")
    parts = parts[::max(1, len(parts) // a.tasks)][:a.tasks]
    detections = [0]
    keypoints = V._keypoints

    def counted(*args, **kw):
        detections[0] += 1
        return keypoints(*args, **kw)
    V._keypoints = counted
    load = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()
    print(f"# verification replayed on one core: {a.out}, code {os.path.dirname(V.__file__)}, load {load()}\n")
    print("| task | pairs | images | CPU s | ms a pair | keypoint detections | decisions differing | evidence differing |\n|---|---|---|---|---|---|---|---|")
    total_t = total_n = 0
    for name, entry in parts:
        t = store.loc.read_table(entry["file"])
        keep = np.arange(0, t.num_rows, a.every)
        t = t.take(pa.array(keep))
        ids = sorted(set(t.column("a").to_pylist()) | set(t.column("b").to_pylist()))
        row = {x: i for i, x in enumerate(ids)}
        thumbs = KN._thumb_rows(store, np.array(ids, object))
        data = KN._thumb_bytes(store, thumbs, list(range(len(ids))))
        pairs = {"a": np.array([row[x] for x in t.column("a").to_pylist()]), "b": np.array([row[x] for x in t.column("b").to_pylist()]),
                 "frames": t.column("frames").to_numpy(), "close": t.column("close").to_numpy()}
        detections[0] = 0
        t0 = time.process_time()
        ev = KN.verify_thumbs(data, pairs, V.VerifySettings())  # the stage's task, its thumbnails read beforehand
        sec = time.process_time() - t0
        decided = int((ev["same"] != t.column("same").to_numpy()).sum())
        differs = np.zeros(t.num_rows, bool)
        for key in V.EVIDENCE:
            got, was = ev[key], t.column(key).to_numpy(zero_copy_only=False)
            if got.dtype.kind == "f":
                was = was.astype(got.dtype)
                differs |= ~((got == was) | (np.isnan(got) & np.isnan(was)))
            else:
                differs |= got != was
        print(f"| {name} | {t.num_rows} | {len(ids)} | {sec:.1f} | {1000 * sec / t.num_rows:.2f} | {detections[0]} | {decided} | {int(differs.sum())} |")
        total_t, total_n = total_t + sec, total_n + t.num_rows
    print(f"\n{total_n} pairs replayed in {total_t:.1f} s of one core: {1000 * total_t / total_n:.2f} ms a pair; load {load()}")


if __name__ == "__main__":
    main()
