"""report/index.html: the run summary, then one section per stage."""
from __future__ import annotations

import html
import os

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f4f4f4}code{background:#f4f4f4;padding:0 3px}img{max-width:100%}
.warn{background:#fee;border:2px solid #c00;padding:8px 12px;font-weight:bold;color:#900}
.grid img{margin:2px}"""


def _kv(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def errors_section(store, limit: int = 50) -> str:
    if not store.exists("errors.parquet"):
        return ""
    t = store.loc.read_table("errors.parquet").to_pylist()
    if not t:
        return "<p>No input failed.</p>"
    rows = "".join(f"<tr><td>{html.escape(r['id'])}</td><td>{html.escape(r['stage'])}</td><td>{html.escape(r['error'])}</td></tr>"
                   for r in t[:limit])
    more = f"<p>... and {len(t) - limit} more in <code>errors.parquet</code>.</p>" if len(t) > limit else ""
    return f"<p>{len(t)} inputs failed (<code>errors.parquet</code>):</p><table><tr><th>id</th><th>stage</th><th>error</th></tr>{rows}</table>{more}"


def history_section(store, limit: int = 30) -> str:
    """The output's run history: every command that ran here, newest first."""
    import time

    rows = store.history()[::-1]
    if not rows:
        return ""
    cells = "".join(
        f"<tr><td>{html.escape(time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.get('started') or 0)))}</td>"
        f"<td><code>{html.escape(r.get('command') or 'a job run from Python')}</code></td>"
        f"<td>{html.escape(', '.join(r.get('stages') or []))}</td><td>{html.escape(str(r.get('status')))}"
        + (f": {html.escape(r.get('error') or '')}" if r.get("error") else "") + "</td>"
        f"<td>{html.escape(str(r.get('executor') or ''))}</td><td>{r.get('wall_s', '')}</td>"
        f"<td>{r.get('rate') or ''}</td></tr>" for r in rows[:limit])
    return ("<table><tr><th>started (UTC)</th><th>command</th><th>stages</th><th>status</th><th>executor</th>"
            f"<th>wall s</th><th>images/s</th></tr>{cells}</table>")


def write_report(store, sections: list[tuple[str, str]]) -> None:
    """The report of everything this folder holds: the run, its errors, then each stage's section
    ((name, HTML) of every stage that has a summary, in the order of the stage registry)."""
    run = store.summary("run") or {}
    warn = ('<p class="warn">RANDOM WEIGHTS: this model is untrained (test only); nothing here describes a real network.</p>'
            if run.get("random_weights") else "")
    keys = ("dataset", "model", "weights", "images", "failed", "partitions", "computed_this_run", "wall_s",
            "images_per_s", "first_image_s", "executor")
    made = run.get("command") or "a job run from Python"
    m = run.get("machine") or {}
    machine = (f"{m.get('nodes') or 1} node(s), {m.get('cluster_cpus') or m.get('driver_cpus')} CPUs, "
               f"{int(m.get('cluster_gpus') or 0)} GPUs" + (f" ({m['gpu']})" if m.get("gpu") else "")) if m else "?"
    t = store.summary("timings") or {}
    timings = ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in t.items()) + " (summed over workers)" if t else ""
    links = " · ".join(['<a href="#run">Run</a>', '<a href="#history">History</a>', '<a href="#errors">Errors</a>',
                        *(f'<a href="#{n}">{html.escape(n.capitalize())}</a>' for n, _ in sections)])
    body = [f"<h1>deepscope report: {html.escape(str(store.root))}</h1>", warn,
            f"<p>Made by <code>{html.escape(made)}</code> on {html.escape(machine)}."
            + (f" Timings: {html.escape(timings)}." if timings else "") + "</p>",
            f"<p>{links}</p>", '<h2 id="run">Run</h2>',
            _kv({k: run.get(k) for k in keys}), '<h2 id="history">History</h2>', history_section(store),
            '<h2 id="errors">Errors</h2>', errors_section(store)]
    for name, section in sections:
        body += [f'<h2 id="{name}">{html.escape(name.capitalize())}</h2>', section]
    page = f"<!doctype html><meta charset=utf-8><title>deepscope report</title><style>{CSS}</style>{''.join(body)}"
    store.write_file("report/index.html", page)


def write_index(out: str, title: str, body: str) -> None:
    """OUT/index.html of a command that makes a few pictures (dream, invert, adversarial, visualize)."""
    from deepscope.io.location import write_single_file

    page = f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}</style><h1>{html.escape(title)}</h1>{body}"
    write_single_file(os.path.join(out, "index.html"), page.encode())


def images_html(rels: list[str], captions: list[str]) -> str:
    """<img> tags for report/index.html (one level below the output folder)."""
    return "<div class='grid'>" + "".join(
        f"<figure style='display:inline-block;margin:2px'><img src='../{html.escape(r)}' width=160>"
        f"<figcaption style='font-size:11px'>{html.escape(c)}</figcaption></figure>" for r, c in zip(rels, captions)) + "</div>"
