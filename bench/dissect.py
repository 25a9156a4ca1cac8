"""Network dissection throughput: images/s of pass 1 (thresholds) and pass 2 (masks + counts) against
a plain features pass over the same concept images (the forward-pass floor), and peak memory.

    .venv/bin/python bench/dissect.py [--n 200] [--layer _blocks.15] [--model lite0] [--actors 1]

The synthetic concept dataset (`deepscope concept-data`) is written to a temporary folder. Anchor:
NetDissect-Lite dissects ResNet-18 layer4 on Broden (63k images) in about 20 minutes on a GPU
(about 50 images/s for both passes together).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from deepscope import job as jobmod  # noqa: E402
from deepscope.io.concepts import Concepts, make_concept_data  # noqa: E402
from deepscope.io.store import Store  # noqa: E402
from deepscope.io.cluster import ensure_ray  # noqa: E402
from deepscope.runner import run  # noqa: E402


class PeakRSS(threading.Thread):
    """Largest resident memory of this process tree (driver, raylet, workers, actors), sampled."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_total = self.peak_one = 0
        self.stop = False

    def run(self):
        me = psutil.Process()
        while not self.stop:
            rss = []
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_one = max([self.peak_one, *rss[1:]] or [0])
            time.sleep(0.2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="synthetic concept images")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--model", default="lite0")
    p.add_argument("--layer", default="_blocks.15")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--actors", type=int, default=1)
    a = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dissect-bench-"))
    concepts = tmp / "concepts"
    t0 = time.perf_counter()
    make_concept_data(concepts, n=a.n, size=a.size)
    gen_s = time.perf_counter() - t0
    listing = tmp / "images.csv"
    listing.write_text(Concepts.open(concepts).items()[["id", "path"]].to_csv(index=False))
    ensure_ray()
    watch = PeakRSS()
    watch.start()
    common = {"dataset": {"source": str(listing)}, "model": {"name": a.model},
              "run": {"batch_size": a.batch_size, "actors": a.actors, "partition_size": 100}}
    t0 = time.perf_counter()
    run(jobmod.validate({**common, "out": str(tmp / "features"), "features": {"layer": a.layer}}))
    feat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(jobmod.validate({**common, "out": str(tmp / "dissect"), "dissect": {"layer": a.layer, "concepts": str(concepts)}}))
    total_s = time.perf_counter() - t0
    watch.stop = True
    s = Store(tmp / "dissect").summary("dissect")
    passes = s["passes"]
    print(f"\n# {a.model} {a.layer} ({s['units']} units, map {s['map'][0]}x{s['map'][1]}), {a.n} synthetic images of "
          f"{a.size} px, batch {a.batch_size}, {a.actors} CPU actor(s), {os.cpu_count()} cores (shared machine)")
    print(f"{'what':34s} {'seconds':>8s} {'images/s':>9s}")
    print(f"{'concept-data (generate)':34s} {gen_s:8.1f} {a.n / gen_s:9.1f}")
    print(f"{'features job (baseline forward)':34s} {feat_s:8.1f} {a.n / feat_s:9.1f}")
    for name, label in (("dissect_thresholds", "dissect pass 1 (thresholds)"), ("dissect_counts", "dissect pass 2 (masks, counts)")):
        print(f"{label:34s} {passes[name]['seconds']:8.1f} {passes[name]['images_per_s']:9.1f}")
    print(f"{'dissect job (both passes, figures)':34s} {total_s:8.1f} {a.n / total_s:9.1f}")
    print(f"peak RSS: driver {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, largest worker "
          f"{watch.peak_one / 2**20:.0f} MiB, whole process tree {watch.peak_total / 2**20:.0f} MiB")
    print(f"result: {s['detectors']} detectors of {s['units']} units, {s['unique_concepts']} unique concepts")


if __name__ == "__main__":
    main()
