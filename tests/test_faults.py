"""Exactly once under faults: dying model actors, an interrupted driver."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepscope.io.store import Store
from deepscope.mapper import KILL_ENV
from deepscope.runner import run
from test_features import read_features, small_dataset, spec


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=8)  # 24 images


@pytest.fixture(scope="module")
def reference(ray_cluster, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    run(spec(photos, out, "torchvision:alexnet", "random", "fc7"))
    return read_features(out)


def assert_exactly_once_and_equal(out, reference):
    t = Store(out).read("features")
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(reference), "every image exactly once"
    got = read_features(out)
    for i in reference:
        np.testing.assert_allclose(got[i], reference[i], rtol=1e-5, atol=1e-6)
    assert Store(out).verify("features") == []
    assert not list(Path(out).rglob(".*.tmp")), "no temporary file left behind"


def test_dying_model_actors(ray_cluster, photos, reference, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, f"{marker}@2")  # the model actor dies at its second partition, once
    out = tmp_path / "out"
    res = run(spec(photos, out, "torchvision:alexnet", "random", "fc7", batch_size=2, executor="ray"))
    assert marker.exists(), "a model actor was killed mid-job"
    assert res.failed == 0
    assert_exactly_once_and_equal(out, reference)


def _sigint_default():
    # a suite started in the background by a shell (`make test &`) ignores SIGINT, and children
    # inherit that: the driver must get its Ctrl-C as a user's would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "deepscope.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_sigint_default)


@pytest.mark.parametrize("sig,executor", [(signal.SIGINT, "local"), (signal.SIGKILL, "local"),
                                          (signal.SIGINT, "ray")])
def test_interrupted_driver_resumes(photos, reference, tmp_path, sig, executor):
    out = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text(f'out = "{out}"\n[dataset]\nsource = "{photos}"\n[model]\nname = "torchvision:alexnet"\n'
                   'weights = "random"\n[run]\nbatch_size = 2\npartition_size = 4\n'
                   f'executor = "{executor}"\n[features]\nlayer = "fc7"\n')
    # slow the model down so that the interruption lands mid-run: 2 s per partition, so 8 s at least
    # between the second part's commit and the end, also on a loaded machine
    p = _cli(["run", str(job)], env={"DEEPSCOPE_SLOW_BATCH_S": "1.0"})
    deadline = time.time() + 120
    while time.time() < deadline and len(Store(out).parts("features")) < 2:
        time.sleep(0.2)
    assert len(Store(out).parts("features")) >= 2, p.communicate()[0][-2000:]
    os.killpg(p.pid, sig)  # the whole process group: driver and its local Ray or read processes
    p.wait(timeout=60)
    # a partition is done when all its parts are committed (its features, then its errors record): the
    # kill can land between the two, and such a partition is computed again (its features part's commit
    # is then a duplicate, ignored)
    killed = Store(out)
    done_before = sum(e["rows"] for name, e in killed.parts("features").items() if killed.has_part("errors", name))
    assert done_before < 24, "interrupted before the end"
    p2 = _cli(["run", str(job)])
    log = p2.communicate(timeout=300)[0]
    assert p2.returncode == 0, log[-2000:]
    assert f"{24 - done_before} images in" in log, log[-2000:]  # only the missing partitions
    assert_exactly_once_and_equal(out, reference)


def test_a_partition_killed_between_its_commits_is_computed_again_once(photos, reference, tmp_path):
    """A driver killed after a partition's features part is committed and before its errors record: the
    partition is not done, the rerun computes it (and only it) again, and its features are not doubled."""
    out = tmp_path / "out"
    run(spec(photos, out, "torchvision:alexnet", "random", "fc7", executor="local"))
    store = Store(out)
    name, entry = sorted(store.parts("features").items())[0]
    store.drop_parts_except("errors", set(store.parts("errors")) - {name})  # as if killed between the two
    again = run(spec(photos, out, "torchvision:alexnet", "random", "fc7", executor="local"))
    assert again.computed == entry["rows"]
    assert Store(out).has_part("errors", name)
    assert_exactly_once_and_equal(out, reference)


def _group(pgid: int) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_failed_job_leaves_no_process_or_temporary(tmp_path, executor):
    """A job over its error budget exits 3, and its processes go with it: the local Ray's (raylet,
    workers, actors), or the local executor's read processes."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg" * i)
    out = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text(f'out = "{out}"\n[dataset]\nsource = "{data}"\n[model]\nname = "torchvision:alexnet"\n'
                   f'weights = "random"\n[run]\nbatch_size = 2\nmax_error_rate = 0.0\nexecutor = "{executor}"\n'
                   '[features]\nlayer = "fc7"\n')
    p = _cli(["run", str(job)])
    deadline, peak = time.time() + 120, 0
    while p.poll() is None and time.time() < deadline:
        peak = max(peak, len(_group(p.pid)))
        time.sleep(0.1)
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 3, log[-2000:]
    assert "4 of 4 images failed" in log
    if executor == "ray":
        assert peak > 3, "the job's Ray processes were seen while it ran"  # driver, GCS, raylet, workers
    else:
        assert peak >= 2, "the job's read process was seen while it ran"  # driver, reader
    deadline = time.time() + 30
    while _group(p.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert _group(p.pid) == [], "every process of the job has exited"
    assert not list(out.rglob(".*.tmp"))
