"""The one executor every pass runs on: partition descriptors -> CPU read tasks -> actors that
compute a whole partition and write its parts -> commit records -> the driver commits them.

Two ways to run it, the same partitions, parts, records and commits (so the same outputs, resume
and error rows): on Ray (a cluster, or a local one it starts: model actors, read tasks anywhere),
or locally (one machine, no cluster: the reads in a pool of processes, the model worker in the
driver's process, as a hand-written DataLoader loop would run). `auto` takes Ray wherever Ray
brings something: an address to join, a running Ray, several actors or several GPUs; on one
machine with one model worker, Ray's start-up (seconds of CPU on a laptop) buys nothing.

The driver ships descriptors (a few hundred bytes per partition), never items, result rows or
image bytes; it commits one small record per part, so its work per partition is the same at the
millionth as at the first. Ray executes at least once (restarted actors, retried tasks): a
partition delivered twice writes the same names again and its second record is ignored.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from deepscope.io.cluster import ensure_ray  # noqa: F401 (ensure_ray: re-exported)
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


EXECUTORS = ("auto", "local", "ray")


def choose_executor(executor: str, address: str | None, actors: int) -> tuple[str, str]:
    """-> ("local" | "ray", why). `auto`: Ray where it brings something, else local."""
    if executor != "auto":
        return executor, "as asked"
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray address was given"
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return "ray", "Ray is running in this process"
    if actors > 1:
        return "ray", f"{actors} model actors asked for"
    if local_gpus() > 1:
        return "ray", f"{local_gpus()} GPUs: one model actor each"
    return "local", "one machine, one model worker: no Ray needed"


def local_gpus() -> int:
    """GPUs on this machine, seen without importing torch (which the driver imports in a thread)."""
    import glob

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    executor: str = "auto"  # auto | local | ray (choose_executor)


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

            self.worker = None  # the last pass's worker and its model go first
            if state_rel is not None:
                from deepscope.io.store import Location
                kwargs = Location(state_url).get(state_rel)
            elif isinstance(kwargs_ref[0], bytes):  # the local executor: the pickle itself
                kwargs = kwargs_ref[0]
            else:
                import ray
                kwargs = ray.get(kwargs_ref[0])
            module, name = worker.split(":")
            self.worker = getattr(importlib.import_module(module), name)(**cloudpickle.loads(kwargs))
            self.key = key
        return self.worker(batch)


class Hosts:
    """The run's model workers, started once and reused by every pass of the run.

    On Ray: actors; creating them returns at once, and their processes import torch and read the
    model while the driver goes on. Locally: one WorkerHost in the driver's process, which takes a
    copy of the driver's own model (`adopt`), and a pool of read processes, started here so that
    they spawn and import the decoder while the driver still loads torch."""

    def __init__(self, address: str | None, cpu_actors: int, threads: int | None, log_path: str | None,
                 env: dict | None = None, warm: tuple[str, dict] | None = None, executor: str = "auto"):
        self.kind, self.why = choose_executor(executor, address, cpu_actors)
        self.warm, self.reads, self.early = warm, None, {}
        if self.kind == "local":
            self.pool = ActorPool(1, local_gpus() > 0, threads or local_cpus())
            self.reads = take_prestarted() or start_readers(default_readers())
            self.readers = self.reads.readers
            self.actors = [WorkerHost()]
            return
        drop_prestarted()
        self.pool = start_actor_pool(address, cpu_actors, threads, log_path)  # in the main thread:
        import ray  # Ray's driver connection is then usable from this thread only (ray.put)

        opts = {"runtime_env": {"env_vars": env}} if env else {}
        host = ray.remote(WorkerHost).options(**self.pool.remote_args(), max_restarts=-1,
                                              max_task_retries=-1, **opts)
        warm = (warm[0], {**warm[1], "threads": self.pool.threads}) if warm else None
        self.actors = [host.remote(warm) for _ in range(self.pool.actors)]

    def describe(self) -> str:
        if not self.local:
            return self.pool.describe()
        where = "GPU" if self.pool.gpus else f"{self.pool.threads} CPU threads"
        return (f"local executor: {self.readers} read process{'es' if self.readers > 1 else ''}, "
                f"the model in this process on {where}")

    @property
    def ahead(self) -> int:
        """Local: partitions read ahead of the model (a partition of 256 images is ~40 MB of pixels):
        one per read process, and two more, so that the model never waits for the next one."""
        return self.readers + 2

    @property
    def local(self) -> bool:
        return self.kind == "local"

    def adopt(self, loaded) -> None:
        """Local: the model worker copies the driver's loaded model instead of reading it again."""
        if self.local and self.warm:
            import importlib

            module, name = self.warm[0].split(":")
            getattr(importlib.import_module(module), name)(**self.warm[1], threads=self.pool.threads, loaded=loaded)

    def prefetch(self, fn, parts: list[Partition], kwargs: dict) -> None:
        """Local: start reading the first partitions before the pass (before the model is built);
        `read` hands them over if it asks for the same partition with the same arguments."""
        if self.local:
            for part in parts[:self.ahead]:
                self.early[part.name] = (kwargs, self._submit(fn, _desc(part), kwargs))

    def read(self, fn, desc: dict, kwargs: dict):
        """Local: a partition's rows, read in the pool (a future)."""
        early = self.early.pop(desc["part"][0], None)
        if early is not None and fn is not None and early[0] == kwargs:
            return early[1]
        if fn is None:
            from concurrent.futures import Future
            f = Future()
            f.set_result(_read(lambda b: b, desc, {}))
            return f
        return self._submit(fn, desc, kwargs)

    def _submit(self, fn, desc: dict, kwargs: dict):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.reads.submit(_read, fn, desc, kwargs)
        except BrokenProcessPool:  # a read process died: a new pool reads from now on (what was in
            self.reads.shutdown(wait=False, cancel_futures=True)  # flight fails and is read again)
            self.reads = start_readers(self.readers)
            return self.reads.submit(_read, fn, desc, kwargs)

    def close(self) -> None:
        if self.local:
            self.actors, self.early = [], {}
            if self.reads is not None:
                self.reads.shutdown(wait=True, cancel_futures=True)
                self.reads = None
            return
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


_EARLY = None  # a read pool started at the command's start (prestart_readers), taken by the first local Hosts


def default_readers() -> int:
    """Local read processes: every core but the one the model's threads lead on, at least one."""
    return max(1, min(local_cpus() - 1, 32))


def start_readers(n: int):
    """A pool of `n` read processes, spawned now (not at the first partition)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the driver has threads (torch's import, its thread pools) when it forks
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_reader_init)
    pool.readers = n
    for _ in range(n):
        pool.submit(_reader_init)
    return pool


def prestart_readers(executor: str | None, address: str | None) -> None:
    """Called by a command before its heavy imports: when the run will likely be local, the read
    processes spawn and import the decoder on another core while this one imports torch. (Unused,
    e.g. when a job file names a cluster, they are shut down at exit.)"""
    global _EARLY
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return
    if _EARLY is None and (executor or "auto") != "ray" and not address and not os.environ.get("RAY_ADDRESS"):
        _EARLY = start_readers(default_readers())


def take_prestarted():
    """The prestarted read pool (once), or None."""
    global _EARLY
    pool, _EARLY = _EARLY, None
    return pool


def drop_prestarted() -> None:
    pool = take_prestarted()
    if pool is not None:
        pool.shutdown(wait=True)


def _reader_init() -> None:
    """A local read process: Ctrl-C is the driver's to handle (it stops the pool); import the decoder now."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import deepscope.io.decode  # noqa: F401


def worker_env() -> dict:
    """Settings the workers need wherever they run: DEEPSCOPE_* (fault injection in tests) and the
    output location's filesystem settings and credentials (AWS_*, FSSPEC_*, GOOGLE_*)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("DEEPSCOPE_", "AWS_", "FSSPEC_", "GOOGLE_"))}


READ_KILL_ENV = "DEEPSCOPE_READ_KILL"  # tests: a file path; the first read to create it kills its own process


def _read(fn, desc: dict, kwargs: dict):
    import numpy as np

    kill = os.environ.get(READ_KILL_ENV)
    if kill and fn is not None and not os.path.exists(kill):
        open(kill, "w").close()
        os._exit(1)  # fault injection: a read process dies mid-job, once

    return fn({k: np.asarray(v, dtype=object if k != "size" else np.int64) for k, v in desc.items()}, **kwargs)


class _Commits:
    """The driver's side of a pass, the same on either executor: commit each part's record as it
    arrives (once: a partition delivered twice has its second records ignored), count, time, retry."""

    def __init__(self, store, p: Pass, t_command: float | None, t0: float, local: bool):
        import collections

        self.store, self.t_first, self.local = store, t_command or t0, local
        self.waiting = {x.name: set(p.commits) for x in p.parts}
        self.tries: collections.Counter = collections.Counter()
        self.stats = PassStats()
        self.timings = {"decode_s": 0.0, "model_s": 0.0, "write_s": 0.0, "commit_s": 0.0}
        self.progress = Progress(sum(x.size for x in p.parts), p.unit)

    def failed(self, part: Partition, e: BaseException) -> None:
        """A partition's try failed (not its images: the code or the cluster); the fourth ends the pass."""
        self.tries[part.name] += 1
        if self.tries[part.name] > 3:
            where = "" if self.local else f"; Ray's log: {local_log_path(self.store)}"
            raise PassFailed(f"partition {part.name} failed {self.tries[part.name]} times; last error: "
                             f"{_last_line(e)}{where}") from None

    def take(self, part: Partition, table) -> None:
        stats, timings = self.stats, self.timings
        for rec in table.to_pylist():
            stage = rec["stage"]
            if stage not in self.waiting.get(part.name, ()):
                continue  # a duplicate delivery of a part committed already
            tc = time.perf_counter()
            self.store.commit({**rec, "files": json.loads(rec["files"] or "{}")})
            timings["commit_s"] += time.perf_counter() - tc
            self.waiting[part.name].discard(stage)
            if rec.get("images"):
                first = rec["t_model"] - self.t_first
                stats.first_model_s = first if stats.first_model_s is None else min(stats.first_model_s, first)
                stats.items += rec["images"]
                stats.failed += rec["failed"]
                timings["decode_s"] += rec["decode_ms"] / 1000
                timings["model_s"] += rec["infer_ms"] / 1000
                timings["write_s"] += rec["write_ms"] / 1000
                self.progress.add(rec["images"], rec["failed"])
        if not self.waiting.get(part.name, True):
            del self.waiting[part.name]
            stats.parts += 1


def execute(store, p: Pass, t_command: float | None = None, hosts: Hosts | None = None) -> PassStats:
    """Run one pass; commit every part as its record arrives. Raises when partitions are left."""
    import hashlib

    import cloudpickle

    own = hosts is None
    if own:
        hosts = Hosts(p.address, p.actors, p.threads, local_log_path(store), p.env, executor=p.executor)
    total = sum(x.size for x in p.parts)
    log(f"{store.root}: {total} {p.unit} in {len(p.parts)} partitions to compute ({hosts.describe()})")
    t0 = time.time()
    kwargs = cloudpickle.dumps({**p.worker_kwargs, "threads": hosts.pool.threads})
    key = hashlib.sha256(kwargs).hexdigest()[:24]
    state_rel, kwargs_ref = None, None
    if len(kwargs) > INLINE_BYTES:
        state_rel = f"_state/{key}.pkl"
        store.loc.put(state_rel, kwargs)
    elif hosts.local:
        kwargs_ref = kwargs  # the worker unpickles its own copy, as an actor would
    else:
        import ray
        kwargs_ref = ray.put(kwargs)  # fetched by each actor once per pass (a list: Ray does not resolve it)
    spec = (f"{p.worker.__module__}:{p.worker.__qualname__}", key, [kwargs_ref], store.url, state_rel)
    commits = _Commits(store, p, t_command, t0, hosts.local)
    try:
        (_run_local if hosts.local else _run_ray)(p, hosts, spec, commits)
    finally:
        commits.progress.close()
        if own:
            hosts.close()
        store.flush()
    stats, timings = commits.stats, commits.timings
    stats.seconds = time.time() - t0
    stats.timings = {k: round(v, 2) for k, v in timings.items()}
    if commits.waiting:
        raise PassFailed(f"the pass ended with {len(commits.waiting)} partitions incomplete; run again to resume")
    rate = f", {stats.items / stats.seconds:.1f} {p.unit}/s" if stats.seconds else ""
    log(f"  {stats.items}/{total} {p.unit} done, {stats.failed} failed in {stats.seconds:.1f} s{rate}; "
        f"decode {timings['decode_s']:.1f} s, model {timings['model_s']:.1f} s, write {timings['write_s']:.1f} s "
        f"(summed over workers), commit {timings['commit_s']:.2f} s")
    return stats


def _desc(part: Partition) -> dict:
    return {"part": [part.name], "desc": [json.dumps(part.desc)], "size": [part.size]}


def _run_ray(p: Pass, hosts: Hosts, spec: tuple, commits: _Commits) -> None:
    """Ray core, not Ray Data: each actor keeps a short queue of partitions, each read by its own CPU
    task (anywhere in the cluster) and handed to the actor as one object; Ray restarts a lost
    actor and retries its call (max_restarts, max_task_retries), and a read lost with its node is
    recomputed from lineage. A partition whose call still fails is retried three times."""
    import collections

    import ray

    actors = hosts.actors
    env = {"runtime_env": {"env_vars": p.env}} if p.env else {}
    read = ray.remote(num_cpus=1, max_retries=3, **env)(_read) if p.read is not None else None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    depth = max(2, -(-cpus // len(actors)) + 1)  # partitions queued per actor: reads enough ahead to feed it
    queue = collections.deque(p.parts)
    in_flight: dict = {}
    queued: collections.Counter = collections.Counter()

    def submit(a: int) -> None:
        part = queue.popleft()
        batch = read.remote(p.read, _desc(part), p.read_kwargs) if read is not None else _read(lambda b: b, _desc(part), {})
        in_flight[actors[a].run.remote(spec, batch)] = (a, part)
        queued[a] += 1

    for _ in range(depth):
        for a in range(len(actors)):
            if queue:
                submit(a)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        a, part = in_flight.pop(ready[0])
        queued[a] -= 1
        try:
            commits.take(part, ray.get(ready[0]))
        except ray.exceptions.RayError as e:
            commits.failed(part, e)
            queue.append(part)
        while queue and queued[a] < depth:
            submit(a)


def _run_local(p: Pass, hosts: Hosts, spec: tuple, commits: _Commits) -> None:
    """Partitions in order: the pool reads `ahead` partitions ahead while this process runs the model on
    the oldest. A read process that dies breaks the pool: the next read starts a new one, and each
    partition that was in flight in the old one is read again (Hosts._submit)."""
    import collections

    worker = hosts.actors[0]
    queue = collections.deque(p.parts)
    reading: collections.deque = collections.deque()

    def fill() -> None:
        while queue and len(reading) < hosts.ahead:
            part = queue.popleft()
            reading.append((part, hosts.read(p.read, _desc(part), p.read_kwargs)))

    fill()
    while reading:
        part, future = reading.popleft()
        fill()
        try:
            table = worker.run(spec, future.result())
        except Exception as e:  # the partition's images fail inside the worker; this is the code or the pool
            commits.failed(part, e)
            queue.append(part)
            fill()
            continue
        commits.take(part, table)


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
