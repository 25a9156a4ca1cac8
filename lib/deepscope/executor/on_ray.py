"""The Ray executor: read tasks anywhere in the cluster, model actors (one per GPU, else the job's
count of CPU actors), task maps as Ray tasks. Ray core, not Ray Data: each actor keeps a short
queue of partitions, each read by its own CPU task and handed to the actor as one object; Ray
restarts a lost actor and retries its call, and a read lost with its node is recomputed from
lineage. A partition whose call still fails is retried three times (CommitSide.failed).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from deepscope.executor.base import CommitSide, Executor, ModelWorkerHost, Pass, WorkerSpec, read_partition_rows
from deepscope.io.cluster import ensure_ray

RAY_LOG = "logs/ray.log"  # in the output folder: Ray's own log lines, shown (with the path) when a job fails


def log_path_for(url: str, remote: bool) -> str:
    """Where Ray's log lines of a run go: OUT/logs/ray.log, or a local file for remote outputs."""
    if not remote:
        return os.path.join(url, RAY_LOG)
    import tempfile

    return os.path.join(tempfile.gettempdir(), "deepscope-" + url.replace("://", "_").replace("/", "_"), "ray.log")


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, why: str, address: str | None, actors: int = 1, threads: int = 0,
                 log_path: str | None = None, env: dict | None = None):
        super().__init__(why)
        self.address, self.cpu_actors, self.want_threads = address, actors, threads
        self.log_path, self.env = log_path, env or {}
        self.actors: list = []
        self.gpus = False
        self.threads = 0

    def connect(self) -> None:
        ensure_ray(self.address, self.log_path)  # before Ray's import: it sets how a local cluster authenticates

    def describe(self) -> str:
        n = len(self.actors) or self.cpu_actors
        return f"{n} {'GPU' if self.gpus else 'CPU'} model actor{'s' if n > 1 else ''}"

    @property
    def cpus(self) -> int:
        import ray

        self.connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def failure_hint(self, store) -> str:
        return f"; Ray's log: {self.log_path}" if self.log_path else ""

    def _runtime_env(self) -> dict:
        return {"runtime_env": {"env_vars": self.env}} if self.env else {}

    def start_model_workers(self, warm: tuple[str, dict] | None = None, reads: bool = True) -> None:
        """Actors, one per GPU (else cpu_actors): creating them returns at once, and their processes
        import torch and read the model while the driver goes on. A CPU actor reserves half a CPU but
        runs `threads` torch threads: read tasks must always find a CPU beside the actors, also after
        a lost node's actors were restarted on the survivors, or the job would wait for input forever."""
        import ray

        from deepscope.executor.local import drop_prestarted

        drop_prestarted()
        self.connect()  # in the main thread: Ray's driver connection is then usable from it only (ray.put)
        res = ray.cluster_resources()
        n_gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        self.gpus = bool(n_gpus)
        n = n_gpus or self.cpu_actors
        self.threads = 0 if n_gpus else (self.want_threads or max(1, cpus // n))
        host = ray.remote(ModelWorkerHost).options(
            num_gpus=1 if self.gpus else 0, num_cpus=0 if self.gpus else 0.5, max_restarts=-1,
            max_task_retries=-1, **self._runtime_env())
        warm = (warm[0], {**warm[1], "threads": self.threads}) if warm else None
        self.actors = [host.remote(warm) for _ in range(n)]
        self.started = True

    def _share(self, spec: WorkerSpec, kwargs: bytes) -> None:
        import ray

        spec.ref, spec.fetch = [ray.put(kwargs)], ray.get  # fetched by each actor once per pass

    def _deliver(self, p: Pass, spec: WorkerSpec, commits: CommitSide) -> None:
        import collections

        import ray

        actors = self.actors
        read = (ray.remote(num_cpus=1, max_retries=3, **self._runtime_env())(read_partition_rows)
                if p.read is not None else None)
        depth = max(2, -(-self.cpus // len(actors)) + 1)  # partitions queued per actor: reads enough ahead to feed it
        queue = collections.deque(p.parts)
        in_flight: dict = {}
        queued: collections.Counter = collections.Counter()

        def submit(a: int) -> None:
            part = queue.popleft()
            rows = read.remote(p.read, part, p.read_kwargs) if read is not None else None
            in_flight[actors[a].run.remote(spec, part, rows)] = (a, part)
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

    def map(self, fn: Callable, calls: list[tuple], *, shared: dict | None = None, cpus: float = 1,
            memory_mb: float | None = None) -> Iterator[tuple[int, Any]]:
        import ray

        self.connect()
        refs = {k: ray.put(v) for k, v in (shared or {}).items()}  # sent once, resolved in each task
        opts = {"num_cpus": cpus, "max_retries": 3, **self._runtime_env()}
        if memory_mb:
            opts["memory"] = int(memory_mb * 2**20)
        task = ray.remote(fn).options(**opts)
        pending = {task.remote(*call, **refs): i for i, call in enumerate(calls)}
        waiting = list(pending)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            yield pending[ready[0]], ray.get(ready[0])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.started = [], False
