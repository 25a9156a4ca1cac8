"""What a user sees (issue 18): a quiet console, progress with a percentage and time left, and
`deepscope info` on an output folder."""
import json
import re
import subprocess
import sys

import pytest

from test_features import small_dataset


@pytest.fixture(scope="module", params=["local", "ray"])
def run_output(tmp_path_factory, request):
    """The same job on each executor: what a user sees must not depend on which one ran."""
    photos = small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=4)
    tmp = tmp_path_factory.mktemp("console")
    out = tmp / "out"
    job = tmp / "job.toml"
    job.write_text(f'out = "{out}"\n[dataset]\nsource = "{photos}"\n[model]\nname = "torchvision:alexnet"\n'
                   f'weights = "random"\n[run]\nbatch_size = 4\npartition_size = 4\nexecutor = "{request.param}"\n'
                   '[features]\nlayer = "fc7"\n[pixels]\nsize = 8\n')
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "run", str(job)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p.stderr, request.param


def test_console_holds_no_ray_line(run_output):
    out, stderr, executor = run_output
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = re.compile(rf"^({re.escape(str(out))}|  |done: )")
    assert lines and all(ours.match(line) for line in lines), stderr
    assert not re.search(r"ray|WARNING|core_worker|raylet|Token auth", stderr.replace(str(out), ""), re.I), stderr


def test_progress_says_percent_and_time_left(run_output):
    _, stderr, _ = run_output
    assert re.search(r"\d+/12 images \(\d+%\), 0 failed, [\d.]+ images/s, \S+ left", stderr), stderr
    assert re.search(r"first image through the model after [\d.]+ s", stderr), stderr


def test_info_lists_every_stage_with_rows(run_output):
    out, _, executor = run_output
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "info", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "features: 12 rows" in p.stdout and "pixels: 12 rows" in p.stdout and "RANDOM WEIGHTS" in p.stdout
    assert f"executor: {executor}: as asked" in p.stdout, p.stdout
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "info", str(out), "--json"], capture_output=True, text=True)
    info = json.loads(p.stdout)
    assert info["stages"]["features"]["rows"] == info["stages"]["pixels"]["rows"] == 12 and info["images"] == 12
    assert info["report"].endswith("report/index.html") and info["job"]["model"] == "torchvision:alexnet"
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "info", str(out / "features")], capture_output=True,
                       text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_knn_console_is_quiet_and_starts_no_ray(run_output):
    """A post stage on the default executor: our lines only, no Ray started, its record in the history."""
    out, _, executor = run_output
    if executor != "local":
        pytest.skip("the post stages run once, on the local executor's output")
    for args in (["index", str(out)], ["knn", str(out), "--k", "3"]):
        p = subprocess.run([sys.executable, "-m", "deepscope.cli", *args], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert lines and all(re.match(rf"^({args[0]} |knn|done: |{re.escape(str(out))})", line) for line in lines), p.stderr
        assert not re.search(r"ray|WARNING|raylet|Token auth", p.stderr.replace(str(out), ""), re.I), p.stderr
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "info", str(out), "--json"], capture_output=True, text=True)
    info = json.loads(p.stdout)
    made = info["stages"]["knn"]["made_by"]
    assert made["command"].startswith("deepscope knn") and made["status"] == "ok" and made["executor"] == "local"
    assert info["stages"]["features"]["made_by"]["command"].startswith("deepscope run"), "not overwritten by knn"
