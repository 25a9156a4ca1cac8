"""The runner: plan partitions -> one pass per phase on the executor -> post stages -> report.

Composed once here for every stage. The driver only plans and commits: the workers that compute
a partition write its parts where they are computed, and send back small commit records
(executor.py). Exactly-once comes from partition-named parts and their commit records: a
partition whose every part is committed (and on disk) is skipped, so a rerun resumes where the
last run stopped, repairs what is missing, and a finished job does nothing.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa

from deepscope import __version__
from deepscope.errors import UserError
from deepscope.executor import (Hosts, Pass, RunContext, ensure_ray, execute, local_log_path,  # noqa: F401
                                log, worker_env)  # ensure_ray, worker_env: re-exported
from deepscope.io import schemas
from deepscope.io.plan import Partition, plan
from deepscope.io.store import Store
from deepscope.job import load_spec  # noqa: F401 (re-exported)
from deepscope.report.html import write_report
from deepscope.stages import STAGES

ERRORS = "errors"


class JobFailed(Exception):
    """The job ran, but more inputs failed than its error budget allows."""


@dataclass
class RunResult:
    out: str
    images: int = 0
    failed: int = 0
    computed: int = 0  # images that went through the model in this run (0: nothing to do)
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def build_stages(job):
    stages = [STAGES[name](cfg, job) for name, cfg in job.stage_configs().items()]
    if not stages:
        raise UserError(f"the job names no stage: add a section such as [features] (stages: {', '.join(STAGES)})")
    return stages


def plan_job(job) -> tuple[list, int, object]:
    """-> (partitions, items, duplicate-id error rows or None). Lists lazily; keeps descriptors only."""
    parts, dups = [], None
    for p in plan(job.dataset.source, job.run.partition_size):
        if not isinstance(p, Partition):
            dups = p
        else:
            parts.append(p)
    return parts, sum(p.size for p in parts), dups


def read_kwargs(job, transform, stages=()) -> dict:
    """What every decode task is given: the model's geometry, the job's limits, and what the pass's
    stages want made from the whole decoded image (thumbnails)."""
    from deepscope.io.decode import DecodeLimits

    thumbs = next((s.thumb_spec() for s in stages if s.name == "thumbs"), None)
    return {"transform": transform, "thumbs": thumbs, "limits": DecodeLimits(
        max_pixels=job.run.max_pixels, max_bytes=job.run.max_bytes, timeout_s=job.run.decode_timeout_s)}


def image_pass(job, store, loaded, stages, parts, t_command=None, hosts=None):
    """One pass of the image pipeline over `parts` for the given pipeline stages."""
    from deepscope.io.decode import decode_partitions
    from deepscope.mapper import ModelMapper

    return execute(store, Pass(
        parts=parts, commits=[s.name for s in stages] + [ERRORS], worker=ModelMapper,
        worker_kwargs={"job": job.model_dump(mode="json"), "stages": stages, "out": store.url,
                       "metadata": store.metadata},
        read=decode_partitions, read_kwargs=read_kwargs(job, loaded.transform, stages),
        address=job.run.address, actors=job.run.actors, threads=job.run.threads,
        env=worker_env(), executor=job.run.executor), t_command, hosts)


def run(job, t_command: float | None = None) -> RunResult:
    """Run every stage a job names: pipeline stages phase by phase, then post stages, then the report."""
    from concurrent.futures import ThreadPoolExecutor

    from deepscope.models.registry import load_model

    t_start = t_command or time.time()
    stages = build_stages(job)
    store = Store(job.out)
    store.open(job.fingerprint())  # an output location that cannot be written fails here, first
    with ThreadPoolExecutor(1) as background:
        # the driver's model (torch's import, the weights) loads while the driver plans, Ray starts
        # and the model actors start (their processes import torch and read the model meanwhile)
        loading = background.submit(load_model, job.model.name, job.model.weights)
        try:
            parts, n_items, dups, pipeline = _plan(job, store, stages)
        except Exception:
            if loading.exception() is not None:  # a missing weights file is said first, as it comes first
                raise loading.exception() from None
            raise
        hosts = None
        try:
            if _pipeline_pending(store, pipeline, parts):
                hosts = Hosts(*hosts_args(job, local_log_path(store)))
                _prefetch(job, store, pipeline, parts, hosts)
            loaded = loading.result()  # a missing weights file fails here, before any pass
            if hosts is not None:
                hosts.adopt(loaded)  # local: the model worker copies this one
            return _run(job, t_start, stages, store, parts, n_items, dups, pipeline, loaded, hosts)
        finally:
            if hosts is not None:
                hosts.close()


def _plan(job, store, stages):
    """Demo data, the repair of what is missing on disk, the partitions, the stages opened."""
    if job.dataset.demo and not os.path.exists(job.dataset.source):
        from deepscope.io.demo_data import make_demo_data
        n = make_demo_data(job.dataset.source)
        log(f"demo data: wrote {n} images to {job.dataset.source}")
    store.clean_temporaries()
    for stage, parts in store.check(verify=job.run.verify).items():
        log(f"{job.out}/{stage}: {len(parts)} committed parts missing or damaged on disk: computing them again")
    parts, n_items, dups = plan_job(job)
    if n_items == 0:
        raise UserError(f"no images found in {job.dataset.source}")
    pipeline = [s for s in stages if s.pipeline]
    _remember_spec(store, job)
    for s in pipeline:
        store.open_stage(s.name, s.fingerprint())
    store.open_stage(ERRORS, {})
    keep = {p.name for p in parts}
    for name in [s.name for s in pipeline] + [ERRORS]:
        store.drop_parts_except(name, keep | ({"listing"} if name == ERRORS else set()))
    return parts, n_items, dups, pipeline


def hosts_args(job, log_path: str | None) -> tuple:
    """What the run's model actors are started with (executor.Hosts)."""
    return (job.run.address, job.run.actors, job.run.threads, log_path, worker_env(),
            ("deepscope.mapper:preload", {"model": job.model.name, "weights": job.model.weights}),
            job.run.executor)


def _prefetch(job, store, pipeline, parts, hosts) -> None:
    """Local: the first pass's first partitions start decoding while the model is still being
    built, with the transform this model had last time (the pass checks it is still the same)."""
    from deepscope.io.decode import decode_partitions
    from deepscope.models.transform import recall

    transform = recall(job.model.name) if hosts.local else None
    if transform is None:
        return
    first = [s for s in pipeline if s.phase == min(x.phase for x in pipeline)]
    hosts.prefetch(decode_partitions, _pending(store, first, parts), read_kwargs(job, transform, first))


def _pending(store, stages, parts) -> list:
    """The partitions that lack a part of one of these pipeline stages (or their error rows)."""
    names = [s.name for s in stages] + [ERRORS]
    return [p for p in parts if not all(store.has_part(n, p.name) for n in names)]


def _pipeline_pending(store, pipeline, parts) -> bool:
    """Will a model pass run? (some partition lacks a part of a pipeline stage)"""
    return bool(pipeline) and bool(_pending(store, pipeline, parts))


def _run(job, t_start, stages, store, parts, n_items, dups, pipeline, loaded, hosts) -> RunResult:
    store.metadata = {"deepscope.model": job.model.name, "deepscope.weights": loaded.weights,
                      "deepscope.random_weights": str(loaded.random_weights).lower()}
    if dups is not None and len(dups) and not store.has_part(ERRORS, "listing"):
        store.write_part(ERRORS, "listing", pa.table({
            "id": dups["id"].tolist(), "path": dups["path"].tolist(), "stage": ["list"] * len(dups),
            "error": ["duplicate id: an earlier row with this id is used"] * len(dups)}, schema=schemas.ERRORS))
    n_dups = 0 if dups is None else len(dups)

    executor = f"{hosts.kind}: {hosts.why}" if hosts is not None else None
    ctx = RunContext(store=store, job=job, log=log, loaded=loaded,
                     run_pass=lambda st, ps: image_pass(job, store, loaded, st, ps, hosts=hosts))
    result = RunResult(out=job.out)
    changed = False
    first_model_s = None
    timings: dict[str, float] = {}
    for phase in sorted({s.phase for s in pipeline}):
        members = [s for s in pipeline if s.phase == phase]
        pending = _pending(store, members, parts)
        if pending:
            for s in members:
                s.prepare(ctx)  # e.g. thresholds from an earlier phase, shipped to the actors
            stats = image_pass(job, store, loaded, members, pending, t_start, hosts)
            result.computed = max(result.computed, stats.items)
            first_model_s = first_model_s if first_model_s is not None else stats.first_model_s
            for k, v in stats.timings.items():
                timings[k] = round(timings.get(k, 0) + v, 2)
            changed = True
        for s in members:
            if pending or store.summary(s.name) is None:
                store.update_summary(s.name, s.finish(ctx))
                changed = True
    for s in stages:
        if not s.pipeline and (changed or store.summary(s.name) is None or s.fingerprint() != store.stage_config(s.name)):
            store.open_stage(s.name, s.fingerprint(), replace=True)
            store.update_summary(s.name, s.finish(ctx))
            changed = True
    if not changed:
        log(f"nothing to do: all {len(parts)} partitions of {job.out} are complete")
    if timings:
        store.update_summary("timings", timings)

    errors = store.read(ERRORS)
    result.images, result.failed = n_items + n_dups, errors.num_rows
    if changed or not store.exists("report/index.html"):
        store.write_table("errors.parquet", errors)
        wall = time.time() - t_start
        store.update_summary("run", {
            "dataset": job.dataset.source, "model": job.model.name, "weights": loaded.weights,
            "random_weights": loaded.random_weights, "transform": loaded.transform.to_dict(),
            "stages": [s.name for s in stages], "images": result.images, "failed": result.failed,
            "partitions": len(parts), "computed_this_run": result.computed, "wall_s": round(wall, 2),
            "images_per_s": round(result.computed / wall, 2) if result.computed else None,
            "first_image_s": round(first_model_s, 2) if first_model_s is not None else None,
            "versions": _versions(), "run": job.run.model_dump(mode="json"), "executor": executor,
            "command": " ".join(["deepscope", *sys.argv[1:]]) if sys.argv and "deepscope" in sys.argv[0] else None,
            "machine": _machine(),
        })
        write_report(store, report_sections(store))
    store.flush()
    result.seconds = time.time() - t_start
    result.summary = store.summary("run") or {}
    rate = f", {result.computed / result.seconds:.1f} img/s" if result.computed else ""
    first = f", first image through the model after {first_model_s:.1f} s" if first_model_s is not None else ""
    log(f"done: {result.images} images, {result.failed} failed, {result.computed} computed in "
        f"{result.seconds:.1f} s{rate}{first} -> {job.out}/report/index.html")
    if result.images and result.failed / result.images > job.run.max_error_rate:
        raise JobFailed(f"{result.failed} of {result.images} images failed "
                        f"({result.failed / result.images:.0%} > max_error_rate {job.run.max_error_rate:.0%}); "
                        f"see {job.out}/errors.parquet")
    return result


def report_sections(store) -> list[tuple[str, str]]:
    """(name, HTML) of every stage with a summary in this folder (also ones run by earlier jobs)."""
    sections = []
    for name, cls in STAGES.items():
        if store.summary(name) is None:
            continue
        html = cls(cls.Config.model_validate(store.stage_config(name) or {}), job=None).report(store)
        if html:
            sections.append((name, html))
    return sections


def _remember_spec(store, job) -> None:
    """Keep the union of every stage section ever run here, so `deepscope STAGE OUT` can add one."""
    spec = store.manifest.get("spec") or {}
    new = job.model_dump(mode="json", exclude_none=True)
    stages = {k: v for k, v in spec.items() if k in STAGES}
    store.manifest["spec"] = {**new, **{k: v for k, v in stages.items() if k not in new}}


def run_stage(out: str, stage: str, config: dict, run_overrides: dict | None = None) -> RunResult:
    """Add one stage to an existing output folder: same dataset and model, only that stage computed."""
    from deepscope import job as jobmod

    base = load_spec(out).model_dump(mode="json", exclude_none=True)
    base["out"] = out  # the folder as given now, also when it was moved or copied since
    base["run"] = {**base.get("run", {}), **(run_overrides or {})}
    base["dataset"]["demo"] = False
    return run(jobmod.validate({**base, stage: config}, "arguments"))


def _machine() -> dict:
    import torch

    ray = sys.modules.get("ray")  # a local run never imports Ray (0.4 s) for this
    up = ray is not None and ray.is_initialized()
    res = ray.cluster_resources() if up else {}
    return {"driver_cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cluster_cpus": res.get("CPU"), "cluster_gpus": res.get("GPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]) if up else None}


def _versions() -> dict:
    from importlib.metadata import version

    import torch

    return {"deepscope": __version__, "torch": torch.__version__, "torchvision": version("torchvision"),
            "ray": version("ray")}
