"""`deepscope info OUT`: what an output folder holds, in a few lines (or JSON for scripts)."""
from __future__ import annotations

import json

from deepscope.errors import UserError


def describe(out: str, reasons: int = 3) -> dict:
    """The job, every stage (parts, rows, settings), errors by stage with the first reasons,
    timings and the report's path, read from the snapshot and the commit log."""
    from deepscope.io.store import MANIFEST, Store

    store = Store(out)
    if not store.manifest.get("job") and not store.manifest.get("spec"):
        raise UserError(f"{out} is not a deepscope output folder (no {MANIFEST} with a job)")
    spec = store.manifest.get("spec") or {}
    run = store.summary("run") or {}
    stages = {}
    for name, entry in sorted(store.manifest["stages"].items()):
        parts = entry.get("parts", {})
        stages[name] = {"parts": len(parts), "rows": sum(int(p.get("rows", 0)) for p in parts.values()),
                        "bytes": sum(int(p.get("bytes", 0)) for p in parts.values()),
                        "settings": entry.get("config") or {}}
    for name, s in (store.manifest.get("summary") or {}).items():  # post stages: a summary, no parts
        if name not in stages and name not in ("run", "timings") and isinstance(s, dict):
            stages[name] = {"parts": 0, "rows": None, "bytes": None, "settings": store.stage_config(name) or {}}
    errors: dict[str, dict] = {}
    if store.parts("errors"):
        for row in store.read("errors").to_pylist():
            e = errors.setdefault(row["stage"], {"count": 0, "first": []})
            e["count"] += 1
            if len(e["first"]) < reasons:
                e["first"].append({"id": row["id"], "error": row["error"]})
    return {
        "out": str(store.root),
        "job": {"dataset": (spec.get("dataset") or {}).get("source") or run.get("dataset"),
                "model": (spec.get("model") or {}).get("name") or run.get("model"),
                "weights": run.get("weights"), "random_weights": run.get("random_weights"),
                "layer": (spec.get("features") or {}).get("layer"),
                "command": run.get("command"), "executor": run.get("executor")},
        "images": run.get("images"), "failed": run.get("failed"), "partitions": run.get("partitions"),
        "stages": {k: v for k, v in stages.items() if k != "errors"},
        "errors": errors,
        "timings": {**(store.summary("timings") or {}), "wall_s": run.get("wall_s"),
                    "first_image_s": run.get("first_image_s")},
        "report": str(store.path("report/index.html")) if store.exists("report/index.html") else None,
    }


def text(info: dict) -> str:
    j = info["job"]
    lines = [f"{info['out']}: {info['images']} images in {info['partitions']} partitions, {info['failed']} failed",
             f"  job: dataset {j['dataset']}, model {j['model']}"
             + (f" ({j['weights']})" if j["weights"] else "") + (f", layer {j['layer']}" if j["layer"] else "")
             + ("  RANDOM WEIGHTS (test only)" if j["random_weights"] else "")]
    if j.get("command"):
        lines.append(f"  made by: {j['command']}")
    if j.get("executor"):
        lines.append(f"  executor: {j['executor']}")
    for name, s in info["stages"].items():
        rows = f"{s['rows']} rows in {s['parts']} parts" if s["parts"] else "dataset-level outputs"
        settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items() if v not in (None, [], {}))
        lines.append(f"  {name}: {rows}" + (f"; {settings[:120]}" if settings else ""))
    for stage, e in info["errors"].items():
        first = "; ".join(f"{x['id']}: {x['error'][:80]}" for x in e["first"])
        lines.append(f"  errors ({stage}): {e['count']}, e.g. {first}")
    t = {k: v for k, v in info["timings"].items() if v is not None}
    if t:
        lines.append("  timings: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    if info["report"]:
        lines.append(f"  report: {info['report']}")
    return "\n".join(lines)


def cmd_info(a) -> None:
    info = describe(a.out)
    print(json.dumps(info, indent=1, default=str) if a.json else text(info))
