"""The one executor every pass runs on: partition descriptors -> CPU read tasks -> actors that
compute a whole partition and write its parts -> commit records -> the driver commits them.

The driver ships descriptors (a few hundred bytes per partition), never items, result rows or
image bytes; it commits one small record per part, so its work per partition is the same at the
millionth as at the first. Ray executes at least once (restarted actors, retried tasks): a
partition delivered twice writes the same names again and its second record is ignored.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from deepscope.io.cluster import ensure_ray  # noqa: F401 (ensure_ray: re-exported)
from deepscope.io.plan import Partition
from deepscope.report.console import Progress, log  # noqa: F401 (log: re-exported)


RAY_LOG = "logs/ray.log"  # in the output folder: Ray's own log lines, shown (with the path) when a job fails


@dataclass
class ActorPool:
    """How many model actors, on what, with how many torch threads each: one per GPU, else the
    job's count of CPU actors sharing the cluster's CPUs."""
    actors: int
    gpus: bool
    threads: int  # torch threads per CPU actor (0 on GPU actors: torch's default)

    def describe(self) -> str:
        return f"{self.actors} {'GPU' if self.gpus else 'CPU'} model actor{'s' if self.actors > 1 else ''}"

    def remote_args(self) -> dict:
        """Actor resources. A CPU actor reserves half a CPU but runs `threads` torch threads: read
        tasks must always find a CPU beside the actors, also after a lost node's actors were
        restarted on the survivors, or the job would wait forever for decoded input."""
        return {"num_gpus": 1 if self.gpus else 0, "num_cpus": 0 if self.gpus else 0.5}


def start_actor_pool(address: str | None, cpu_actors: int, threads: int | None,
                     log_path: str | None = None) -> ActorPool:
    """Connect to Ray (or start it) and size the model actor pool."""
    ensure_ray(address, log_path)  # before Ray's import: it sets how a local cluster authenticates
    import ray

    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = n_gpus or cpu_actors
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return ActorPool(actors, bool(n_gpus), 0 if n_gpus else (threads or max(1, cpus // actors)))


@dataclass
class Pass:
    """One pass over partitions: what each partition commits, how it is read, who computes it."""
    parts: list[Partition]
    commits: list[str]  # the stage names every partition commits a part for
    worker: type  # a callable class: whole partitions in, their commit records out
    worker_kwargs: dict
    read: Callable | None = None  # a CPU task: descriptors in, the partitions' rows out
    read_kwargs: dict = field(default_factory=dict)
    unit: str = "images"
    address: str | None = None
    actors: int = 1
    threads: int = 0
    env: dict = field(default_factory=dict)  # DEEPSCOPE_* settings (fault injection in tests)


@dataclass
class PassStats:
    items: int = 0
    failed: int = 0
    parts: int = 0
    seconds: float = 0.0
    first_model_s: float | None = None  # from the pass's start to the first partition through the model
    timings: dict = field(default_factory=dict)


class PassFailed(Exception):
    """A partition kept failing (not its images: the code or the cluster). Rerunning resumes."""


def _last_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def local_log_path(store) -> str:
    """Where Ray's log lines of this run go: OUT/logs/ray.log, or a local file for remote outputs."""
    if not store.loc.remote:
        return os.path.join(store.loc.url, RAY_LOG)
    import tempfile
    return os.path.join(tempfile.gettempdir(), "deepscope-" + store.loc.url.replace("://", "_").replace("/", "_"), "ray.log")


INLINE_BYTES = 64 * 1024  # Ray inlines smaller task and actor arguments; larger ones go to the object store


class WorkerHost:
    """A model actor: hosts the worker of the current pass (a callable class named by import path),
    built from small constructor arguments on the first partition of that pass. The same actor
    process serves every pass of a run, so torch is imported and the model read once per process,
    not once per pass. A restarted actor builds the worker again from the call's spec; worker state
    too large to inline (a style network, a perturbation) is read from the output location, so a
    restarted actor never depends on an object that may be gone."""

    def __init__(self, warm: tuple[str, dict] | None = None):
        self.key, self.worker = None, None
        if warm:  # ("module:function", kwargs): e.g. the job's model, read while the driver still plans
            import importlib

            module, name = warm[0].split(":")
            getattr(importlib.import_module(module), name)(**warm[1])

    def run(self, spec: tuple, batch):
        worker, key, kwargs_ref, state_url, state_rel = spec
        if key != self.key:
            import importlib

            import cloudpickle
            import ray

            self.worker = None  # the last pass's worker and its model go first
            if state_rel is not None:
                from deepscope.io.store import Location
                kwargs = Location(state_url).get(state_rel)
            else:
                kwargs = ray.get(kwargs_ref[0])
            module, name = worker.split(":")
            self.worker = getattr(importlib.import_module(module), name)(**cloudpickle.loads(kwargs))
            self.key = key
        return self.worker(batch)


class Hosts:
    """The run's model actors, started once and reused by every pass of the run. Creating them
    returns at once: their processes import torch and read the model while the driver goes on."""

    def __init__(self, address: str | None, cpu_actors: int, threads: int | None, log_path: str | None,
                 env: dict | None = None, warm: tuple[str, dict] | None = None):
        self.pool = start_actor_pool(address, cpu_actors, threads, log_path)  # in the main thread:
        import ray  # Ray's driver connection is then usable from this thread only (ray.put)

        opts = {"runtime_env": {"env_vars": env}} if env else {}
        host = ray.remote(WorkerHost).options(**self.pool.remote_args(), max_restarts=-1,
                                              max_task_retries=-1, **opts)
        warm = (warm[0], {**warm[1], "threads": self.pool.threads}) if warm else None
        self.actors = [host.remote(warm) for _ in range(self.pool.actors)]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def worker_env() -> dict:
    """Settings the workers need wherever they run: DEEPSCOPE_* (fault injection in tests) and the
    output location's filesystem settings and credentials (AWS_*, FSSPEC_*, GOOGLE_*)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("DEEPSCOPE_", "AWS_", "FSSPEC_", "GOOGLE_"))}


def _read(fn, desc: dict, kwargs: dict):
    import numpy as np

    return fn({k: np.asarray(v, dtype=object if k != "size" else np.int64) for k, v in desc.items()}, **kwargs)


def execute(store, p: Pass, t_command: float | None = None, hosts: Hosts | None = None) -> PassStats:
    """Run one pass; commit every part as its record arrives. Raises when partitions are left.

    Ray core, not Ray Data: each actor keeps a short queue of partitions, each read by its own CPU
    task (anywhere in the cluster) and handed to the actor as one object; Ray restarts a lost
    actor and retries its call (max_restarts, max_task_retries), and a read lost with its node is
    recomputed from lineage. A partition whose call still fails is retried three times."""
    import collections
    import hashlib

    import cloudpickle

    own = hosts is None
    if own:
        hosts = Hosts(p.address, p.actors, p.threads, local_log_path(store), p.env)
    pool, actors = hosts.pool, hosts.actors
    import ray

    total = sum(x.size for x in p.parts)
    log(f"{store.root}: {total} {p.unit} in {len(p.parts)} partitions to compute ({pool.describe()})")
    t0 = time.time()
    kwargs = cloudpickle.dumps({**p.worker_kwargs, "threads": pool.threads})
    key = hashlib.sha256(kwargs).hexdigest()[:24]
    state_rel, kwargs_ref = None, None
    if len(kwargs) > INLINE_BYTES:
        state_rel = f"_state/{key}.pkl"
        store.loc.put(state_rel, kwargs)
    else:
        kwargs_ref = ray.put(kwargs)  # fetched by each actor once per pass (a list: Ray does not resolve it)
    env = {"runtime_env": {"env_vars": p.env}} if p.env else {}
    spec = (f"{p.worker.__module__}:{p.worker.__qualname__}", key, [kwargs_ref], store.url, state_rel)
    read = ray.remote(num_cpus=1, max_retries=3, **env)(_read) if p.read is not None else None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    depth = max(2, -(-cpus // pool.actors) + 1)  # partitions queued per actor: reads enough ahead to feed it

    queue = collections.deque(p.parts)
    tries: collections.Counter = collections.Counter()
    in_flight: dict = {}
    queued: collections.Counter = collections.Counter()

    def submit(a: int) -> None:
        part = queue.popleft()
        desc = {"part": [part.name], "desc": [json.dumps(part.desc)], "size": [part.size]}
        batch = read.remote(p.read, desc, p.read_kwargs) if read is not None else \
            _read(lambda b: b, desc, {})
        in_flight[actors[a].run.remote(spec, batch)] = (a, part)
        queued[a] += 1

    for _ in range(depth):
        for a in range(len(actors)):
            if queue:
                submit(a)

    waiting = {x.name: set(p.commits) for x in p.parts}
    stats = PassStats()
    timings = {"decode_s": 0.0, "model_s": 0.0, "write_s": 0.0, "commit_s": 0.0}
    progress = Progress(total, p.unit)
    try:
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            a, part = in_flight.pop(ready[0])
            queued[a] -= 1
            try:
                table = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                tries[part.name] += 1
                if tries[part.name] > 3:
                    raise PassFailed(f"partition {part.name} failed {tries[part.name]} times; last error: "
                                     f"{_last_line(e)}; Ray's log: {local_log_path(store)}") from None
                queue.append(part)
                table = None
            for rec in table.to_pylist() if table is not None else []:
                stage = rec["stage"]
                if stage not in waiting.get(part.name, ()):
                    continue  # a duplicate delivery of a part committed already
                tc = time.perf_counter()
                store.commit({**rec, "files": json.loads(rec["files"] or "{}")})
                timings["commit_s"] += time.perf_counter() - tc
                waiting[part.name].discard(stage)
                if rec.get("images"):
                    first = rec["t_model"] - (t_command or t0)
                    stats.first_model_s = first if stats.first_model_s is None else min(stats.first_model_s, first)
                    stats.items += rec["images"]
                    stats.failed += rec["failed"]
                    timings["decode_s"] += rec["decode_ms"] / 1000
                    timings["model_s"] += rec["infer_ms"] / 1000
                    timings["write_s"] += rec["write_ms"] / 1000
                    progress.add(rec["images"], rec["failed"])
            if not waiting.get(part.name, True):
                del waiting[part.name]
                stats.parts += 1
            while queue and queued[a] < depth:
                submit(a)
    finally:
        progress.close()
        if own:
            hosts.close()
        store.flush()
    stats.seconds = time.time() - t0
    stats.timings = {k: round(v, 2) for k, v in timings.items()}
    if waiting:
        raise PassFailed(f"the pass ended with {len(waiting)} partitions incomplete; run again to resume")
    rate = f", {stats.items / stats.seconds:.1f} {p.unit}/s" if stats.seconds else ""
    log(f"  {stats.items}/{total} {p.unit} done, {stats.failed} failed in {stats.seconds:.1f} s{rate}; "
        f"decode {timings['decode_s']:.1f} s, model {timings['model_s']:.1f} s, write {timings['write_s']:.1f} s "
        f"(summed over workers), commit {timings['commit_s']:.2f} s")
    return stats


@dataclass
class RunContext:
    """What a stage gets in prepare() and finish(): the store, the log, the job, the loaded model,
    and a way to run a pass of its own (dissection over a concept set) on the same executor."""
    store: Any
    job: Any
    log: Callable[[str], None] = log
    loaded: Any = None  # the job's model (LoadedModel), loaded on the driver
    run_pass: Callable[..., PassStats] | None = None  # run_pass(stages, partitions) -> PassStats

    @staticmethod
    def execute(store, **pass_fields) -> PassStats:
        """Any other pass (work items that are not images: the visualize job's targets)."""
        return execute(store, Pass(**pass_fields))
