"""Benchmark: units visualized per second for a layer of lite0, batched against one at a time
(same targets, steps and seed), and robustness images/s for FGSM and PGD over a list of eps.

    PYTHONPATH=lib .venv/bin/python bench/visualize.py [--units 8] [--steps 10] [--size 128] [--images 8]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepscope.algos import adversarial as adv
from deepscope.algos.ascent import AscentSettings, visualize
from deepscope.models.registry import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", default="_blocks.6")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--eps", default="1,2,4,8")
    a = ap.parse_args()
    loaded = load_model("lite0")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    loaded.module.to(device)
    s = AscentSettings(steps=a.steps, size=a.size)
    units = list(range(a.units))
    visualize(loaded, a.layer, units[:1], AscentSettings(steps=1, size=a.size), kind="unit")  # warm-up

    t = time.perf_counter()
    batched = visualize(loaded, a.layer, units, s, kind="unit")
    t_batch = time.perf_counter() - t
    t = time.perf_counter()
    singles = [visualize(loaded, a.layer, [u], s, kind="unit") for u in units]
    t_one = time.perf_counter() - t
    same = max(int(np.abs(b.astype(int) - o.pixels[0].astype(int)).max()) for b, o in zip(batched.pixels, singles))

    print(f"# lite0 {a.layer}, {a.units} units, {a.steps} steps at {a.size}px, {device}, {torch.get_num_threads()} threads")
    print(f"{'method':34s} {'seconds':>8s} {'units/s':>8s}")
    print(f"{'one at a time (baseline)':34s} {t_one:8.1f} {a.units / t_one:8.2f}")
    print(f"{'batched':34s} {t_batch:8.1f} {a.units / t_batch:8.2f}   speed-up x{t_one / t_batch:.2f}, "
          f"largest pixel difference {same}")

    from deepscope.demo_data import make_demo_data
    from deepscope.optimize import model_input

    with tempfile.TemporaryDirectory() as d:
        make_demo_data(d, per_photo=max(1, a.images // 6 + 1))
        paths = sorted(str(p) for p in Path(d).rglob("*.jpg"))[:a.images]
        x = torch.cat([model_input(loaded, p) for p in paths]).to(device)
    eps = [float(e) for e in a.eps.split(",")]
    clean = adv.logits_of(loaded, x).argmax(1)
    print(f"\n# robustness: {len(x)} images at {x.shape[-1]}px, eps {a.eps} (smallest eps that changes each prediction)")
    print(f"{'attack':34s} {'seconds':>8s} {'images/s':>8s}  changed at each eps")
    for name, attack in (("fgsm", lambda p, e: adv.fgsm(loaded, p, e)),
                         ("pgd 10 steps, early stop", lambda p, e: adv.pgd(loaded, p, e, steps=10, stop_early=True))):
        t = time.perf_counter()
        min_eps = torch.full((len(x),), float("nan"))
        for e in eps:
            idx = torch.isnan(min_eps).nonzero()[:, 0]
            if len(idx) == 0:
                break
            pred = adv.logits_of(loaded, attack(x[idx], e)).argmax(1).cpu()
            min_eps[idx[pred != clean[idx].cpu()]] = e
        dt = time.perf_counter() - t
        shares = " ".join(f"{float((min_eps <= e).float().mean()):.0%}" for e in eps)
        print(f"{name:34s} {dt:8.1f} {len(x) / dt:8.2f}  {shares}")


if __name__ == "__main__":
    main()
