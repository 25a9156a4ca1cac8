"""Saliency throughput: the deepscope stage (Ray start-up included) against a loop that calls Captum
one image at a time, same model (lite0), same images, decoding included for both.

    .venv/bin/python bench/saliency.py [--images 256] [--slow-images 4]

The baseline per image: read + decode + torchvision preprocessing, a forward pass for the
predicted class, then the Captum method with its defaults (occlusion: 15x15 window, stride 8,
one window per forward pass).  It runs in a Ray worker (timed inside, model loaded first) so
that both sides get the same CPU priority: Ray runs its workers at nice 15.  The stage runs the same methods and settings on the model actor,
in batches, writes Parquet and computes the dataset statistics; GrabCut is off except in the
last row (it is extra work the baseline does not do).

The ig_tolerance rows compare integrated gradients at a fixed 50 steps with the same images at the
default tolerance (ig_delta <= 0.05: the images that miss run again at 100, 200, ... up to 800
steps), both through algos/saliency.py in this process (lite0, real weights, one image per demo
photo in turn): the extra model evaluations and seconds, and the completeness errors of both.

    .venv/bin/python bench/saliency.py --methods ig_tolerance --slow-images 6
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
logging.getLogger("ray").setLevel(logging.ERROR)

from deepscope import job as jobmod  # noqa: E402
from deepscope.algos import saliency as sal  # noqa: E402
from deepscope.algos.saliency import default_cam_layer  # noqa: E402
from deepscope.io.demo_data import make_demo_data  # noqa: E402
from deepscope.io.decode import decode  # noqa: E402
from deepscope.io.sources import read_bytes  # noqa: E402
from deepscope.models.registry import load_model  # noqa: E402


def captum_loop(loaded, method: str, paths: list[str]) -> float:
    """Images per second of the one-image-at-a-time Captum loop."""
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerGradCam, Occlusion, Saliency

    model, tf = loaded.module, loaded.transform.torchvision()
    kwargs = {}
    if method == "backprop":
        algo = Saliency(model)
    elif method == "guided":
        algo = GuidedBackprop(model)
    elif method == "integrated_gradients":
        algo = IntegratedGradients(model)
        kwargs = {"n_steps": 50}
    elif method == "occlusion":
        algo = Occlusion(model)
        kwargs = {"sliding_window_shapes": (3, 15, 15), "strides": (3, 8, 8)}
    else:
        x = torch.zeros(1, 3, loaded.transform.crop, loaded.transform.crop)
        # lite0: the activated head, the last call of _swish; Captum's hook keeps a module's last call (same cost)
        algo = LayerGradCam(model, dict(model.named_modules())[default_cam_layer(model, x).module])
    t0 = time.perf_counter()
    for p in paths:
        img, _, _ = decode(read_bytes(p))
        x = tf(img)[None]
        with torch.no_grad():
            target = model(x).argmax(1)
        attr = algo.attribute(x, target=target, **kwargs)
        attr.detach().abs().amax(1).numpy()
    return len(paths) / (time.perf_counter() - t0)


def load() -> str:
    return "load %s" % os.getloadavg()[0].__format__(".2f")


def ig_tolerance(paths: list[str], tolerance: float = 0.05, steps: int = 50, max_steps: int = 800) -> list[tuple]:
    """(run, images, image-steps evaluated, seconds, median ig_delta, max ig_delta, rerun, still missing, load)
    for integrated gradients at fixed steps and at the tolerance, same images, same process."""
    loaded = load_model("lite0")
    tf = loaded.transform.torchvision()
    x = torch.stack([tf(decode(read_bytes(p))[0]) for p in paths])
    with torch.no_grad():
        target = loaded.module(x).argmax(1)
    rows = []
    for name, tol in (("fixed 50 steps", 0.0), (f"tolerance {tolerance:g}", tolerance)):
        before = load()
        t0 = time.perf_counter()
        _, delta, used = sal.integrated_gradients(loaded.module, x, target, sal.Options(
            steps=steps, tolerance=tol, max_steps=max_steps))
        seconds = time.perf_counter() - t0
        # Captum evaluates steps + 2 inputs per image and run (the path, then x and the baseline)
        rounds = [steps * 2 ** k for k in range(8) if steps * 2 ** k <= max(int(used.max()), steps)]
        evaluated = sum(int((used >= s).sum()) * (s + 2) for s in rounds)
        rows.append((name, len(paths), evaluated, seconds, float(np.median(delta.numpy())), float(delta.max()),
                     int((used > steps).sum()), int((delta > tolerance).sum()), f"{before} -> {load()}"))
        print(f"  {name}: {seconds:.1f} s, ig_delta {' '.join(f'{d:.4f}' for d in delta.tolist())}, "
              f"steps {used.tolist()}", file=sys.stderr, flush=True)
    return rows


def captum_loop_in_ray(method: str, paths: list[str]) -> float:
    """The same loop, run in a Ray worker: Ray starts its workers at nice 15, and on a machine that
    others are loading a nice-0 baseline would get more CPU than the stage's actor does."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)

    @ray.remote(num_cpus=os.cpu_count())
    def task():
        torch.set_num_threads(os.cpu_count() or 1)  # Ray sets OMP_NUM_THREADS=1 in workers
        return captum_loop(load_model("lite0"), method, paths)

    rate = ray.get(task.remote())
    ray.shutdown()
    return rate


def stage(data: str, method: str, paths: list[str], workdir: str, grabcut: bool = False,
          precision: str = "fp32") -> float:
    """Images per second of `deepscope run` with a [saliency] section, Ray start-up included."""
    import ray

    from deepscope.runner import run

    if ray.is_initialized():
        ray.shutdown()
    manifest = Path(workdir) / f"{method}-{len(paths)}-{grabcut}.csv"
    manifest.write_text("path\n" + "\n".join(paths) + "\n")
    out = Path(workdir) / f"out-{method}-{len(paths)}-{grabcut}-{precision}"
    slow = method in ("occlusion", "integrated_gradients")
    spec = jobmod.validate({"out": str(out), "dataset": {"source": str(manifest)}, "model": {"name": "lite0"},
                            "run": {"batch_size": 4 if slow else 16, "partition_size": 256, "precision": precision},
                            "saliency": {"method": method, "grabcut": grabcut}}, "bench")
    t0 = time.perf_counter()
    # a fresh local cluster, timed: plain ray.init() would join any cluster that `ray start` left
    # running on this machine (see /tmp/ray/ray_current_cluster), and not pay its start-up
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    run(spec)
    return len(paths) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256, help="images for backprop, guided, gradcam")
    ap.add_argument("--slow-images", type=int, default=4, help="images for occlusion and integrated gradients")
    ap.add_argument("--methods",
                    default="backprop,guided,gradcam,integrated_gradients,occlusion,occlusion_bf16,grabcut,ig_tolerance",
                    help="rows to measure (grabcut: backprop with GrabCut masks, against the backprop loop; "
                         "occlusion_bf16: the stage with bf16 autocast, against the fp32 loop; ig_tolerance: "
                         "integrated gradients at fixed 50 steps against the default tolerance, --slow-images images)")
    a = ap.parse_args()
    wanted = set(a.methods.split(","))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        make_demo_data(data, per_photo=max(1, -(-a.images // 6)))
        paths = sorted(str(p) for p in data.rglob("*.jpg"))
        rows, baselines, ig_rows = [], {}, []
        if "ig_tolerance" in wanted:  # one image of each demo photo in turn
            by_photo = [sorted(str(p) for p in d.glob("*.jpg")) for d in sorted(data.iterdir())]
            ig_rows = ig_tolerance([by_photo[i % len(by_photo)][i // len(by_photo)] for i in range(a.slow_images)])
        for method, n, grabcut in (("backprop", a.images, False), ("guided", a.images, False),
                                   ("gradcam", a.images, False), ("integrated_gradients", 2 * a.slow_images, False),
                                   ("occlusion", a.slow_images, False), ("occlusion_bf16", a.slow_images, False),
                                   ("backprop", a.images, True)):
            if ("grabcut" if grabcut else method) not in wanted:
                continue
            method, precision = (method[:-5], "bf16") if method.endswith("_bf16") else (method, "fp32")
            chosen = paths[:n]
            if method not in baselines:
                baselines[method] = captum_loop_in_ray(method, chosen)
            base = baselines[method]
            ours = stage(str(data), method, chosen, tmp, grabcut, precision)
            rows.append((method + (" +grabcut" if grabcut else "") + (" bf16" if precision == "bf16" else ""), n, "", base, ours))
            print(f"  {method}: captum {base:.3f} img/s, deepscope {ours:.3f} img/s", file=sys.stderr, flush=True)
    if rows:
        print(f"\nlite0, {os.cpu_count()} CPU cores, torch {torch.__version__}; deepscope times include Ray start-up\n")
        print(f"{'method':28s} {'images':>6s} {'captum loop img/s':>18s} {'deepscope img/s':>16s} {'speed-up':>9s}")
    for name, n, _, base, ours in rows:
        print(f"{name:28s} {n:6d} {base:18.3f} {ours:16.3f} {ours / base:8.2f}x")
    if ig_rows:
        print(f"\nintegrated gradients, lite0, Gauss-Legendre; {os.cpu_count()} CPU cores; load = 1-minute load average "
              "before -> after\n")
        print(f"{'run':16s} {'images':>6s} {'image-steps':>11s} {'seconds':>8s} {'median delta':>12s} "
              f"{'max delta':>9s} {'rerun':>5s} {'>0.05':>5s}  load")
        for name, n, ev, sec, med, mx, rerun, miss, ld in ig_rows:
            print(f"{name:16s} {n:6d} {ev:11d} {sec:8.1f} {med:12.4f} {mx:9.4f} {rerun:5d} {miss:5d}  {ld}")
        (_, _, ev0, s0, *_), (_, _, ev1, s1, *_) = ig_rows
        print(f"extra cost of the tolerance: {ev1 / ev0:.2f}x the model evaluations, {s1 / s0:.2f}x the seconds")


if __name__ == "__main__":
    main()
