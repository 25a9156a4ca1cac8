"""The k-NN graph: its algorithms against brute force on arrays, the distributed sharded search
against exact search, and the [knn] stage on real images: planted near-copies found as duplicate
groups, swapped labels flagged, /duplicates/{id} over HTTP, bad input in one line."""
import numpy as np
import pytest

from deepscope.algos import knn as K


def brute(q, x, k, metric="l2", own=None):
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - q @ x.T
    else:
        d = np.sqrt(((q[:, None, :].astype(np.float64) - x[None]) ** 2).sum(2))
    if own is not None:
        d[np.arange(len(q)), own] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_blocked_knn_equals_brute_force(metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 24)).astype(np.float32)
    q = x[:50] + 0.01 * rng.standard_normal((50, 24)).astype(np.float32)
    d, r = K.exact_knn(q, x, 7, metric, block_rows=97)  # blocks that do not divide n
    bd, br = brute(q, x, 7, metric)
    np.testing.assert_array_equal(r, br)
    np.testing.assert_allclose(d, bd, atol=2e-4)
    # streamed blocks, leaving each query's own row out
    own = np.arange(50)
    d, r = K.exact_knn(x[:50], ((s, x[s:s + 300]) for s in range(0, 1000, 300)), 5, metric, exclude=own)
    bd, br = brute(x[:50], x, 5, metric, own)
    np.testing.assert_array_equal(r, br)
    np.testing.assert_allclose(d, bd, atol=2e-4)
    d, r = K.exact_knn(x[:3], x[:4], 6)  # fewer rows than k: padded
    assert (r[:, 4:] == -1).all() and np.isinf(d[:, 4:]).all()


def test_drop_self_recall_and_edges():
    rows = np.array([[0, 5, 6, -1], [7, 1, 8, 9], [3, 4, 2, 5]])
    dist = np.array([[0, 1, 2, np.inf], [0, 0, 1, 2], [0.5, 1, 1.5, 2]], np.float32)
    d, r = K.drop_self(dist, rows, np.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(r, [[5, 6, -1], [7, 8, 9], [3, 4, 5]])  # own row gone wherever it ranks
    np.testing.assert_array_equal(d, [[1, 2, np.inf], [0, 1, 2], [0.5, 1, 2]])
    assert K.recall_at_k(np.array([[1, 2, 3]]), np.array([[1, 2, 4]])) == pytest.approx(2 / 3)
    a, b, d = K.undirected_edges(np.array([[1, 2], [0, 2]]), np.array([[0.3, 0.5], [0.2, 0.9]]), np.array([0, 1]))
    assert list(zip(a, b)) == [(0, 1), (0, 2), (1, 2)] and d.tolist() == pytest.approx([0.2, 0.5, 0.9])


def test_components_against_union_find():
    rng = np.random.default_rng(1)
    n = 300
    a, b = rng.integers(0, n, 200), rng.integers(0, n, 200)
    lab = K.components(n, a, b)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a, b):
        parent[find(i)] = find(j)
    groups = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    want = np.empty(n, np.int64)
    for members in groups.values():
        want[members] = min(members)
    np.testing.assert_array_equal(lab, want)


def test_threshold_falls_in_the_valley():
    rng = np.random.default_rng(2)
    bulk = np.exp(rng.normal(0, 0.25, 900))  # unrelated images: nearest distance around 1
    copies = np.exp(rng.normal(np.log(0.08), 0.5, 100)).clip(max=0.25)  # a factor 1.8 below the bulk
    t, how = K.choose_threshold(np.concatenate([bulk, copies]))
    assert copies.max() < t < bulk.min(), (t, how)
    t0, how0 = K.choose_threshold(bulk)  # no copies: the threshold stays below everything
    assert t0 < bulk.min() and "no gap" in how0["method"]


def test_pixel_signature_ignores_lightening_and_shifts():
    from PIL import Image, ImageEnhance

    from deepscope.demo_data import random_scene

    rng = np.random.default_rng(3)
    scenes = [random_scene(rng, 96) for _ in range(40)]

    def tiny(img):
        return np.asarray(img.resize((32, 32), Image.Resampling.BOX)).transpose(2, 0, 1).reshape(-1)

    s = K.pixel_signature(np.stack([tiny(i) for i in scenes]), 32)
    moved = [ImageEnhance.Brightness(i.crop((2, 1, 94, 95)).resize((96, 96))).enhance(1.25) for i in scenes]
    m = K.pixel_signature(np.stack([tiny(i) for i in moved]), 32)
    same = K.signature_distance(s, m)
    other = K.signature_distance(s, np.roll(m, 1, axis=0))
    assert same.max() < 0.15 and np.median(other) > 0.5, (same.max(), np.median(other))


def test_uniqueness_and_label_disagreement_by_hand():
    dist = np.array([[1, 1], [2, 2], [0.1, 0.1], [1, 3]], np.float32)
    u = K.uniqueness(dist)
    np.testing.assert_allclose(u, [1 / 1.5, 2 / 1.5, 0.1 / 1.5, 2 / 1.5], rtol=1e-6)
    labels = ["a", "a", "b", "a", None]
    nbrs = np.array([[1, 3, 2], [0, 3, -1], [0, 1, 3], [2, 2, 4], [0, 1, 2]])
    r = K.label_disagreement(labels, nbrs)
    assert r["majority"] == ["a", "a", "a", "b", "a"]
    assert r["flagged"].tolist() == [False, False, True, True, False]  # no label: never flagged
    np.testing.assert_allclose(r["majority_share"], [2 / 3, 1, 1, 1, 2 / 3], rtol=1e-6)


# ---------------------------------------------------------------------------- the distributed search

from deepscope.errors import UserError  # noqa: E402
from test_index import clustered, feature_store, quiet  # noqa: E402


def knn_cfg(**kw):
    from deepscope.stages.knn import KnnConfig

    return KnnConfig(**kw)


def built(store, **index_kw):
    from deepscope.index.build import build_space
    from deepscope.stages.index import IndexConfig

    info = build_space(store, "features", IndexConfig(**index_kw), quiet)
    store.update_summary("index", {"spaces": {"features": info}})
    return info


@pytest.mark.parametrize("kind,shards", [("flat", 1), ("flat", 3), ("ivf_flat", 2)])
def test_sharded_graph_equals_exact_search(ray_cluster, tmp_path, kind, shards):
    from deepscope.index.knn import graph_space, read_graph

    x = clustered(3000, 16, centres=40, seed=11)
    x[100] = x[7]  # an exact copy: it ties with the image itself, which must still be dropped by row
    store = feature_store(tmp_path / "out", x, part_rows=400)
    built(store, kind=kind, shards=shards, nlist=16, tune_queries=200, target_recall=0.99)
    rec = graph_space(store, "features", 5, knn_cfg(block_rows=700, sample=300), quiet)
    rows, dist = read_graph(store, "features")
    d, r = K.exact_knn(x, x, 5, exclude=np.arange(3000))
    if kind == "flat":  # exact blocks: the very neighbours (ties aside) and distances
        np.testing.assert_allclose(dist, d, rtol=1e-4, atol=1e-4)
        assert (rows == r).mean() > 0.99 and rec["recall_at_5"] > 0.99
    else:
        assert K.recall_at_k(rows, r) >= 0.9 and abs(K.recall_at_k(rows, r) - rec["recall_at_5"]) < 0.05
    assert (rows != np.arange(3000)[:, None]).all()  # never itself
    assert rows[7][0] == 100 and rows[100][0] == 7 and dist[7][0] == pytest.approx(0, abs=1e-3)
    assert rec["shards"] == shards and rec["recall_sample"] == 300


def test_graph_resumes_per_partition_and_refuses_bad_k(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    from deepscope.index.knn import GRAPH, graph_space

    x = clustered(1200, 8, seed=12)
    store = feature_store(tmp_path / "out", x, part_rows=300)
    built(store, kind="flat")
    graph_space(store, "features", 4, knn_cfg(block_rows=300, sample=50), quiet)
    rel = GRAPH.format(space="features")
    parts = store.parts(rel)
    assert len(parts) == 4
    first = sorted(parts)[1]
    before = {p: e["sha256"] for p, e in parts.items()}
    store.manifest["stages"][rel]["parts"].pop(first)  # as if interrupted before this part was written
    lines = []
    graph_space(store, "features", 4, knn_cfg(block_rows=300, sample=50), lines.append)
    assert "3 of 4 parts done" in lines[0]
    assert {p: e["sha256"] for p, e in store.parts(rel).items()} == before  # the same part, recomputed
    t = pq.read_table(store.path(store.parts(rel)[first]["file"]))
    assert t.num_rows == 300 and t.column("row").to_pylist() == list(range(300, 600))
    lines.clear()
    graph_space(store, "features", 3, knn_cfg(block_rows=300, sample=50), lines.append)  # another k: all again
    assert "0 of 4 parts done" in lines[0]
    with pytest.raises(UserError, match="k = 1200 is not below the number of images"):
        graph_space(store, "features", 1200, knn_cfg(), quiet)
