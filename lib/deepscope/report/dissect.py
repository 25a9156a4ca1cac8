"""The dissect stage's figures and report section: the paper's bar chart of unique detectors per
category, and per unit its top images with the region above its threshold kept bright."""
from __future__ import annotations

import html
import io

import numpy as np
import torch

from deepscope.algos import dissect as algo


def bar_chart(per_category: dict, layer: str, detectors: int, units: int) -> bytes:
    """The paper's figure: unique detectors (distinct concepts with a detector unit) per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cats = list(per_category)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    bars = ax.bar(cats, [per_category[c]["unique"] for c in cats], color="#4c72b0")
    for b, c in zip(bars, cats):
        ax.annotate(f"{per_category[c]['detectors']} units", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("unique detectors")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{layer}: {detectors} detectors of {units} units", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def unit_grid(loaded, layer: str, k: int, shown, best, thresholds, log) -> bytes:
    """Rows = units (best IoU first), columns = their top images, the region above T_k kept bright."""
    from deepscope.io.decode import decode
    from deepscope.io.sources import read_bytes
    from deepscope.models.taps import forward_with_taps
    from deepscope.report.figures import grid, to_jpeg_bytes

    tf, crop = loaded.transform, loaded.transform.crop
    rows = best.to_pandas()
    rows = rows[rows["unit"].isin(shown["unit"])]
    pixels = {}
    for path in rows["path"].unique():
        try:
            pixels[path] = tf.geometry(decode(read_bytes(path))[0])
        except Exception as e:
            log(f"dissect: cannot read {path} again ({e})")
    paths = list(pixels)
    maps = {}
    for start in range(0, len(paths), 16):
        chunk = paths[start:start + 16]
        x = tf.normalize(torch.from_numpy(np.stack([pixels[p] for p in chunk])))
        _, taps = forward_with_taps(loaded, x, [layer])
        maps.update(zip(chunk, taps[layer].float()))
    tiles, labels = [], []
    for r in shown.itertuples():
        labels.append(f"{r.unit} {r.concept} ({r.category}) {r.iou:.2f}")
        mine = rows[rows["unit"] == r.unit].sort_values("rank")
        for j in range(k):
            if j >= len(mine) or mine["path"].iloc[j] not in maps:
                tiles.append(None)
                continue
            path = mine["path"].iloc[j]
            act = maps[path][r.unit][None]
            centres = (np.arange(crop) + 0.5) / crop
            ys = np.clip(centres * act.shape[1] - 0.5, 0, act.shape[1] - 1)
            xs = np.clip(centres * act.shape[2] - 0.5, 0, act.shape[2] - 1)
            on = (algo.upsample(act, ys, xs)[0].double() > thresholds[r.unit]).numpy()
            img = pixels[path].transpose(1, 2, 0).astype(np.float32)
            tiles.append(np.where(on[:, :, None], img, img * 0.25).astype(np.uint8))  # outside: darkened
    return to_jpeg_bytes(grid(tiles, rows=len(labels), cols=k, tile=96, row_labels=labels))


def dissect_html(s: dict) -> str:
    """The stage's report section from its summary: detectors per category, the figures, the best units."""
    cats = "".join(f"<tr><td>{html.escape(c)}</td><td>{v['unique']}</td><td>{v['detectors']}</td></tr>"
                   for c, v in s["categories"].items())
    best = "".join(f"<tr><td>{b['unit']}</td><td>{html.escape(b['concept'])}</td><td>{html.escape(b['category'])}</td>"
                   f"<td>{b['iou']:.3f}</td><td>{'yes' if b['detector'] else ''}</td></tr>" for b in s["best"])
    figs = s.get("figures", {})
    units = (f"<p>Each row: a unit, its label and IoU, then its top images with the region where the unit is above "
             f"its threshold kept bright.</p><img src=\"../{html.escape(figs['units'])}\">") if "units" in figs else ""
    return (f"<p>Layer <code>{html.escape(s['layer'])}</code>: {s['detectors']} of {s['units']} units are detectors "
            f"(IoU &ge; {s['iou_threshold']} with their best concept, threshold at the top {s['quantile']:g} of each "
            f"unit's activations), {s['unique_concepts']} unique concepts"
            + (f"; {s['mask_errors']} images had unreadable masks" if s.get("mask_errors") else "")
            + f". Table: <code>{html.escape(s['table'])}</code>.</p>"
            f"<img src=\"../{html.escape(figs.get('bars', ''))}\" style=\"max-width:600px\">"
            f"<table><tr><th>category</th><th>unique detectors</th><th>detector units</th></tr>{cats}</table>{units}"
            f"<table><tr><th>unit</th><th>label</th><th>category</th><th>IoU</th><th>detector</th></tr>{best}</table>")
