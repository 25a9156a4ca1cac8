"""The executor: the one way every pass and every task-parallel step runs, chosen once per command.

Two implementations of one interface (executor/base.py: Executor):
- LocalExecutor (executor/local.py): one machine, no Ray: read processes decode partitions, the
  model worker runs in the command's own process, task maps run inline or in a process pool;
- RayExecutor (executor/on_ray.py): read tasks anywhere in the cluster, model actors (one per
  GPU, or CPU actors), task maps as Ray tasks.

Both run image passes (partitions -> read -> model worker -> parts written where computed -> commit
records -> the driver commits) and plain task maps (index shards, k-NN blocks). Nothing outside this
package branches on which one runs, starts Ray for a pass, or schedules its own tasks.
"""
from __future__ import annotations

from deepscope.executor.base import (EXECUTORS, Executor, Pass, PassFailed, PassStats, RunContext,  # noqa: F401
                                     choose_executor, local_cpus, local_gpus, log, worker_env)
from deepscope.executor.local import (READ_KILL_ENV, LocalExecutor, drop_prestarted,  # noqa: F401
                                      prestart_readers)


def make_executor(executor: str = "auto", address: str | None = None, actors: int = 1, threads: int = 0,
                  log_path: str | None = None, env: dict | None = None) -> Executor:
    """The command's executor (`auto`: Ray where it brings something, see choose_executor). Nothing
    starts here: model workers start with start_model_workers(), Ray at its first use."""
    kind, why = choose_executor(executor, address, actors)
    if kind == "local":
        return LocalExecutor(why, threads)
    from deepscope.executor.on_ray import RayExecutor

    return RayExecutor(why, address, actors, threads, log_path, env)


def executor_for(run, store=None) -> Executor:
    """The executor a job's [run] section asks for (run: job.RunConfig or a dict of its keys); Ray's
    own log lines of the command go beside the output (store), shown when a partition keeps failing."""
    from deepscope.executor.on_ray import log_path_for

    get = run.get if isinstance(run, dict) else (lambda k, d=None: getattr(run, k, d))
    log_path = log_path_for(store.url, store.loc.remote) if store is not None else None
    return make_executor(get("executor") or "auto", get("address"), int(get("actors") or 1),
                         int(get("threads") or 0), log_path, worker_env())


def shutdown() -> None:
    """At the command's end: a local Ray started by it is shut down (its processes go with it)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
