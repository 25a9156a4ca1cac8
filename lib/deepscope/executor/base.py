"""The executor's interface and what both implementations share: the pass (partition descriptors ->
read -> a model worker that computes a whole partition and writes its parts -> commit records ->
the driver commits them), the driver's commit side, the model worker's host, and the choice.

The driver ships descriptors (a few hundred bytes per partition), never items, result rows or
image bytes; it commits one small record per part, so its work per partition is the same at the
millionth as at the first. Execution is at least once (restarted actors, retried tasks): a
partition delivered twice writes the same names again and its second records are ignored.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from deepscope.report.console import Progress, log  # noqa: F401 (log: re-exported)

if TYPE_CHECKING:
    from deepscope.io.plan import Partition
    from deepscope.io.store import CommitRecord


EXECUTORS = ("auto", "local", "ray")
INLINE_BYTES = 64 * 1024  # worker arguments larger than this travel through the output location


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


def worker_env() -> dict:
    """Settings the workers need wherever they run: DEEPSCOPE_* (fault injection in tests) and the
    output location's filesystem settings and credentials (AWS_*, FSSPEC_*, GOOGLE_*)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("DEEPSCOPE_", "AWS_", "FSSPEC_", "GOOGLE_"))}


@dataclass
class Pass:
    """One pass over partitions: what each partition commits, how it is read, what computes it."""
    parts: list[Partition]
    commits: list[str]  # the stage names every partition commits a part for
    worker: type  # a callable class: worker(partition, rows) -> the partition's commit records
    worker_kwargs: dict
    read: Callable | None = None  # read(partition, **read_kwargs) -> the partition's rows (a CPU task)
    read_kwargs: dict = field(default_factory=dict)
    unit: str = "images"


@dataclass
class PassStats:
    items: int = 0
    failed: int = 0
    parts: int = 0
    seconds: float = 0.0
    first_model_s: float | None = None  # from the command's start to the first partition through the model
    timings: dict = field(default_factory=dict)


class PassFailed(Exception):
    """A partition kept failing (not its images: the code or the cluster). Rerunning resumes."""


def _last_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(e).__name__


class ModelWorkerHost:
    """Hosts the worker of the current pass (a callable class named by import path), built from
    small constructor arguments on the first partition of that pass. One host serves every pass of
    a run (a Ray actor, or an object in the command's process), so torch is imported and the model
    read once per process. A restarted actor builds the worker again from the call's spec; worker
    arguments too large to inline are read from the output location, so a restarted actor never
    depends on an object that may be gone."""

    def __init__(self, warm: tuple[str, dict] | None = None):
        self.key, self.worker = None, None
        if warm:  # ("module:function", kwargs): e.g. the job's model, read while the driver still plans
            _call(warm[0], **warm[1])

    def run(self, spec: WorkerSpec, part: Partition, rows) -> list[CommitRecord]:
        if spec.key != self.key:
            import cloudpickle

            self.worker = None  # the last pass's worker and its model go first
            self.worker = _call(spec.worker, **cloudpickle.loads(spec.kwargs()))
            self.key = spec.key
        return self.worker(part, rows)


def _call(path: str, **kwargs):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


@dataclass
class WorkerSpec:
    """What a model worker host needs to build the pass's worker: its import path and its pickled
    arguments: inline, behind an object reference (`fetch`), or in a file of the output location."""
    worker: str
    key: str
    inline: bytes | None = None
    ref: list | None = None  # [an object reference] (in a list, so that Ray does not resolve it)
    fetch: Callable | None = None
    url: str | None = None
    rel: str | None = None

    def kwargs(self) -> bytes:
        if self.rel is not None:
            from deepscope.io.location import Location

            return Location(self.url).get(self.rel)
        if self.inline is not None:
            return self.inline
        return self.fetch(self.ref[0])


class CommitSide:
    """The driver's side of a pass, the same on either executor: commit each part's record as it
    arrives (once: a partition delivered twice has its second records ignored), count, time, retry."""

    def __init__(self, store, p: Pass, t_command: float | None, t0: float, failure_hint: str = ""):
        import collections

        self.store, self.t_first, self.hint = store, t_command or t0, failure_hint
        self.waiting = {x.name: set(p.commits) for x in p.parts}
        self.tries: collections.Counter = collections.Counter()
        self.stats = PassStats()
        self.timings = {"decode_s": 0.0, "model_s": 0.0, "write_s": 0.0, "commit_s": 0.0}
        self.progress = Progress(sum(x.size for x in p.parts), p.unit)

    def failed(self, part: Partition, e: BaseException) -> None:
        """A partition's try failed (not its images: the code or the cluster); the fourth ends the pass."""
        self.tries[part.name] += 1
        if self.tries[part.name] > 3:
            raise PassFailed(f"partition {part.name} failed {self.tries[part.name]} times; last error: "
                             f"{_last_line(e)}{self.hint}") from None

    def take(self, part: Partition, records: list[CommitRecord]) -> None:
        stats, timings = self.stats, self.timings
        for rec in records:
            if rec.stage not in self.waiting.get(part.name, ()):
                continue  # a duplicate delivery of a part committed already
            tc = time.perf_counter()
            self.store.commit(rec)
            timings["commit_s"] += time.perf_counter() - tc
            self.waiting[part.name].discard(rec.stage)
            if rec.images:
                first = rec.t_model - self.t_first
                stats.first_model_s = first if stats.first_model_s is None else min(stats.first_model_s, first)
                stats.items += rec.images
                stats.failed += rec.failed
                timings["decode_s"] += rec.decode_ms / 1000
                timings["model_s"] += rec.infer_ms / 1000
                timings["write_s"] += rec.write_ms / 1000
                self.progress.add(rec.images, rec.failed)
        if not self.waiting.get(part.name, True):
            del self.waiting[part.name]
            stats.parts += 1


class Executor:
    """Runs image passes and task maps. Subclasses: LocalExecutor, RayExecutor."""
    kind: str = ""
    threads: int = 0  # torch threads of a CPU model worker

    def __init__(self, why: str):
        self.why = why

    # -- what both implement ---------------------------------------------------------
    def describe(self) -> str:
        raise NotImplementedError

    @property
    def cpus(self) -> int:
        """Tasks that run at once in a task map."""
        raise NotImplementedError

    def start_model_workers(self, warm: tuple[str, dict] | None = None, reads: bool = True) -> None:
        """Start the run's model workers once (every pass of the run reuses them); warm: a
        ("module:function", kwargs) each one calls first (the job's model, read while the driver plans);
        reads: the passes will read images (local: the read processes start now)."""
        raise NotImplementedError

    def map(self, fn: Callable, calls: list[tuple], *, shared: dict | None = None, cpus: float = 1,
            memory_mb: float | None = None) -> Iterator[tuple[int, Any]]:
        """fn(*call, **shared) for every call, in parallel tasks; yields (call's index, result) as
        they finish. shared: arguments every call takes (sent once). memory_mb: what one task needs."""
        raise NotImplementedError

    def _deliver(self, p: Pass, spec: WorkerSpec, commits: CommitSide) -> None:
        """Every partition of the pass through a model worker, each one's records to commits.take."""
        raise NotImplementedError

    def _share(self, spec: WorkerSpec, kwargs: bytes) -> None:
        """Put small worker arguments where the model workers read them (spec.inline or spec.ref)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- optional --------------------------------------------------------------------
    def adopt(self, loaded) -> None:
        """Hand the driver's loaded model to the model workers (local: no second read)."""

    def prefetch(self, read: Callable, parts: list, kwargs: dict) -> None:
        """Start reading the first partitions before the pass (while the model is still built)."""

    def failure_hint(self, store) -> str:
        """Where to look when a partition keeps failing (appended to the error line)."""
        return ""

    # -- the pass, the same on both ----------------------------------------------------
    def run_pass(self, store, p: Pass | None = None, t_command: float | None = None, **fields) -> PassStats:
        """Run one pass (a Pass, or its fields: a stage need not import this package); commit every
        part as its record arrives. Raises when partitions are left."""
        import cloudpickle

        p = p or Pass(**fields)
        if not self.started:
            self.start_model_workers(reads=p.read is not None)
        total = sum(x.size for x in p.parts)
        log(f"{store.root}: {total} {p.unit} in {len(p.parts)} partitions to compute ({self.describe()})")
        t0 = time.time()
        kwargs = cloudpickle.dumps({**p.worker_kwargs, "threads": self.threads})
        key = hashlib.sha256(kwargs).hexdigest()[:24]
        spec = WorkerSpec(f"{p.worker.__module__}:{p.worker.__qualname__}", key)
        if len(kwargs) > INLINE_BYTES:
            spec.url, spec.rel = store.url, f"_state/{key}.pkl"
            store.loc.put(spec.rel, kwargs)
        else:
            self._share(spec, kwargs)
        commits = CommitSide(store, p, t_command, t0, self.failure_hint(store))
        try:
            self._deliver(p, spec, commits)
        finally:
            commits.progress.close()
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

    started: bool = False


READ_KILL_ENV = "DEEPSCOPE_READ_KILL"  # tests: a file path; the first read to create it kills its own process


def read_partition_rows(read: Callable | None, part: Partition, kwargs: dict):
    """A read task: the partition's rows (None for a pass without reads: the worker reads the descriptor)."""
    if read is None:
        return None
    kill = os.environ.get(READ_KILL_ENV)
    if kill and not os.path.exists(kill):
        open(kill, "w").close()
        os._exit(1)  # fault injection: a read process dies mid-job, once
    return read(part, **kwargs)


class RunContext:
    """What a stage gets in prepare() and finish(): the store, the log, the job, the executor, the
    job's model (loaded on first use: post stages that need no CNN never load one), and a way to run
    a pass of its own (dissection over a concept set) on the same executor."""

    def __init__(self, store, job=None, log: Callable[[str], None] = log, loaded=None, executor: Executor | None = None,
                 run_pass: Callable[..., PassStats] | None = None, load: Callable[[], Any] | None = None):
        self.store, self.job, self.log, self.run_pass = store, job, log, run_pass
        self._loaded, self._load, self._executor = loaded, load, executor

    @property
    def loaded(self):
        if self._loaded is None and self._load is not None:
            self._loaded = self._load()
        return self._loaded

    @property
    def executor(self) -> Executor:
        if self._executor is None:  # a stage called outside a command (tests): the local executor
            from deepscope.executor.local import LocalExecutor

            self._executor = LocalExecutor("no executor given", 0)
        return self._executor
