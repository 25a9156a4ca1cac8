"""The local executor: one machine, no cluster. A pool of read processes decodes partitions ahead,
the model worker runs in the command's own process (on a copy of the model the driver loaded), and
task maps run inline (one call, or one core) or in a pool of processes. The same partitions, parts,
records and commits as on Ray, so the same outputs, resume and error rows, without Ray's start-up
(seconds of CPU on a laptop) where it buys nothing.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from deepscope.executor.base import (READ_KILL_ENV, CommitSide, Executor, ModelWorkerHost, Pass,  # noqa: F401
                                     WorkerSpec, local_cpus, local_gpus, read_partition_rows)

_EARLY = None  # a read pool started at the command's start (prestart_readers), taken by the first pass


class LocalExecutor(Executor):
    kind = "local"

    def __init__(self, why: str, threads: int = 0):
        super().__init__(why)
        self.threads = threads or local_cpus()
        self.gpus = local_gpus() > 0
        self.reads, self.readers, self.host, self.warm = None, default_readers(), None, None
        self.early: dict = {}
        self.tasks = None  # the task map's process pool, started at its first parallel map

    def describe(self) -> str:
        where = "GPU" if self.gpus else f"{self.threads} CPU threads"
        return (f"local executor: {self.readers} read process{'es' if self.readers > 1 else ''}, "
                f"the model in this process on {where}")

    @property
    def cpus(self) -> int:
        return local_cpus()

    @property
    def ahead(self) -> int:
        """Partitions read ahead of the model (a partition of 256 images is ~40 MB of pixels):
        one per read process, and two more, so that the model never waits for the next one."""
        return self.readers + 2

    def start_model_workers(self, warm: tuple[str, dict] | None = None, reads: bool = True) -> None:
        self.warm, self.host, self.started = warm, ModelWorkerHost(), True
        if reads:
            self._readers()  # spawned now: they import the decoder while the driver still loads torch

    def adopt(self, loaded) -> None:
        """The model worker copies the driver's loaded model instead of reading it again."""
        if self.warm:
            from deepscope.executor.base import _call

            _call(self.warm[0], **self.warm[1], threads=self.threads, loaded=loaded)

    def _readers(self):
        if self.reads is None:
            self.reads = take_prestarted() or start_readers(self.readers)
        return self.reads

    def prefetch(self, read: Callable, parts: list, kwargs: dict) -> None:
        """`_read` hands them over if it asks for the same partition with the same arguments."""
        for part in parts[:self.ahead]:
            self.early[part.name] = (kwargs, self._submit(read, part, kwargs))

    def _read(self, read: Callable | None, part, kwargs: dict):
        """A partition's rows, read in the pool (a future)."""
        early = self.early.pop(part.name, None)
        if early is not None and read is not None and early[0] == kwargs:
            return early[1]
        if read is None:
            from concurrent.futures import Future

            f = Future()
            f.set_result(None)
            return f
        return self._submit(read, part, kwargs)

    def _submit(self, read: Callable, part, kwargs: dict):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._readers().submit(read_partition_rows, read, part, kwargs)
        except BrokenProcessPool:  # a read process died: a new pool reads from now on (what was in
            self.reads.shutdown(wait=False, cancel_futures=True)  # flight fails and is read again)
            self.reads = start_readers(self.readers)
            return self.reads.submit(read_partition_rows, read, part, kwargs)

    def _share(self, spec: WorkerSpec, kwargs: bytes) -> None:
        spec.inline = kwargs  # the worker unpickles its own copy, as an actor would

    def _deliver(self, p: Pass, spec: WorkerSpec, commits: CommitSide) -> None:
        """Partitions in order: the pool reads `ahead` partitions ahead while this process runs the
        model on the oldest. A read process that dies breaks the pool: the next read starts a new
        one, and each partition that was in flight in the old one is read again (_submit)."""
        import collections

        queue = collections.deque(p.parts)
        reading: collections.deque = collections.deque()

        def fill() -> None:
            while queue and len(reading) < self.ahead:
                part = queue.popleft()
                reading.append((part, self._read(p.read, part, p.read_kwargs)))

        fill()
        while reading:
            part, future = reading.popleft()
            fill()
            try:
                records = self.host.run(spec, part, future.result())
            except Exception as e:  # a partition's images fail inside the worker; this is the code or the pool
                commits.failed(part, e)
                queue.append(part)
                fill()
                continue
            commits.take(part, records)

    def map(self, fn: Callable, calls: list[tuple], *, shared: dict | None = None, cpus: float = 1,
            memory_mb: float | None = None) -> Iterator[tuple[int, Any]]:
        """Inline when there is one call or one core (no process start, no pickling); else a pool of
        spawned processes, kept for the command (a worker keeps what it cached, e.g. a FAISS shard)."""
        shared = shared or {}
        if len(calls) <= 1 or self.cpus <= 1:
            for i, call in enumerate(calls):
                yield i, fn(*call, **shared)
            return
        from concurrent.futures import as_completed

        if self.tasks is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            import atexit

            self.tasks = ProcessPoolExecutor(min(self.cpus, 32), mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_ignore_sigint)
            atexit.register(self.tasks.shutdown, wait=False)  # an executor nobody closed (a test, a script)
        futures = {self.tasks.submit(_apply, fn, call, shared): i for i, call in enumerate(calls)}
        for f in as_completed(futures):
            yield futures[f], f.result()

    def close(self) -> None:
        self.host, self.early, self.started = None, {}, False
        for pool in (self.reads, self.tasks):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.reads = self.tasks = None


def _apply(fn, call, shared):
    return fn(*call, **shared)


def default_readers() -> int:
    """Local read processes: every core but the one the model's threads lead on, at least one."""
    return max(1, min(local_cpus() - 1, 32))


def start_readers(n: int):
    """A pool of `n` read processes, spawned now (not at the first partition)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the driver has threads (torch's import, its thread pools) when it forks
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_reader_init)
    for _ in range(n):
        pool.submit(_reader_init)
    return pool


def prestart_readers(executor: str | None, address: str | None) -> None:
    """Called by a command that runs a model pass, before its heavy imports: when the run will be
    local (the same rule as choose_executor), the read processes spawn and import the decoder on
    another core while this one imports torch. (Unused ones are shut down at exit.)"""
    global _EARLY
    from deepscope.executor.base import choose_executor

    if _EARLY is None and choose_executor(executor or "auto", address, 1)[0] == "local":
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


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle (it stops the pool)


def _reader_init() -> None:
    """A local read process: import the decoder now."""
    _ignore_sigint()
    import deepscope.io.decode  # noqa: F401

