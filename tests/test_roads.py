"""The two roads (issue 22): post stages read only outputs (no dataset, no CNN, no Ray), bad
arguments stop a command before any image is computed, and every command leaves its record in the
output's run history without overwriting another's."""
import json
import shutil
import subprocess
import sys

import pytest

from deepscope.io.store import Store
from test_features import small_dataset

PROBE = """
import sys
from deepscope.commands import main
rc = main(sys.argv[1:])
print("IMPORTED", sorted(m for m in ("torch", "ray", "torchvision") if m in sys.modules), rc)
"""


def cli(*args):
    return subprocess.run([sys.executable, "-m", "deepscope.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roads")
    data = small_dataset(tmp / "data", n_per_label=4)
    out = tmp / "out"
    p = cli("features", data, "--out", out, "--model", "torchvision:alexnet", "--weights", "random", "--layer", "fc7",
            "--batch-size", "4", "--executor", "local")
    assert p.returncode == 0, p.stderr
    return data, out


def test_post_stages_need_neither_the_dataset_nor_the_cnn(output, tmp_path):
    data, out = output
    moved = tmp_path / "moved"
    shutil.move(str(data), moved)  # the dataset is gone from where the features were computed
    try:
        for args in (["index", out], ["knn", out, "--k", "3"], ["map", out, "--method", "pca"]):
            p = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=600)
            assert p.returncode == 0 and "IMPORTED [] 0" in p.stdout, (args, p.stdout, p.stderr[-2000:])
        p = cli("knn", out, "--k", "3")  # again: nothing to do
        assert p.returncode == 0 and "nothing to do" in p.stderr, p.stderr
        # a stage that needs the images says, in one line, which dataset it cannot reach
        p = cli("saliency", out)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert str(data) in p.stderr and "dataset" in p.stderr, p.stderr
    finally:
        shutil.move(str(moved), data)


def test_every_command_appends_its_record(output):
    _, out = output
    history = Store(out).history()
    stages = [r["stages"] for r in history]
    assert stages[0] == ["features"] and [["index"], ["knn"], ["map"]] == stages[1:4], stages
    first = history[0]
    assert first["command"].startswith("deepscope features") and history[1]["command"] is None  # from Python
    assert first["status"] == "ok" and first["executor"] == "local" and first["computed"] == 12 and first["rate"] > 0
    knn = [r for r in history if r["stages"] == ["knn"]]
    assert [r["status"] for r in knn] == ["ok", "nothing to do"], knn
    run = Store(out).summary("run")
    assert run["command"].startswith("deepscope features"), "a post command does not overwrite the run summary"
    info = json.loads(cli("info", out, "--json").stdout)
    assert info["stages"]["knn"]["made_by"]["status"] == "ok" and info["stages"]["knn"]["made_by"]["executor"] == "local"
    assert info["stages"]["features"]["made_by"]["rate"] == first["rate"]


def test_a_bad_layer_stops_before_any_image_and_is_recorded(output, tmp_path):
    data, _ = output
    out = tmp_path / "bad"
    p = cli("features", data, "--out", out, "--model", "torchvision:alexnet", "--weights", "random",
            "--layer", "nosuch", "--executor", "local")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        p.stderr.strip()] and "unknown layer 'nosuch'" in p.stderr, p.stderr
    store = Store(out)
    assert not store.parts("features") and not store.parts("errors"), "no image was computed"
    (record,) = store.history()
    assert record["status"] == "failed" and "unknown layer 'nosuch'" in record["error"]
    info = cli("info", out).stdout
    assert "features: failed" in info and "layer=nosuch" not in info, info
