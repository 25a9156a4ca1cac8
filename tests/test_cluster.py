"""A real multi-node Ray cluster on loopback (token auth on): the Jobs API runs a submitted job
file, and a worker node dies mid-job."""
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from deepscope.io.store import Store
from test_faults import assert_exactly_once_and_equal
from test_commit import s3  # noqa: F401 (the S3 API fixture)
from test_features import read_features, small_dataset, spec

RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    """Ports nothing listens on now (fixed ones collide with other Rays on a shared machine)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


PORT, DASH, WORKER_NM_PORT, *AGENT_PORTS = _free_ports(9)


def _env(tmp, ray_tmp):
    token = tmp / "auth_token"
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
            # the cluster's own Ray folder (RAY_TMPDIR/ray), not the shared /tmp/ray: a Jobs API driver joins
            # the address in its node's ray_current_cluster file, which any other `ray start` on this machine
            # (another test run) overwrites there; short, for Ray's socket paths (at most 107 bytes)
            "RAY_TMPDIR": ray_tmp,
            "RAY_ADDRESS": f"127.0.0.1:{PORT}",
            # the cluster's `python` (the Jobs API entrypoint) is this venv's, as on a real cluster's image
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def _raylet(port):
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd and f"--node_manager_port={port}" in cmd:
            return p
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    ray_tmp = tempfile.mkdtemp(prefix="dsray-", dir="/tmp")
    env = _env(tmp, ray_tmp)
    (tmp / "auth_token").write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=2",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={DASH}", "--disable-usage-stats",
            # the agents' default ports (52365) may be taken by another Ray on this machine
            f"--dashboard-agent-listen-port={AGENT_PORTS[0]}", f"--metrics-export-port={AGENT_PORTS[1]}"]
    token = str(tmp / "auth_token")

    def stop():
        for _ in range(10):  # again until none is left: a raylet killed last restarts the agents killed first
            left = 0
            for p in psutil.process_iter():
                try:  # only this cluster's processes: they all inherit its token file's path, no other Ray does
                    with open(f"/proc/{p.pid}/environ", "rb") as f:  # raw: a retitled process's parsed environ
                        mine = f"RAY_AUTH_TOKEN_PATH={token}".encode() in f.read()  # can lose entries
                    if mine:
                        p.kill()
                        left += 1
                except (OSError, psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if not left:
                return
            time.sleep(1)

    for attempt in (1, 2):  # a node's start-up can time out on a busy 2-core machine: one more try
        try:
            subprocess.run(head, env=env, check=True, capture_output=True)
            subprocess.run([RAY, "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=2", f"--node-manager-port={WORKER_NM_PORT}",
                            f"--dashboard-agent-listen-port={AGENT_PORTS[2]}",
                            f"--metrics-export-port={AGENT_PORTS[3]}"], env=env, check=True, capture_output=True)
            break
        except subprocess.CalledProcessError as e:
            stop()  # a node that failed to start (a port taken): leave no half cluster behind
            if attempt == 2 or b"timed out during startup" not in e.stderr:
                raise RuntimeError(f"{e.cmd[:3]} failed: {e.stderr.decode()[-1500:]}") from None
            time.sleep(5)
    yield env
    stop()
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=8)


@pytest.fixture(scope="module")
def reference(ray_cluster, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    from deepscope.runner import run
    run(spec(photos, out, "torchvision:alexnet", "random", "fc7"))
    return read_features(out)


def _job(tmp, photos, out, slow=True):
    job = tmp / "job.toml"
    job.write_text(f'out = "{out}"\n[dataset]\nsource = "{photos}"\n[model]\nname = "torchvision:alexnet"\n'
                   'weights = "random"\n[run]\nbatch_size = 2\npartition_size = 4\nactors = 2\n[features]\nlayer = "fc7"\n')
    return job


def _alive_actors(env, wait_s: float = 30) -> list[str]:
    """Class names of the cluster's live model actors (WorkerHost)."""
    import json

    deadline = time.time() + wait_s
    while True:
        p = subprocess.run([RAY, "list", "actors", "--address", f"http://127.0.0.1:{DASH}", "--filter", "state=ALIVE",
                            "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr[-2000:]
        listed = json.loads(p.stdout) if p.stdout.strip().startswith("[") else []  # else "No resource in the cluster"
        alive = [a["class_name"] for a in listed if "WorkerHost" in a["class_name"]]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(1)


def test_submit_through_jobs_api(cluster, photos, reference, tmp_path):
    out = tmp_path / "out"
    job = _job(tmp_path, photos, out)
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "submit", str(job), "--address",
                        f"http://127.0.0.1:{DASH}", "--wait"], env=cluster, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SUCCEEDED" in p.stdout.splitlines()[-1], p.stdout[-3000:]
    assert_exactly_once_and_equal(out, reference)
    assert _alive_actors(cluster) == [], "the job's model actors ended with it"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_worker_node_killed_mid_job(cluster, photos, reference, tmp_path, where, request):
    """A worker node dies mid-job; every id is in the outputs exactly once. With s3, the outputs go
    to an S3 API (moto on loopback) and there is no shared folder: the actors on both nodes write
    their parts there themselves."""
    if _raylet(WORKER_NM_PORT) is None:  # an earlier case killed the worker node: start another
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                        f"--node-manager-port={WORKER_NM_PORT}", f"--dashboard-agent-listen-port={AGENT_PORTS[4]}",
                        f"--metrics-export-port={AGENT_PORTS[5]}"], env=cluster, check=True, capture_output=True)
    env = {**cluster, "DEEPSCOPE_SLOW_BATCH_S": "0.7"}
    out = tmp_path / "out"
    if where == "s3":
        import fsspec

        env.update(request.getfixturevalue("s3"))
        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = env["AWS_ENDPOINT_URL"]
        request.addfinalizer(lambda: fsspec.config.conf.get("s3", {}).pop("endpoint_url", None))
        out = f"s3://deepscope/cluster-{tmp_path.name}"
    job = _job(tmp_path, photos, out)
    p = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "run", str(job)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not Store(out).parts("features"):
        time.sleep(0.2)
    assert _alive_actors(cluster, wait_s=0), "the job's model actors are seen while it runs"
    raylet = _raylet(WORKER_NM_PORT)
    assert raylet is not None
    for proc in [*raylet.children(recursive=True), raylet]:  # the node and every worker process on it
        proc.kill()
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log[-3000:]
    assert_exactly_once_and_equal(out, reference)
    assert _alive_actors(cluster) == [], "no actor of the job outlives it, also after a lost node"
    if where == "s3":
        assert not (tmp_path / "out").exists() and not Path("s3:").exists(), "nothing written locally"
