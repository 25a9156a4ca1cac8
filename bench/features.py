"""Features throughput: deepscope against a plain torchvision DataLoader loop, and the two ceilings.

One run, the same JPEGs (256-640 px) and model, whole commands timed (a fresh process each: imports,
model load and, for deepscope, Ray start-up included), run alternately, `--rounds` pairs:
  plain loop  a script: Dataset + DataLoader(num_workers=2) + forward, as a user would write it
  deepscope   `deepscope features` as a user runs it: the default executor (local on one machine),
              and with `--executor ray` (a local Ray cluster started by the command, model actors)
then the ceilings, in this process:
  decode only decode + resize + crop, in 2 processes (the CPU-side ceiling)
  model only  forward passes on preloaded tensors (the model-side ceiling)
The load average is printed beside every row; above 1, a ratio is not a result. Before each timed
command the benchmark waits (up to 150 s) for the load average to fall under 0.9 (`--settle`), so
that the previous command's own processes do not count against the next.

    .venv/bin/python bench/features.py [--model lite0] [--layer penultimate] [--n 1000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from deepscope.io.demo_data import make_demo_data
from deepscope.models.registry import load_model
from deepscope.models.taps import forward_with_taps


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def _decode_chunk(args):
    paths, tf = args
    for p in paths:
        tf.geometry(Image.open(p).convert("RGB"))
    return len(paths)


def decode_only(paths, model):
    t = time.perf_counter()
    with ProcessPoolExecutor(2) as ex:
        n = sum(ex.map(_decode_chunk, [(paths[i::2], model.transform) for i in range(2)]))
    return n / (time.perf_counter() - t)


def model_only(model, layer, batch, n, channels_last):
    x = torch.randn(batch, 3, model.transform.crop, model.transform.crop)
    module = model.module
    if channels_last:
        module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        forward_with_taps(model, x, [layer])  # warm-up
        t = time.perf_counter()
        for _ in range(max(1, n // batch)):
            forward_with_taps(model, x, [layer])
    module.to(memory_format=torch.contiguous_format)
    return max(1, n // batch) * batch / (time.perf_counter() - t)


LOOP = """
import sys, time, torch
from PIL import Image
from deepscope.models.registry import load_model
from deepscope.models.taps import forward_with_taps
sys.path.insert(0, {bench!r})
from features import Files
paths = open({listing!r}).read().split()
model = load_model({model!r}, {weights!r})
loader = torch.utils.data.DataLoader(Files(paths, model.transform.torchvision()), batch_size={batch}, num_workers=2)
with torch.inference_mode():
    for x in loader:
        forward_with_taps(model, x, [{layer!r}])
"""


def plain_loop_cli(tmp, paths, model, weights, layer, batch):
    listing = Path(tmp) / "paths.txt"
    listing.write_text("\n".join(map(str, paths)))
    script = Path(tmp) / "loop.py"
    script.write_text(LOOP.format(bench=str(Path(__file__).parent), listing=str(listing), model=model,
                                  weights=weights, batch=batch, layer=layer))
    t = time.perf_counter()
    subprocess.run([sys.executable, str(script)], check=True)
    return time.perf_counter() - t


def deepscope_cli(data, out, model, weights, layer, batch, executor="auto"):
    t = time.perf_counter()
    args = (["--weights", weights] if weights else []) + ["--executor", executor]
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "features", str(data), "--out", str(out),
                        "--model", model, "--layer", layer, "--batch-size", str(batch), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    first = [line for line in p.stderr.splitlines() if "first image through the model after" in line]
    return wall, (first[-1].split("after ")[1].split(" s")[0] if first else "?")


def load() -> float:
    return os.getloadavg()[0]


def settle(limit: float, max_wait: float = 150.0) -> float:
    """Wait (at most max_wait s) until the 1-minute load average is under `limit`: the previous
    command's own processes otherwise count against the next. Returns the load reached."""
    t = time.time()
    while limit and load() >= limit and time.time() - t < max_wait:
        time.sleep(2)
    return load()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--weights")
    ap.add_argument("--layer", default="penultimate")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.9,
                    help="before each timed command, wait until the load average is under this (0: never)")
    a = ap.parse_args()
    if load() > 1:
        print(f"WARNING: load average {load():.2f} > 1: other processes hold the cores; ratios measured now are not results")
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        per = -(-a.n // 6)
        make_demo_data(data, per_photo=per)
        paths = sorted(data.rglob("*.jpg"))[: a.n]
        for extra in sorted(data.rglob("*.jpg"))[a.n:]:
            extra.unlink()
        model = load_model(a.model, a.weights)
        print(f"{a.model} {a.layer}, {len(paths)} JPEGs, batch {a.batch}, {os.cpu_count()} cores, torch {torch.__version__}")
        print("| round | plain loop s | load | deepscope (local) s | first image s | load | ratio "
              "| deepscope (Ray) s | first image s | load | ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in range(a.rounds):
            l0 = settle(a.settle)
            loop = plain_loop_cli(tmp, paths, a.model, a.weights, a.layer, a.batch)
            l1 = settle(a.settle)
            ds, first = deepscope_cli(data, Path(tmp) / f"out{r}", a.model, a.weights, a.layer, a.batch, "local")
            l2 = settle(a.settle)
            dr, first_r = deepscope_cli(data, Path(tmp) / f"ray{r}", a.model, a.weights, a.layer, a.batch, "ray")
            warn = "  (load above 1: not a result)" if max(l0, l1, l2) > 1 else ""
            print(f"| {r + 1} | {loop:.1f} | {l0:.2f} | {ds:.1f} | {first} | {l1:.2f} | {loop / ds:.2f}x "
                  f"| {dr:.1f} | {first_r} | {l2:.2f} | {loop / dr:.2f}x |{warn}", flush=True)
        print(f"\n| ceiling | images/s | load |\n|---|---:|---:|")
        for name, fn in (("decode only (2 processes)", lambda: decode_only(paths, model)),
                         ("model only, fp32", lambda: model_only(model, a.layer, a.batch, 256, False)),
                         ("model only, fp32 channels_last", lambda: model_only(model, a.layer, a.batch, 256, True))):
            l0 = settle(a.settle)
            print(f"| {name} | {fn():.1f} | {l0:.2f} |", flush=True)


if __name__ == "__main__":
    main()
