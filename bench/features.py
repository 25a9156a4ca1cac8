"""Features throughput: deepscope against a plain torchvision DataLoader loop, and the two ceilings.

One run, the same 1,000 JPEGs and model:
  deepscope   `deepscope features` as a user runs it (a fresh process: Ray start-up included)
  plain loop  torchvision ImageFolder-style Dataset + DataLoader(num_workers=2) + forward
  decode only decode + resize + crop, in 2 processes (the CPU-side ceiling)
  model only  forward passes on preloaded tensors (the model-side ceiling)

    .venv/bin/python bench/features.py [--model lite0] [--layer penultimate] [--n 1000]
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

from deepscope.demo_data import make_demo_data
from deepscope.models.registry import load_model
from deepscope.models.taps import forward_with_taps


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def plain_loop(paths, model, layer, batch):
    loader = torch.utils.data.DataLoader(Files(paths, model.transform.torchvision()), batch_size=batch, num_workers=2)
    t = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            forward_with_taps(model, x, [layer])
    return len(paths) / (time.perf_counter() - t)


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


def deepscope_cli(data, out, model, layer, batch):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepscope.cli", "features", str(data), "--out", str(out),
                    "--model", model, "--layer", layer, "--batch-size", str(batch)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--weights")
    ap.add_argument("--layer", default="penultimate")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        per = -(-a.n // 6)
        make_demo_data(data, per_photo=per)
        paths = sorted(data.rglob("*.jpg"))[: a.n]
        for extra in sorted(data.rglob("*.jpg"))[a.n:]:
            extra.unlink()
        model = load_model(a.model, a.weights)
        rows = []
        wall = deepscope_cli(data, Path(tmp) / "out", a.model, a.layer, a.batch)
        rows.append(("deepscope features (CLI, Ray start-up included)", len(paths) / wall))
        rows.append(("plain DataLoader loop (2 workers)", plain_loop(paths, model, a.layer, a.batch)))
        rows.append(("decode only (2 processes)", decode_only(paths, model)))
        rows.append(("model only, fp32", model_only(model, a.layer, a.batch, 256, False)))
        rows.append(("model only, fp32 channels_last", model_only(model, a.layer, a.batch, 256, True)))
    base = rows[1][1]
    print(f"\n{a.model} {a.layer}, {len(paths)} JPEGs, batch {a.batch}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"| {'what':50s} | images/s | vs plain loop |\n|{'-' * 52}|---------:|--------------:|")
    for name, rate in rows:
        print(f"| {name:50s} | {rate:8.1f} | {rate / base:12.2f}x |")


if __name__ == "__main__":
    main()
