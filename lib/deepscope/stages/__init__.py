"""The registry of stages: a job-file section `[name]` runs the stage of that name.

Adding a stage: one file here (plus its algorithm in algos/) and one line below. A stage's module is
imported when it is first looked up, so a command that touches one stage (`deepscope knn OUT`)
imports neither torch nor the others.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

_WHERE = {  # name -> module:class, in the order of the report's sections
    "features": "features:Features", "pixels": "pixels:Pixels", "index": "index:Index", "knn": "knn:Knn",
    "map": "map:Map", "patches": "patches:Patches", "saliency": "saliency:Saliency", "dissect": "dissect:Dissect",
    "stylize": "stylize:Stylize", "dream": "dream:Dream", "invert": "invert:Invert",
    "robustness": "robustness:Robustness", "visualize": "visualize:Visualize", "thumbs": "thumbs:Thumbs",
    "atlas": "atlas:Atlas",
}


class _Registry(Mapping):
    def __getitem__(self, name: str):
        module, cls = _WHERE[name].split(":")
        return getattr(importlib.import_module(f"deepscope.stages.{module}"), cls)

    def __iter__(self):
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


STAGES = _Registry()
