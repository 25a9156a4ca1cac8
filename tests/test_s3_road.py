"""One road for every stage (issue 22): the whole demo job with its dataset given as manifest shards
and its outputs on an S3 API (moto's server on loopback), then every command that reads outputs,
as a user types them: no traceback anywhere, nothing written locally, and the post stages work after
the dataset is gone."""
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_commit import s3  # noqa: F401 (the S3 API fixture)

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, env, timeout=900):
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr[-4000:]
    return p


def toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


def write_toml(job: dict, path: Path) -> None:
    lines = [f"{k} = {toml_value(v)}" for k, v in job.items() if not isinstance(v, dict)]
    for name, section in job.items():
        if isinstance(section, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in section.items() if not isinstance(v, dict)]
            for sub, inner in section.items():
                if isinstance(inner, dict):
                    lines.append(f"[{name}.{sub}]")
                    lines += [f"{k} = {toml_value(v)}" for k, v in inner.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def s3_demo(s3, tmp_path_factory):  # noqa: F811
    import fsspec
    import pandas as pd

    from deepscope.io.demo_data import make_demo_data

    tmp = tmp_path_factory.mktemp("s3road")
    env = {**os.environ, **s3}
    fs = fsspec.filesystem("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    local = tmp / "demo"
    make_demo_data(str(local), per_photo=2)
    rows = []
    for p in sorted(local.rglob("*.jpg")):
        rel = str(p.relative_to(local))
        fs.put_file(str(p), f"deepscope/data/{rel}")
        rows.append({"path": f"../data/{rel}", "id": rel, "label": rel.split("/")[0]})
    half = len(rows) // 2
    for i, chunk in enumerate((rows[:half], rows[half:])):
        buf = pd.DataFrame(chunk).to_parquet()
        fs.pipe_file(f"deepscope/shards/part-{i:05d}.parquet", buf)

    job = tomllib.loads((ROOT / "jobs" / "demo.toml").read_text())
    job["out"] = "s3://deepscope/runs/demo"
    job["dataset"] = {"source": "s3://deepscope/shards/*.parquet"}
    job["run"]["partition_size"] = 5
    job["dissect"].update(concepts=str(tmp / "concepts"), generate=12, show_units=4)
    job["visualize"].update(steps=3, size=64)
    job["stylize"].update(style_model=str(tmp / "style.pt"), size=64)
    job["stylize"]["train"].update(steps=3, size=32)
    job["map"]["tsne_max"] = 10
    path = tmp / "job.toml"
    write_toml(job, path)
    p = cli("run", str(path), env=env, timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    return env, fs, rows, p.stderr, tmp


def test_demo_job_runs_on_s3_with_shards(s3_demo):
    env, fs, rows, stderr, tmp = s3_demo
    manifest = json.loads(fs.cat_file("deepscope/runs/demo/manifest.json"))
    summary = manifest["summary"]
    for stage in ("features", "pixels", "patches", "saliency", "dissect", "robustness", "visualize", "stylize",
                  "index", "knn", "map"):
        assert summary.get(stage) is not None, stage
    assert summary["run"]["images"] == len(rows) and summary["run"]["failed"] == 0
    assert fs.exists("deepscope/runs/demo/report/index.html")
    assert not (tmp / "runs").exists() and not Path("s3:").exists(), "nothing written locally"
    # near-duplicates verified on thumbnails gathered from many parts on S3, and the gathered files deleted
    assert summary["knn"]["duplicates"]["verification"]["verified"] > 0
    assert not fs.glob("deepscope/runs/demo/knn/gather/*")
    verified = sum(pq.read_metadata(fs.open(f)).num_rows for f in fs.glob("deepscope/runs/demo/knn/verified/*.parquet"))
    assert verified == summary["knn"]["duplicates"]["verification"]["verified"]  # each task's evidence, kept to resume from


def test_post_commands_read_only_outputs_after_the_dataset_is_gone(s3_demo):
    env, fs, rows, _, _ = s3_demo
    out = "s3://deepscope/runs/demo"
    fs.rm("deepscope/shards", recursive=True)  # the dataset moved: the post stages do not need it
    for args in (["index", out, "--kind", "flat"], ["knn", out, "--k", "4"], ["map", out, "--method", "pca"]):
        p = cli(*args, env=env)
        assert p.returncode == 0, (args, p.stderr[-3000:])
        assert "ray" not in p.stderr.lower(), p.stderr  # the local executor: no Ray started
    p = cli("query", out, "--id", rows[0]["id"], "--k", "3", env=env)
    assert p.returncode == 0 and rows[0]["id"] in p.stdout, p.stderr
    # is it a copy of others: on the thumbnails in S3, the grid written there
    p = cli("query", out, "--id", rows[0]["id"], "--k", "3", "--copies", env=env)
    assert p.returncode == 0 and p.stdout.startswith("copy\ttier\tid") and "candidates" in p.stderr, p.stderr
    assert fs.glob("deepscope/runs/demo/queries/*-copies.png"), p.stderr
    p = cli("info", out, env=env)
    assert p.returncode == 0 and "made by deepscope knn" in p.stdout and "made by deepscope run" in p.stdout, p.stdout
    # a stage that needs the images says which dataset it cannot reach, in one line
    p = cli("saliency", out, "--method", "backprop", env=env)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "shards" in p.stderr, p.stderr


def test_serve_answers_from_s3(s3_demo):
    import httpx

    env, _, rows, _, _ = s3_demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "serve", "s3://deepscope/runs/demo",
                               "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/info", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert r.status_code == 200
        r = httpx.post(f"http://127.0.0.1:{port}/neighbors", json={"id": rows[0]["id"], "k": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["neighbors"], r.text
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]
