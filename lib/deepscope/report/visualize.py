"""The visualize stage's section of a report (and of `deepscope visualize`'s index.html), and the
per-unit page: a unit's optimized pictures beside its top dataset patches and dissection concept."""
from __future__ import annotations

import html
import io


def visualize_html(summary: dict, prefix: str = "") -> str:
    s = summary
    warn = '<p class="warn">RANDOM WEIGHTS: test only.</p>' if s.get("random_weights") else ""
    top = (f", the model predicts the target class for {s['top1_is_target']} of {s['pictures']}"
           if s.get("top1_is_target") is not None else "")
    sel = (f" Selectivity (the unit's mean activation over the layer's mean |activation|): median "
           f"{s['median_selectivity']:.1f}, at least 3x for {s['selective_3x']:.0%} of the pictures."
           if s.get("median_selectivity") is not None else "")
    fac = (f" {s['facets']} facets per target, mean pairwise pixel correlation {s['facet_correlation']:.2f}."
           if s.get("facet_correlation") is not None else "")
    beats = (f" The picture drives its unit harder than its best dataset patch for {s['beats_best_patch']} of "
             f"{s['units_with_patches']} units." if s.get("units_with_patches") else "")
    pages = "".join(f'<p><img src="{prefix}{html.escape(p)}"></p>' for p in s.get("unit_pages") or [])
    return (f"{warn}<p>{s['pictures']} {s['kind']} pictures of <code>{html.escape(s['layer'])}</code> by gradient ascent "
            f"({html.escape(str(s['settings']))}); mean score gain {s['mean_gain']:.2f}{top}.{sel}{fac}{beats} PNGs in "
            f"<code>visualize/images/</code>, one row per picture in <code>visualize/*.parquet</code>.</p>"
            f'<p><img src="{prefix}{html.escape(s["grid"])}"></p>'
            + (f"<h3>Units beside the data</h3><p>Per unit: its pictures, then its top dataset patches "
               f"(strongest first), and its dissection concept.</p>{pages}" if pages else ""))


def unit_page_png(entries: list[dict], facets: int, tile: int = 96) -> bytes:
    """One row per unit: its `facets` pictures, a gap, its dataset patches (PNG bytes); the row's
    label says the unit, its peak activation on its picture and on its best patch, and its concept."""
    from PIL import Image

    from deepscope.report.figures import grid, to_png_bytes

    cols = facets + 1 + max((len(e["patches"]) for e in entries), default=0)
    tiles, labels = [], []
    for e in entries:
        row = [p.transpose(1, 2, 0) for p in e["pictures"]] + [None]
        row += [Image.open(io.BytesIO(b)).convert("RGB") for b in e["patches"]]
        tiles += row + [None] * (cols - len(row))
        best = f" / patch {e['best_patch']:.1f}" if e["best_patch"] is not None else ""
        labels.append(f"unit {e['unit']}: {e['peak']:.1f}{best}" + (f"  {e['concept']}" if e["concept"] else ""))
    return to_png_bytes(grid(tiles, len(entries), cols, pad=3, tile=tile, row_labels=labels))

