"""The cost of committing one part while K parts are already committed (issue 13).

deepscope now: the worker has written the part; the driver writes one small commit record
(Store.commit). Baseline, side by side in the same run: the old design, which rewrote the whole
manifest (every part listed) after each part. Goal: flat (largest / smallest <= 2), under 10 ms.

    .venv/bin/python bench/commit.py [--ks 1000,10000,100000,1000000] [--repeat 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from deepscope.io.location import _atomic_write  # noqa: E402
from deepscope.io.store import Store  # noqa: E402


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def fake_entry(i: int) -> dict:
    return {"file": f"features/p-{i:016x}.parquet", "rows": 256, "bytes": 1_310_000,
            "sha256": f"{i:064x}", "files": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="1000,10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--baseline-max", type=int, default=100000, help="largest K for the old design (it is slow)")
    a = ap.parse_args()
    print(f"# load average before: {load()}" + ("   WARNING: above 1, ratios are not results" if os.getloadavg()[0] > 1 else ""))
    print(f"{'parts committed':>16} | {'commit now (ms)':>15} | {'old: manifest rewrite (ms)':>26} | load")
    print("-" * 80)
    rows = []
    for k in [int(x) for x in a.ks.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "out")
            store.open({"bench": True})
            store.manifest["stages"]["features"] = {"config": {}, "parts": {f"p-{i:016x}": fake_entry(i) for i in range(k)}}
            store.commit({"stage": "features", "part": "warm-up", **fake_entry(k)})  # the log folder exists
            times = []
            for r in range(a.repeat):
                rec = {"stage": "features", "part": f"new-{r}", **fake_entry(k + r)}
                t0 = time.perf_counter()
                store.commit(rec)
                times.append((time.perf_counter() - t0) * 1000)
            now = statistics.median(times)
            old = None
            if k <= a.baseline_max:
                olds = []
                for r in range(max(3, a.repeat // 5)):
                    store.manifest["stages"]["features"]["parts"][f"old-{r}"] = fake_entry(r)
                    t0 = time.perf_counter()
                    _atomic_write(Path(tmp) / "out/manifest-old.json",
                                  json.dumps(store.manifest, indent=1, sort_keys=True, default=str).encode())
                    olds.append((time.perf_counter() - t0) * 1000)
                old = statistics.median(olds)
        rows.append((k, now, old))
        print(f"{k:>16,} | {now:>15.2f} | {('%.1f' % old) if old is not None else 'not run':>26} | {load()}", flush=True)
    nows = [r[1] for r in rows]
    print(f"# commit now: largest / smallest = {max(nows) / min(nows):.2f} (goal <= 2), max {max(nows):.2f} ms (goal < 10)")


if __name__ == "__main__":
    main()
