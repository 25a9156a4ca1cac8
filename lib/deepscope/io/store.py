"""The only writer of outputs: atomic files, partition-named parts, and the manifest.

A part is written under a temporary name, flushed and fsynced, renamed to a name
derived from its input partition, and only then recorded (rows, sha256) in
manifest.json, itself replaced atomically. Readers trust only what the manifest
lists, so a killed writer leaves at worst an unlisted temporary file, and a retried
partition overwrites the same name: the same rows can never be listed twice.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepscope.errors import UserError

MANIFEST = "manifest.json"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_single_file(path: str | os.PathLike, data: bytes) -> None:
    """A single output file outside any output folder (a figure, a query result), atomically."""
    _atomic_write(Path(path), data)


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_digest(config: dict) -> str:
    return sha256(json.dumps(config, sort_keys=True, default=str).encode())[:16]


class Store:
    """An output folder: OUT/manifest.json, OUT/<stage>/<part>.parquet, OUT/report/..."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = self._load()
        self.metadata: dict[str, str] = {}  # written into every Parquet file (model, weights: random ones say so)

    # -- manifest -------------------------------------------------------------
    def _load(self) -> dict:
        p = self.root / MANIFEST
        if not p.exists():
            return {"job": None, "stages": {}, "summary": {}}
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{p} is not a deepscope manifest ({e}); choose another --out") from None

    def _save(self) -> None:
        _atomic_write(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True, default=str).encode())

    def open(self, job: dict) -> None:
        """Claim the folder for a job configuration; refuse to mix two configurations."""
        if self.root.exists() and not (self.root / MANIFEST).exists() and any(self.root.iterdir()):
            raise UserError(f"{self.root} exists and is not a deepscope output folder; choose another --out")
        if self.manifest["job"] is None:
            self.manifest["job"] = job
            self._save()
        elif self.manifest["job"] != job:
            diff = sorted(k for k in set(job) | set(self.manifest["job"]) if job.get(k) != self.manifest["job"].get(k))
            raise UserError(
                f"{self.root} holds results of a different job ({', '.join(diff)} differ); "
                "use another --out or delete it")

    def stage_config(self, stage: str) -> dict | None:
        return self.manifest["stages"].get(stage, {}).get("config")

    def open_stage(self, stage: str, config: dict, replace: bool = False) -> None:
        """Each stage's configuration is fixed once it has written a part (replace: a post stage
        whose outputs are rewritten whole)."""
        entry = self.manifest["stages"].setdefault(stage, {"config": config, "parts": {}})
        if entry["config"] != config:
            if entry["parts"] and not replace:
                raise UserError(
                    f"{self.root}/{stage} was made with other [{stage}] settings "
                    f"({config_digest(entry['config'])} != {config_digest(config)}); "
                    f"delete {self.root / stage} or use another --out")
            entry["config"] = config
        self._save()

    # -- parts ----------------------------------------------------------------
    def parts(self, stage: str) -> dict[str, dict]:
        return self.manifest["stages"].get(stage, {}).get("parts", {})

    def has_part(self, stage: str, part: str) -> bool:
        return part in self.parts(stage)

    def _with_metadata(self, table: pa.Table) -> pa.Table:
        meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in self.metadata.items()}}
        return table.replace_schema_metadata(meta)

    def write_part(self, stage: str, part: str, table: pa.Table) -> None:
        data = table_bytes(self._with_metadata(table))
        rel = f"{stage}/{part}.parquet"
        _atomic_write(self.root / rel, data)
        self.manifest["stages"].setdefault(stage, {"config": {}, "parts": {}})["parts"][part] = {
            "file": rel, "rows": table.num_rows, "sha256": sha256(data)}
        self._save()

    def drop_parts_except(self, stage: str, keep: set[str]) -> list[str]:
        """Forget (and delete) parts of partitions that are no longer in the plan."""
        parts = self.parts(stage)
        stale = [p for p in parts if p not in keep]
        for p in stale:
            (self.root / parts.pop(p)["file"]).unlink(missing_ok=True)
        if stale:
            self._save()
        return stale

    def read(self, stage: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of a stage, from the parts the manifest lists, in part order."""
        parts = self.parts(stage)
        if not parts:
            raise UserError(f"{self.root} has no {stage} results; run the {stage} stage first")
        tables = [pq.read_table(self.root / parts[p]["file"], columns=columns) for p in sorted(parts)]
        # a partition whose images all failed writes an empty part, possibly of another shape
        nonempty = [t for t in tables if t.num_rows] or tables[:1]
        return pa.concat_tables(nonempty)

    def iter_parts(self, stage: str, columns: list[str] | None = None):
        """Stream a stage part by part (memory: one part)."""
        for p, entry in sorted(self.parts(stage).items()):
            yield p, pq.read_table(self.root / entry["file"], columns=columns)

    def verify(self, stage: str) -> list[str]:
        """Parts whose file is missing or whose checksum differs from the manifest's."""
        bad = []
        for p, entry in self.parts(stage).items():
            f = self.root / entry["file"]
            if not f.exists() or sha256(f.read_bytes()) != entry["sha256"]:
                bad.append(p)
        return bad

    # -- whole files ------------------------------------------------------------
    def write_file(self, rel: str, data: bytes | str, record: bool = True) -> Path:
        """Any other output (report pages, images, merged tables), atomically. record=False: not
        listed in the manifest (per-image outputs, which their stage's own table lists)."""
        data = data.encode() if isinstance(data, str) else data
        path = self.root / rel
        _atomic_write(path, data)
        if record:
            self.manifest.setdefault("files", {})[rel] = {"sha256": sha256(data)}
            self._save()
        return path

    def write_table(self, rel: str, table: pa.Table) -> Path:
        return self.write_file(rel, table_bytes(self._with_metadata(table)))

    def update_summary(self, stage: str, summary: dict) -> None:
        self.manifest["summary"][stage] = summary
        self._save()

    def summary(self, stage: str) -> dict | None:
        return self.manifest["summary"].get(stage)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def clean_temporaries(self) -> int:
        """Remove temporary files a killed writer left behind (never listed, so never read)."""
        n = 0
        if self.root.exists():
            for tmp in self.root.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n
