"""Near-duplicates at the issue's size: 5,000 generated scenes of random shapes, 200 of them planted
near-copies of others (cropped by 5%, resized to 80%, lightened, JPEG quality 60), through the real
job (lite0 features and pixels, both indexes, [knn]); prints the duplicate groups' precision and
recall over the planted pairs at the threshold chosen from the data, and what features alone give.

    .venv/bin/python bench/duplicates.py [--n 5000 --copies 200] [--dir DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def pairs_scores(group: dict, planted: set) -> tuple[float, float, int]:
    members = {}
    for i, g in group.items():
        if g is not None:
            members.setdefault(g, []).append(i)
    together = {(a, b) for m in members.values() for a in m for b in m if a < b}
    tp = len(together & planted)
    return tp / max(len(together), 1), tp / len(planted), len(together)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--reuse", default=None, help="a bench-dups-* folder of an earlier run: recompute [knn] only")
    a = ap.parse_args()

    import pyarrow.parquet as pq

    from deepscope import job as jobmod
    from deepscope.io.demo_data import make_duplicates_data
    from deepscope.runner import run

    if a.reuse:
        root = Path(a.reuse)
        truth = {f"copies/{p.name}": f"scenes/scene_{p.stem.split('_of_')[1]}.png" for p in (root / "data/copies").glob("*.jpg")}
    else:
        root = Path(tempfile.mkdtemp(dir=a.dir, prefix="bench-dups-"))
        truth = make_duplicates_data(root / "data", n=a.n, copies=a.copies, seed=0)
    planted = {tuple(sorted(p)) for p in truth.items()}
    t0 = time.time()
    run(jobmod.validate({"out": str(root / "out"), "dataset": {"source": str(root / "data")},
                         "model": {"name": "lite0"}, "run": {"batch_size": 32, "partition_size": 500},
                         "features": {}, "pixels": {}, "index": {"spaces": ["features", "pixels"]}, "knn": {}}))
    wall = time.time() - t0
    images = pq.read_table(root / "out/knn/images.parquet").to_pylist()
    p, r, n_pairs = pairs_scores({x["id"]: x["group"] for x in images}, planted)
    import json

    s = json.loads((root / "out/manifest.json").read_text())["summary"]["knn"]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n## near-duplicates: {a.n:,} scenes, {a.copies} planted near-copies (job wall {wall:.0f} s; {load})\n")
    print(f"threshold {s['duplicates']['threshold']} ({s['duplicates']['how']['method']}): "
          f"{s['duplicates']['groups']} groups, {n_pairs} pairs -> precision {p:.3f}, recall {r:.3f}")
    # features alone (cosine distance of the feature graph's pairs): the best thresholds
    from deepscope.index.build import matrix

    f = pq.read_table(root / "out/knn/features", columns=["id", "neighbor_ids"]).to_pylist()
    feats = {}
    for part in sorted((root / "out/features").glob("*.parquet")):
        t = pq.read_table(part, columns=["id", "feature"])
        for i, v in zip(t.column("id").to_pylist(), matrix(t.column("feature"))):
            feats[i] = v / np.linalg.norm(v)
    cand = {}
    for row in f:
        for j in row["neighbor_ids"]:
            key = tuple(sorted((row["id"], j)))
            cand[key] = 1 - float(feats[key[0]] @ feats[key[1]])
    dist = np.array(list(cand.values()))
    is_dup = np.array([k in planted for k in cand])
    best = []
    for t in np.unique(dist):
        sel = dist <= t
        tp = int((sel & is_dup).sum())
        best.append((tp / sel.sum(), tp / len(planted), t))
    at_p1 = max((x for x in best if x[0] >= 1.0), key=lambda x: x[1], default=(1, 0, 0))
    f1 = max(best, key=lambda x: 2 * x[0] * x[1] / max(x[0] + x[1], 1e-9))
    print(f"features alone (cosine, best thresholds over the graph's pairs): recall {at_p1[1]:.3f} at precision "
          f"1.0 (t = {at_p1[2]:.3f}); best F1: precision {f1[0]:.3f}, recall {f1[1]:.3f} (t = {f1[2]:.3f})")
    print(f"folder: {root}")


if __name__ == "__main__":
    main()
