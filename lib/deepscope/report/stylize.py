"""The stylize stage's figures and report section: the style images, sources above their stylized
versions and, for a multi-style network, the strip of blends between its first two styles; the
training losses of the network file."""
from __future__ import annotations

import html
import io

import numpy as np
import torch

from deepscope.algos.style_net import stylize_images

BLEND_STEPS = 5  # images in the report's strip of blends between two styles


def stylize_figure(store, sample, net, meta=None, style_specs=None) -> str | None:
    """The style images, sources above their stylized versions, and for a multi-style network
    the strip of blends between its first two styles on the first image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from deepscope.io.decode import decode
    from deepscope.io.sources import read_bytes

    pairs = []
    for src, out in sample:
        try:
            a, _, _ = decode(read_bytes(src))
            pairs.append((a, Image.open(io.BytesIO(store.read_bytes(out))).convert("RGB")))
        except Exception:
            continue
    if not pairs:
        return None
    blends = []
    if net is not None and net.config.n_styles >= 2:
        img = pairs[0][0].copy()
        img.thumbnail((256, 256))
        for k in range(BLEND_STEPS):
            a = 1 - k / (BLEND_STEPS - 1)
            w = torch.zeros(1, net.config.n_styles)
            w[0, 0], w[0, 1] = a, 1 - a
            blends.append((f"{net.config.styles[0]} {a:.2f} / {net.config.styles[1]} {1 - a:.2f}",
                            stylize_images(net, [img], w, torch.device("cpu"))[0]))
    styles = style_images(style_specs if style_specs is not None else (meta or {}).get("train", {}).get("styles", []))
    cols = max(len(pairs), len(blends), len(styles))
    top = 1 if styles else 0
    rows = top + 2 + (1 if blends else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, (name, img) in enumerate(styles):
        axes[0, j].imshow(img)
        axes[0, j].set_title(f"style: {name}", loc="left", fontsize=9)
    for j, (a, b) in enumerate(pairs):
        axes[top, j].imshow(a)
        axes[top + 1, j].imshow(b)
    axes[top, 0].set_title("sources", loc="left", fontsize=9)
    axes[top + 1, 0].set_title("stylized", loc="left", fontsize=9)
    for j, (title, arr) in enumerate(blends):
        axes[top + 2, j].imshow(arr)
        axes[top + 2, j].set_title(title, fontsize=7)
    return _save(fig, store, "report/stylize.png")


def stylize_html(s: dict, images: str) -> str:
    """The stage's report section from its summary; `images`: the folder of the stylized images."""
    img = (f"<img class=grid loading=lazy src=\"../{html.escape(s['figure'])}\">" if s.get("figure") else "")
    if s.get("method") == "gatys":
        return (f"<p>{s.get('images', 0)} images ({s.get('megapixels', 0)} Mpx) stylized by Gatys optimization, "
                f"each image its own problem, batched on the model actors: style "
                f"<code>{html.escape(str(s.get('style_image')))}</code>, loss network "
                f"<code>{html.escape(str(s.get('loss_network')))}</code>, {s.get('steps')} {html.escape(str(s.get('optimizer')))} "
                f"steps at {s.get('size')} px, style weight {s.get('style_weight')}; in <code>{images}/</code>, listed in "
                f"<code>stylized.parquet</code>.</p>{img}")
    if s.get("training_figure"):
        img += (f"<p>Training: style and content loss (relative to the style's and the content's own "
                f"features) per step.</p><img loading=lazy src=\"../{html.escape(s['training_figure'])}\">")
    return (f"<p>{s.get('images', 0)} images ({s.get('megapixels', 0)} Mpx) stylized with "
            f"<code>{html.escape(str(s.get('model')))}</code> (styles {html.escape(', '.join(s.get('network_styles', [])))};"
            f" used: {html.escape(', '.join(s.get('styles', [])))}), in <code>{images}/</code>, listed in "
            f"<code>stylized.parquet</code>.</p>{img}")


def style_images(specs: list[str]) -> list[tuple[str, object]]:
    """(name, PIL image) of each style a network was trained on (files that are gone are skipped)."""
    from deepscope.algos.style_train import load_style_image, style_name

    out = []
    for spec in specs:
        try:
            img = load_style_image(spec)
        except Exception:
            continue
        img.thumbnail((256, 256))
        out.append((style_name(spec), img))
    return out


def training_figure(store, meta: dict) -> str | None:
    """Style and content loss per training step (the network file's history), as a PNG in the report."""
    hist = (meta or {}).get("history") or []
    if not hist:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.asarray(hist, dtype=np.float64)  # step, style index, style loss, content loss
    names = (meta.get("train") or {}).get("styles") or []
    fig, ax = plt.subplots(figsize=(6, 3))
    k = max(1, len(h) // 50)  # a running mean over ~2% of the steps
    smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")  # noqa: E731
    for si in sorted(set(h[:, 1].astype(int))):
        rows = h[h[:, 1] == si]
        label = names[si].split(":")[-1] if si < len(names) else str(si)
        ax.plot(rows[k - 1:, 0], smooth(rows[:, 2]), label=f"style loss ({label})")
    ax.plot(h[k - 1:, 0], smooth(h[:, 3]), label="content loss", color="k")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(fig, store, "report/stylize_training.png")


def _save(fig, store, rel: str) -> str:
    """A figure as a PNG in the output folder -> its path there."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    store.write_file(rel, buf.getvalue())
    return rel
