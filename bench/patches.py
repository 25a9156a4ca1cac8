"""What patches add to a features job: images/s of features alone and of features + patches
in one job (one forward pass serves both), on the same data, in the same Ray cluster.

    .venv/bin/python bench/patches.py [--data data/demo] [--layer _blocks.4] [--k 8] [--reps 2]

Each configuration runs --reps times into a fresh folder, alternating, and the best wall time
counts (the machine may be shared). Goal: patches add at most 20% to the features job's time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from deepscope import job as jobmod  # noqa: E402
from deepscope.io.cluster import ensure_ray  # noqa: E402
from deepscope.runner import run  # noqa: E402
from deepscope.stages.patches import Patches  # noqa: E402

DRIVER_S = {"prepare": 0.0, "finish": 0.0}  # the stage's own driver time in the last job


def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            DRIVER_S[name] += time.perf_counter() - t0
    return wrapper


Patches.prepare = timed("prepare", Patches.prepare)  # receptive fields, before the pass
Patches.finish = timed("finish", Patches.finish)  # merge, re-decode, crop, grids


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/demo", help="image folder (the demo data is written there if missing)")
    p.add_argument("--model", default="lite0")
    p.add_argument("--layer", action="append", help="patch layer(s) (default _blocks.4)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--channels", default=None, help="e.g. 0-15 (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    if not os.path.exists(a.data):
        from deepscope.io.demo_data import make_demo_data
        print(f"writing demo data to {a.data}: {make_demo_data(a.data)} images")
    layers = a.layer or ["_blocks.4"]
    patches = {"layers": layers, "k": a.k}
    if a.channels:
        from deepscope.io.ranges import parse_channels
        patches["channels"] = parse_channels(a.channels)
    configs = {"features": {}, "features + patches": {"patches": patches}}
    ensure_ray()  # cluster start-up is not part of either job
    root = Path(tempfile.mkdtemp(prefix="bench-patches-"))
    best: dict[str, tuple[float, int, dict]] = {}
    try:
        for rep in range(a.reps):
            for name, extra in configs.items():
                out = root / f"{name.replace(' + ', '+')}-{rep}"
                spec = jobmod.validate({"out": str(out), "dataset": {"source": a.data}, "model": {"name": a.model},
                                        "run": {"batch_size": a.batch_size, "partition_size": 100},
                                        "features": {"layer": "penultimate"}, **extra})
                DRIVER_S.update(prepare=0.0, finish=0.0)
                t0 = time.perf_counter()
                res = run(spec)
                wall = time.perf_counter() - t0
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, res.images, dict(DRIVER_S))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = best["features"][0]
    print(f"\n{a.model}, {best['features'][1]} images of {a.data}, patches of {', '.join(layers)} (k={a.k}), "
          f"best of {a.reps}, {os.cpu_count()} CPUs")
    print(f"{'job':<22}{'wall s':>9}{'img/s':>9}{'vs features':>13}{'patches prepare s':>19}{'finish s':>10}")
    for name, (wall, n, driver) in best.items():
        print(f"{name:<22}{wall:>9.1f}{n / wall:>9.1f}{(wall / base - 1) * 100:>+12.0f}%"
              f"{driver['prepare']:>19.1f}{driver['finish']:>10.1f}")


if __name__ == "__main__":
    main()
