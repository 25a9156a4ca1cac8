"""The HTTP service on a real uvicorn server (127.0.0.1, a free port): queries by upload, id and
vector; every kind of bad request gets its 4xx and the server keeps serving; concurrent requests
answer as the same requests one at a time."""
import concurrent.futures
import http.client
import io
import random
import shutil
import socket
import threading
import time
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from deepscope.executor import LocalExecutor
from deepscope.index.build import build_space
from deepscope.index.search import Searcher
from deepscope.io.store import Store
from deepscope.serve.app import Limits, create_app
from deepscope.stages.index import IndexConfig
from test_cluster import cluster  # noqa: F401  (module fixture: a loopback two-node Ray cluster)
from test_index import indexed_photos  # noqa: F401  (session fixture: a real lite0 job on 9 photos)

MAX_UPLOAD = 2**20

LOCAL = LocalExecutor("the tests: tasks run here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(indexed_photos, tmp_path_factory):  # noqa: F811
    data, out = indexed_photos
    served = tmp_path_factory.mktemp("served") / "out"
    shutil.copytree(out, served)
    store = Store(served)
    # an IVF index of 3 lists over the 9 photos, so that nprobe changes the answers
    info = build_space(store, "features", IndexConfig(kind="ivf_flat", nlist=3), lambda *a: None, LOCAL)
    store.update_summary("index", {"spaces": {**store.summary("index")["spaces"], "features": info}})
    app = create_app(str(served), Limits(max_upload_bytes=MAX_UPLOAD, max_pixels=4_000_000))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, data, served, port
    srv.should_exit = True
    thread.join(10)


def still_serving(client):
    r = client.get("/info")
    assert r.status_code == 200 and r.json()["spaces"]["features"]["kind"] == "ivf_flat"


def test_queries_by_upload_id_and_vector(server):
    client, data, served, _ = server
    files = sorted(data.rglob("*.jpg"))
    for f in files[::3]:
        image_id = str(f.relative_to(data))
        for space in ("features", "pixels"):
            r = client.post("/neighbors", files={"image": (f.name, f.read_bytes(), "image/jpeg")},
                            data={"k": "3", "space": space})
            assert r.status_code == 200, r.text
            n = r.json()["neighbors"]
            assert len(n) == 3 and n[0]["id"] == image_id and n[0]["distance"] < 1e-3, n
        r = client.post("/neighbors", json={"id": image_id, "k": 4})
        assert r.status_code == 200 and r.json()["neighbors"][0] == {
            "rank": 1, "id": image_id, "label": image_id.split("/")[0], "distance": 0.0, "image": "/images/" + quote(image_id)}
        vector = Searcher(str(served)).vectors_of([image_id])[0]
        r = client.post("/neighbors", json={"vector": vector.tolist(), "k": 2, "nprobe": 3})
        assert r.status_code == 200 and r.json()["neighbors"][0]["id"] == image_id
        img = client.get(f"/images/{quote(image_id)}")
        assert img.status_code == 200 and img.content == f.read_bytes() and img.headers["content-type"] == "image/jpeg"
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text


def png(width, height) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    client, data, served, port = server
    good = sorted(data.rglob("*.jpg"))[0]
    image_id = str(good.relative_to(data))

    def upload(content, **fields):
        return client.post("/neighbors", files={"image": ("x.jpg", content, "image/jpeg")}, data=fields)

    cases = [
        (upload(b"this is not an image"), 400, "bad image"),
        (upload(good.read_bytes()[:2000]), 400, "bad image"),  # truncated JPEG
        (upload(b"\xff" * (MAX_UPLOAD + 10)), 413, "larger than"),
        (upload(png(3000, 2000)), 413, "decompression bomb"),  # 6 Mpx > 4 Mpx, a small file
        (client.post("/neighbors", content=(b"x" * 65536 for _ in range(40)),  # chunked: no Content-Length
                     headers={"content-type": "application/json"}), 413, "larger than"),
        (client.post("/neighbors", json={"id": image_id, "k": 1001}), 422, "k must be at most 1000"),
        (client.post("/neighbors", json={"id": image_id, "k": 0}), 422, "k"),
        (client.post("/neighbors", json={"id": "no/such.jpg"}), 404, "unknown id"),
        (client.post("/neighbors", json={"k": 3}), 422, "exactly one"),
        (client.post("/neighbors", json={"id": image_id, "vector": [0.0] * 1280}), 422, "exactly one"),
        (client.post("/neighbors", json={"vector": [0.0] * 7}), 422, "1280 values"),
        (client.post("/neighbors", json={"id": image_id, "nprobe": 4}), 422, "nprobe must be between 1 and 3"),
        (client.post("/neighbors", json={"id": image_id, "ef_search": 64}), 422, "HNSW"),
        (client.post("/neighbors", json={"id": image_id, "space": "sound"}), 422, "space"),
        (client.post("/neighbors", json={"id": image_id, "url": "http://example.com/x.jpg"}), 422, "url"),
        (client.post("/neighbors", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
        (client.post("/neighbors", content=b"id=x", headers={"content-type": "text/plain"}), 415, "multipart"),
        (client.get("/images/no-such-id.jpg"), 404, "unknown image id"),
    ]
    for r, status, needle in cases:
        assert r.status_code == status and needle in r.json()["detail"], (status, r.status_code, r.text)
        still_serving(client)
    # path traversal, sent verbatim (no client-side normalisation of the path)
    for path in ["/images/..%2F..%2Fetc%2Fpasswd", "/images/../../etc/passwd", "/images/%2e%2e/%2e%2e/etc/passwd",
                 "/images//etc/passwd", "/images/%2Fetc%2Fpasswd", f"/images/{quote(image_id)}/../../../../etc/passwd",
                 f"/images/{quote(image_id)}%00.png", "/images/" + quote(str(good))]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status in (400, 404) and b"root:" not in body, (path, resp.status, body[:200])
        still_serving(client)


def test_concurrent_requests_answer_as_sequential_ones(server):
    client, data, served, port = server
    files = sorted(data.rglob("*.jpg"))
    ids = [str(f.relative_to(data)) for f in files]
    requests = [{"json": {"id": i, "k": k, "nprobe": p}} for i in ids[:3] for k in (1, 4, 9) for p in (1, 2, 3)]
    requests += [{"json": {"id": i, "k": 5, "space": "pixels"}} for i in ids[3:6]]
    requests += [{"files": {"image": (f.name, f.read_bytes(), "image/jpeg")}, "data": {"k": "4"}} for f in files * 2]
    url = f"http://127.0.0.1:{port}/neighbors"

    def ask(req):
        with httpx.Client(timeout=60) as c:
            r = c.post(url, **req)
        assert r.status_code == 200, r.text
        return r.json()

    one_at_a_time = [ask(r) for r in requests]
    order = list(range(len(requests)))
    random.Random(0).shuffle(order)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = dict(zip(order, pool.map(lambda i: ask(requests[i]), order)))
    for i, want in enumerate(one_at_a_time):
        got = together[i]
        assert [n["id"] for n in got["neighbors"]] == [n["id"] for n in want["neighbors"]], requests[i]
        np.testing.assert_allclose([n["distance"] for n in got["neighbors"]],
                                   [n["distance"] for n in want["neighbors"]], rtol=1e-5, atol=1e-6)
        assert got["search"] == want["search"]
    # the settings did change the answers (else this test would prove nothing about them)
    by = {(r["json"]["id"], r["json"]["k"], r["json"]["nprobe"]): a for r, a in zip(requests, one_at_a_time)
          if "nprobe" in r.get("json", {})}
    assert any(len(by[(i, 9, 1)]["neighbors"]) < len(by[(i, 9, 3)]["neighbors"]) for i in ids[:3])
    still_serving(client)


# ---------------------------------------------------------------------------- serve --ray on a cluster

def _replicas(name: str) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(f"ray::ServeReplica:deepscope:{name}"):
            out.append(p)
    return out


def _start_ray_server(args: list[str], env: dict, health: str):
    """`deepscope ARGS --port P` in a process of its own, once its health route answers -> (process, url)."""
    import subprocess
    import sys

    url = f"http://127.0.0.1:{(port := free_port())}"
    proc = subprocess.Popen([sys.executable, "-m", "deepscope.cli", *args, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + health, timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(1)
    proc.kill()
    raise AssertionError(f"deepscope {args[0]} did not answer {health} in 300 s")


def _stop(proc) -> None:
    """Ctrl-C, as a user stops a server (it then removes its Serve application), else kill."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_ray_on_two_nodes_equals_single_process_and_survives_a_killed_replica(
        cluster, indexed_photos, tmp_path, ray_cluster):  # noqa: F811
    """`deepscope serve OUT --ray` on the loopback two-node cluster: the answers of the single-process
    server; 50 concurrent clients (p99 printed); a shard replica killed mid-load costs at most 1% of
    the requests and is replaced."""
    import os
    import signal
    import subprocess

    from fastapi.testclient import TestClient

    data, out = indexed_photos
    served = tmp_path / "out"
    shutil.copytree(out, served)
    store = Store(served)  # a 3-shard feature index, so that the router fans out and merges
    info = build_space(store, "features", IndexConfig(kind="flat", shards=3), lambda *a: None, LOCAL)
    store.update_summary("index", {"spaces": {**store.summary("index")["spaces"], "features": info}})
    server, url = _start_ray_server(["serve", str(served), "--ray", "--replicas", "2"], cluster, "/info")
    try:
        ids = [str(f.relative_to(data)) for f in sorted(data.rglob("*.jpg"))]
        requests = [{"id": i, "k": k, "space": sp} for i in ids for k in (1, 5, 9) for sp in ("features", "pixels")]
        with TestClient(create_app(str(served))) as single, httpx.Client(base_url=url, timeout=60) as ray_client:
            for req in requests:
                want, got = single.post("/neighbors", json=req).json(), ray_client.post("/neighbors", json=req).json()
                assert [n["id"] for n in got["neighbors"]] == [n["id"] for n in want["neighbors"]], req
                np.testing.assert_allclose([n["distance"] for n in got["neighbors"]],
                                           [n["distance"] for n in want["neighbors"]], rtol=1e-5, atol=1e-6)
            assert ray_client.post("/neighbors", json={"id": "no/such.jpg"}).status_code == 404
        victims = _replicas("features-shard-1")
        assert len(victims) == 2, victims

        latencies, failures, lock = [], [], threading.Lock()
        killed = threading.Event()

        def client(c):
            with httpx.Client(base_url=url, timeout=60) as h:
                for n in range(20):
                    t0 = time.perf_counter()
                    try:
                        r = h.post("/neighbors", json=requests[(c * 20 + n) % len(requests)])
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        if not ok:
                            failures.append(c)
                        if len(latencies) == 200 and not killed.is_set():
                            os.kill(victims[0].pid, signal.SIGKILL)  # a replica dies mid-load
                            killed.set()

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            list(pool.map(client, range(50)))
        assert killed.is_set()
        p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
        print(f"\nserve --ray, 50 concurrent clients, {len(latencies)} requests: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"{len(failures)} failed ({len(failures) / len(latencies):.1%}) with a shard replica killed mid-load")
        assert len(failures) <= 0.01 * len(latencies), (len(failures), len(latencies))
        deadline = time.time() + 120  # Serve replaces the dead replica
        while time.time() < deadline and len([p for p in _replicas("features-shard-1") if p.pid != victims[0].pid]) < 2:
            time.sleep(1)
        assert len([p for p in _replicas("features-shard-1") if p.pid != victims[0].pid]) == 2
        r = httpx.post(url + "/neighbors", json=requests[0], timeout=60)
        assert r.status_code == 200
        _explorer_searches_through_ray_serve(served, cluster, requests, url)
    finally:
        _stop(server)


def _explorer_searches_through_ray_serve(served, env, requests, serve_url):
    """`deepscope app OUT --ray` on the same cluster (its own Serve application beside `serve --ray`'s):
    the explorer's search answers equal the in-process explorer's, its shards are Serve replicas, and
    stopping it leaves the other application serving."""
    import signal
    import subprocess

    from fastapi.testclient import TestClient

    from deepscope.serve.explorer import create_explorer

    app, url = _start_ray_server(["app", str(served), "--ray", "--replicas", "1"], env, "/api/info")
    try:
        assert httpx.get(url + "/api/info", timeout=5).json()["search_on"] == "ray serve"
        with TestClient(create_explorer(str(served))) as local, httpx.Client(base_url=url, timeout=60) as remote:
            for req in requests[::2]:
                want, got = local.post("/api/neighbors", json=req).json(), remote.post("/api/neighbors", json=req).json()
                assert [n["id"] for n in got["neighbors"]] == [n["id"] for n in want["neighbors"]], req
                np.testing.assert_allclose([n["distance"] for n in got["neighbors"]],
                                           [n["distance"] for n in want["neighbors"]], rtol=1e-5, atol=1e-6)
            assert remote.post("/api/neighbors", json={"id": "no/such.jpg"}).status_code == 404
        import psutil

        ours = [p for p in psutil.process_iter(["cmdline"])
                if " ".join(p.info["cmdline"] or []).startswith("ray::ServeReplica:deepscope-explorer:features-shard-")]
        assert len(ours) == 3, ours  # one replica of each of the 3 shards
    finally:
        _stop(app)
    assert httpx.post(serve_url + "/neighbors", json=requests[0], timeout=60).status_code == 200

