"""The foundation end to end: features from the Ray pipeline equal a direct forward pass."""
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from deepscope import job as jobmod
from deepscope.errors import UserError
from deepscope.models.registry import load_model
from deepscope.models.taps import forward_with_taps
from deepscope.runner import JobFailed, run
from deepscope.io.store import Store
from imagezoo import make_zoo, reference_rgb


def small_dataset(root: Path, n_per_label: int = 3) -> Path:
    """A few real photos in label subfolders (small, so that tests stay fast)."""
    from deepscope.io.demo_data import make_demo_data

    make_demo_data(root, per_photo=n_per_label)
    for extra in list(root.iterdir())[3:]:
        shutil.rmtree(extra)  # 3 labels are enough here
    return root


def spec(data, out, model="lite0", weights=None, layer="penultimate", **run):
    return jobmod.validate({"out": str(out), "dataset": {"source": str(data)},
                            "model": {"name": model, "weights": weights},
                            "run": {"batch_size": 4, "partition_size": 4, **run},
                            "features": {"layer": layer}})


def direct_features(model, layer, paths):
    """The reference: torchvision's documented preprocessing on the correctly decoded image, one forward."""
    loaded = load_model(*model)
    tf = loaded.transform.torchvision()
    x = torch.stack([tf(reference_rgb(p)) for p in paths])
    with torch.inference_mode():
        _, taps = forward_with_taps(loaded, x, [layer])
    return taps[layer].flatten(1).numpy()


def read_features(out):
    t = Store(out).read("features")
    return {i: np.asarray(f, np.float32) for i, f in zip(t.column("id").to_pylist(), t.column("feature").to_pylist())}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize("model,weights,layer,executor", [("lite0", None, "penultimate", "ray"),
                                                          ("torchvision:alexnet", "random", "fc7", "ray"),
                                                          ("lite0", None, "penultimate", "local")])
def test_pipeline_equals_direct_forward(ray_cluster, photos, tmp_path, model, weights, layer, executor):
    res = run(spec(photos, tmp_path / "out", model, weights, layer, executor=executor))
    got = read_features(tmp_path / "out")
    ids = sorted(got)
    assert res.images == len(ids) == 9 and res.failed == 0
    want = direct_features((model, weights), layer, [photos / i for i in ids])
    assert want.shape[1] == (1280 if model == "lite0" else 4096)
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), want, rtol=1e-4, atol=1e-4)
    meta = pq.read_schema(next((tmp_path / "out/features").glob("*.parquet"))).metadata
    assert (b"random" in meta[b"deepscope.weights"]) == (weights == "random")


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_image_zoo_errors_and_good_images(ray_cluster, tmp_path, executor):
    zoo = tmp_path / "zoo"
    expected = make_zoo(zoo)
    run(spec(zoo, tmp_path / "out", "torchvision:alexnet", "random", "fc7", executor=executor))
    got = read_features(tmp_path / "out")
    errors = pq.read_table(tmp_path / "out/errors.parquet").to_pylist()
    good = sorted(name for name, err in expected.items() if err is None)
    bad = {name: err for name, err in expected.items() if err is not None}
    assert sorted(got) == good
    assert sorted(e["id"] for e in errors) == sorted(bad)
    for e in errors:
        assert bad[e["id"]].lower() in e["error"].lower(), e
    assert len(got) + len(errors) == len(expected)
    want = direct_features(("torchvision:alexnet", "random"), "fc7", [zoo / i for i in good])
    np.testing.assert_allclose(np.stack([got[i] for i in good]), want, rtol=1e-4, atol=1e-4)


def test_rerun_is_noop_and_resume_recomputes_only_missing(ray_cluster, photos, tmp_path):
    out = tmp_path / "out"
    s = spec(photos, out, "torchvision:alexnet", "random", "fc7")
    first = run(s)
    assert first.computed == 9
    reference = read_features(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = run(s)
    assert again.computed == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
    # an interrupted run: the manifest lacks one partition (its file may be half-written)
    m = json.loads((out / "manifest.json").read_text())
    lost = sorted(m["stages"]["features"]["parts"])[1]
    rows = m["stages"]["features"]["parts"].pop(lost)["rows"]
    (out / "manifest.json").write_text(json.dumps(m))
    (out / f"features/{lost}.parquet").write_bytes(b"truncated")
    resumed = run(s)
    assert 0 < resumed.computed == rows < 9  # that partition only
    assert Store(out).verify("features") == []
    after = read_features(out)
    assert sorted(after) == sorted(reference)
    for i in reference:
        np.testing.assert_array_equal(after[i], reference[i])


def test_refuses_to_mix_configurations(ray_cluster, photos, tmp_path):
    out = tmp_path / "out"
    run(spec(photos, out, "torchvision:alexnet", "random", "fc7"))
    with pytest.raises(UserError, match="different job"):
        run(spec(photos, out, "lite0", None, "penultimate"))
    with pytest.raises(UserError, match="other \\[features\\] settings"):
        run(spec(photos, out, "torchvision:alexnet", "random", "penultimate"))


def test_error_budget(ray_cluster, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.jpg").write_text("not an image")
    shutil.copy(Path(__file__).parent / "imagezoo.py", data / "x.png")
    with pytest.raises(JobFailed, match="4 of 4"):
        run(spec(data, tmp_path / "out", "torchvision:alexnet", "random", "fc7"))
    assert pq.read_table(tmp_path / "out/errors.parquet").num_rows == 4


def test_manifest_source_with_ids_labels_and_duplicates(ray_cluster, photos, tmp_path):
    files = sorted(p for p in photos.rglob("*.jpg"))[:5]
    lines = ["id,path,label"] + [f"img{i},{p},L{i % 2}" for i, p in enumerate(files)] + [f"img0,{files[1]},dup"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    run(spec(tmp_path / "m.csv", tmp_path / "out", "torchvision:alexnet", "random", "fc7"))
    t = Store(tmp_path / "out").read("features").to_pydict()
    assert sorted(t["id"]) == [f"img{i}" for i in range(5)]
    assert dict(zip(t["id"], t["label"]))["img3"] == "L1"
    errors = pq.read_table(tmp_path / "out/errors.parquet").to_pylist()
    assert [e["stage"] for e in errors] == ["list"] and "duplicate id" in errors[0]["error"]
