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
    made = made_by(store.history())
    for name, s in stages.items():
        s["made_by"] = made.get(name)
        if s["made_by"] and s["made_by"]["status"] != "ok" and store.summary(name) is None and not s["parts"]:
            s["settings"] = {}  # it failed: no settings shown as if it had run
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
        "history": store.history(),
    }


def made_by(history: list[dict]) -> dict[str, dict]:
    """Per stage, the last command that ran it: ok (it made the stage's outputs), or failed (and why)."""
    out = {}
    for r in history:
        for stage in r.get("stages") or []:
            if r.get("status") in ("ok", "failed", "interrupted"):
                out[stage] = {k: r.get(k) for k in ("command", "status", "error", "started", "wall_s", "rate",
                                                    "executor", "why")}
    return out


def when(t) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"


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
        m = s.get("made_by")
        if m and m["status"] != "ok" and not s["parts"] and not s["settings"]:
            lines.append(f"  {name}: {m['status']} ({m['command'] or 'from Python'}, {when(m['started'])}): {m['error']}")
            continue
        rows = f"{s['rows']} rows in {s['parts']} parts" if s["parts"] else "dataset-level outputs"
        settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items() if v not in (None, [], {}))
        lines.append(f"  {name}: {rows}" + (f"; {settings[:120]}" if settings else ""))
        if m:
            rate = f", {m['rate']} images/s" if m.get("rate") else ""
            on = f" on {m['executor']}" if m.get("executor") else ""
            lines.append(f"    made by {m['command'] or 'a job run from Python'} at {when(m['started'])} "
                         f"in {m['wall_s']} s{rate}{on}" + ("" if m["status"] == "ok" else f"; last try {m['status']}: {m['error']}"))
    for stage, e in info["errors"].items():
        first = "; ".join(f"{x['id']}: {x['error'][:80]}" for x in e["first"])
        lines.append(f"  errors ({stage}): {e['count']}, e.g. {first}")
    t = {k: v for k, v in info["timings"].items() if v is not None}
    if t:
        lines.append("  timings: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    if info["history"]:
        last = info["history"][-1]
        lines.append(f"  history: {len(info['history'])} commands; last: {last.get('command') or 'from Python'} "
                     f"({last.get('status')}, {when(last.get('started'))})")
    if info["report"]:
        lines.append(f"  report: {info['report']}")
    return "\n".join(lines)


def cmd_info(a) -> None:
    info = describe(a.out)
    print(json.dumps(info, indent=1, default=str) if a.json else text(info))
