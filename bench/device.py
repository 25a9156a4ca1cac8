"""The GPU path, measured (issue 17): one table, in one call on a GPU machine, in under 8 minutes.

    bash bench/device_wheels.sh          # here, once: the wheels the GPU machine lacks, into .whl/
    bash bench/device.sh                 # there (device tool: carry [".whl"]); prints the table
    .venv/bin/python bench/device.py --quick   # here, on the CPU: every code path at toy sizes

Rows (images/s unless said):
- decode only: JPEG decode + resize + crop in `--procs` processes (the CPU-side ceiling);
- model only: forward passes on batches already on the device (the model-side ceiling), per model
  (lite0, ResNet-50, AlexNet; random weights: speed only) and precision / memory format;
- actor: the features model worker's own code (`ModelMapper`, deepscope/mapper.py) on decoded
  partitions: host-to-device copy, normalization, forward, the features table, the part written;
- pipeline: decode processes feeding one actor, as the executor's read tasks do (goal: >= 0.8x the
  lower of the two ceilings);
- saliency: the saliency stage's actor code (backprop, integrated gradients) against a plain Captum
  loop on the same batches (images/s);
- style: the fast style network on 1200x630 images, ms per image (Johnson et al. report 50 ms on
  a Titan X);
- faiss: exact search of 1,000 queries over 200,000 x 1,280 vectors, queries/s (where faiss imports).
Where Ray is not installed (the GPU machine has no registry and Ray's wheel does not fit in one
call beside the others) the actor's code runs in this process, and the table says so.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

T0 = time.time()
ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, config: str, value: str, note: str = "") -> None:
    ROWS.append((what, config, value, note))
    print(f"| {what} | {config} | {value} | {note} |", flush=True)


def left(budget: float) -> bool:
    return time.time() - T0 < budget


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- data ---------------------------------------------------------------------------------------
def _make(args):
    folder, start, n, seed = args
    from PIL import Image
    from skimage import data as sk

    photos = [sk.chelsea(), sk.coffee(), sk.astronaut(), sk.rocket()]
    rng = np.random.default_rng(seed)
    for i in range(start, start + n):
        p = photos[i % len(photos)]
        w, h = int(rng.integers(256, 641)), int(rng.integers(256, 641))
        img = Image.fromarray(p).resize((w, h)).rotate(float(rng.uniform(-20, 20)))
        img.save(f"{folder}/img_{i:06d}.jpg", quality=90)
    return n


def make_jpegs(folder: Path, n: int, procs: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n // procs)
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_make, [(str(folder), s, min(per, n - s), s) for s in range(0, n, per)]))
    return sorted(str(p) for p in folder.glob("*.jpg"))


def _decode(args):
    paths, part, transform = args
    from deepscope.io.decode import DecodeLimits, decode_batch

    rows = {"id": np.array([os.path.basename(p) for p in paths], dtype=object), "path": np.array(paths, dtype=object),
            "label": np.array([""] * len(paths), dtype=object), "part": np.full(len(paths), part, dtype=object),
            "part_size": np.full(len(paths), len(paths), np.int32)}
    return decode_batch(rows, transform, DecodeLimits())


def partitions(paths: list[str], size: int) -> list[list[str]]:
    return [paths[i:i + size] for i in range(0, len(paths), size)]


def decode_ceiling(paths, transform, procs: int, part: int) -> tuple[float, list[dict]]:
    jobs = [(ps, f"p{i}", transform) for i, ps in enumerate(partitions(paths, part))]
    t = time.perf_counter()
    with ProcessPoolExecutor(procs) as ex:
        decoded = list(ex.map(_decode, jobs))
    return len(paths) / (time.perf_counter() - t), decoded


# -- features ------------------------------------------------------------------------------------
CONFIGS = {"fp32": ("fp32", False), "fp32 channels_last": ("fp32", True),
           "bf16": ("bf16", False), "bf16 channels_last": ("bf16", True)}


def model_only(loaded, layer, device, batch, iters, precision, channels_last) -> float:
    from deepscope.models.taps import forward_with_taps

    module = loaded.module.to(device).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loaded.module = module
    x = torch.randn(batch, 3, loaded.transform.crop, loaded.transform.crop, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), amp:
        for _ in range(2):
            forward_with_taps(loaded, x, [layer])
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            forward_with_taps(loaded, x, [layer])
        sync(device)
    return iters * batch / (time.perf_counter() - t)


def job_dict(model: str, layer: str, out: str, batch: int, part: int, precision: str, channels_last: bool,
             stage: dict | None = None) -> dict:
    from deepscope import job as jobmod

    return jobmod.validate({"out": out, "dataset": {"source": out}, "model": {"name": model, "weights": "random"},
                            "run": {"batch_size": batch, "partition_size": part, "precision": precision,
                                    "channels_last": channels_last},
                            **(stage or {"features": {"layer": layer}})}).model_dump(mode="json")


def call(m, rows):
    """One partition through the model worker, as the executor calls it: (partition, its rows)."""
    import types

    return m(types.SimpleNamespace(name=str(rows["part"][0])), rows)


def mapper(job: dict, out: str):
    from deepscope import job as jobmod
    from deepscope.mapper import ModelMapper
    from deepscope.runner import build_stages

    return ModelMapper(job, build_stages(jobmod.validate(job)), out=out)


def actor_rate(m, decoded: list[dict], repeat: int = 1) -> float:
    call(m, decoded[0])  # warm-up: cuDNN's algorithm choice, the first allocation
    sync(m.device)
    n, t = 0, time.perf_counter()
    for _ in range(repeat):
        for rows in decoded:
            call(m, rows)
            n += len(rows["id"])
    sync(m.device)
    return n / (time.perf_counter() - t)


def pipeline_rate(m, paths, transform, procs: int, part: int) -> float:
    jobs = [(ps, f"q{i}", transform) for i, ps in enumerate(partitions(paths, part))]
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_decode, jobs[:procs]))  # the processes started and warm, as Ray's read workers are
        t = time.perf_counter()
        for rows in ex.map(_decode, jobs):
            call(m, rows)
        sync(m.device)
    return len(paths) / (time.perf_counter() - t)


# -- saliency ------------------------------------------------------------------------------------
def captum_loop(loaded, decoded, method: str, batch: int, device, steps: int) -> float:
    from captum.attr import IntegratedGradients, Saliency

    model = loaded.module.to(device).eval()
    n, t = 0, time.perf_counter()
    for rows in decoded:
        px = torch.from_numpy(np.ascontiguousarray(rows["pixels"])).to(device)
        for i in range(0, len(px), batch):
            x = loaded.transform.normalize(px[i:i + batch])
            with torch.no_grad():
                target = model(x).argmax(1)
            if method == "backprop":
                a = Saliency(model).attribute(x, target=target, abs=True)
            else:
                a = IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=steps,
                                                         internal_batch_size=batch)
            a.abs().amax(1).cpu()
            n += len(x)
    sync(device)
    return n / (time.perf_counter() - t)


# -- style ---------------------------------------------------------------------------------------
def style_ms(device, batch: int, h: int, w: int, precision: str, channels_last: bool, iters: int) -> float:
    from deepscope.algos.style_net import StyleNet, StyleNetConfig, style_weights

    cfg = StyleNetConfig()
    net = StyleNet(cfg).to(device).eval()
    x = torch.rand(batch, 3, h, w, device=device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    wts = style_weights(cfg, batch, 0, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), amp:
        net(x, wts)
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            net(x, wts).clamp(0, 1)
        sync(device)
    return (time.perf_counter() - t) * 1000 / (iters * batch)


# -- faiss ---------------------------------------------------------------------------------------
def faiss_qps(n: int, d: int, q: int) -> float:
    import faiss

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    index = faiss.IndexFlatL2(d)
    index.add(xb)
    t = time.perf_counter()
    index.search(xb[:q] + 0.01, 10)
    return q / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes: check every code path here on the CPU")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="decode processes (the ceiling)")
    ap.add_argument("--budget", type=float, default=420, help="seconds; later sections are skipped after it")
    ap.add_argument("--sections", default="features,saliency,style,faiss")
    a = ap.parse_args()
    quick = a.quick
    if quick:
        a.budget = float("inf")  # a check of the code paths: every section runs
    n = 48 if quick else a.images
    part = 16 if quick else 1024
    batch = 8 if quick else 256
    iters = 1 if quick else 20
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        import ray  # noqa: F401
        ray_note = f"Ray {ray.__version__} is installed; the actor's code is measured in this process all the same"
    except ImportError:
        ray_note = "Ray is not installed here: the actor's code (ModelMapper) runs in this process"
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU (CPU)"
    print(f"# {datetime.date.today()} | {gpu} | torch {torch.__version__} | Python {sys.version.split()[0]} | "
          f"{os.cpu_count()} CPUs | load {os.getloadavg()[0]:.2f}")
    print(f"# {ray_note}")
    print("| what | configuration | value | note |\n|---|---|---:|---|")

    from deepscope.models.registry import load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp / "jpegs", n, a.procs)
        sections = a.sections.split(",")
        models = [("lite0", "penultimate"), ("torchvision:resnet50", "penultimate"), ("torchvision:alexnet", "fc7")]
        for model, layer in models if "features" in sections else []:
            loaded = load_model(model, "random")
            dec_rate, decoded = decode_ceiling(paths, loaded.transform, a.procs, part)
            row(f"decode only, {model} input", f"{a.procs} processes", f"{dec_rate:,.0f}")
            best = 0.0
            for name, (precision, cl) in CONFIGS.items():
                if not left(a.budget):
                    row(f"{model}", name, "skipped", "time budget spent")
                    continue
                mo = model_only(load_model(model, "random"), layer, device, batch, iters, precision, cl)
                out = str(tmp / f"out-{model.replace(':', '_')}-{precision}-{cl}")
                m = mapper(job_dict(model, layer, out, batch, part, precision, cl), out)
                ac = actor_rate(m, decoded)
                best = max(best, mo)
                row(f"{model} {layer}", name, f"{mo:,.0f} model only; {ac:,.0f} actor",
                    f"actor / model only {ac / mo:.2f}x")
                del m
            if left(a.budget):
                precision, cl = ("bf16", True) if device.type == "cuda" else ("fp32", True)
                out = str(tmp / f"pipe-{model.replace(':', '_')}")
                m = mapper(job_dict(model, layer, out, batch, part, precision, cl), out)
                call(m, decoded[0])
                pr = pipeline_rate(m, paths, loaded.transform, max(1, a.procs - 1), part)
                ceiling = min(dec_rate, best)
                row(f"{model} pipeline", f"{max(1, a.procs - 1)} decode processes -> actor, {precision}"
                    f"{' channels_last' if cl else ''}", f"{pr:,.0f}",
                    f"{pr / ceiling:.2f}x the lower ceiling ({ceiling:,.0f}; goal 0.8x)")
                del m
            if device.type == "cuda":
                torch.cuda.empty_cache()

        # saliency: the stage's actor code against a Captum loop (lite0)
        loaded = load_model("lite0", "random")
        _, decoded = decode_ceiling(paths[: (16 if quick else 512)], loaded.transform, a.procs, part)
        for method, steps in (("backprop", 0), ("integrated_gradients", 8 if quick else 50)) if "saliency" in sections else ():
            if not left(a.budget):
                row(f"saliency {method}", "", "skipped", "time budget spent")
                continue
            sal = {"saliency": {"method": [method], "grabcut": False, "steps": max(steps, 1),
                                "eval_batch": batch if method == "backprop" else max(1, batch // 4)}}
            out = str(tmp / f"sal-{method}")
            m = mapper(job_dict("lite0", "penultimate", out, batch, part, "fp32", True, sal), out)
            ours = actor_rate(m, decoded)
            ref = captum_loop(load_model("lite0", "random"), decoded, "backprop" if method == "backprop" else "ig",
                              batch if method == "backprop" else max(1, batch // 4), device, max(steps, 1))
            row(f"saliency {method}, lite0", "fp32 channels_last (stage) / fp32 (Captum loop)",
                f"{ours:,.1f} stage; {ref:,.1f} Captum loop", f"{ours / ref:.2f}x the loop")

        styles = (("fp32", False, 1), ("fp32", True, 1), ("bf16", True, 1), ("bf16", True, 8))
        for precision, cl, b in styles if "style" in sections else ():
            if not left(a.budget):
                row("style network", f"{precision}", "skipped", "time budget spent")
                continue
            h, w = (63, 120) if quick else (630, 1200)
            ms = style_ms(device, b, h, w, precision, cl, iters)
            row(f"style network {w}x{h}", f"{precision}{' channels_last' if cl else ''}, batch {b}",
                f"{ms:.1f} ms/image", "Johnson et al.: 50 ms on a Titan X")

        if "faiss" in sections:
            try:
                qps = faiss_qps(2000 if quick else 200_000, 1280, 100 if quick else 1000)
                row("faiss exact search (CPU)", f"{2000 if quick else 200_000:,} x 1280, k = 10", f"{qps:,.0f} queries/s")
            except ImportError:
                row("faiss", "", "not installed", "")
    print(f"\n# total {time.time() - T0:.0f} s")


if __name__ == "__main__":
    main()
