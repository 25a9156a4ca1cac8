"""Scaling and fault recovery on a real multi-node Ray cluster (loopback, token auth on).

    .venv/bin/python bench/scaling.py [--images 240] [--model lite0] [--threads 1]

One run, one table, every row the same features job on the same images (a fresh output folder
each time), submitted by `deepscope run` to a head node with no CPUs of its own, so that all
decoding and inference happens on the worker nodes:

  1 worker node                       the baseline
  2 worker nodes                      what a second node buys
  2 worker nodes, one killed mid-run  the cost of losing a node and redoing its work

Each node runs one model actor with `--threads` torch threads (a 2-core machine has room for two
one-thread nodes; on a real cluster each node is its own machine).  The killed node is killed once
the first partition is written: its raylet and every worker process on it, as a crashed VM would.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

RAY = str(Path(sys.executable).parent / "ray")
PORT, DASH = 6393, 8277
NODE_PORTS = [46393, 46394]  # node manager ports of the worker nodes (to find and kill one)


def env_for(tmp: Path) -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "auth_token"),
            "RAY_ADDRESS": f"127.0.0.1:{PORT}", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def start_head(env):
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=0",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={DASH}", "--disable-usage-stats",
                    "--dashboard-agent-listen-port=52395", "--metrics-export-port=52396",
                    "--ray-client-server-port=10093"],
                   env=env, check=True, capture_output=True)


def start_worker(env, i: int, cpus: int):
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                    f"--node-manager-port={NODE_PORTS[i]}", f"--dashboard-agent-listen-port={52397 + 2 * i}",
                    f"--metrics-export-port={52398 + 2 * i}"], env=env, check=True, capture_output=True)


def alive_workers(env) -> int:
    code = "import ray; ray.init(); print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU', 0) > 0))"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(p.stdout.strip().splitlines()[-1])


def wait_for_workers(env, n: int, timeout: float = 120):
    deadline = time.time() + timeout
    while alive_workers(env) != n:
        if time.time() > deadline:
            raise RuntimeError(f"the cluster did not reach {n} live worker nodes")
        time.sleep(2)


def kill_node(port: int) -> bool:
    for p in psutil.process_iter(["cmdline"]):
        if f"--node_manager_port={port}" in " ".join(p.info["cmdline"] or []) and "raylet" in " ".join(p.info["cmdline"] or []):
            for proc in [*p.children(recursive=True), p]:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            return True
    return False


def stop_cluster():
    for p in psutil.process_iter(["cmdline"]):
        try:  # only this benchmark's cluster, never another Ray on the machine
            cmd = " ".join(p.info["cmdline"] or [])
            if str(PORT) in cmd or str(DASH) in cmd or any(str(n) in cmd for n in NODE_PORTS):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def run_job(env, tmp: Path, data: Path, name: str, a, nodes: int, kill_port: int | None = None) -> dict:
    from deepscope.io.store import Store

    out = tmp / name
    job = tmp / f"{name}.toml"
    job.write_text(f'out = "{out}"\n[dataset]\nsource = "{data}"\n[model]\nname = "{a.model}"\n'
                   f'[run]\nbatch_size = 16\npartition_size = 32\nactors = {nodes}\nthreads = {a.threads}\n'
                   '[features]\nlayer = "penultimate"\n')
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "run", str(job)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at = None
    if kill_port is not None:
        while p.poll() is None and not Store(out).parts("features"):
            time.sleep(0.2)
        if kill_node(kill_port):
            killed_at = time.perf_counter() - t0
    log = p.communicate()[0]
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{log[-3000:]}")
    store = Store(out)
    rows = store.read("features", ["id"]).num_rows
    if rows != len(set(store.read("features", ["id"]).column("id").to_pylist())):
        raise RuntimeError(f"{name}: duplicate ids in the output")
    return {"name": name, "nodes": nodes, "rows": rows, "wall": wall, "killed_at": killed_at}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model actor (one actor per node)")
    ap.add_argument("--cpus-per-node", type=int, default=2, help="Ray CPUs per worker node (actor 0.5 + decoding)")
    a = ap.parse_args()
    from deepscope.io.demo_data import make_demo_data

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        (tmp / "auth_token").write_text(secrets.token_hex(32))
        data = tmp / "data"
        make_demo_data(data, per_photo=max(1, -(-a.images // 6)))
        env = env_for(tmp)
        rows = []
        try:
            start_head(env)
            start_worker(env, 0, a.cpus_per_node)
            wait_for_workers(env, 1)
            run_job(env, tmp, data, "warmup", a, 1)  # model files and Python imports into the page cache
            rows.append(run_job(env, tmp, data, "one_node", a, 1))
            start_worker(env, 1, a.cpus_per_node)
            wait_for_workers(env, 2)
            rows.append(run_job(env, tmp, data, "two_nodes", a, 2))
            rows.append(run_job(env, tmp, data, "two_nodes_one_killed", a, 2, kill_port=NODE_PORTS[1]))
        finally:
            stop_cluster()

    base, two = rows[0], rows[1]
    print(f"\nfeatures job ({a.model} penultimate, {rows[0]['rows']} images, one actor of {a.threads} "
          f"thread(s) per worker node, driver and Ray start-up included)\n")
    print("| run | worker nodes | images written | wall s | images/s | vs 1 node |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r["rows"] / r["wall"]
        note = f" (node killed at {r['killed_at']:.1f} s)" if r["killed_at"] else ""
        print(f"| {r['name']}{note} | {r['nodes']} | {r['rows']} | {r['wall']:.1f} | {rate:.2f} | "
              f"{rate / (base['rows'] / base['wall']):.2f}x |")
    fault = rows[2]
    print(f"\nfault recovery overhead: {fault['wall'] - two['wall']:+.1f} s "
          f"({fault['wall'] / two['wall'] - 1:+.0%}) against the undisturbed two-node run")


if __name__ == "__main__":
    main()
