"""The model worker: one per GPU (or per CPU slot), in a Ray actor or, on the local executor,
in the command's own process.

Loads the model once. Each call receives whole partitions (decoded by a CPU task); for each
batch of a partition it runs one forward pass with every layer the job's stages read and hands
the activations to each stage; then it writes the partition's parts (every stage's table and
files, and its error rows) straight to the output location, and returns only their small commit
records, which the driver commits. Rows whose decode failed become error rows.
A batch that runs out of accelerator memory is split in halves and retried, down to one image,
and the size that worked is kept for the following batches.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from deepscope.models.registry import best_device

PASSTHROUGH = ("id", "path", "label", "width", "height", "error", "error_stage", "decode_ms")
OOM_ENV = "DEEPSCOPE_OOM_ABOVE"  # tests: the model raises out-of-memory on batches larger than this
KILL_ENV = "DEEPSCOPE_WORKER_KILL"  # tests: "MARKER@N": the worker that reaches its N-th partition while
#   MARKER does not exist creates it and kills its own process (once per job: a lost actor, mid-job)
SLOW_ENV = "DEEPSCOPE_SLOW_BATCH_S"  # tests: seconds of sleep per batch, so that a run can be interrupted


def errors_table(rows: dict[str, np.ndarray]):
    import pyarrow as pa

    from deepscope.io import schemas

    bad = np.asarray(rows["error"]) != ""
    stage = np.asarray(rows.get("error_stage", np.array([""] * len(bad))), dtype=object)[bad]
    return pa.table({
        "id": pa.array(np.asarray(rows["id"])[bad].tolist(), pa.string()),
        "path": pa.array(np.asarray(rows["path"])[bad].tolist(), pa.string()),
        "stage": pa.array([s or "decode" for s in stage], pa.string()),
        "error": pa.array(np.asarray(rows["error"])[bad].tolist(), pa.string()),
    }, schema=schemas.ERRORS)


_PRELOADED: dict = {}  # (model, weights) -> LoadedModel, read by a model actor before its first pass
_DRIVERS: dict = {}  # (model, weights) -> the driver's LoadedModel (local executor): each pass copies it


def preload(model: str, weights: str | None = None, threads: int = 0, loaded=None) -> None:
    """Import torch and read the job's model in a fresh actor process while the driver still plans;
    the first ModelMapper of that model takes it (once: a later pass reads its own copy). In the
    local executor the driver hands over the model it loaded (`loaded`): every pass takes a copy,
    which its worker may move and re-lay out (channels_last) without touching the driver's."""
    from deepscope.models.registry import load_model

    if threads:
        torch.set_num_threads(threads)
    if loaded is not None:
        _DRIVERS[(model, weights)] = loaded
    else:
        _PRELOADED[(model, weights)] = load_model(model, weights)


def _take_model(key: tuple):
    import copy

    from deepscope.models.registry import load_model

    if key in _PRELOADED:
        return _PRELOADED.pop(key)
    if key in _DRIVERS:
        try:
            return copy.deepcopy(_DRIVERS[key])
        except Exception:  # a module that cannot be copied is read again
            pass
    return load_model(*key)


def kill_marker(setting: str | None, calls: int) -> None:
    """Fault injection (KILL_ENV): die like a lost node, mid-partition, exactly once per marker."""
    if setting:
        marker, _, at = setting.rpartition("@") if "@" in setting else (setting, "", "1")
        if calls >= int(at) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class ModelMapper:
    ERRORS = "errors"

    def __init__(self, job: dict, stages: list, threads: int = 0, out: str | None = None,
                 metadata: dict | None = None):
        from deepscope import job as jobmod
        from deepscope.io.store import PartWriter
        self.job = jobmod.validate(job)
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=num_cpus; we want the cores we were given
        self.device = best_device()
        key = (self.job.model.name, self.job.model.weights)
        self.model = _take_model(key)
        module = self.model.module.to(self.device)
        if self.job.run.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.model.module = module
        self.stages = stages  # the driver's stage objects, with any state their prepare() computed
        self.layers = sorted({layer for s in self.stages for layer in s.layers()})
        self.forward = bool(self.layers) or any(s.uses_model and not s.needs_grad for s in self.stages)
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.job.run.precision)
        self.batch_size = self.job.run.batch_size  # lowered for good when a batch runs out of memory
        self.writer = PartWriter(out or self.job.out, metadata)
        self.calls = 0
        self.slow_s = float(os.environ.get(SLOW_ENV, "0") or 0)
        self.oom_above = int(os.environ.get(OOM_ENV, "0") or 0)

    def _input(self, pixels: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        x = self.model.transform.normalize(t)
        if self.job.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run_stages(self, x, rows) -> dict[str, np.ndarray]:
        from deepscope.models.taps import forward_with_taps

        if self.oom_above and len(x) > self.oom_above:
            raise torch.OutOfMemoryError(f"test: out of memory above {self.oom_above} images")
        out = {}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                                     enabled=self.autocast is not None):
            _, taps = forward_with_taps(self.model, x, self.layers) if self.forward else (None, {})
            for s in self.stages:
                if not s.needs_grad:
                    for k, v in s.map_batch(self.model, x, taps, rows).items():
                        out[f"{s.name}:{k}"] = v
        for s in self.stages:
            if s.needs_grad:
                with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                    for k, v in s.map_batch(self.model, x.clone(), taps, rows).items():
                        out[f"{s.name}:{k}"] = v
        return out

    def _run_split(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch; out of memory: halves, recursively, down to one image (which then fails)."""
        n = len(rows["id"])
        try:
            return self._run_stages(self._input(rows["pixels"]), rows)
        except Exception as e:
            if not is_oom(e) or n == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = n // 2
            self.batch_size = min(self.batch_size, half)
            a = self._run_split({k: v[:half] for k, v in rows.items()})
            b = self._run_split({k: v[half:] for k, v in rows.items()})
            return {k: np.concatenate([a[k], b[k]]) for k in a}

    def __call__(self, part, rows: dict[str, np.ndarray]) -> list:
        """One partition's decoded rows in; its parts written here; their commit records out."""
        t_model = time.time()
        return self._write(part.name, self._map(rows), t_model)

    def _map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every stage's results for one partition's rows, batch by batch (columns `stage:name`)."""
        self.calls += 1
        kill_marker(os.environ.get(KILL_ENV), self.calls)
        n = len(batch["id"])
        out = {k: batch[k] for k in PASSTHROUGH if k in batch}
        out["error"] = np.asarray(batch["error"], dtype=object).copy()
        out["error_stage"] = np.asarray(batch.get("error_stage", np.array([""] * n)), dtype=object).copy()
        out["infer_ms"] = np.zeros(n, np.float32)
        good_idx = np.nonzero(out["error"] == "")[0]
        chunks: list[tuple[np.ndarray, dict]] = []
        start = 0
        while start < len(good_idx):
            idx = good_idx[start:start + self.batch_size]
            start += len(idx)
            if self.slow_s:
                time.sleep(self.slow_s)
            t0 = time.perf_counter()
            try:
                chunks.append((idx, self._run_split({k: np.asarray(v)[idx] for k, v in batch.items()})))
            except Exception as e:  # a model failure marks its batch; the job goes on
                out["error"][idx] = f"{type(e).__name__}: {e}"[:500]
                out["error_stage"][idx] = "model"
            out["infer_ms"][idx] = (time.perf_counter() - t0) * 1000 / len(idx)
        for k in {k for _, r in chunks for k in r}:
            first = next(r[k] for _, r in chunks if k in r)
            full = np.zeros((n,) + first.shape[1:], dtype=first.dtype) if first.dtype != object else np.full(n, None, dtype=object)
            for idx, r in chunks:
                full[idx] = r[k]
            out[k] = full
        return out

    def _write(self, part: str, rows: dict[str, np.ndarray], t_model: float) -> list:
        """Write the partition's parts (files first, then tables; errors last) -> their records."""
        t0 = time.perf_counter()
        ok = np.asarray(rows["error"]) == ""
        good = {k: v[ok] for k, v in rows.items() if ":" not in k}
        records = []
        for s in self.stages:
            cols = {**good, **{k.split(":", 1)[1]: v[ok] for k, v in rows.items() if k.startswith(f"{s.name}:")}}
            records.append(self.writer.write(s.name, part, s.part_table(cols), s.part_files(part, cols)))
        records.append(self.writer.write(self.ERRORS, part, errors_table(rows)))
        last = records[-1]  # the partition's counts and timings ride on its errors record
        last.images, last.failed, last.t_model = len(rows["id"]), int((~ok).sum()), t_model
        last.decode_ms, last.infer_ms = float(np.sum(rows.get("decode_ms", 0))), float(np.sum(rows["infer_ms"]))
        last.write_ms = (time.perf_counter() - t0) * 1000
        return records
