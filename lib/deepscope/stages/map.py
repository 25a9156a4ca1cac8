"""Map: the dataset laid out in 2-D by its features -- PCA (streamed) and t-SNE -- as coordinates in
Parquet, a scatter coloured by label, and the "cnnembed" picture: thumbnails on a grid by position.

A post stage.  PCA is scikit-learn's IncrementalPCA fitted part by part (memory: one chunk plus
n x pca_dims projections).  method "tsne" runs t-SNE on those projections, on a random sample of at
most tsne_max images (Barnes-Hut t-SNE costs minutes beyond ~10,000 points on a few cores); the
others are placed at their nearest sampled neighbour's position.  method "graph" embeds every image:
t-SNE from the k-NN graph the knn stage wrote (openTSNE, affinities from the precomputed neighbours,
FFT gradients), so a million images are all on the map; its coordinates go in the tsne_x/tsne_y
columns (tsne_sample true for every image).
"""
from __future__ import annotations

import html
import io
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from deepscope.io import schemas
from deepscope.stages.base import Stage, StageConfig


class MapConfig(StageConfig):
    method: Literal["pca", "tsne", "graph"] = "tsne"  # the layout the grid uses; PCA coordinates are always written
    graph_space: Literal["features", "pixels"] = "features"  # method graph: whose k-NN graph (deepscope knn)
    iterations: int = Field(750, ge=10)  # method graph: t-SNE iterations (a third of them exaggerated)
    pca_dims: int = Field(50, ge=2, le=1024)  # IncrementalPCA components (t-SNE's input)
    tsne_max: int = Field(5000, ge=10)  # t-SNE on at most this many images; the rest by nearest neighbour
    perplexity: float = Field(30.0, gt=1)
    grid: int = Field(20, ge=2, le=64)  # thumbnails per side of the grid picture
    thumb: int = Field(48, ge=16, le=256)  # thumbnail side, pixels
    chunk_rows: int = Field(4096, ge=16)  # rows per IncrementalPCA.partial_fit call
    seed: int = 0


def _stream(store, chunk_rows: int, meta: bool = False):
    """Feature chunks of at least chunk_rows rows (the last one of up to twice that), for partial_fit."""
    from deepscope.index.build import stream_vectors

    held = None
    for _, x, m in stream_vectors(store, "features", "feature", chunk_rows, cosine=False, meta=meta):
        if held is not None and len(x) < chunk_rows:  # a short last chunk joins the one before
            x = np.concatenate([held[0], x])
            m = {k: held[1][k] + m[k] for k in m} if meta else None
            held = None
        if held is not None:
            yield held
        held = (x, m)
    if held is not None:
        yield held


class Map(Stage):
    name = "map"
    Config = MapConfig
    pipeline = False

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from sklearn.decomposition import IncrementalPCA

        from deepscope.algos.embed import place_by_neighbour, tsne
        from deepscope.index.build import dataset_shape

        c = self.config
        n, d, _ = dataset_shape(store, "features", "feature")
        dims = min(c.pca_dims, d, n)
        pca = IncrementalPCA(n_components=dims)
        for x, _ in _stream(store, max(c.chunk_rows, dims)):
            pca.partial_fit(x)
        z, meta = [], {"id": [], "path": [], "label": []}
        for x, m in _stream(store, max(c.chunk_rows, dims), meta=True):
            z.append(pca.transform(x).astype(np.float32))
            for k in meta:
                meta[k] += m[k]
        z = np.concatenate(z)
        log(f"map: PCA of {n} features ({d} -> {dims} dims, {pca.explained_variance_ratio_[:2].sum():.1%} "
            f"of the variance in the first two)")

        tsne_xy = None
        in_sample = np.zeros(n, bool)
        if c.method == "tsne":
            rng = np.random.default_rng(c.seed)
            sample = np.sort(rng.choice(n, min(n, c.tsne_max), replace=False))
            in_sample[sample] = True
            tsne_xy = np.empty((n, 2), np.float32)
            tsne_xy[sample] = tsne(z[sample], c.perplexity, c.seed)
            tsne_xy[~in_sample] = place_by_neighbour(z[sample], tsne_xy[sample], z[~in_sample])
            log(f"map: t-SNE of {len(sample)} images" + (f", {n - len(sample)} placed by nearest neighbour"
                                                          if n > len(sample) else ""))

        if c.method == "graph":
            tsne_xy = self._graph_layout(store, z, meta["id"], log)
            in_sample[:] = True

        null = pa.nulls(n, pa.float32())
        coords = pa.table({
            **{k: pa.array(v, pa.string()) for k, v in meta.items()},
            "pca_x": pa.array(z[:, 0]), "pca_y": pa.array(z[:, 1] if dims > 1 else np.zeros(n, np.float32)),
            "tsne_x": pa.array(tsne_xy[:, 0]) if tsne_xy is not None else null,
            "tsne_y": pa.array(tsne_xy[:, 1]) if tsne_xy is not None else null,
            "tsne_sample": pa.array(in_sample) if tsne_xy is not None else pa.nulls(n, pa.bool_()),
        }, schema=schemas.MAP_COORDS)
        store.write_table("map/coords.parquet", coords)
        pca_xy = np.stack([coords.column("pca_x").to_numpy(), coords.column("pca_y").to_numpy()], 1)
        store.write_file("map/scatter.png", self._scatter(pca_xy, tsne_xy, meta["label"]))
        layout = tsne_xy if tsne_xy is not None else pca_xy
        shown = self._grid(store, layout, meta["path"])
        from deepscope.index.build import inputs_digest

        return {"rows": n, "dim": d, "pca_dims": dims, "method": c.method, "inputs": inputs_digest(store, "features"),
                "explained_variance_2d": round(float(pca.explained_variance_ratio_[:2].sum()), 4),
                "tsne_sample": int(in_sample.sum()), "grid_images": shown}

    def _graph_layout(self, store, z, ids, log) -> np.ndarray:
        """Every image's t-SNE position from the knn stage's graph (its rows: the index's rows)."""
        import time

        import pyarrow.compute as pc

        from deepscope.algos.embed import graph_tsne
        from deepscope.errors import UserError

        c = self.config
        stage = f"knn/{c.graph_space}"
        if not store.parts(stage):
            raise UserError(f"map method graph needs the {c.graph_space} k-NN graph: run `deepscope knn {store.root}` first")
        rows, nbrs, dists, gids = [], [], [], []
        for _, t in store.iter_parts(stage, columns=["id", "row", "neighbor_rows", "distances"]):
            if t.num_rows:
                k = pc.min(pc.list_value_length(t.column("neighbor_rows"))).as_py()
                rows.append(t.column("row").to_numpy())
                nbrs.append(pc.list_slice(t.column("neighbor_rows"), 0, k).combine_chunks().flatten().to_numpy().reshape(-1, k))
                dists.append(pc.list_slice(t.column("distances"), 0, k).combine_chunks().flatten().to_numpy().reshape(-1, k))
                gids.append(t.column("id"))
        k = min(x.shape[1] for x in nbrs)  # every row the same k (a part's lists may be longer)
        order = np.argsort(np.concatenate(rows))
        nb = np.concatenate([x[:, :k] for x in nbrs])[order]
        dist = np.concatenate([x[:, :k] for x in dists])[order]
        n = len(order)
        if not np.array_equal(np.concatenate(rows)[order], np.arange(n)) or nb.max() >= n:
            raise UserError(f"the {c.graph_space} k-NN graph of {store.root} is incomplete: run `deepscope knn {store.root}`")
        where = pc.index_in(pa.array(ids, pa.string()), pa.chunked_array(gids).take(pa.array(order)))
        if where.null_count:
            raise UserError(f"the k-NN graph of {store.root} is out of date: run `deepscope knn {store.root}` again")
        where = where.to_numpy().astype(np.int64)  # map row -> graph row
        init = np.zeros((n, 2))
        init[where] = z[:, :2]
        t0 = time.time()
        xy = graph_tsne(nb, dist, init, c.perplexity, c.iterations, c.seed, log=log)
        log(f"map: graph t-SNE of all {n} images from their {k} nearest ({c.graph_space} space) in {time.time() - t0:.0f} s")
        return xy[where]

    def _scatter(self, pca_xy, tsne_xy, labels) -> bytes:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        name = "t-SNE of the k-NN graph" if self.config.method == "graph" else "t-SNE"
        panels = [("PCA", pca_xy)] + ([(name, tsne_xy)] if tsne_xy is not None else [])
        fig = Figure(figsize=(6 * len(panels), 5.5), dpi=100)
        FigureCanvasAgg(fig)
        names = sorted({lab or "(none)" for lab in labels})
        lab = np.array([lab or "(none)" for lab in labels])
        cmap = matplotlib.colormaps["tab20"]
        for i, (title, xy) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for j, name in enumerate(names):
                sel = lab == name
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(j % 20), label=name if len(names) <= 20 else None)
            ax.set_title(f"{title} of the features ({len(xy)} images)")
            ax.set_xticks([])
            ax.set_yticks([])
        if len(names) <= 20:
            fig.axes[-1].legend(loc="best", fontsize=7, markerscale=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def _grid(self, store, xy, paths) -> int:
        """Thumbnails of (a sample of) the images, each in the grid cell its 2-D position gets."""
        from PIL import Image

        from deepscope.algos.embed import grid_cells
        from deepscope.index.figures import thumbnail

        c = self.config
        n = len(xy)
        side = min(c.grid, int(np.ceil(np.sqrt(n))))
        rng = np.random.default_rng(c.seed)
        chosen = np.sort(rng.choice(n, min(n, side * side), replace=False))
        cells = grid_cells(xy[chosen], side)
        canvas = Image.new("RGB", (side * c.thumb, side * c.thumb), "white")
        for i, cell in zip(chosen, cells):
            canvas.paste(thumbnail(paths[i], c.thumb), ((cell % side) * c.thumb, (cell // side) * c.thumb))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=88)
        store.write_file("map/grid.jpg", buf.getvalue())
        return len(chosen)

    def report(self, store):
        s = store.summary(self.name) or {}
        if not s:
            return ""
        what = {"tsne": "t-SNE", "graph": "t-SNE (from the k-NN graph)"}.get(s.get("method"), "PCA")
        sample = (f" t-SNE ran on {s['tsne_sample']} images; the others sit at their nearest sampled neighbour."
                  if s.get("method") == "tsne" and s.get("tsne_sample", 0) < s.get("rows", 0) else "")
        return (f"<p>{s.get('rows')} images mapped to 2-D from {s.get('dim')}-d features (PCA to {s.get('pca_dims')} "
                f"dims, {s.get('explained_variance_2d', 0):.1%} of the variance in the first two).{sample} "
                f"Coordinates in <code>map/coords.parquet</code>.</p>"
                f"<p>{s.get('grid_images')} thumbnails on a grid by their {html.escape(what)} position:</p>"
                f'<img src="../map/grid.jpg"><p>Coloured by label:</p><img src="../map/scatter.png">')
