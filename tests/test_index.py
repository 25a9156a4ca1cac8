"""FAISS indexes: the choice rule, recall against exact search, shards = one index, ids and checksums,
and a real features job whose every image, queried by its own file, finds itself first."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from deepscope.executor import LocalExecutor
from deepscope.cli import main
from deepscope.errors import UserError
from deepscope.index.build import build_space, choose
from deepscope.index.search import Searcher
from deepscope.io.store import Store
from deepscope.stages.features import Features, FeaturesConfig
from deepscope.stages.index import IndexConfig

LOCAL = LocalExecutor("the tests: tasks run here")


def clustered(n, d, centres=100, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32) * 4
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def feature_store(root, x, part_rows=5000):
    """An output folder holding x as features parts, as the pipeline writes them."""
    store = Store(root)
    store.open({"dataset": "synthetic"})
    store.open_stage("features", {"layer": "synthetic"})
    writer = Features(FeaturesConfig(), None)
    for p, start in enumerate(range(0, len(x), part_rows)):
        ids = [f"v{i:06d}" for i in range(start, min(start + part_rows, len(x)))]
        store.write_part("features", f"part-{p:05d}", writer.part_table(
            {"id": ids, "path": [f"/data/{i}.jpg" for i in ids], "label": [""] * len(ids), "feature": x[start:start + len(ids)]}))
    return store


def exact_knn(x, q, k):
    import faiss

    flat = faiss.IndexFlatL2(x.shape[1])  # brute force
    flat.add(x)
    return flat.search(q, k)[1]


def quiet(*_):
    pass


def test_choice_rule():
    assert choose(10_000, 1280).kind == "flat"
    assert choose(100_000, 64).kind == "hnsw"  # low dimension: graph
    assert choose(100_000, 1280).kind == "ivf_flat"  # 0.5 GB of raw vectors fit 4 GB
    pq_plan = choose(1_000_000, 1280, memory_mb=1024)  # 5 GB raw > 1 GB: codes
    assert pq_plan.kind == "ivf_pq" and pq_plan.shard_bytes <= 1024 * 2**20 and 1280 % pq_plan.m == 0
    opq = choose(20_000_000, 1280, memory_mb=1024)  # ~45 bytes a vector: short codes, rotate first
    assert opq.kind == "opq_ivf_pq" and opq.m * 16 < 1280 and opq.shard_bytes <= 1024 * 2**20
    sharded = choose(100_000_000, 1280, memory_mb=1024)
    assert sharded.shards > 1 and sharded.shard_bytes <= 1024 * 2**20
    assert choose(10_000, 1280, kind="hnsw").kind == "hnsw"  # forced
    assert choose(10_000, 1280, kind="ivf_flat", shards=3).shards == 3
    # a million tiny pictures (3,072 bytes each): 12 GB as floats, 3 GB as the bytes they are
    assert choose(1_000_000, 3072).kind == "ivf_pq"
    pixels = choose(1_000_000, 3072, whole_bytes=True)
    assert pixels.kind == "ivf_sq8" and pixels.factory.endswith("SQ8_direct") and pixels.shard_bytes <= 4096 * 2**20
    assert choose(250_000, 3072, whole_bytes=True).kind == "ivf_flat"  # floats fit: BLAS list by list for the graph
    with pytest.raises(UserError, match="pixel space"):
        choose(250_000, 1280, kind="ivf_sq8")  # floats would be cut to bytes


def test_recall_meets_recorded_figure(tmp_path):
    points = clustered(50_400, 64)
    x, q = points[:50_000], points[50_000:]  # fresh queries from the same distribution, not in the set
    store = feature_store(tmp_path / "out", x)
    cfg = IndexConfig(flat_max=1000, tune_queries=300)  # flat_max: make the auto choice an approximate index
    info = build_space(store, "features", cfg, quiet, LOCAL)
    assert info["kind"] == "hnsw" and info["rows"] == 50_000  # 64 dims: the rule picks a graph
    assert info["recall_at_10"] >= 0.95 and info["target_met"]
    # answered through the stored index, against brute force
    s = Searcher(store, "features", info)
    found = [[h.row for h in hits] for hits in s.search(q, 10)]
    truth = exact_knn(x, q, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= info["recall_at_10"] - 0.03, (recall, info["recall_at_10"], info["sweep"])


@pytest.fixture
def one_faiss_thread():
    """Tiny k-means runs (OPQ trains hundreds) are dominated by OpenMP barriers on a busy machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("kind", ["opq_ivf_pq", "hnsw"])  # OPQ: PQ codes and the wrapped search params
def test_every_kind_builds_tunes_and_answers(tmp_path, kind, one_faiss_thread):
    points = clustered(3100, 16, centres=30, seed=6)
    x, q = points[:3000], points[3000:]  # fresh queries from the same distribution
    between = np.random.default_rng(7).standard_normal((100, 16)).astype(np.float32) * 4  # off the clusters
    store = feature_store(tmp_path / "out", x)
    info = build_space(store, "features", IndexConfig(kind=kind, nlist=16, tune_queries=100), quiet, LOCAL)
    assert info["kind"] == kind and info["sweep"]
    assert info["search"] in [{k: v for k, v in step.items() if k in ("nprobe", "ef_search")} for step in info["sweep"]]
    s = Searcher(store, "features", info)
    truth = exact_knn(x, q, 10)

    def answers(queries, truth, **setting):
        found = [[h.row for h in r] for r in s.search(queries, 10, **setting)]
        return found, np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])

    assert answers(q, truth)[1] >= info["recall_at_10"] - 0.1  # PQ codes are coarse: recall is what it is, as recorded
    far = exact_knn(x, between, 10)
    low, high = ({"nprobe": 1}, {"nprobe": 16}) if kind != "hnsw" else ({"ef_search": 1}, {"ef_search": 512})
    # per-search settings reach the index (through OPQ's transform too): queries between clusters need more probes
    assert answers(between, far, **low)[0] != answers(between, far, **high)[0]
    assert answers(between, far, **low)[1] < answers(between, far, **high)[1]


@pytest.mark.parametrize("kind,nprobe", [("ivf_flat", 4), ("ivf_flat", None), ("flat", None)])
def test_sharded_search_equals_one_index(ray_cluster, tmp_path, kind, nprobe):
    x = clustered(12_000, 32, seed=3)
    q = x[:200] + 0.05
    results = []
    for shards in (1, 3):
        store = feature_store(tmp_path / f"s{shards}", x, part_rows=1000)
        info = build_space(store, "features", IndexConfig(kind=kind, shards=shards, nlist=64, tune_queries=100), quiet, LOCAL)
        assert info["shards"] == shards and len(info["shard_files"]) == shards
        s = Searcher(store, "features", info)
        hits = s.search(q, 10, nprobe=nprobe)
        results.append(([[h.id for h in r] for r in hits], np.array([[h.distance for h in r] for r in hits])))
    assert results[0][0] == results[1][0]
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_answers_name_rows_and_files_are_checked(tmp_path):
    x = clustered(5000, 16, seed=4)
    store = feature_store(tmp_path / "out", x)
    info = build_space(store, "features", IndexConfig(kind="ivf_flat", nlist=64, tune_queries=50), quiet, LOCAL)
    store.update_summary("index", {"spaces": {"features": info}})
    s = Searcher(str(tmp_path / "out"))
    hits = s.search(x[:3], 1000, nprobe=1)  # one list of 64 holds fewer than 1000: FAISS pads with -1
    assert all(0 < len(h) < 1000 for h in hits)
    assert all(h.id == f"v{h.row:06d}" and h.path == f"/data/{h.id}.jpg" for r in hits for h in r)
    np.testing.assert_array_equal(s.vectors_of(["v000123"])[0], x[123])
    with pytest.raises(UserError, match="nprobe must be between 1 and 64"):
        s.search(x[:1], 5, nprobe=65)
    with pytest.raises(UserError, match="has 16 values"):
        s.search(np.zeros(15), 5)
    shard = tmp_path / "out" / info["shard_files"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        Searcher(str(tmp_path / "out"))


def test_cosine_distances(tmp_path):
    x = clustered(3000, 24, seed=5)
    store = feature_store(tmp_path / "out", x)
    info = build_space(store, "features", IndexConfig(metric="cosine", tune_queries=20), quiet, LOCAL)
    s = Searcher(store, "features", info)
    hits = s.search(x[7], 5)[0]
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = 1 - u @ u[7]
    assert [h.row for h in hits] == list(np.argsort(cos)[:5])
    np.testing.assert_allclose([h.distance for h in hits], np.sort(cos)[:5], atol=1e-5)


def test_pixel_vectors_are_block_means():
    from deepscope.algos.embed import downsample_pixels

    x = torch.rand(2, 3, 224, 224)
    want = (x.reshape(2, 3, 32, 7, 32, 7).mean((3, 5)) * 255).round().reshape(2, -1).numpy()
    np.testing.assert_allclose(downsample_pixels(x, 32).astype(np.float32), want, atol=1)


@pytest.fixture(scope="session")
def indexed_photos(ray_cluster, tmp_path_factory):
    """A real lite0 features job on 9 photos, indexed in feature and pixel space."""
    from deepscope import job as jobmod
    from deepscope.runner import run
    from test_features import small_dataset

    root = tmp_path_factory.mktemp("photos")
    data = small_dataset(root / "data")
    out = root / "out"
    run(jobmod.validate({"out": str(out), "dataset": {"source": str(data)}, "model": {"name": "lite0"},
                         "run": {"batch_size": 8, "partition_size": 4}, "features": {}, "pixels": {}}))
    assert main(["index", str(out), "--pixels"]) == 0
    return data, out


def test_each_image_finds_itself_first(indexed_photos, capsys):
    from deepscope.index.encode import Encoder
    from deepscope.job import load_spec

    data, out = indexed_photos
    files = sorted(data.rglob("*.jpg"))
    assert len(files) == 9
    encoder = Encoder(str(out), load_spec(str(out)).model)  # what `query --image` runs, loaded once here for speed
    for space in ("features", "pixels"):
        s = Searcher(str(out), space)
        for f in files:
            hits = s.search(encoder.encode(f.read_bytes(), space), 2)[0]
            assert (hits[0].id, hits[0].path) == (str(f.relative_to(data)), str(f))
            assert hits[0].distance < 1e-3 and hits[1].distance > 1.0, hits
    for f in files[4:5]:  # and through the command line
        assert main(["query", str(out), "--image", str(f), "--k", "3"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        rank, dist, image_id, path = lines[1].split("\t")
        assert (rank, image_id, path) == ("1", str(f.relative_to(data)), str(f)) and float(dist) < 1e-3, lines
        assert len(lines) == 4
    assert len(list((out / "queries").glob("*-features.png"))) == 1


def test_batch_queries(indexed_photos, tmp_path):
    import pyarrow as pa

    data, out = indexed_photos
    s = Searcher(str(out))
    ids = s.ids[:4]
    vec = s.vectors_of([ids[0]])[0] + 0.01
    pq.write_table(pa.table({"id": ids + [None], "vector": [None] * 4 + [vec.tolist()]}), tmp_path / "q.parquet")
    assert main(["query", str(out), "--batch", str(tmp_path / "q.parquet"), "--out", str(tmp_path / "r.parquet"),
                 "--k", "4"]) == 0
    r = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert len(r) == 5 * 4
    for image_id in ids:
        mine = [row for row in r if row["query"] == image_id]
        assert [row["rank"] for row in mine] == [1, 2, 3, 4] and mine[0]["id"] == image_id
        assert mine[0]["distance"] == pytest.approx(0, abs=1e-3)
    by_vector = [row["id"] for row in r if row["query"] == "#4"]
    assert by_vector == [h.id for h in s.search(vec, 4)[0]]


def test_map_command_and_report(indexed_photos):
    data, out = indexed_photos
    assert main(["map", str(out)]) == 0
    coords = pq.read_table(out / "map/coords.parquet").to_pylist()
    assert sorted(c["id"] for c in coords) == sorted(str(f.relative_to(data)) for f in data.rglob("*.jpg"))
    assert all(c["tsne_sample"] for c in coords)
    page = (out / "report/index.html").read_text()
    assert "../map/grid.jpg" in page and "../index/examples.png" in page and "recall@10" in page
    assert (out / "index/examples.png").stat().st_size > 1000


def test_index_errors(tmp_path, capsys):
    assert main(["index", str(tmp_path)]) == 2
    assert "not a deepscope output folder" in capsys.readouterr().err
    store = feature_store(tmp_path / "out", clustered(100, 8))
    with pytest.raises(UserError, match="no pixels results"):
        build_space(store, "pixels", IndexConfig(), quiet, LOCAL)
    with pytest.raises(UserError, match="no pixels index"):
        Searcher(store, "pixels")


def test_pixel_bytes_kept_as_they_are_give_exact_distances(tmp_path):
    """Pixels (uint8) over the budget for floats: the rule keeps their bytes (IVF, SQ8_direct), and searching
    every list answers exactly as brute force does, distances included (no quantisation)."""
    from deepscope.stages.pixels import Pixels, PixelsConfig

    rng = np.random.default_rng(3)
    n, size = 3000, 8
    centres = rng.integers(0, 256, (20, 3 * size * size))
    x = np.clip(centres[rng.integers(0, 20, n)] + rng.integers(-30, 31, (n, 3 * size * size)), 0, 255).astype(np.uint8)
    store = Store(tmp_path / "out")
    store.open({"dataset": "synthetic"})
    store.open_stage("pixels", {"size": size})
    writer = Pixels(PixelsConfig(size=size), None)
    ids = [f"v{i:05d}" for i in range(n)]
    store.write_part("pixels", "part-00000", writer.part_table(
        {"id": ids, "path": [f"/data/{i}.jpg" for i in ids], "label": [""] * n, "pixels": x}))
    # 3,000 x 192 floats: 2.3 MB; as bytes 0.6 MB (and the lists' centroids)
    info = build_space(store, "pixels", IndexConfig(spaces=["pixels"], flat_max=100, memory_mb=2, nlist=16, tune_queries=100),
                       quiet, LOCAL)
    assert info["kind"] == "ivf_sq8" and info["recall_at_10"] >= 0.9
    s = Searcher(store, "pixels", info)
    q = x[:50].astype(np.float32)
    got = s.search(q, 10, nprobe=16)
    d2 = ((q[:, None, :] - x[None].astype(np.float32)) ** 2).sum(-1)
    want = np.sort(d2, axis=1)[:, :10]
    np.testing.assert_allclose([[h.distance ** 2 for h in hits] for hits in got], want, rtol=1e-5)
    assert [h.row for h in got[7]][0] == 7
