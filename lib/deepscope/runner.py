"""The runner: the two roads every stage travels.

- Image passes (`run`): plan the dataset's partitions -> one pass per phase on the executor -> the
  post stages -> the report. The driver only plans and commits: the workers that compute a
  partition write its parts where they are computed and send back small commit records
  (executor/). Exactly-once comes from partition-named parts and their commit records: a partition
  whose every part is committed (and on disk) is skipped, so a rerun resumes where the last run
  stopped, repairs what is missing, and a finished job does nothing.
- Output passes (`run_post`): a post stage (index, knn, map, ...) added to an output folder reads
  only committed outputs: it never lists the dataset and loads the CNN only if it asks for it
  (ctx.loaded), so it works after the dataset moved and starts in a fraction of a second.

Every command appends its record to the output's run history (io/store.py: append_history).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa

from deepscope import __version__
from deepscope.errors import UserError
from deepscope.executor import Pass, PassStats, RunContext, executor_for, log
from deepscope.io import schemas
from deepscope.io.plan import Partition, plan
from deepscope.io.store import Store
from deepscope.job import load_spec  # noqa: F401 (re-exported)
from deepscope.report.html import write_report
from deepscope.stages import STAGES

ERRORS = "errors"


def release_memory() -> None:
    """Give the heap that a finished stage freed back to the system.  glibc keeps the pages of large freed
    temporaries (a stage's arrays, FAISS's training copies) in the process: 2.5 GB after the index stage
    of 99,989 images, 0.3 GB once trimmed, which every later stage of the job would otherwise add its peak to."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


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
    changed: bool = False  # a stage computed or rewrote something


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


def image_pass(job, store, loaded, stages, parts, executor, t_command=None) -> PassStats:
    """One pass of the image pipeline over `parts` for the given pipeline stages."""
    from deepscope.io.decode import decode_partition
    from deepscope.mapper import ModelMapper

    return executor.run_pass(store, Pass(
        parts=parts, commits=[s.name for s in stages] + [ERRORS], worker=ModelMapper,
        worker_kwargs={"job": job.model_dump(mode="json"), "stages": stages, "out": store.url,
                       "metadata": store.metadata},
        read=decode_partition, read_kwargs=read_kwargs(job, loaded.transform, stages)), t_command)


class Recorder:
    """One command's entry in the output's run history: what it ran, on which executor and why,
    when, how long, how many items at what rate; a failed command records its error."""

    def __init__(self, store, stages: list[str], executor, t_start: float):
        self.store, self.executor = store, executor
        self.record = {"command": _command_line(), "stages": stages, "started": t_start, "status": "running",
                       "executor": None if executor is None else executor.kind,
                       "why": None if executor is None else executor.why, "deepscope": __version__}

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        r = self.record
        r["ended"] = time.time()
        r["wall_s"] = round(r["ended"] - r["started"], 2)
        if e is not None:
            r["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:500]
        elif r["status"] == "running":
            r["status"] = "ok"
        try:
            self.store.append_history(r)
        except Exception as write_error:  # the command's own error matters more than its record
            log(f"could not append to {self.store.root}/history: {write_error}")
        return False


def run(job, t_command: float | None = None) -> RunResult:
    """Run every stage a job names: pipeline stages phase by phase, then post stages, then the report."""
    t_start = t_command or time.time()
    stages = build_stages(job)
    store = Store(job.out)
    store.open(job.fingerprint())  # an output location that cannot be written fails here, first
    executor = executor_for(job.run, store)
    try:
        with Recorder(store, [s.name for s in stages], executor, t_start) as rec:
            result = _run_job(job, t_start, stages, store, executor)
            rec.record.update(images=result.images, failed=result.failed, computed=result.computed,
                              rate=round(result.computed / result.seconds, 2) if result.computed else None,
                              status="ok" if result.computed or result.changed else "nothing to do")
            if result.images and result.failed / result.images > job.run.max_error_rate:
                raise JobFailed(f"{result.failed} of {result.images} images failed "
                                f"({result.failed / result.images:.0%} > max_error_rate "
                                f"{job.run.max_error_rate:.0%}); see {job.out}/errors.parquet")
            return result
    finally:
        executor.close()


def _run_job(job, t_start, stages, store, executor) -> RunResult:
    from concurrent.futures import ThreadPoolExecutor

    from deepscope.models.registry import load_model

    with ThreadPoolExecutor(1) as background:
        # the driver's model (torch's import, the weights) loads while the driver plans and the
        # model workers start (on Ray their processes import torch and read the model meanwhile)
        loading = background.submit(load_model, job.model.name, job.model.weights)
        try:
            parts, n_items, dups, pipeline, repaired = _plan(job, store, stages)
        except Exception:
            if loading.exception() is not None:  # a missing weights file is said first, as it comes first
                raise loading.exception() from None
            raise
        if _pending(store, pipeline, parts):
            executor.start_model_workers(("deepscope.mapper:preload",
                                          {"model": job.model.name, "weights": job.model.weights}))
            _prefetch(job, store, pipeline, parts, executor)
        loaded = loading.result()  # a missing weights file fails here, before any pass
        for s in stages:
            if s.pipeline:
                s.check(loaded)  # a bad layer is one line now, not an error row per image
        executor.adopt(loaded)  # local: the model worker copies this one
        return _run(job, t_start, stages, store, parts, n_items, dups, pipeline, loaded, executor, repaired)


def _plan(job, store, stages):
    """Demo data, the repair of what is missing on disk (-> repaired: the stages that lost parts), the partitions,
    the stages opened."""
    if job.dataset.demo and not os.path.exists(job.dataset.source):
        from deepscope.io.demo_data import make_demo_data
        n = make_demo_data(job.dataset.source)
        log(f"demo data: wrote {n} images to {job.dataset.source}")
    store.clean_temporaries()
    repaired = set()
    for stage, parts in store.check(verify=job.run.verify).items():
        log(f"{job.out}/{stage}: {len(parts)} committed parts missing or damaged on disk: computing them again")
        repaired.add(stage.split("/")[0])  # knn/features: the knn stage's
    parts, n_items, dups = plan_job(job)
    if n_items == 0:
        raise UserError(f"no images found in {job.dataset.source}")
    pipeline = [s for s in stages if s.pipeline]
    for s in pipeline:
        store.open_stage(s.name, s.fingerprint())
    store.open_stage(ERRORS, {})
    keep = {p.name for p in parts}
    for name in [s.name for s in pipeline] + [ERRORS]:
        store.drop_parts_except(name, keep | ({"listing"} if name == ERRORS else set()))
    return parts, n_items, dups, pipeline, repaired


def _prefetch(job, store, pipeline, parts, executor) -> None:
    """The first pass's first partitions start decoding while the model is still being built, with
    the transform this model had last time (the pass checks it is still the same)."""
    from deepscope.io.decode import decode_partition
    from deepscope.models.transform import recall

    transform = recall(job.model.name)
    if transform is None:
        return
    first = [s for s in pipeline if s.phase == min(x.phase for x in pipeline)]
    executor.prefetch(decode_partition, _pending(store, first, parts), read_kwargs(job, transform, first))


def _pending(store, stages, parts) -> list:
    """The partitions that lack a part of one of these pipeline stages (or their error rows)."""
    if not stages:
        return []
    names = [s.name for s in stages] + [ERRORS]
    return [p for p in parts if not all(store.has_part(n, p.name) for n in names)]


def _run(job, t_start, stages, store, parts, n_items, dups, pipeline, loaded, executor, repaired: set) -> RunResult:
    _with_metadata(store, job, loaded)
    if dups is not None and len(dups) and not store.has_part(ERRORS, "listing"):
        store.write_part(ERRORS, "listing", pa.table({
            "id": dups["id"].tolist(), "path": dups["path"].tolist(), "stage": ["list"] * len(dups),
            "error": ["duplicate id: an earlier row with this id is used"] * len(dups)}, schema=schemas.ERRORS))
    n_dups = 0 if dups is None else len(dups)

    ctx = RunContext(store=store, job=job, log=log, loaded=loaded, executor=executor,
                     run_pass=lambda st, ps: image_pass(job, store, loaded, st, ps, executor))
    result = RunResult(out=job.out)
    changed = False
    first_model_s = None
    timings: dict[str, float] = {}
    rendered: set[str] = set()
    for phase in sorted({s.phase for s in pipeline}):
        members = [s for s in pipeline if s.phase == phase]
        pending = _pending(store, members, parts)
        if pending:
            for s in members:
                s.prepare(ctx)  # e.g. thresholds from an earlier phase, shipped to the actors
            stats = image_pass(job, store, loaded, members, pending, executor, t_start)
            result.computed = max(result.computed, stats.items)
            first_model_s = first_model_s if first_model_s is not None else stats.first_model_s
            for k, v in stats.timings.items():
                timings[k] = round(timings.get(k, 0) + v, 2)
            changed = True
        for s in members:
            if pending or store.summary(s.name) is None:
                store.update_summary(s.name, s.finish(ctx))
                rendered.add(s.name)
                changed = True
        release_memory()  # the pass's and its stages' freed heap, before the next phase
    for s in stages:
        if not s.pipeline and (changed or s.name in repaired or store.summary(s.name) is None
                               or s.fingerprint() != store.stage_config(s.name)):
            store.open_stage(s.name, s.fingerprint(), replace=True)
            store.update_summary(s.name, s.finish(ctx))
            release_memory()
            rendered.add(s.name)
            changed = True
    if not changed:
        log(f"nothing to do: all {len(parts)} partitions of {job.out} are complete")
    if timings:
        store.update_summary("timings", timings)
    _remember_spec(store, job)  # after the stages ran: a failed stage's settings are not remembered

    errors = store.read(ERRORS)
    result.images, result.failed = n_items + n_dups, errors.num_rows
    result.changed = changed
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
            "versions": _versions(), "run": job.run.model_dump(mode="json"),
            "executor": f"{executor.kind}: {executor.why}" if result.computed else None,
            "command": _command_line(), "machine": _machine(),
        })
        write_report(store, report_sections(store, rendered | {s.name for s in stages}))
    store.flush()
    result.seconds = time.time() - t_start
    result.summary = store.summary("run") or {}
    rate = f", {result.computed / result.seconds:.1f} img/s" if result.computed else ""
    first = f", first image through the model after {first_model_s:.1f} s" if first_model_s is not None else ""
    log(f"done: {result.images} images, {result.failed} failed, {result.computed} computed in "
        f"{result.seconds:.1f} s{rate}{first} -> {job.out}/report/index.html")
    return result


def run_stage(out: str, stage: str, config: dict, run_overrides: dict | None = None,
              t_command: float | None = None) -> RunResult:
    """Add one stage to an existing output folder. A post stage reads only the outputs (run_post);
    a pipeline stage runs a pass over the same dataset with the same model."""
    from deepscope import job as jobmod

    if not STAGES[stage].pipeline:
        return run_post(out, stage, config, run_overrides, t_command)
    base = load_spec(out).model_dump(mode="json", exclude_none=True)
    base["out"] = out  # the folder as given now, also when it was moved or copied since
    base["run"] = {**base.get("run", {}), **(run_overrides or {})}
    base["dataset"]["demo"] = False
    from deepscope.io.sources import open_source

    source = base["dataset"]["source"]
    try:
        open_source(source).check()
    except UserError as e:
        raise UserError(f"{stage} needs the images of {out}, and the dataset it was made from cannot be read: "
                        f"{e}") from None
    return run(jobmod.validate({**base, stage: config}, "arguments"), t_command=t_command)


def run_post(out: str, stage: str, config: dict, run_overrides: dict | None = None,
             t_command: float | None = None) -> RunResult:
    """A post stage on an output folder: reads only committed outputs, neither the dataset nor (unless
    it asks: ctx.loaded) the model; a stage whose settings and inputs did not change does nothing."""
    from deepscope import job as jobmod

    t_start = t_command or time.time()
    base = load_spec(out).model_dump(mode="json", exclude_none=True)
    base["out"] = out
    base["run"] = {**base.get("run", {}), **(run_overrides or {})}
    job = jobmod.validate({**base, stage: config}, "arguments", only=(stage,))
    s = STAGES[stage](getattr(job, stage), job)
    store = Store(out)
    executor = executor_for(job.run, store)
    try:
        with Recorder(store, [stage], executor, t_start) as rec:
            if store.summary(stage) is not None and s.fingerprint() == store.stage_config(stage):
                log(f"nothing to do: {out}/{stage} is up to date")
                rec.record.update(status="nothing to do", computed=0)
                return RunResult(out=out, seconds=time.time() - t_start)
            ctx = RunContext(store=store, job=job, log=log, executor=executor, load=lambda: _load_model(job))
            ctx.run_pass = lambda st, ps: image_pass(job, _with_metadata(store, job, ctx.loaded), ctx.loaded, st, ps,
                                                     executor)  # a stage's own pass (dissection's concept set)
            store.open_stage(stage, s.fingerprint(), replace=True)
            store.update_summary(stage, None)  # an interrupted run is redone
            store.update_summary(stage, s.finish(ctx))
            release_memory()
            _remember_spec(store, job)
            write_report(store, report_sections(store, {stage}))
            store.flush()
            seconds = time.time() - t_start
            log(f"done: {stage} of {out} in {seconds:.1f} s -> {store.path('report/index.html')}")
            rec.record.update(status="ok", computed=None)
            return RunResult(out=out, seconds=seconds, summary=store.summary(stage) or {})
    finally:
        executor.close()


def _with_metadata(store, job, loaded):
    """The store, saying in every Parquet file it writes which model made it (random weights say so)."""
    store.metadata = {"deepscope.model": job.model.name, "deepscope.weights": loaded.weights,
                      "deepscope.random_weights": str(loaded.random_weights).lower()}
    return store


def _load_model(job):
    from deepscope.models.registry import load_model  # torch: only for a post stage that asks for the model

    return load_model(job.model.name, job.model.weights)


SECTIONS = "report/sections/{}.html"  # each stage's report section, kept to rebuild the page without it


def report_sections(store, render: set[str]) -> list[tuple[str, str]]:
    """(name, HTML) of every stage with a summary in this folder (also ones made by earlier commands):
    the stages in `render` are rendered now (and kept); the others are read back as they were kept,
    so a command that touched one stage imports no other."""
    sections = []
    for name in STAGES:
        if store.summary(name) is None:
            continue
        rel = SECTIONS.format(name)
        if name in render or not store.exists(rel):
            cls = STAGES[name]
            html = cls(cls.Config.model_validate(store.stage_config(name) or {}), job=None).report(store)
            store.write_file(rel, html or "", record=False)
        else:
            html = store.read_bytes(rel).decode()
        if html:
            sections.append((name, html))
    return sections


def _remember_spec(store, job) -> None:
    """Keep the union of every stage section ever run here, so `deepscope STAGE OUT` can add one."""
    spec = store.manifest.get("spec") or {}
    new = job.model_dump(mode="json", exclude_none=True)
    stages = {k: v for k, v in spec.items() if k in STAGES}
    store.manifest["spec"] = {**new, **{k: v for k, v in stages.items() if k not in new}}
    store.save()


def _command_line() -> str | None:
    return " ".join(["deepscope", *sys.argv[1:]]) if sys.argv and "deepscope" in sys.argv[0] else None


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
