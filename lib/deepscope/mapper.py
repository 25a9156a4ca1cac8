"""The model mapper: a Ray Data callable class, one per GPU (or per CPU slot).

Loads the model once, then for each batch runs one forward pass with every layer
the job's stages read, and hands the activations to each stage. Rows whose decode
failed pass through untouched, so errors and results travel the same road.
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import torch

PASSTHROUGH = ("id", "path", "label", "part", "width", "height", "error", "error_stage", "decode_ms")
FAULT_ENV = "DEEPSCOPE_FAULT_RATE"  # tests: share of batches whose actor process kills itself
SLOW_ENV = "DEEPSCOPE_SLOW_BATCH_S"  # tests: seconds of sleep per batch, so that a run can be interrupted


def to_arrow(batch: dict[str, np.ndarray]):
    """numpy columns -> an Arrow table; N-d columns become fixed-size lists (shape in field metadata).

    Ray's own tensor extension type mis-converts sliced blocks back to numpy in Ray 2.60
    ("buffer is too small"), so results travel as plain Arrow types.
    """
    import pyarrow as pa

    fields, arrays = [], []
    for k, v in batch.items():
        v = np.asarray(v)
        if v.ndim > 1:
            flat = pa.array(np.ascontiguousarray(v).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, int(np.prod(v.shape[1:]))))
            fields.append(pa.field(k, arrays[-1].type, metadata={"shape": ",".join(map(str, v.shape[1:]))}))
        else:
            arrays.append(pa.array(v.tolist() if v.dtype == object else v))
            fields.append(pa.field(k, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def from_arrow(table) -> dict[str, np.ndarray]:
    out = {}
    for field, col in zip(table.schema, table.columns):
        col = col.combine_chunks()
        if field.metadata and b"shape" in field.metadata:
            shape = tuple(int(x) for x in field.metadata[b"shape"].decode().split(","))
            # rows of batches that failed whole have no value (null): they are error rows, zero-filled
            values = col.flatten().to_numpy(zero_copy_only=False).reshape((-1,) + shape)
            if col.null_count:
                full = np.zeros((len(col),) + shape, values.dtype)
                full[col.is_valid().to_numpy(zero_copy_only=False)] = values
                values = full
            out[field.name] = values
        else:
            out[field.name] = np.asarray(col.to_numpy(zero_copy_only=False))
    return out


def device_for_actor() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class ModelMapper:
    def __init__(self, job: dict, stages: list, threads: int = 0):
        from deepscope import job as jobmod
        from deepscope.models.registry import load_model

        self.job = jobmod.validate(job)
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=num_cpus; we want the cores we were given
        self.device = device_for_actor()
        self.model = load_model(self.job.model.name, self.job.model.weights)
        module = self.model.module.to(self.device)
        if self.job.run.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.model.module = module
        self.stages = stages  # the driver's stage objects, with any state their prepare() computed
        self.layers = sorted({layer for s in self.stages for layer in s.layers()})
        self.forward = bool(self.layers) or any(s.uses_model and not s.needs_grad for s in self.stages)
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.job.run.precision)
        self.fault_rate = float(os.environ.get(FAULT_ENV, "0") or 0)
        self.slow_s = float(os.environ.get(SLOW_ENV, "0") or 0)

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

    def __call__(self, batch: dict[str, np.ndarray]):
        return to_arrow(self._map(batch))

    def _map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fault_rate and random.random() < self.fault_rate:
            os._exit(1)  # fault injection: die like a lost node, mid-batch
        if self.slow_s:
            time.sleep(self.slow_s)
        t0 = time.perf_counter()
        n = len(batch["id"])
        ok = np.asarray(batch["error"]) == ""
        out = {k: batch[k] for k in PASSTHROUGH if k in batch}
        out["error"] = np.asarray(batch["error"], dtype=object).copy()
        out["error_stage"] = np.asarray(batch.get("error_stage", np.array([""] * n)), dtype=object).copy()
        results: dict[str, np.ndarray] = {}
        if ok.any():
            good = {k: np.asarray(v)[ok] for k, v in batch.items()}
            try:
                results = self._run_stages(self._input(good["pixels"]), good)
            except Exception as e:  # a model failure marks its batch; the job goes on
                out["error"][ok] = f"{type(e).__name__}: {e}"[:500]
                out["error_stage"][ok] = "model"
                ok = np.zeros(n, bool)
        for k, v in results.items():
            full = np.zeros((n,) + v.shape[1:], dtype=v.dtype) if v.dtype != object else np.full(n, None, dtype=object)
            full[ok] = v
            out[k] = full
        out["infer_ms"] = np.full(n, (time.perf_counter() - t0) * 1000 / max(n, 1), dtype=np.float32)
        return out
