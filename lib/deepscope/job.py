"""Job files (TOML) and their validation: one spec object that the runner and every stage read.

Relative paths in a job file are taken from the current directory, as on the CLI.
"""
from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from deepscope.errors import UserError
from deepscope.stages import STAGES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Section):
    source: str  # a folder, a .parquet/.csv manifest with a `path` column, or an fsspec URL (s3://...)
    demo: bool = False  # write the embedded demo dataset at `source` first if it is missing


class ModelConfig(Section):
    name: str = "lite0"  # lite0 | torchvision:NAME | timm:NAME | torchscript:FILE
    weights: str | None = None  # None: the model's own weights; "random" (tests only); or a FILE


class RunConfig(Section):
    batch_size: int = Field(64, ge=1, le=8192)
    actors: int = Field(1, ge=1, le=1024)  # model actors when the cluster has no GPU (one per GPU otherwise)
    threads: int = Field(0, ge=0)  # torch threads per CPU actor; 0: the node's cores / actors
    partition_size: int = Field(256, ge=1)  # images per output part (the unit of retry and resume)
    max_error_rate: float = Field(0.5, ge=0.0, le=1.0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp32 gives exact results
    channels_last: bool = True
    address: str | None = None  # Ray cluster; default RAY_ADDRESS or a new local cluster
    executor: Literal["auto", "local", "ray"] = "auto"  # auto: Ray when it brings something (executor.choose_executor)
    verify: bool = False  # before running, also check every committed part's sha256 (sizes are always checked)
    decode_timeout_s: float = Field(10.0, gt=0)
    max_pixels: int = Field(178_956_970, ge=1)
    max_bytes: int = Field(256 * 2**20, ge=1)


class JobBase(Section):
    out: str
    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    run: RunConfig = RunConfig()

    def stage_configs(self) -> dict:
        return {name: getattr(self, name) for name in STAGES if getattr(self, name, None) is not None}

    def fingerprint(self) -> dict:
        """What fixes every stage's results: a folder never mixes two of these."""
        return {"dataset": self.dataset.source, "model": self.model.name, "weights": self.model.weights,
                "precision": self.run.precision}


@functools.cache
def job_spec(names: tuple[str, ...] | None = None) -> type[JobBase]:
    """The job model with a section per stage (names: only these, so that a command that touches one
    stage imports only that stage's module)."""
    names = tuple(STAGES) if names is None else names
    return create_model("JobSpec", __base__=JobBase, **{n: (STAGES[n].Config | None, None) for n in names})


def _describe(e: ValidationError) -> str:
    msgs = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key '{where}'")
        elif err["type"] == "missing":
            msgs.append(f"missing key '{where}'")
        else:
            msgs.append(f"'{where}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(msgs)


def validate(data: dict, origin: str = "job", only: tuple[str, ...] | None = None) -> JobBase:
    """A job from a dict; only: the stage sections it may have (None: every stage)."""
    try:
        return job_spec(only).model_validate(data)
    except ValidationError as e:
        raise UserError(f"{origin}: {_describe(e)}") from None


def load(path: str | Path) -> JobBase:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"job file not found: {p}")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: not valid TOML: {e}") from None
    return validate(data, str(p))


def load_spec(out: str) -> JobBase:
    """The job that made an output folder (for commands that add a stage to it)."""
    from deepscope.io.store import Store

    store = Store(out)
    if not store.manifest.get("spec"):
        raise UserError(f"{out} is not a deepscope output folder (no manifest.json with a job); run `deepscope features` first")
    return validate({k: v for k, v in store.manifest["spec"].items() if k not in STAGES}, f"{out}/manifest.json", only=())
