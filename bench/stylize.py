"""Bulk stylization at 512 px (the Ray pipeline) against a plain loop applying the same network one
image at a time, and seconds per image of the Gatys method. On a GPU also: ms per 1200x630 image
against the 50 ms published for Johnson et al.'s network on a Pascal Titan X.

    python bench/stylize.py [--images 48] [--widths 32,64,128] [--gatys-steps 50]

Quality (issue 14), --quality [--quality-only]: the demo's fast style network (its [stylize.train]
settings, trained here on the demo images) judged on one held-out crop of each demo photo: the
edge map of each output against its own input and the best other input (structure), and the Gram
style loss measured with another network (lite1) relative to the content images' (style carried).

    python bench/stylize.py --quality-only [--figure runs/bench-stylize.png]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from deepscope import job as jobmod  # noqa: E402
from deepscope.algos import style_net as sn  # noqa: E402
from deepscope.algos.style_net import stylize_images  # noqa: E402
from deepscope.algos.style_train import encode  # noqa: E402
from deepscope.io.demo_data import make_demo_data  # noqa: E402
from deepscope.runner import run  # noqa: E402


def load_average() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()


def quality(a, tmp: Path):
    import tomllib

    from deepscope.algos import style as st
    from deepscope.algos.quality import structure_kept
    from deepscope.models.registry import load_model
    from deepscope.algos.style_train import ContentImages, TrainConfig, Trainer, load_style_image, to_tensor

    demo = tomllib.loads((Path(__file__).resolve().parents[1] / "jobs" / "demo.toml").read_text())
    t = demo["stylize"]["train"]
    data = tmp / "qdata"
    make_demo_data(data, per_photo=50)
    cfg = TrainConfig(styles=t["styles"], content=str(data), size=t["size"], style_size=2 * t["size"],
                      steps=t["steps"], batch_size=t.get("batch_size", 4), widths=(16, 32, 64), res_blocks=3)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    trainer.train_steps(ContentImages("", cfg.size, cfg.seed, paths=[p for p in paths if not p.endswith("_049.jpg")]),
                        cfg.steps)
    train_s = time.perf_counter() - t0
    held = [p for p in paths if p.endswith("_049.jpg")]  # one held-out image per photo
    crops = ContentImages("", 192, seed=99, paths=held)
    x = torch.stack([crops.crop(p) for p in held])
    with torch.no_grad():
        y = trainer.net(x, sn.style_weights(trainer.net.config, len(x), 0)).clamp(0, 1)
    own, other = structure_kept(y, x)
    judge = load_model("lite1")
    _, layers = st.default_layers(judge)
    net = st.LossNetwork(judge, layers)
    targets = st.style_targets(net, [to_tensor(load_style_image(cfg.styles[0]), cfg.style_size)], layers)
    w = st.gram_weights(targets)
    with torch.no_grad():
        ratio = st.style_loss(net(y), targets, w) / st.style_loss(net(x), targets, w)
    h = trainer.history
    print(f"\n# fast style network, demo settings ({', '.join(cfg.styles)}; {cfg.steps} steps at {cfg.size} px, "
          f"lr {cfg.lr}, style weight {cfg.style_weight}, loss network lite0 {trainer.style_layers}): "
          f"trained in {train_s:.0f} s, load average {load_average()}")
    print(f"style loss (lite0, relative) {np.mean([r[2] for r in h[:10]]):.3f} -> {np.mean([r[2] for r in h[-10:]]):.3f}, "
          f"content loss {np.mean([r[3] for r in h[:10]]):.3f} -> {np.mean([r[3] for r in h[-10:]]):.3f} "
          "(first / last 10 steps)")
    print(f"{'held-out image':28s} {'edges: own':>10s} {'best other':>10s} {'style loss (lite1) / content image':>36s}")
    for p, o, b, r in zip(held, own.tolist(), other.tolist(), ratio.tolist()):
        print(f"{Path(p).name:28s} {o:10.2f} {b:10.2f} {r:36.2f}")
    if a.figure:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(x) + 1, figsize=(2.2 * (len(x) + 1), 4.6))
        for ax in axes.flat:
            ax.axis("off")
        style = load_style_image(cfg.styles[0])
        axes[0, 0].imshow(style)
        axes[0, 0].set_title("style", fontsize=9)
        for j in range(len(x)):
            axes[0, j + 1].imshow(x[j].permute(1, 2, 0).numpy())
            axes[1, j + 1].imshow(y[j].permute(1, 2, 0).numpy())
            axes[1, j + 1].set_title(f"edges {own[j]:.2f} / {other[j]:.2f}, style {ratio[j]:.2f}", fontsize=7)
        fig.tight_layout()
        Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.figure, dpi=80)
        print(f"figure: {a.figure}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quality", action="store_true", help="also train the demo's style network and judge it")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--figure", help="quality: write sources, outputs and the style image here (PNG)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--res-blocks", type=int, default=5)
    ap.add_argument("--gatys-steps", type=int, default=50)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stylize-"))
    try:
        if a.quality or a.quality_only:
            quality(a, tmp)
            if a.quality_only:
                return
        data = tmp / "data"
        make_demo_data(data, per_photo=max(1, a.images // 6))
        paths = sorted(data.rglob("*.jpg"))
        # the demo photos are 320 px: upscale them to the benchmark's size
        for p in paths:
            img = Image.open(p)
            s = a.size / max(img.size)
            img.resize((round(img.width * s), round(img.height * s))).save(p, quality=90)
        torch.manual_seed(0)
        net = sn.StyleNet(sn.StyleNetConfig(styles=["a"], widths=tuple(int(w) for w in a.widths.split(",")),
                                            res_blocks=a.res_blocks)).eval()
        model = tmp / "m.pt"
        model.write_bytes(sn.to_bytes(net))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        rows = []

        # baseline: one process, one image at a time (decode, network, encode, write)
        net_d = net.to(device)
        w = sn.style_weights(net.config, 1, device=device)
        (tmp / "loop").mkdir()
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            img = Image.open(p).convert("RGB")
            out = stylize_images(net_d, [img], w, device)[0]
            (tmp / "loop" / f"{i}.jpg").write_bytes(encode(Image.fromarray(out), "jpeg"))
        loop_s = time.perf_counter() - t0
        rows.append(("plain loop, one image at a time", len(paths), loop_s))

        spec = jobmod.validate({"out": str(tmp / "out"), "dataset": {"source": str(data)},
                                "run": {"batch_size": 8, "partition_size": 16},
                                "stylize": {"style_model": str(model)}})
        t0 = time.perf_counter()
        run(spec)
        rows.append(("deepscope stylize (Ray pipeline, end to end)", len(paths), time.perf_counter() - t0))

        print(f"\n{len(paths)} images at {a.size} px, network widths {a.widths}, {a.res_blocks} residual blocks, {device}"
              f" ({torch.get_num_threads()} torch threads)")
        print(f"{'method':48s} {'images':>7s} {'seconds':>8s} {'img/s':>7s}")
        for name, n, s in rows:
            print(f"{name:48s} {n:7d} {s:8.1f} {n / s:7.2f}")

        # Gatys: seconds per image (lite0 loss network, L-BFGS)
        from deepscope.algos.style import LossNetwork, default_layers, neural_style
        from deepscope.models.registry import load_model
        from deepscope.algos.style_train import load_style_image, to_tensor

        loaded = load_model("lite0")
        loaded.module.to(device)
        c, s = default_layers(loaded)
        lnet = LossNetwork(loaded, c + s)
        content = to_tensor(Image.open(paths[0]).convert("RGB"), 256).to(device)
        style = to_tensor(load_style_image("skimage:brick"), 256).to(device)
        t0 = time.perf_counter()
        neural_style(lnet, content, [style], c, s, steps=a.gatys_steps)
        gs = time.perf_counter() - t0
        print(f"Gatys (lite0, L-BFGS {a.gatys_steps} steps, 256 px): {gs:.1f} s per image "
              f"({gs / a.gatys_steps * 1000:.0f} ms per step)")

        if device.type == "cuda":
            x = torch.rand(1, 3, 630, 1200, device=device)
            w1 = sn.style_weights(net.config, 1, device=device)
            with torch.inference_mode():
                for half in (False, True):
                    m = net_d.half() if half else net_d.float()
                    xx = x.half() if half else x
                    for _ in range(3):
                        m(xx, w1.to(xx.dtype))
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(20):
                        m(xx, w1.to(xx.dtype))
                    torch.cuda.synchronize()
                    ms = (time.perf_counter() - t0) / 20 * 1000
                    print(f"1200x630 on {torch.cuda.get_device_name()} ({'fp16' if half else 'fp32'}): {ms:.1f} ms "
                          "(Johnson et al. 2016: 50 ms on a Pascal Titan X)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
