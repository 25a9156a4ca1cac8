"""The visualize stage's section of a report (and of `deepscope visualize`'s index.html)."""
from __future__ import annotations

import html


def visualize_html(summary: dict, prefix: str = "") -> str:
    s = summary
    warn = '<p class="warn">RANDOM WEIGHTS: test only.</p>' if s.get("random_weights") else ""
    top = (f", the model predicts the target class for {s['top1_is_target']} of {s['pictures']}"
           if s.get("top1_is_target") is not None else "")
    return (f"{warn}<p>{s['pictures']} {s['kind']} pictures of <code>{html.escape(s['layer'])}</code> by gradient ascent "
            f"({html.escape(str(s['settings']))}); mean score gain {s['mean_gain']:.2f}{top}. PNGs in "
            f"<code>visualize/images/</code>, one row per picture in <code>visualize/*.parquet</code>.</p>"
            f'<p><img src="{prefix}{html.escape(s["grid"])}"></p>')
