"""`[visualize]` in a job file: pictures of a layer's units or of the model's classes, by gradient
ascent (algos/ascent.py), as a post stage of the job's folder.

Its work items are targets, not the dataset's images: it runs after the job's pipeline, ignores
the dataset, and spreads partitions of targets over model actors itself (optimize.visualize_job,
the same Ray job as `deepscope visualize MODEL ... --out DIR`, which needs no dataset at all).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from deepscope.stages.base import Stage, StageConfig


class VisualizeConfig(StageConfig):
    layer: str = "logits"  # logits: classes; any other layer: its units (channels)
    targets: str = "0-15"  # all | 0-63 | 3,7,10-12
    steps: int = Field(100, ge=1)
    size: int | None = Field(None, ge=16)  # default: the model's crop
    lr: float | None = Field(None, gt=0)  # default: fourier 0.1, pixel 0.06 (algos/ascent.py)
    l2: float = Field(1e-3, ge=0)
    blur_every: int = Field(4, ge=0)
    blur_sigma: float = Field(0.5, gt=0)
    value_clip: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(0.0, ge=0, lt=1)
    jitter: int = Field(16, ge=0)
    param: Literal["pixel", "fourier"] = "fourier"
    optimizer: Literal["sgd", "adam"] = "sgd"
    decay: float = Field(1.0, ge=0)
    pad: int = Field(16, ge=0)
    scale: float = Field(0.25, ge=0, lt=1)
    rotate: float = Field(15.0, ge=0)
    position: Literal["mean", "center"] = "mean"
    seed: int = 0


class Visualize(Stage):
    name = "visualize"
    Config = VisualizeConfig
    pipeline = False

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.models.registry import load_model
        from deepscope.optimize import layer_width, parse_targets, visualize_job

        cfg = self.config
        kind = "class" if cfg.layer == "logits" else "unit"
        loaded = load_model(self.job.model.name, self.job.model.weights)
        targets = parse_targets(cfg.targets, layer_width(loaded, cfg.layer), "targets")
        settings = cfg.model_dump(exclude={"layer", "targets"}, exclude_none=True)
        run = self.job.run.model_dump()
        run["batch_size"] = min(run["batch_size"], 16)  # targets per part: pictures arrive steadily
        return visualize_job(store, self.job.model.name, self.job.model.weights, cfg.layer, kind, targets,
                             settings, run, log, ctx.execute)

    def report(self, store):
        from deepscope.optimize import visualize_html

        s = store.summary(self.name)
        return visualize_html(s, prefix="../") if s and s.get("pictures") is not None else ""
