"""k-NN graph: every image's k nearest neighbours over the index `index` built (sharded batch
searches in tasks on the executor, resumable per partition), and what the graph says: near-duplicate groups
(feature and pixel evidence, a threshold from the data), uniqueness, label disagreement.

A post stage; the work is in deepscope/index/knn.py (the tasks, the folder) and deepscope/algos/knn.py
(the algorithms, on arrays).
"""
from __future__ import annotations

import html
from typing import Literal

from pydantic import Field

from deepscope.stages.base import Stage, StageConfig


class KnnConfig(StageConfig):
    k: int = Field(10, ge=1, le=1000)  # neighbours per image
    spaces: list[Literal["features", "pixels"]] | None = None  # graphs to compute; None: every indexed space
    block_rows: int = Field(65_536, ge=1)  # images one search task takes (memory: one block and one shard)
    sample: int = Field(1000, ge=1)  # images whose neighbours are checked against exact search (recall@k)
    chunk_rows: int = Field(16_384, ge=1)  # rows streamed at a time by the exact check
    dup_threshold: float | None = Field(None, ge=0)  # None: chosen from the data
    min_dip: float = Field(0.5, gt=0, lt=1)  # a valley: density under this share of the peak below it
    verify: bool = True  # check candidate pairs on the thumbnails (a [thumbs] stage); False: the threshold decides
    verify_top: int = Field(2, ge=1, le=100)  # each image's nearest pairs (combined distance) that are verified
    verify_chunk: int = Field(20_000, ge=1)  # about the pairs one verification task takes (fewer: two tasks a core when pairs are fewer)
    min_sketch: float = Field(0.3, ge=-1, le=1)  # pairs whose pixel sketches agree less are not verified (-1: all are)
    min_frames_sketch: float = Field(0.4, ge=-1, le=1)  # ... and not laid by their frames under this (keypoints only; -1: all are)
    close_frames_sketch: float = Field(0.6, ge=-1, le=1)  # ... and under this, if both have keypoints, only when their layouts correlate closely (-1: off)
    verify_nearest: bool = True  # also each image's nearest in each graph (copies under one common caption; most set aside at the first look)
    verify_best_sketch: float = Field(0.5, ge=0, le=2)  # also each image's graph edge whose sketches agree best, from this agreement (over 1: none)
    min_inliers: int = Field(4, ge=3)  # local-feature matches agreeing with one similarity transform
    min_explained: float = Field(0.75, ge=-1, le=1)  # share of one thumbnail's variation the other's colour curves explain
    min_detail: float = Field(0.15, ge=-1, le=1)  # correlation of the thumbnails' fine details where both have some (and beyond a caption both carry)
    min_fine: float = Field(0.9, ge=-1, le=1)  # the finest details' (a page's words), where both thumbnails have them (-1: off)
    max_differing: float = Field(0.25, gt=0, le=1)  # share of the overlap's cells that differ after a colour fit
    max_overlay: float = Field(0.2, gt=0, le=1)  # the differing cells fit a band this narrow (one caption or logo)
    flag_below: float = Field(0.5, gt=0, le=1)  # flag a label held by less than this share of neighbours
    show: int = Field(12, ge=1, le=100)  # groups and images shown in the report
    seed: int = 0

    @classmethod
    def of(cls, store) -> "KnnConfig":
        """The settings the folder's knn stage last ran with (keys of older versions dropped), else the defaults:
        a copy query outside the stage decides a pair as the stage did."""
        ran = store.stage_config("knn") or {}
        return cls(**{k: v for k, v in ran.items() if k in cls.model_fields})


class Knn(Stage):
    name = "knn"
    Config = KnnConfig
    pipeline = False

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.index.knn import analyse, graph_space, indexed_spaces

        store.update_summary(self.name, None)  # an interrupted run is redone (its finished parts are kept)
        spaces = self.config.spaces or indexed_spaces(store) or ["features"]
        graphs = {space: graph_space(store, space, self.config.k, self.config, log, ctx.executor) for space in spaces}
        return {"graphs": graphs, **analyse(store, spaces, self.config, log, ctx.executor)}

    @staticmethod
    def _decision(d: dict, evidence: str) -> str:
        v = d.get("verification")
        if not v:
            return (f"Pairs at duplicate distance under {d['threshold']} ({html.escape(d['how']['method'])}); "
                    f"duplicate distance: {evidence}. Add a [thumbs] stage to verify pairs on thumbnails instead "
                    f"(and to know which image of a group to keep: thumbnails record the images' sizes).")
        screened = v.get("screened") or 0
        first = (f"; {screened} of them set aside at a first look, their pixel sketches (fine detail at 16 x 16) "
                 f"agreeing under {v['min_sketch']} at every small shift, scale or mirror, and the other "
                 f"{v['pairs'] - screened} " if screened else "; each ")
        more = (", its nearest in each graph" if v.get("nearest") else "") + (
            f", its graph edge whose pixel sketches agree best (when at {v['best_sketch']} or more)" if v.get("best_sketch") is not None else "") + (
            ", its nearest by pixel signature and by grey ranks (as it is or mirrored)" if v.get("signature_pairs") else "")
        return (f"Candidates: each image's {v['top']} nearest by {evidence}{more}, and images with equal pixel hashes "
                f"({v['pairs']} pairs){first}verified on the thumbnails (ORB keypoints matched, directly and "
                f"mirrored, a similarity transform fitted by RANSAC, then the aligned pictures compared"
                + (f"; without such a transform a pair is laid by its frames when its sketches agree at {v['min_frames_sketch']} or more"
                   if v.get("min_frames_sketch") is not None else "")
                + (f", and under {v['close_frames_sketch']}, when both pictures have keypoints, only if their layouts correlate closely"
                   if v.get("close_frames_sketch", -1) > -1 else "") + ") in "
                f"{v['seconds']} s ({v['ms_per_image']} ms an image"
                + (f"; {v['earlier']} of the pairs were verified by an earlier run of these settings, their evidence read "
                   f"from <code>knn/verified</code>" if v.get("earlier") else "") + ")."
                + (f" {v['fine_only']} pairs that passed every other test were told apart by their finest details "
                   f"(the words of pages of one template: <code>rejected_by</code> ends with <code>fine</code>)."
                   if v.get("fine_only") else "")
                + (f" {v['shared_overlay_only']} pairs matched only on what could be one caption or watermark that both carry "
                   f"(their matches fit one overlay's band) and their details disagree beyond it (<code>rejected_by</code> "
                   f"ends with <code>outside_overlay</code>)." if v.get("shared_overlay_only") else "")
                + " Every pair looked at is in <code>knn/candidates.parquet</code>.")

    @staticmethod
    def _tiers(d: dict) -> str:
        tiers = d.get("tiers") or {}
        if not tiers:
            return ""
        what = {"exact": "the same decoded pixels", "near-identical": "re-encoded or resized",
                "edited": "cropped, lightened, flipped, rotated or drawn on", "unverified": "decided by the threshold alone"}
        rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{c}</td><td>{what.get(t, '')}</td></tr>" for t, c in tiers.items())
        return f"<table><tr><th>tier</th><th>pairs</th><th>meaning</th></tr>{rows}</table>"

    @staticmethod
    def _copies(d: dict) -> str:
        if d.get("copies") is None:
            return ""
        return (f"<p>{d['copies']} of the {d['images']} images are copies of an image kept in their group (the one "
                f"with the most pixels, then the largest file, then the most duplicate pairs): each copy's <code>duplicate_of</code> in "
                f"<code>knn/images.parquet</code> names the kept image it duplicates (verified against it, or against a copy "
                f"of it at least as large), so the copies can be removed and every picture stays, at its largest size.</p>")

    def report(self, store):
        s = store.summary(self.name) or {}
        if not s.get("graphs"):
            return ""
        head = "<tr><th>space</th><th>images</th><th>k</th><th>index</th><th>shards</th><th>search</th><th>recall@k (sample)</th><th>s</th></tr>"
        rows = "".join(
            f"<tr><td>{html.escape(sp)}</td><td>{g['rows']}</td><td>{g['k']}</td><td>{html.escape(g['index'])}</td>"
            f"<td>{g['shards']}</td><td>{html.escape(', '.join(f'{a}={b}' for a, b in g['search'].items()) or 'exact')}</td>"
            f"<td>{g['recall_at_' + str(g['k'])]} ({g['recall_sample']})</td><td>{g['search_s']}</td></tr>"
            for sp, g in s["graphs"].items())
        d, lab = s["duplicates"], s["labels"]
        evidence = ("the geometric mean of the feature distance and the pixel-signature distance (1 - correlation "
                    "of blurred 8x8 tiny images, or of one and the other mirrored), each divided by its median over the feature graph's pairs"
                    if d["pixel_evidence"] else "the feature distance divided by its median (no pixels index)")
        return (
            f"<table>{head}{rows}</table><p>Every image's neighbours in <code>knn/&lt;space&gt;/part-*.parquet</code>; "
            f"recall@k measured on a random sample against exact search.</p>"
            f"<h3>Near-duplicates</h3><p>{d['groups']} groups, {d['images']} images. {self._decision(d, evidence)} "
            f"Pairs with their tier and evidence in <code>knn/duplicates.parquet</code>, per image in "
            f"<code>knn/images.parquet</code>.</p>{self._tiers(d)}{self._copies(d)}"
            f'<img src="../knn/distances.png"><p>Largest groups, one per row (framed: the images to keep, each '
            f'followed by its copies):</p><img src="../knn/duplicates.png">'
            "<h3>Uniqueness</h3><p>An image's distances to its three nearest neighbours (weights 0.6, 0.3, 0.1) "
            "over the dataset's median of that (high: unique or an outlier; low: redundant, it has copies).</p>"
            f'<img src="../knn/uniqueness.png">'
            f"<h3>Label disagreement</h3><p>{lab['flagged']} of {lab['labelled']} labelled images have less than "
            f"{lab['flag_below']:.0%} of their neighbours sharing their label (framed: the image; title: its label "
            f"-> the neighbours' majority and its share).</p><img src=\"../knn/disagreements.png\">")
