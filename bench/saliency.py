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
steps), through algos/saliency.py in this process (lite0, real weights, one image per demo photo in
turn), in chunks of 12 images: a chunk's first round is the fixed-steps run and its later rounds
the tolerance's extra cost.  The extra model evaluations and seconds, and the completeness errors
of both.  All 300 demo images take about an hour on 2 cores; --ig-record makes the run resumable:

    .venv/bin/python bench/saliency.py --methods ig_tolerance --slow-images 6
    .venv/bin/python bench/saliency.py --methods ig_tolerance --images 300 --slow-images 300 --ig-record ig.csv
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


class _TimedRounds(list):
    """integrated_gradients' rounds, each stamped with the time it ended."""

    def append(self, item):
        super().append((time.perf_counter(), *item))


def ig_tolerance(paths: list[str], tolerance: float = 0.05, steps: int = 50, max_steps: int = 800,
                 chunk: int = 12, record: str | None = None) -> list[tuple]:
    """(run, images, image-steps evaluated, seconds, median ig_delta, max ig_delta, rerun, still missing, load)
    for integrated gradients at fixed steps and at the tolerance.  One run per chunk of images: its
    first round is the fixed-steps run, its later rounds (the images that missed, at 2x, 4x ... the
    steps) are the tolerance's extra cost.  record: a CSV that each chunk's per-image results are
    appended to; the images already there are read back instead of computed (a long run resumes)."""
    import csv

    done = {}
    if record and os.path.exists(record):
        with open(record) as f:
            done = {r["path"]: r for r in csv.DictReader(f)}

    def key(p):  # photo/name.jpg: the same image in another temporary folder
        return "/".join(Path(p).parts[-2:])
    todo = [p for p in paths if key(p) not in done]
    loaded = load_model("lite0") if todo else None
    tf = loaded.transform.torchvision() if todo else None
    fields = ["path", "delta_fixed", "delta_final", "steps", "fixed_evals", "extra_evals", "fixed_s", "extra_s", "load"]
    for c in range(0, len(todo), chunk):
        part = todo[c:c + chunk]
        x = torch.stack([tf(decode(read_bytes(p))[0]) for p in part])
        with torch.no_grad():
            target = loaded.module(x).argmax(1)
        rounds = _TimedRounds()
        t0 = time.perf_counter()
        _, delta, used = sal.integrated_gradients(loaded.module, x, target, sal.Options(
            steps=steps, tolerance=tolerance, max_steps=max_steps), rounds=rounds)
        first = rounds[0]
        fixed_s, extra_s = first[0] - t0, time.perf_counter() - first[0]
        extra = {i: 0 for i in range(len(part))}  # Captum evaluates steps + 2 inputs (the path, then x and the baseline)
        for _, n_steps, idx, _ in rounds[1:]:
            for i in idx.tolist():
                extra[i] += n_steps + 2
        ld = load()
        rows = [{"path": key(p), "delta_fixed": float(first[3][i]), "delta_final": float(delta[i]), "steps": int(used[i]),
                 "fixed_evals": steps + 2, "extra_evals": extra[i], "fixed_s": fixed_s / len(part),
                 "extra_s": extra_s / len(part), "load": ld} for i, p in enumerate(part)]
        if record:
            new = not os.path.exists(record)
            with open(record, "a", newline="") as f:
                w = csv.DictWriter(f, fields)
                if new:
                    w.writeheader()
                w.writerows(rows)
        done.update({r["path"]: r for r in rows})
        print(f"  integrated gradients: {len(done)}/{len(paths)} images; this chunk {fixed_s:.0f} s at {steps} steps "
              f"+ {extra_s:.0f} s for {sum(1 for v in extra.values() if v)} reruns; {ld}", file=sys.stderr, flush=True)
    got = [done[key(p)] for p in paths]
    col = {k: np.array([float(r[k]) for r in got]) for k in fields[1:-1]}
    loads = sorted({r["load"] for r in got})
    span = f"{loads[0]} .. {loads[-1]}" if loads else ""
    fixed = ("fixed 50 steps" if steps == 50 else f"fixed {steps} steps", len(got), int(col["fixed_evals"].sum()),
             float(col["fixed_s"].sum()), float(np.nanmedian(col["delta_fixed"])), float(np.nanmax(col["delta_fixed"])),
             0, int((col["delta_fixed"] > tolerance).sum()), span)
    tol = (f"tolerance {tolerance:g}", len(got), int((col["fixed_evals"] + col["extra_evals"]).sum()),
           float((col["fixed_s"] + col["extra_s"]).sum()), float(np.nanmedian(col["delta_final"])),
           float(np.nanmax(col["delta_final"])), int((col["steps"] > steps).sum()),
           int((col["delta_final"] > tolerance).sum()), span)
    return [fixed, tol]


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
    ap.add_argument("--ig-record", help="ig_tolerance: append per-image results to this CSV, and resume from it")
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
            ig_rows = ig_tolerance([by_photo[i % len(by_photo)][i // len(by_photo)] for i in range(a.slow_images)],
                                   record=a.ig_record)
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
        print(f"\nintegrated gradients, lite0, Gauss-Legendre; {os.cpu_count()} CPU cores; load = the 1-minute load "
              "average after each chunk (lowest .. highest)\n")
        print(f"{'run':16s} {'images':>6s} {'image-steps':>11s} {'seconds':>8s} {'median delta':>12s} "
              f"{'max delta':>9s} {'rerun':>5s} {'>0.05':>5s}  load")
        for name, n, ev, sec, med, mx, rerun, miss, ld in ig_rows:
            print(f"{name:16s} {n:6d} {ev:11d} {sec:8.1f} {med:12.4f} {mx:9.4f} {rerun:5d} {miss:5d}  {ld}")
        (_, _, ev0, s0, *_), (_, _, ev1, s1, *_) = ig_rows
        print(f"extra cost of the tolerance: {ev1 / ev0:.2f}x the model evaluations, {s1 / s0:.2f}x the seconds")


if __name__ == "__main__":
    main()
