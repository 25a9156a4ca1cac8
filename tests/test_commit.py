"""The commit path (issue 13): a rerun trusts only what is on disk, partitions stay put when a
dataset grows, outputs on an S3 API, and an unwritable location fails before any work."""
import json
import shutil
import socket

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from deepscope import job as jobmod
from deepscope.cli import main
from deepscope.errors import UserError
from deepscope.io.plan import content_defined_chunks as chunks, plan
from deepscope.io.store import Store
from deepscope.runner import run
from test_features import read_features, small_dataset, spec


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=4)  # 12 images


@pytest.fixture(scope="module")
def reference(ray_cluster, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    run(spec(photos, out, "torchvision:alexnet", "random", "fc7"))
    return read_features(out)


def assert_same(out, reference):
    got = read_features(out)
    assert sorted(got) == sorted(reference)
    for i in reference:
        np.testing.assert_array_equal(got[i], reference[i])
    assert Store(out).verify("features") == []


def test_commit_cost_does_not_grow(tmp_path):
    """Committing writes one small record, never the snapshot: the same bytes written at 10 or
    10,000 parts (the time is measured by bench/commit.py)."""
    store = Store(tmp_path / "o")
    store.open({"job": 1})
    writer = store.writer()
    table = pa.table({"x": [1]})
    rec = writer.write("s", "p0", table)
    store.open_stage("s", {})
    for n in range(1, 2001):
        store.manifest["stages"]["s"]["parts"][f"q{n}"] = dict(rec.entry(), file=f"s/q{n}.parquet")
    snap = (tmp_path / "o/manifest.json").stat().st_mtime_ns
    assert store.commit(rec) and not store.commit(rec)  # a duplicate delivery commits nothing
    assert (tmp_path / "o/manifest.json").stat().st_mtime_ns == snap, "no snapshot rewrite per part"
    assert (tmp_path / "o/_log/s/p0.json").stat().st_size < 400
    assert Store(tmp_path / "o").has_part("s", "p0"), "a reader sees the logged commit"
    store.flush()
    assert not (tmp_path / "o/_log/s/p0.json").exists() and Store(tmp_path / "o").has_part("s", "p0")


def test_rerun_repairs_what_is_missing_on_disk(ray_cluster, photos, reference, tmp_path):
    out = tmp_path / "out"
    s = spec(photos, out, "torchvision:alexnet", "random", "fc7")
    run(s)
    parts = sorted(Store(out).parts("features").items())
    assert len(parts) >= 3
    rows = {p: e["rows"] for p, e in parts}
    (out / parts[0][1]["file"]).unlink()  # a deleted part
    f = out / parts[1][1]["file"]
    f.write_bytes(f.read_bytes()[:100])  # a truncated part
    # a torn commit record: the driver was killed while writing it; the part is not in the snapshot
    m = json.loads((out / "manifest.json").read_text())
    del m["stages"]["features"]["parts"][parts[2][0]]
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "_log/features").mkdir(parents=True, exist_ok=True)
    (out / f"_log/features/{parts[2][0]}.json").write_text('{"stage": "features", "part": "' + parts[2][0][:3])
    again = run(s)
    assert again.computed == rows[parts[0][0]] + rows[parts[1][0]] + rows[parts[2][0]]
    assert_same(out, reference)
    # a damaged part of the same size is found by --verify only (its checksum)
    f = out / Store(out).parts("features")[parts[0][0]]["file"]
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    assert run(s).computed == 0
    assert run(jobmod.validate({**s.model_dump(mode="json"), "run": {**s.run.model_dump(), "verify": True}})).computed \
        == rows[parts[0][0]]
    assert_same(out, reference)


def test_deleted_stage_folder_recomputes_and_takes_new_settings(ray_cluster, photos, reference, tmp_path):
    out = tmp_path / "out"
    run(spec(photos, out, "torchvision:alexnet", "random", "fc7"))
    with pytest.raises(UserError, match="delete .*features"):
        run(spec(photos, out, "torchvision:alexnet", "random", "penultimate"))
    shutil.rmtree(out / "features")  # as the message advises
    assert run(spec(photos, out, "torchvision:alexnet", "random", "penultimate")).computed == 12
    assert Store(out).stage_config("features")["layer"] == "penultimate"
    shutil.rmtree(out / "features")
    assert run(spec(photos, out, "torchvision:alexnet", "random", "fc7")).computed == 12
    assert_same(out, reference)


def test_chunks_stay_put_under_insertion():
    ids = [f"img_{i:06d}.jpg" for i in range(20000)]
    before = {tuple(c) for c in chunks(iter(ids), 64)}
    grown = sorted(ids + [f"img_010000_{j:02d}.jpg" for j in range(50)])
    after = {tuple(c) for c in chunks(iter(grown), 64)}
    assert 200 < len(before) < 450, "about size ids per chunk"
    gone = before - after
    assert len(gone) <= 3, "only the chunks around the new ids change"
    assert all(abs(int(c[0][4:10]) - 10000) < 4 * 64 for c in gone), "and they are where the ids went in"
    assert sum(len(c) for c in after - before) <= 50 + 5 * 64  # vs all 10,000 after it, by position
    assert sorted(i for c in after for i in c) == grown


def _tiny_folder(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        rgb = np.random.default_rng(abs(hash(n)) % 2**32).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / n)


class MeanColour(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_growth_recomputes_only_receiving_partitions(ray_cluster, tmp_path):
    """5,000 images, then 50 more inside the sort order: at most 5% of the partitions recomputed,
    and the results equal a fresh run over the grown folder."""
    data = tmp_path / "data"
    _tiny_folder(data, [f"img_{i:05d}.png" for i in range(5000)])
    model = tmp_path / "mean.pt"
    torch.jit.save(torch.jit.script(MeanColour()), str(model))

    def job(out):
        return jobmod.validate({"out": str(out), "dataset": {"source": str(data)},
                                "model": {"name": f"torchscript:{model}"},
                                "run": {"batch_size": 256, "partition_size": 64}, "pixels": {"size": 4}})
    assert run(job(tmp_path / "out")).computed == 5000
    before = set(Store(tmp_path / "out").parts("pixels"))
    _tiny_folder(data, [f"img_02500_{j:02d}.png" for j in range(50)])
    grown = run(job(tmp_path / "out"))
    after = Store(tmp_path / "out").parts("pixels")
    new = set(after) - before
    assert 0 < len(new) <= 0.05 * len(after), (len(new), len(after))
    assert grown.computed == sum(after[p]["rows"] for p in new)
    assert run(job(tmp_path / "fresh")).computed == 5050
    a, b = Store(tmp_path / "out"), Store(tmp_path / "fresh")
    assert sorted(a.parts("pixels")) == sorted(b.parts("pixels")), "the same partitions as a fresh run"
    ta, tb = a.read("pixels").sort_by("id"), b.read("pixels").sort_by("id")
    assert ta.num_rows == 5050
    assert ta.column("id").equals(tb.column("id")) and ta.column("pixels").equals(tb.column("pixels"))


def test_unwritable_location_is_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["features", str(tmp_path / "nodata"), "--out", str(tmp_path / "file" / "out"),
                 "--model", "torchvision:alexnet", "--weights", "random"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to the output location" in err and len(err.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 API on loopback (moto's server mode), with a bucket."""
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="deepscope")
    yield env
    mp.undo()
    server.stop()


def test_outputs_on_s3_read_back_by_index_and_query(ray_cluster, s3, photos, reference, tmp_path, capsys):
    import fsspec

    out = "s3://deepscope/runs/photos"
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3["AWS_ENDPOINT_URL"]
    try:
        res = run(spec(photos, out, "torchvision:alexnet", "random", "fc7"))
        assert res.computed == 12
        assert not (tmp_path / "runs").exists()
        got = read_features(out)
        for i in reference:
            np.testing.assert_array_equal(got[i], reference[i])
        assert main(["index", out]) == 0
        one = sorted(reference)[0]
        capsys.readouterr()
        assert main(["query", out, "--id", one, "--k", "3"]) == 0
        printed = capsys.readouterr().out
        assert one in printed and len([i for i in reference if i in printed]) >= 3, printed
        fs = fsspec.filesystem("s3")
        assert fs.exists("deepscope/runs/photos/report/index.html")
        assert run(spec(photos, out, "torchvision:alexnet", "random", "fc7")).computed == 0
        assert main(["features", str(photos), "--out", "s3://no-such-bucket/x", "--model", "torchvision:alexnet",
                     "--weights", "random"]) == 2
    finally:
        fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)


def test_synthetic_source_and_manifest_shards(ray_cluster, photos, reference, tmp_path):
    """Manifest shards: partitions are row ranges read by the decode tasks; the results equal the folder's."""
    import pandas as pd

    paths = sorted(p for p in photos.rglob("*.jpg"))
    ids = [str(p.relative_to(photos)) for p in paths]
    shards = tmp_path / "shards"
    shards.mkdir()
    pd.DataFrame({"path": [str(p) for p in paths[:5]], "id": ids[:5]}).to_parquet(shards / "00000.parquet")
    pd.DataFrame({"path": [str(p) for p in paths[5:]], "id": ids[5:]}).to_csv(shards / "00001.csv", index=False)
    out = tmp_path / "out"
    assert run(spec(f"{shards}/*.*", out, "torchvision:alexnet", "random", "fc7")).computed == 12
    assert all(p.startswith("s-") for p in Store(out).parts("features"))
    got = read_features(out)
    assert sorted(got) == sorted(reference)
    for i in reference:  # other partitions, other batches: equal up to float noise
        np.testing.assert_allclose(got[i], reference[i], rtol=1e-5, atol=1e-6)
    syn = list(plan("synthetic:1000", 256))
    assert [p.size for p in syn] == [256, 256, 256, 232]
    assert syn[1].items["id"].iloc[0] == f"{256:012d}"
