"""Does a job's cost per image stay flat as the dataset grows? (issue 13)

A synthetic source of N items (8x8 images generated inside the read tasks, no files) through a
tiny TorchScript model (the mean colour, its 8 px input transform carried in the file), the whole
`deepscope run` command timed, start-up included, on the executor given (default: ray, whose
driver only plans and commits; with `--executor local` the driver process also hosts the model
worker, so its memory is the model worker's too). For each N: images/s and the driver's
peak resident memory (the command's own process, polled every 0.2 s; Ray's processes are not the
driver), and the model actor's time per image around this trivial network (its summed batch and
write time over N: normalization, layout, hand-off, the part's table; goal <= 0.1 ms). Goal: images/s flat within 2x across N; driver peak memory flat within 1.5x from 100,000
to 1,000,000.

    .venv/bin/python bench/scale.py [--ns 10000,100000,1000000] [--partition-size 4096] [--executor ray]
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

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]


class MeanColour(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def tiny_model(path: Path) -> str:
    transform = {"resize": 8, "crop": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    torch.jit.save(torch.jit.script(MeanColour()), str(path), _extra_files={"deepscope_transform.json": json.dumps(transform)})
    return f"torchscript:{path}"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run(n: int, model: str, tmp: Path, partition_size: int, batch_size: int,
        executor: str) -> tuple[float, float, str]:
    out = tmp / f"out-{n}"
    job = tmp / f"job-{n}.toml"
    job.write_text(f'out = "{out}"\n[dataset]\nsource = "synthetic:{n}"\n[model]\nname = "{model}"\n'
                   f'[run]\nbatch_size = {batch_size}\npartition_size = {partition_size}\nexecutor = "{executor}"\n'
                   '[features]\nlayer = "logits"\n')
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "run", str(job)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def poll():
        proc = psutil.Process(p.pid)
        while p.poll() is None:
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
    t = threading.Thread(target=poll, daemon=True)
    t.start()
    log = p.communicate()[0]
    wall = time.time() - t0
    t.join()
    if p.returncode != 0:
        raise SystemExit(f"N={n} failed:\n{log[-3000:]}")
    summary = json.loads((out / "manifest.json").read_text())["summary"]["timings"]
    actor_ms = (summary["model_s"] + summary["write_s"]) * 1000 / n  # the model actor's time outside the read
    return n / wall, peak[0] / 2**20, actor_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="10000,100000,1000000")
    ap.add_argument("--partition-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--executor", default="ray", choices=["ray", "local"])
    a = ap.parse_args()
    print(f"# load average before: {load()}" + ("   WARNING: above 1, ratios are not results" if os.getloadavg()[0] > 1 else ""))
    print(f"# partition_size {a.partition_size}, batch_size {a.batch_size}, executor {a.executor}, {os.cpu_count()} CPUs")
    print(f"{'N':>10} | {'images/s':>9} | {'driver peak MiB':>15} | {'actor ms/image':>14} | load")
    print("-" * 60)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "mean.pt")
        for n in [int(x) for x in a.ns.split(",")]:
            rate, mib, actor_ms = run(n, model, tmp, a.partition_size, a.batch_size, a.executor)
            rows.append((n, rate, mib))
            print(f"{n:>10,} | {rate:>9.0f} | {mib:>15.0f} | {actor_ms:>14.4f} | {load()}", flush=True)
    rates = [r[1] for r in rows]
    print(f"# images/s: largest / smallest = {max(rates) / min(rates):.2f} (goal <= 2)")
    big = [r for r in rows if r[0] >= 100000]
    if len(big) >= 2:
        print(f"# driver peak memory from {big[0][0]:,} to {big[-1][0]:,}: x{big[-1][2] / big[0][2]:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
