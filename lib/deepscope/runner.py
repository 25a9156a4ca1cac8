"""The runner: list -> partition -> decode (CPU tasks) -> model mapper (actors) -> stages -> store.

Composed once here for every stage. Exactly-once comes from the writer: a partition's
rows are written as one part named after the partition, deduplicated by id, and
recorded in the manifest only when complete; partitions already recorded are skipped,
so a rerun resumes where the last run stopped and a finished job does nothing.
"""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from deepscope import __version__
from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.io.sources import list_items, partition
from deepscope.io.store import Store
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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_ray(address: str | None = None) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    # no address: a new local cluster, never whatever `ray start` last left on this machine
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             include_dashboard=False if address == "local" else None,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("DEEPSCOPE_")}})


def _configure_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress line says what matters, once a few seconds
    ctx.execution_options.preserve_order = False
    # Ray bundles blocks until 1 MiB before handing them on; feature rows are a few KiB, so
    # results would arrive in large lumps (and parts be written late). Stream smaller bundles.
    ctx.target_min_block_size = 64 * 1024
    # Model actors hold a model and its activations (GiBs) by design; Ray's high-memory detector
    # would repeat a warning about it every 30 s. The hanging-task detector stays on.
    ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


@dataclass
class ActorPool:
    """How many model actors, on what, with how many torch threads each: one per GPU, else the
    job's count of CPU actors sharing the cluster's CPUs."""
    actors: int
    gpus: bool
    threads: int  # torch threads per CPU actor (0 on GPU actors: torch's default)

    def describe(self) -> str:
        return f"{self.actors} {'GPU' if self.gpus else 'CPU'} model actor{'s' if self.actors > 1 else ''}"

    def map_kwargs(self) -> dict:
        """Ray Data map_batches resources. A CPU actor reserves half a CPU but runs `threads` torch
        threads: decode tasks must always find a CPU beside the actors, also after a lost node's
        actors were restarted on the survivors (Ray restarts lost actors and retries their batches
        by default), or the job would wait forever for decoded input."""
        import ray.data

        return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=self.actors),
                "num_gpus": 1 if self.gpus else 0, "num_cpus": 0 if self.gpus else 0.5}


def start_actor_pool(address: str | None, cpu_actors: int, threads: int | None) -> ActorPool:
    """Connect to Ray (or start it), set up Ray Data, and size the model actor pool."""
    import ray

    ensure_ray(address)
    _configure_ray_data()
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = n_gpus or cpu_actors
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return ActorPool(actors, bool(n_gpus), 0 if n_gpus else (threads or max(1, cpus // actors)))


class PartCollector:
    """Gathers result rows by partition; a partition is done when every one of its ids arrived.

    Ray executes at least once: a restarted actor or a retried task may deliver the same
    rows again, so rows are deduplicated by id here (first copy wins).
    """

    def __init__(self, parts):
        self.expected = {p.name: len(p.items) for p in parts}
        self.seen: dict[str, set] = defaultdict(set)
        self.rows: dict[str, list[dict]] = defaultdict(list)

    def add(self, batch: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
        done = []
        part_col = np.asarray(batch["part"])
        for part in np.unique(part_col):
            if part not in self.expected:
                continue  # a duplicate of a part already written
            idx = np.nonzero(part_col == part)[0]
            seen = self.seen[part]
            keep = [i for i in idx if batch["id"][i] not in seen]
            seen.update(batch["id"][i] for i in keep)
            if keep:
                self.rows[part].append({k: np.asarray(v)[keep] for k, v in batch.items()})
            if len(seen) == self.expected[part]:
                chunks = self.rows.pop(part)
                del self.expected[part], self.seen[part]
                done.append((part, _concat(chunks)))
        return done


def _concat(chunks: list[dict]) -> dict[str, np.ndarray]:
    keys = set().union(*chunks)
    out = {}
    for k in keys:
        with_k = [c for c in chunks if k in c]
        if len(with_k) == len(chunks):
            out[k] = np.concatenate([c[k] for c in chunks])
        else:  # a batch that failed in the model has no stage columns: only error rows
            shape = with_k[0][k].shape[1:]
            out[k] = np.concatenate([c[k] if k in c else np.zeros((len(c["id"]),) + shape, with_k[0][k].dtype)
                                     for c in chunks])
    return out


def errors_table(rows: dict[str, np.ndarray]) -> pa.Table:
    bad = np.asarray(rows["error"]) != ""
    return pa.table({
        "id": pa.array(np.asarray(rows["id"])[bad].tolist(), pa.string()),
        "path": pa.array(np.asarray(rows["path"])[bad].tolist(), pa.string()),
        "stage": pa.array([s or "decode" for s in np.asarray(rows.get("error_stage", np.array([""] * len(bad))))[bad]], pa.string()),
        "error": pa.array(np.asarray(rows["error"])[bad].tolist(), pa.string()),
    }, schema=schemas.ERRORS)


def build_stages(job):
    stages = [STAGES[name](cfg, job) for name, cfg in job.stage_configs().items()]
    if not stages:
        raise UserError(f"the job names no stage: add a section such as [features] (stages: {', '.join(STAGES)})")
    return stages


def run(job) -> RunResult:
    """Run every stage a job names: pipeline stages phase by phase, then post stages, then the report."""
    from deepscope.models.registry import load_model

    t_start = time.time()
    stages = build_stages(job)
    if job.dataset.demo and not os.path.exists(job.dataset.source):
        from deepscope.demo_data import make_demo_data
        n = make_demo_data(job.dataset.source)
        log(f"demo data: wrote {n} images to {job.dataset.source}")
    loaded = load_model(job.model.name, job.model.weights)  # fail fast, before any cluster work
    items, dups = list_items(job.dataset.source)
    if len(items) == 0:
        raise UserError(f"no images found in {job.dataset.source}")
    plan = partition(items, job.run.partition_size)

    store = Store(job.out)
    store.open(job.fingerprint())
    store.clean_temporaries()
    store.metadata = {"deepscope.model": job.model.name, "deepscope.weights": loaded.weights,
                      "deepscope.random_weights": str(loaded.random_weights).lower()}
    _remember_spec(store, job)
    pipeline = [s for s in stages if s.pipeline]
    for s in pipeline:
        store.open_stage(s.name, s.fingerprint())
    store.open_stage(ERRORS, {})
    keep = {p.name for p in plan}
    for name in [s.name for s in pipeline] + [ERRORS]:
        store.drop_parts_except(name, keep | ({"listing"} if name == ERRORS else set()))
    if len(dups):
        store.write_part(ERRORS, "listing", pa.table({
            "id": dups["id"].tolist(), "path": dups["path"].tolist(), "stage": ["list"] * len(dups),
            "error": ["duplicate id: an earlier row with this id is used"] * len(dups)}, schema=schemas.ERRORS))

    result = RunResult(out=job.out)
    changed = False
    for phase in sorted({s.phase for s in pipeline}):
        members = [s for s in pipeline if s.phase == phase]
        names = [s.name for s in members] + [ERRORS]
        pending = [p for p in plan if not all(store.has_part(n, p.name) for n in names)]
        if pending:
            for s in members:
                s.prepare(store)  # e.g. thresholds from an earlier phase, shipped to the actors
            result.computed = max(result.computed, execute(job, members, pending, store, loaded))
            changed = True
        for s in members:
            if pending or store.summary(s.name) is None:
                store.update_summary(s.name, s.finish(store, log))
                changed = True
    for s in stages:
        if not s.pipeline and (changed or store.summary(s.name) is None or s.fingerprint() != store.stage_config(s.name)):
            store.open_stage(s.name, s.fingerprint(), replace=True)
            store.update_summary(s.name, s.finish(store, log))
            changed = True
    if not changed:
        log(f"nothing to do: all {len(plan)} partitions of {job.out} are complete")

    errors = store.read(ERRORS)
    result.images, result.failed = len(items) + len(dups), errors.num_rows
    if changed or not store.path("report/index.html").exists():
        store.write_table("errors.parquet", errors)
        wall = time.time() - t_start
        store.update_summary("run", {
            "dataset": job.dataset.source, "model": job.model.name, "weights": loaded.weights,
            "random_weights": loaded.random_weights, "transform": loaded.transform.to_dict(),
            "stages": [s.name for s in stages], "images": result.images, "failed": result.failed,
            "computed_this_run": result.computed, "wall_s": round(wall, 2),
            "images_per_s": round(result.computed / wall, 2) if result.computed else None,
            "versions": _versions(), "run": job.run.model_dump(mode="json"),
        })
        from deepscope.report.html import write_report
        write_report(store)
    result.seconds = time.time() - t_start
    result.summary = store.summary("run") or {}
    rate = f", {result.computed / result.seconds:.1f} img/s" if result.computed else ""
    log(f"done: {result.images} images, {result.failed} failed, {result.computed} computed in "
        f"{result.seconds:.1f} s{rate} -> {job.out}/report/index.html")
    if result.images and result.failed / result.images > job.run.max_error_rate:
        raise JobFailed(f"{result.failed} of {result.images} images failed "
                        f"({result.failed / result.images:.0%} > max_error_rate {job.run.max_error_rate:.0%}); "
                        f"see {job.out}/errors.parquet")
    return result


def _remember_spec(store, job) -> None:
    """Keep the union of every stage section ever run here, so `deepscope STAGE OUT` can add one."""
    spec = store.manifest.get("spec") or {}
    new = job.model_dump(mode="json", exclude_none=True)
    stages = {k: v for k, v in spec.items() if k in STAGES}
    store.manifest["spec"] = {**new, **{k: v for k, v in stages.items() if k not in new}}


def load_spec(out: str):
    """The job that made an output folder (for commands that add a stage to it)."""
    from deepscope import job as jobmod

    store = Store(out)
    if not store.manifest.get("spec"):
        raise UserError(f"{out} is not a deepscope output folder (no manifest.json with a job); run `deepscope features` first")
    return jobmod.validate({k: v for k, v in store.manifest["spec"].items() if k not in STAGES}, f"{out}/manifest.json")


def run_stage(out: str, stage: str, config: dict, run_overrides: dict | None = None) -> RunResult:
    """Add one stage to an existing output folder: same dataset and model, only that stage computed."""
    from deepscope import job as jobmod

    base = load_spec(out).model_dump(mode="json", exclude_none=True)
    base["out"] = out  # the folder as given now, also when it was moved or copied since
    base["run"] = {**base.get("run", {}), **(run_overrides or {})}
    base["dataset"]["demo"] = False
    return run(jobmod.validate({**base, stage: config}, "arguments"))


def _versions() -> dict:
    import ray
    import torch
    import torchvision

    return {"deepscope": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ray": ray.__version__}


def execute(job, stages, pending, store, loaded) -> int:
    """One pass of the pipeline over the pending partitions, for the given pipeline stages; each
    finished partition is written as one part per stage. Returns the images computed. A post stage
    that needs passes of its own over other images (dissection over a concept set) calls it too."""
    import pandas as pd
    import ray
    import ray.data

    from deepscope.io.decode import DecodeLimits, decode_batch
    from deepscope.mapper import ModelMapper, from_arrow

    pool = start_actor_pool(job.run.address, job.run.actors, job.run.threads)
    todo = pd.concat([p.items.assign(part=p.name) for p in pending], ignore_index=True)
    todo["label"] = todo["label"].fillna("")
    total = len(todo)
    log(f"{job.out}: {total} images in {len(pending)} partitions to compute "
        f"({pool.describe()}, batch {job.run.batch_size})")

    test_env = {k: v for k, v in os.environ.items() if k.startswith("DEEPSCOPE_")}
    limits = DecodeLimits(max_pixels=job.run.max_pixels, max_bytes=job.run.max_bytes,
                          timeout_s=job.run.decode_timeout_s)
    # small input blocks (Ray hands an actor a whole block per call and returns its rows
    # together), so that results, progress and finished parts stream steadily
    step = max(1, min(32, job.run.batch_size))
    blocks = [todo.iloc[i:i + step] for i in range(0, total, step)]
    ds = ray.data.from_pandas(blocks)
    ds = ds.map_batches(decode_batch, fn_kwargs={"transform": loaded.transform, "limits": limits},
                        # its own memory reservation keeps Ray from fusing decoding into the model
                        # actors: decoding must stay in CPU tasks that spread over every node.
                        # 1 GiB: a worker with torch imported peaks near 0.5 GiB (Ray warns below that)
                        batch_size=step, batch_format="numpy", num_cpus=1, memory=2**30)
    ds = ds.map_batches(ModelMapper, fn_constructor_kwargs={"job": job.model_dump(mode="json"), "stages": stages,
                                                           "threads": pool.threads},
                        batch_size=job.run.batch_size, batch_format="numpy", **pool.map_kwargs(),
                        # DEEPSCOPE_* settings (fault injection in tests) reach the actors even on a
                        # cluster that was started before they were set
                        runtime_env={"env_vars": test_env} if test_env else None)

    collector = PartCollector(pending)
    done = failed = received = 0
    t0 = last = time.time()
    timings = defaultdict(float)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
        batch = from_arrow(table)
        received += len(batch["id"])
        timings["decode_ms"] += float(np.sum(batch.get("decode_ms", 0)))
        timings["infer_ms"] += float(np.sum(batch.get("infer_ms", 0)))
        for part, rows in collector.add(batch):
            tw = time.perf_counter()
            ok = np.asarray(rows["error"]) == ""
            good = {k: v[ok] for k, v in rows.items() if ":" not in k}
            for s in stages:
                if not store.has_part(s.name, part):
                    cols = {**good, **{k.split(":", 1)[1]: v[ok] for k, v in rows.items() if k.startswith(f"{s.name}:")}}
                    for rel, data in s.part_files(part, cols).items():
                        store.write_file(rel, data, record=False)
                    store.write_part(s.name, part, s.part_table(cols))
            store.write_part(ERRORS, part, errors_table(rows))
            timings["write_ms"] += (time.perf_counter() - tw) * 1000
            done += len(rows["id"])
            failed += int((~ok).sum())
        if time.time() - last > 5:
            last = time.time()
            log(f"  {min(received, total)}/{total} images through the model, {done} written, {failed} failed, "
                f"{received / (last - t0):.1f} img/s")
    if collector.expected:
        raise RuntimeError(f"the pipeline ended with {len(collector.expected)} partitions incomplete; run again to resume")
    log(f"  {done}/{total} images written, {failed} failed in {time.time() - t0:.1f} s; "
        f"decode {timings['decode_ms'] / 1000:.1f} s, model {timings['infer_ms'] / 1000:.1f} s, "
        f"write {timings['write_ms'] / 1000:.1f} s (summed over workers)")
    store.update_summary("timings", {k: round(v / 1000, 2) for k, v in timings.items()})
    return done
