"""Index: FAISS indexes over the features (and the tiny pixel vectors) for nearest-neighbour search.

A post stage: it reads what the pipeline wrote.  The index kind follows the data size and a
memory budget, its search setting is tuned to a target recall@10 against exact search, and the
row -> image mapping lives beside it (see deepscope/index/build.py).
"""
from __future__ import annotations

import html
from typing import Literal

import numpy as np
from pydantic import Field

from deepscope.index.build import KINDS, build_space
from deepscope.stages.base import Stage, StageConfig


class IndexConfig(StageConfig):
    spaces: list[Literal["features", "pixels"]] = ["features"]  # "pixels" needs the [pixels] stage
    kind: Literal["auto", *KINDS] = "auto"  # auto: by size and memory_mb; or force one
    metric: Literal["l2", "cosine"] = "l2"  # of the feature space (pixel space is always L2)
    memory_mb: int = Field(4096, ge=1)  # RAM one index (one shard) may take; compress or shard beyond
    shards: int = Field(0, ge=0, le=1024)  # 0: as many as memory_mb needs; >1 builds shards in parallel tasks
    nlist: int = Field(0, ge=0)  # IVF lists; 0: about 4 sqrt(n)
    flat_max: int = Field(20_000, ge=0)  # up to this many vectors, exact search
    target_recall: float = Field(0.95, gt=0, le=1)  # recall@10 that the search setting is tuned to reach
    tune_queries: int = Field(500, ge=1, le=100_000)  # held-out queries (rows not used for training)
    train_max: int = Field(100_000, ge=256)  # training sample size cap (IVF centroids, PQ codebooks)
    chunk_rows: int = Field(16_384, ge=1)  # unused: the build reads and adds part by part (kept: job files set it)
    seed: int = 0
    examples: int = Field(4, ge=0, le=32)  # report figure: queries shown with their neighbours per space


class Index(Stage):
    name = "index"
    Config = IndexConfig
    pipeline = False

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        spaces = {space: build_space(store, space, self.config, log, ctx.executor)
                  for space in dict.fromkeys(self.config.spaces)}
        if self.config.examples and all(i["shards"] == 1 for i in spaces.values()):
            store.write_file("index/examples.png", self._examples(store, spaces))
        return {"spaces": spaces}

    def _examples(self, store, spaces: dict) -> bytes:
        """The lecture's figure: a few images with their nearest neighbours, one row per space."""
        from deepscope.index.figures import grid, thumbnail
        from deepscope.index.search import Searcher

        searchers = {space: Searcher(store, space, info) for space, info in spaces.items()}
        first = next(iter(searchers.values()))
        rng = np.random.default_rng(self.config.seed)
        ids = [first.ids[i] for i in sorted(rng.choice(len(first.ids), min(self.config.examples, len(first.ids)),
                                                       replace=False))]
        size, rows = 64, []
        for image_id in ids:
            for space, s in searchers.items():
                if image_id not in s.row_of:
                    continue
                hits = [h for h in s.search(s.vectors_of([image_id]), 9)[0] if h.id != image_id][:8]
                rows.append([(thumbnail(s.paths[s.row_of[image_id]], size), space)]
                            + [(thumbnail(h.path, size), f"{h.distance:.3g}") for h in hits])
        return grid(rows, size)

    def report(self, store):
        s = (store.summary(self.name) or {}).get("spaces", {})
        if not s:
            return ""
        head = ("<tr><th>space</th><th>vectors</th><th>dim</th><th>metric</th><th>index</th><th>shards</th>"
                "<th>search</th><th>recall@10</th><th>target</th><th>build s</th><th>why</th></tr>")
        rows = "".join(
            f"<tr><td>{html.escape(space)}</td><td>{i['rows']}</td><td>{i['dim']}</td><td>{i['metric']}</td>"
            f"<td><code>{html.escape(i['factory'])}</code></td><td>{i['shards']}</td>"
            f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in i['search'].items()) or 'exact')}</td>"
            f"<td>{i['recall_at_' + str(i['recall_k'])]}</td><td>{i['target_recall']}</td><td>{i['build_s']}</td>"
            f"<td>{html.escape(i['reason'])}</td></tr>" for space, i in s.items())
        fig = ('<p>Nearest neighbours of a few images (framed), in each space: distance under each '
               'neighbour.</p><img src="../index/examples.png">' if store.exists("index/examples.png") else "")
        return (f"<table>{head}{rows}</table><p>Files in <code>index/&lt;space&gt;/</code>: the FAISS shards, "
                "<code>ids.parquet</code> (row &rarr; id, path) and <code>index.json</code>. Query with "
                "<code>deepscope query OUT --id ID</code> or <code>deepscope serve OUT</code>.</p>" + fig)
