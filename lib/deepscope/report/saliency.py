"""The saliency stage's figures and report section: mean maps (centre bias), maps over their images,
the bias finder (images and classes ranked by saliency mass outside their objects) and its histogram.
The statistics themselves are the stage's (stages/saliency.py); this module draws and writes them."""
from __future__ import annotations

import html
import io
import math

import numpy as np

FIGURES = "report/saliency"


def saliency_figures(store, stage: str, S: int, method: str, rows, objs, mean_rows, transform,
                     tolerance: float = 0.0) -> dict:
    """One method's figures under report/saliency/ (mean maps, most focused and diffuse maps, the bias
    finder and its histogram, integrated gradients' completeness errors); returns {figure: path in the folder}."""
    slug = method.replace("(", "_").replace(")", "")
    figs = {}
    means = [r for r in mean_rows if r["method"] == method]
    if means:
        figs["mean_maps"] = _write(store, f"{FIGURES}/{slug}_mean_maps.png", _mean_maps_png(means, S))
    k = 8
    ranked = sorted((r for r in rows if r["entropy"] == r["entropy"]), key=lambda r: r["entropy"])
    if ranked:
        picks = [("most focused (lowest entropy)", ranked[:k], "entropy"),
                 ("most diffuse (highest entropy)", ranked[::-1][:k], "entropy")]
        figs["entropy"] = _write(store, f"{FIGURES}/{slug}_entropy.png",
                                 _overlays_png(store, stage, S, method, picks, transform))
    if objs:
        by_out = sorted(objs, key=lambda o: o["inside_mass"])
        picks = [("most mass outside the object", by_out[:k], "inside_mass"),
                 ("most mass inside the object", by_out[::-1][:k], "inside_mass")]
        figs["objects"] = _write(store, f"{FIGURES}/{slug}_objects.png",
                                 _overlays_png(store, stage, S, method, picks, transform))
        figs["inside_hist"] = _write(store, f"{FIGURES}/{slug}_inside_hist.png", _histogram_png(objs, method))
    deltas = [r["ig_delta"] for r in rows if r.get("ig_delta") is not None]
    if deltas:
        figs["ig_delta"] = _write(store, f"{FIGURES}/{slug}_ig_delta.png", _ig_delta_png(deltas, tolerance))
    return figs


def _overlays_png(store, stage: str, S: int, method: str, picks, transform) -> bytes:
    from matplotlib.figure import Figure

    wanted = {r["id"] for _, chosen, _ in picks for r in chosen}
    maps = {}
    for _, t in store.iter_parts(stage, columns=["id", "method", "map"]):
        for rid, m, v in zip(t.column("id").to_pylist(), t.column("method").to_pylist(), t.column("map").to_pylist()):
            if m == method and rid in wanted:
                maps[rid] = np.asarray(v, np.float32).reshape(S, S)
    cols = max(len(chosen) for _, chosen, _ in picks)
    fig = Figure(figsize=(1.6 * cols, 2.1 * len(picks)), dpi=90, layout="constrained")
    for sub, (title, chosen, key) in zip(fig.subfigures(len(picks), 1, squeeze=False)[:, 0], picks):
        sub.suptitle(title, fontsize=8, weight="bold", x=0.01, ha="left")
        for col, ax in enumerate(sub.subplots(1, cols, squeeze=False)[0]):
            ax.axis("off")
            if col < len(chosen):
                r = chosen[col]
                ax.imshow(overlay(_model_input_image(r["path"], transform), maps.get(r["id"], np.zeros((S, S)))))
                ax.set_title(f"{r['id'][-18:]}\n{key} {r[key]:.2f}", fontsize=6)
    return _png(fig)


def saliency_html(store, s: dict, target_setting, methods: list[str], tables: str) -> str:
    """The stage's report section: per method its statistics, the classes table and the figures;
    `tables`: the folder of the dataset tables."""
    target = {"pred": "the predicted class", "label": "the label's class"}.get(target_setting, f"class {target_setting}")
    parts = [f"<p>Saliency of {html.escape(target)} (its unnormalized score) by "
             f"{html.escape(', '.join(methods))}; maps at {s.get('map_size')}x{s.get('map_size')} "
             "over the centre crop in <code>saliency/*.parquet</code>, dataset tables in "
             f"<code>{tables}/</code>. Annotated objects: {s.get('annotated_images', 0)}"
             f"{'' if not s.get('skipped_annotations') else ', skipped: ' + str(s['skipped_annotations'])}.</p>"]
    cam = s.get("gradcam_layer")
    if cam:
        state = {True: "after its activation", False: "not an activation's output (pre-activation)",
                 None: "a module input"}[cam.get("activated")]
        parts.append(f"<p>Grad-CAM layer: <code>{html.escape(str(cam['name']))}</code>, {state}; channel weights: "
                     "the spatial mean of the score's gradient; maps: ReLU of the weighted channel sum, bilinear "
                     "to the input.</p>")
    for method, m in (s.get("methods") or {}).items():
        mm = m.get("mean_map") or {}
        stats = {"images": m.get("images"), "mean entropy (0 one pixel, 1 uniform)": _fmt(m.get("entropy")),
                 "mass in top 5% pixels": _fmt(m.get("top_mass")),
                 "mean map: centre of mass (x, y)": f"{_fmt(mm.get('com_x'))}, {_fmt(mm.get('com_y'))}",
                 "mean map: mass in central quarter (uniform 0.25)": _fmt(mm.get("centre_mass"))}
        if "objects" in m:
            stats.update({"annotated images": m["objects"], "mean object area": _fmt(m.get("area")),
                          "mean mass inside object": _fmt(m.get("inside_mass")),
                          "GrabCut IoU with objects": _fmt(m.get("grabcut_iou")),
                          "flagged classes (inside mass < area)": ", ".join(m.get("flagged") or []) or "none"})
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in stats.items())
        ig = m.get("ig")
        if ig and ig.get("median") is not None:
            rows += "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in {
                "quadrature": f"Gauss-Legendre, {ig['steps']} steps, doubled up to {ig['max_steps']} for images "
                              f"above the tolerance {ig['tolerance']:g}",
                "completeness error ig_delta: median, max": f"{ig['median']:.4f}, {ig['max']:.4f}",
                "images that needed more steps": ig["more_steps"],
                "images still above the tolerance": "n/a" if ig["still_miss"] is None else ig["still_miss"]}.items())
        parts.append(f"<h3>{html.escape(method)}</h3><table>{rows}</table>")
        parts.append(_classes_html(store, method, tables))
        for key, caption in (("mean_maps", "Mean maps (centre bias), all images and per class"),
                             ("inside_hist", "Share of saliency mass inside the object"),
                             ("objects", "Bias finder: images ranked by mass outside the object"),
                             ("entropy", "Most focused and most diffuse maps"),
                             ("ig_delta", "Completeness error per image: |sum of attributions - (score(x) - "
                                          "score(baseline))| / |score(x) - score(baseline)|")):
            rel = (m.get("figures") or {}).get(key)
            if rel:
                parts.append(f'<p>{caption}:<br><img src="{html.escape(rel[len("report/"):])}"></p>')
    return "".join(parts)


def _classes_html(store, method: str, tables: str) -> str:
    rel = f"{tables}/classes.parquet"
    if not store.exists(rel):
        return ""
    rows = [r for r in store.loc.read_table(rel).to_pylist() if r["method"] == method]
    red = ' style="background:#fdd"'
    body = "".join(
        f"<tr{red if r['flagged'] else ''}><td>{html.escape(r['group'])}</td>"
        f"<td>{r['images']}</td><td>{_fmt(r['area'])}</td><td>{_fmt(r['inside_mass'])}</td>"
        f"<td>{_fmt(r['outside_mass'])}</td><td>{_fmt(r['grabcut_iou'])}</td><td>{'FLAGGED' if r['flagged'] else ''}</td></tr>"
        for r in rows)
    return ("<p>Classes ranked by saliency mass outside their objects (flagged: less mass inside than a "
            "uniform map would put there):</p><table><tr><th>class</th><th>images</th><th>object area</th>"
            f"<th>inside</th><th>outside</th><th>GrabCut IoU</th><th></th></tr>{body}</table>")


def overlay(rgb: np.ndarray, small_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image, (S, S) map -> (H, W, 3) uint8: the map in 'jet', blended over the image."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = rgb.shape[:2]
    m = np.asarray(Image.fromarray(small_map.astype(np.float32)).resize((w, h), Image.BILINEAR))
    m = m / m.max() if m.max() > 0 else m
    heat = colormaps["jet"](m)[..., :3] * 255
    return (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)


def _model_input_image(path: str, transform) -> np.ndarray:
    from deepscope.io.decode import decode
    from deepscope.io.sources import read_bytes

    try:
        img, _, _ = decode(read_bytes(path), draft_size=transform.resize)
        return transform.geometry(img).transpose(1, 2, 0)
    except Exception:  # moved or deleted since the run: the map alone still says something
        return np.zeros((transform.crop, transform.crop, 3), np.uint8)


def _mean_maps_png(means: list[dict], S: int, most: int = 12) -> bytes:
    from matplotlib.figure import Figure

    means = means[:most]
    cols = min(len(means), 6)
    rows = math.ceil(len(means) / cols)
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows), dpi=90)
    for i, r in enumerate(means):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.asarray(r["map"]).reshape(S, S), cmap="inferno")
        ax.plot([r["com_x"] * S - 0.5], [r["com_y"] * S - 0.5], "c+", ms=10)  # the centre of mass
        ax.set_title(f"{r['group'][:20]} ({r['images']})", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _histogram_png(objs: list[dict], method: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.8), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist([o["inside_mass"] for o in objs], bins=20, range=(0, 1), color="#4477aa")
    ax.axvline(float(np.mean([o["area"] for o in objs])), color="#cc3311", ls="--", label="mean object area")
    ax.set_xlabel(f"share of {method} mass inside the object")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _ig_delta_png(deltas: list[float], tolerance: float) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.8), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    d = np.asarray(deltas, np.float64)
    hi = max(float(d.max()), tolerance, 1e-6) * 1.05
    ax.hist(d, bins=30, range=(0, hi), color="#4477aa")
    if tolerance > 0:
        ax.axvline(tolerance, color="#cc3311", ls="--", label=f"tolerance {tolerance:g}")
    ax.axvline(float(np.median(d)), color="#228833", ls=":", label=f"median {np.median(d):.4f}")
    ax.set_xlabel("integrated gradients: relative completeness error (ig_delta)")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write(store, rel: str, data: bytes) -> str:
    store.write_file(rel, data)
    return rel


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
