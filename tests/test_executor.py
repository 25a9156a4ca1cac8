"""The two executors: local (one machine, no Ray) and Ray give the same parts, rows and errors."""
import numpy as np
import pyarrow as pa
import pytest

from deepscope import job as jobmod
from deepscope.executor import READ_KILL_ENV, choose_executor
from deepscope.io.store import Store
from deepscope.runner import run
from test_features import read_features, small_dataset


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"))


def two_stage_job(data, out, executor, **run_extra):
    return jobmod.validate({"out": str(out), "dataset": {"source": str(data)},
                            "model": {"name": "torchvision:alexnet", "weights": "random"},
                            "run": {"batch_size": 3, "partition_size": 4, "executor": executor, **run_extra},
                            "features": {"layer": "fc7"},
                            "saliency": {"method": ["backprop"], "map_size": 16}})


def sorted_table(out, stage) -> pa.Table:
    t = Store(out).read(stage)
    return t.sort_by([("id", "ascending")] + ([("method", "ascending")] if "method" in t.column_names else []))


def test_choose_executor(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this machine has
    assert choose_executor("ray", None, 1)[0] == "ray"
    assert choose_executor("local", "ray://x:10001", 4)[0] == "local"  # as asked
    assert choose_executor("auto", "ray://x:10001", 1)[0] == "ray"
    assert choose_executor("auto", None, 2)[0] == "ray"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert choose_executor("auto", None, 1)[0] == "ray"  # one model actor per GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_executor("auto", None, 1)[0] == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    import sys
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        assert choose_executor("auto", None, 1)[0] == "local"


def test_local_equals_ray(ray_cluster, photos, tmp_path):
    """Every part table of a two-stage job (a forward pass and a backward pass) is the same on both."""
    res_local = run(two_stage_job(photos, tmp_path / "local", "local"))
    res_ray = run(two_stage_job(photos, tmp_path / "ray", "ray"))
    assert res_local.images == res_ray.images == 9 and res_local.failed == res_ray.failed == 0
    assert sorted(Store(tmp_path / "local").parts("features")) == sorted(Store(tmp_path / "ray").parts("features"))
    for stage in ("features", "saliency"):
        a, b = sorted_table(tmp_path / "local", stage), sorted_table(tmp_path / "ray", stage)
        assert a.column_names == b.column_names and a.num_rows == b.num_rows > 0
        for name in a.column_names:
            x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
            if name in ("feature", "map", "entropy", "top_mass", "com_x", "com_y", "score"):
                np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-5, atol=1e-6)
            else:
                assert x == y, name
    assert Store(tmp_path / "local").summary("run")["images"] == 9


def test_dead_read_process_is_replaced(ray_cluster, photos, tmp_path, monkeypatch):
    """A read process that dies breaks the pool: a new pool reads what was in flight; no row lost."""
    reference = tmp_path / "reference"
    run(two_stage_job(photos, reference, "local"))
    marker = tmp_path / "killed"
    monkeypatch.setenv(READ_KILL_ENV, str(marker))
    res = run(two_stage_job(photos, tmp_path / "out", "local"))
    assert marker.exists(), "a read process was killed"
    assert res.images == 9 and res.failed == 0
    got, want = read_features(tmp_path / "out"), read_features(reference)
    assert sorted(got) == sorted(want)
    for i in want:
        np.testing.assert_array_equal(got[i], want[i])
    parts = Store(tmp_path / "out").parts("features")
    assert sum(p["rows"] for p in parts.values()) == 9, "each partition committed once"


def test_local_rerun_does_nothing_and_resumes(ray_cluster, photos, tmp_path, capsys):
    out = tmp_path / "out"
    run(two_stage_job(photos, out, "local"))
    store = Store(out)
    victim = sorted(store.parts("features"))[0]
    (out / store.parts("features")[victim]["file"]).unlink()  # lost on disk: recomputed, only it
    res = run(two_stage_job(photos, out, "local"))
    assert 0 < res.computed < 9
    res = run(two_stage_job(photos, out, "local"))
    assert res.computed == 0
    assert "nothing to do" in capsys.readouterr().err


def test_prefetch_with_a_stale_remembered_transform_reads_again(ray_cluster, photos, tmp_path, monkeypatch):
    """The first partitions start decoding with the transform remembered from the last run; when
    the model's own transform differs, they are read again with it: the features are unchanged."""
    from deepscope.models.transform import Transform, recall, remember

    reference = tmp_path / "reference"
    run(two_stage_job(photos, reference, "local"))
    assert recall("torchvision:alexnet") == Transform()  # remembered by that run
    remember("torchvision:alexnet", Transform(resize=300, crop=288))  # stale: another geometry
    run(two_stage_job(photos, tmp_path / "out", "local"))
    got, want = read_features(tmp_path / "out"), read_features(reference)
    assert sorted(got) == sorted(want)
    for i in want:
        np.testing.assert_array_equal(got[i], want[i])
    assert recall("torchvision:alexnet") == Transform()
