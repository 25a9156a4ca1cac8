"""Maps: streamed PCA equals scikit-learn's PCA; t-SNE's left-out points sit at their nearest
sampled neighbour; the grid gives every thumbnail its own cell and keeps the layout."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from deepscope.executor import RunContext
from deepscope.algos.embed import grid_cells
from deepscope.stages.map import Map, MapConfig
from test_index import feature_store


def low_rank(n, d, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((5, d))
    scales = np.array([10, 6, 3, 2, 1.0])[:, None]
    return (rng.standard_normal((n, 5)) @ (basis * scales) + 0.05 * rng.standard_normal((n, d)) + 3).astype(np.float32)


def run_map(store, **cfg):
    summary = Map(MapConfig(**cfg), job=None).finish(RunContext(store=store, job=None, log=lambda *a: None))
    return summary, pq.read_table(store.path("map/coords.parquet")).to_pydict()


def test_streamed_pca_equals_sklearn(tmp_path):
    from sklearn.decomposition import PCA

    x = low_rank(3000, 64)
    store = feature_store(tmp_path / "out", x, part_rows=450)  # parts of 450, fitted in chunks of >= 500
    summary, coords = run_map(store, method="pca", chunk_rows=500, grid=8, thumb=16)
    assert coords["id"] == [f"v{i:06d}" for i in range(3000)] and coords["tsne_x"] == [None] * 3000
    got = np.stack([coords["pca_x"], coords["pca_y"]], 1)
    want = PCA(2).fit_transform(x)
    for j in range(2):
        sign = np.sign(got[:, j] @ want[:, j])
        np.testing.assert_allclose(sign * got[:, j], want[:, j], atol=1e-3 * np.abs(want[:, j]).max())
    assert summary["grid_images"] == 64 and store.path("map/grid.jpg").stat().st_size > 0
    assert store.path("map/scatter.png").read_bytes()[:4] == b"\x89PNG"


def test_tsne_sample_and_nearest_neighbour_placement(tmp_path):
    x = low_rank(400, 32, seed=1)
    store = feature_store(tmp_path / "out", x, part_rows=100)
    summary, coords = run_map(store, method="tsne", tsne_max=150, pca_dims=10, grid=6, thumb=16)
    assert summary["tsne_sample"] == 150
    inside = np.array(coords["tsne_sample"])
    xy = np.stack([coords["tsne_x"], coords["tsne_y"]], 1)
    # the rest: exactly at the position of the nearest sampled point, in the PCA space t-SNE ran on
    from sklearn.decomposition import PCA

    z = PCA(10).fit_transform(x)
    sample, rest = np.nonzero(inside)[0], np.nonzero(~inside)[0]
    d = ((z[rest, None, :] - z[None, sample, :]) ** 2).sum(-1)
    nearest = sample[np.argmin(d, 1)]
    agree = np.mean(np.all(xy[rest] == xy[nearest], 1))
    assert agree > 0.97, agree  # (streamed vs batch PCA may swap a near tie or two)
    assert len(np.unique(xy[sample], axis=0)) == 150


def test_grid_cells_keep_the_layout():
    side = 5
    cells = np.arange(side * side)
    rows, cols = cells // side, cells % side
    xy = np.stack([cols + 0.5, side - rows - 0.5], 1).astype(float)  # points at the cell centres (y up)
    order = np.random.default_rng(0).permutation(len(xy))
    assert list(grid_cells(xy[order], side)) == list(cells[order])
    pts = np.random.default_rng(1).random((20, 2))
    got = grid_cells(pts, side)
    assert len(set(got)) == 20 and got.max() < 25
    with pytest.raises(ValueError):
        grid_cells(np.zeros((26, 2)), side)
