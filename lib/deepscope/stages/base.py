"""What a stage is: a config section, a per-batch function run on the model actors,
a per-partition table, and a dataset-level finish (reductions, figures, report section).

The runner knows nothing else about a stage. A stage file never imports the CLI.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch


class StageConfig(BaseModel):
    """Base of every `[stage]` job-file section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def name_list(v, what: str) -> list:
    """A job-file list given as a list or a comma-separated string: stripped, deduplicated, non-empty."""
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not v:
        raise ValueError(f"name at least one {what}")
    return list(dict.fromkeys(v))


class Stage:
    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    needs_grad: ClassVar[bool] = False  # True: map_batch runs outside inference mode
    pipeline: ClassVar[bool] = True  # False: a post stage (index, map): only finish(), on earlier outputs
    uses_model: ClassVar[bool] = True  # False: the stage brings its own network (stylize); a pass of
    #                                    such stages only skips the job model's forward pass
    phase: ClassVar[int] = 1  # pipeline stages of a later phase run after every earlier phase finished

    def __init__(self, config: StageConfig, job):
        self.config = config
        self.job = job

    def fingerprint(self) -> dict:
        """What fixes this stage's results; a folder never mixes two fingerprints."""
        return self.config.model_dump(mode="json")

    def layers(self) -> list[str]:
        """Layer names this stage reads; the model mapper taps their union in one forward pass."""
        return []

    def check(self, loaded) -> None:
        """On the driver, before any pass: the settings that depend on the model (its layers) are
        checked, so that a bad one is one error line, not an error row per image."""
        from deepscope.models.taps import resolve

        for layer in self.layers():
            resolve(loaded, layer)

    def prepare(self, ctx) -> None:
        """On the driver, before this stage's pass: read what earlier phases wrote (kept on self,
        which is shipped to the model actors). ctx: executor.RunContext (store, log, job, loaded
        model, run_pass)."""

    # -- on the model actors ------------------------------------------------------
    def map_batch(self, model, x: torch.Tensor, taps: dict[str, torch.Tensor], rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Results for the good rows of one batch: columns of equal length (pure, no I/O)."""
        raise NotImplementedError

    # -- on the model actors, per partition ---------------------------------------
    def part_table(self, rows: dict[str, np.ndarray]) -> pa.Table:
        """The Parquet table of one partition from its good rows (this stage's columns unprefixed)."""
        raise NotImplementedError

    def part_files(self, part: str, rows: dict[str, np.ndarray]) -> dict[str, bytes]:
        """Files that belong to one partition (e.g. stylized images): {path relative to the output
        folder: bytes}. The worker writes them, atomically, before the partition's table, and the
        commit record lists them with their sizes, so a committed part implies its files and a
        rerun recomputes a part whose files are gone; a retried part rewrites the same names."""
        return {}

    # -- on the driver ------------------------------------------------------------
    def finish(self, ctx) -> dict:
        """After every partition is committed: dataset-level results and figures. Returns a summary.
        ctx: executor.RunContext; ctx.run_pass(stages, partitions) runs a pass of the stage's own
        (dissection over a concept set) on the same executor and commit path."""
        return {}

    def report(self, store) -> str:
        """This stage's section of report/index.html (HTML)."""
        return ""
