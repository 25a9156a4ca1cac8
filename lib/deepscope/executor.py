"""The one executor every pass runs on: partition descriptors -> CPU read tasks -> actors that
compute a whole partition and write its parts -> commit records -> the driver commits them.

The driver ships descriptors (a few hundred bytes per partition), never items, result rows or
image bytes; it commits one small record per part, so its work per partition is the same at the
millionth as at the first. Ray executes at least once (restarted actors, retried tasks): a
partition delivered twice writes the same names again and its second record is ignored.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from deepscope.io.plan import Partition


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_ray(address: str | None = None, log_dir: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    # no address: a new local cluster, never whatever `ray start` last left on this machine
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             include_dashboard=False if address == "local" else None,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("DEEPSCOPE_")}})


def configure_ray_data(block_bytes: int = 2**30) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress line says what matters
    ctx.execution_options.preserve_order = False
    # a partition travels as one block from its read task to one actor: never split it
    ctx.target_max_block_size = max(ctx.target_max_block_size or 0, block_bytes)
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
        threads: read tasks must always find a CPU beside the actors, also after a lost node's
        actors were restarted on the survivors, or the job would wait forever for decoded input."""
        import ray.data

        return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=self.actors),
                "num_gpus": 1 if self.gpus else 0, "num_cpus": 0 if self.gpus else 0.5}


def start_actor_pool(address: str | None, cpu_actors: int, threads: int | None) -> ActorPool:
    """Connect to Ray (or start it), set up Ray Data, and size the model actor pool."""
    import ray

    ensure_ray(address)
    configure_ray_data()
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = n_gpus or cpu_actors
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return ActorPool(actors, bool(n_gpus), 0 if n_gpus else (threads or max(1, cpus // actors)))


class Progress:
    """Per pass: done/total, percent, rate, time left. A live line on a terminal, a plain line
    every `every` seconds otherwise (CI logs, nohup)."""

    def __init__(self, total: int, unit: str, every: float = 5.0, stream=None):
        self.total, self.unit, self.every = total, unit, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = self.last = time.time()
        self.done = self.failed = 0

    def line(self) -> str:
        dt = max(time.time() - self.t0, 1e-9)
        rate = self.done / dt
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = "?" if left != left else _duration(left)
        pct = 100.0 * self.done / max(self.total, 1)
        return (f"  {self.done}/{self.total} {self.unit} ({pct:.0f}%), {self.failed} failed, "
                f"{rate:.1f} {self.unit}/s, {eta} left")

    def add(self, n: int, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        now = time.time()
        if self.tty:
            print("\r" + self.line(), end="", file=self.stream, flush=True)
        elif now - self.last >= self.every:
            print(self.line(), file=self.stream, flush=True)
            self.last = now

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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


def execute(store, p: Pass, t_command: float | None = None) -> PassStats:
    """Run one pass; commit every part as its record arrives. Raises when partitions are left."""
    import ray.data

    pool = start_actor_pool(p.address, p.actors, p.threads)
    total = sum(x.size for x in p.parts)
    log(f"{store.root}: {total} {p.unit} in {len(p.parts)} partitions to compute ({pool.describe()})")
    descs = [{"part": x.name, "desc": json.dumps(x.desc), "size": x.size} for x in p.parts]
    ds = ray.data.from_items(descs, override_num_blocks=len(descs))
    if p.read is not None:
        # its own memory reservation keeps Ray from fusing reading into the model actors: reading
        # must stay in CPU tasks that spread over every node (a torch worker peaks near 0.5 GiB)
        ds = ds.map_batches(p.read, fn_kwargs=p.read_kwargs, batch_size=1, batch_format="numpy",
                            num_cpus=1, memory=2**30)
    kwargs = {**p.worker_kwargs, "threads": pool.threads}
    ds = ds.map_batches(p.worker, fn_constructor_kwargs=kwargs, batch_size=None, batch_format="numpy",
                        **pool.map_kwargs(), runtime_env={"env_vars": p.env} if p.env else None)

    waiting = {x.name: set(p.commits) for x in p.parts}
    stats = PassStats()
    timings = {"decode_s": 0.0, "model_s": 0.0, "write_s": 0.0, "commit_s": 0.0}
    progress = Progress(total, p.unit)
    t0 = time.time()
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
        for rec in table.to_pylist():
            part, stage = rec["part"], rec["stage"]
            if part not in waiting or stage not in waiting[part]:
                continue  # a duplicate delivery of a part committed already
            tc = time.perf_counter()
            store.commit({**rec, "files": json.loads(rec["files"] or "{}")})
            timings["commit_s"] += time.perf_counter() - tc
            waiting[part].discard(stage)
            if rec.get("images"):
                first = rec["t_model"] - (t_command or t0)
                stats.first_model_s = first if stats.first_model_s is None else min(stats.first_model_s, first)
                stats.items += rec["images"]
                stats.failed += rec["failed"]
                timings["decode_s"] += rec["decode_ms"] / 1000
                timings["model_s"] += rec["infer_ms"] / 1000
                timings["write_s"] += rec["write_ms"] / 1000
                progress.add(rec["images"], rec["failed"])
            if not waiting[part]:
                del waiting[part]
                stats.parts += 1
    progress.close()
    stats.seconds = time.time() - t0
    stats.timings = {k: round(v, 2) for k, v in timings.items()}
    store.flush()
    if waiting:
        raise RuntimeError(f"the pass ended with {len(waiting)} partitions incomplete; run again to resume")
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
