"""The only writer of outputs: parts written where they are computed, a commit log, a snapshot.

An output location is a local folder or any fsspec URL (s3://, gs://, memory://). Layout:

  OUT/<stage>/<part>.parquet     a part, written by the worker that computed it (PartWriter):
                                 its files first (stylized images, ...), then its table; locally
                                 under a temporary name renamed into place, remotely one PUT
  OUT/_log/<stage>/<part>.json   its commit record (rows, bytes, sha256, files), one small object
                                 per part written by the driver: committing costs the same at
                                 the millionth part as at the first
  OUT/manifest.json              the snapshot: the job, every stage's config and committed parts,
                                 summaries; rewritten at phase ends and at the end of a run, which
                                 compacts the log (the records it holds are then deleted)

Readers see committed parts only. A torn record (a killed writer) does not parse and is ignored,
so its partition is recomputed. A retried or duplicated partition writes the same names again.
A rerun trusts only what is on disk: `check()` drops every committed part whose file is missing
or has another size (or, with verify, another checksum), and its partition is computed again.

Reading and writing one location by relative path (local or fsspec) is io/location.py's.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepscope.errors import UserError
from deepscope.io.location import Location, Root

MANIFEST = "manifest.json"
LOG = "_log"
HISTORY = "history"  # one small record per command that ran here (never rewritten): the run history
FORMAT = 2


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_digest(config: dict) -> str:
    return sha256(json.dumps(config, sort_keys=True, default=str).encode())[:16]


@dataclass
class CommitRecord:
    """What a worker returns for one part it wrote, and the driver commits: where the part is, its
    size and checksum, its files; the timings of the partition ride on its last record."""
    stage: str
    part: str
    file: str
    rows: int
    bytes: int
    sha256: str
    files: dict[str, int] = field(default_factory=dict)  # other files of the part: path -> bytes
    images: int = 0  # the partition's items (on its errors record), 0 on the others
    failed: int = 0
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    write_ms: float = 0.0
    t_model: float = 0.0  # when the partition reached the model (time.time())

    def entry(self) -> dict:
        """What the manifest keeps of it."""
        return {"file": self.file, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256, "files": self.files}


class PartWriter:
    """Worker side: write one partition's files and table to the location, return its record.

    The record is what the driver commits; a part is not read before that. Metadata (model,
    weights; random weights say so) goes into every Parquet file.
    """

    def __init__(self, url: str, metadata: dict[str, str] | None = None):
        self.loc = Location(url)
        self.metadata = metadata or {}

    def write(self, stage: str, part: str, table: pa.Table, files: dict[str, bytes] | None = None) -> CommitRecord:
        sizes = {}
        for rel, data in (files or {}).items():
            self.loc.put(rel, data)
            sizes[rel] = len(data)
        data = table_bytes(with_metadata(table, self.metadata))
        rel = f"{stage}/{part}.parquet"
        self.loc.put(rel, data)
        return CommitRecord(stage, part, rel, table.num_rows, len(data), sha256(data), sizes)


def with_metadata(table: pa.Table, metadata: dict[str, str]) -> pa.Table:
    meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
    return table.replace_schema_metadata(meta)


class Store:
    """An output location: its snapshot plus its commit log, and the driver's writes to both."""

    def __init__(self, root: str | os.PathLike):
        self.loc = Location(root)
        self.root = Root(self.loc.url) if self.loc.remote else Path(self.loc.url)
        self.url = self.loc.url
        self.metadata: dict[str, str] = {}  # written into every Parquet file (model, weights: random ones say so)
        self._logged: set[tuple[str, str]] = set()  # commit records not yet in the snapshot
        self.manifest = self._load()

    # -- snapshot and log ----------------------------------------------------------
    def _load(self) -> dict:
        try:
            raw = self.loc.get(MANIFEST) if self.loc.exists(MANIFEST) else None
        except OSError as e:
            raise UserError(f"cannot read {self.url}/{MANIFEST}: {e}") from None
        if raw is None:
            manifest = {"format": FORMAT, "job": None, "stages": {}, "summary": {}}
        else:
            try:
                manifest = json.loads(raw)
            except json.JSONDecodeError as e:
                raise UserError(f"{self.url}/{MANIFEST} is not a deepscope manifest ({e}); choose another --out") from None
        for rel in sorted(self.loc.sizes(LOG)):
            try:
                rec = json.loads(self.loc.get(rel))
                stage, part = rec["stage"], rec["part"]
            except (ValueError, KeyError, OSError):
                continue  # a torn record: its part is not committed, and will be recomputed
            manifest["stages"].setdefault(stage, {"config": {}, "parts": {}})["parts"][part] = _entry(rec)
            self._logged.add((stage, part))
        return manifest

    def _save(self) -> None:
        """Write the snapshot (it compacts the log: the records it holds are deleted after it)."""
        self.manifest["format"] = FORMAT
        self.loc.put(MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True, default=str).encode())
        for stage, part in sorted(self._logged):
            self.loc.rm(f"{LOG}/{stage}/{part}.json")
        self._logged.clear()

    def save(self) -> None:
        """Write the snapshot now (after a change to the manifest itself)."""
        self._save()

    def open(self, job: dict) -> None:
        """Claim the location for a job configuration; refuse to mix two configurations."""
        if not self.loc.remote and self.root.exists() and not (self.root / MANIFEST).exists() \
                and any(p.name != LOG for p in self.root.iterdir()):
            raise UserError(f"{self.root} exists and is not a deepscope output folder; choose another --out")
        self.loc.check_writable()
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
        """Each stage's configuration is fixed once it has a committed part (replace: a post stage
        whose outputs are rewritten whole). A stage whose parts are all gone (its folder deleted)
        takes the new configuration."""
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

    def writer(self) -> PartWriter:
        return PartWriter(self.url, self.metadata)

    def commit(self, record: CommitRecord) -> bool:
        """Commit one part a worker wrote: one small record, whatever the number of parts already
        committed. False: this part was committed already (a duplicate delivery), nothing done."""
        stage, part = record.stage, record.part
        parts = self.manifest["stages"].setdefault(stage, {"config": {}, "parts": {}})["parts"]
        if part in parts:
            return False
        entry = record.entry()
        self.loc.put(f"{LOG}/{stage}/{part}.json", json.dumps({"stage": stage, "part": part, **entry}).encode())
        parts[part] = entry
        self._logged.add((stage, part))
        return True

    def write_part(self, stage: str, part: str, table: pa.Table, files: dict[str, bytes] | None = None) -> None:
        """Write and commit one part from the driver (post stages, tests)."""
        self.commit(self.writer().write(stage, part, table, files))

    def flush(self) -> None:
        """Compact the log into the snapshot (end of a phase or a run)."""
        if self._logged:
            self._save()

    def drop_parts_except(self, stage: str, keep: set[str]) -> list[str]:
        """Forget (and delete) parts of partitions that are no longer in the plan."""
        parts = self.parts(stage)
        stale = [p for p in parts if p not in keep]
        for p in stale:
            self._forget(stage, p, parts.pop(p))
        if stale:
            self._save()
        return stale

    def _forget(self, stage: str, part: str, entry: dict) -> None:
        self.loc.rm(entry["file"])
        self.loc.rm(f"{LOG}/{stage}/{part}.json")
        self._logged.discard((stage, part))

    def check(self, verify: bool = False) -> dict[str, list[str]]:
        """Trust only what is on disk: drop every committed part whose table or files are missing or
        have another size (verify: also another sha256). One listing of the location, not one call
        per part. Returns the dropped parts by stage; their partitions will be computed again."""
        sizes = self.loc.sizes()
        dropped: dict[str, list[str]] = {}
        for stage, entry in self.manifest["stages"].items():
            for part, e in list(entry.get("parts", {}).items()):
                ok = e["file"] in sizes and sizes[e["file"]] == e.get("bytes", sizes[e["file"]])
                ok = ok and all(sizes.get(rel) == n for rel, n in (e.get("files") or {}).items())
                if ok and verify:
                    ok = sha256(self.loc.get(e["file"])) == e["sha256"]
                if not ok:
                    dropped.setdefault(stage, []).append(part)
                    self._forget(stage, part, entry["parts"].pop(part))
        if dropped:
            self._save()
        return dropped

    def read(self, stage: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of a stage, from its committed parts, in part order."""
        parts = self.parts(stage)
        if not parts:
            raise UserError(f"{self.root} has no {stage} results; run the {stage} stage first")
        tables = [self.loc.read_table(parts[p]["file"], columns=columns) for p in sorted(parts)]
        # a partition whose images all failed writes an empty part, possibly of another shape
        nonempty = [t for t in tables if t.num_rows] or tables[:1]
        return pa.concat_tables(nonempty)

    def iter_parts(self, stage: str, columns: list[str] | None = None):
        """Stream a stage part by part (memory: one part)."""
        for p, entry in sorted(self.parts(stage).items()):
            yield p, self.loc.read_table(entry["file"], columns=columns)

    def read_schema(self, rel: str) -> pa.Schema:
        if self.loc.remote:
            return pq.read_schema(io.BytesIO(self.loc.get(rel)))
        return pq.read_schema(self.loc.full(rel))

    def verify(self, stage: str) -> list[str]:
        """Parts whose file is missing or whose checksum differs from the commit record's."""
        bad = []
        for p, entry in self.parts(stage).items():
            try:
                ok = sha256(self.loc.get(entry["file"])) == entry["sha256"]
            except FileNotFoundError:
                ok = False
            if not ok:
                bad.append(p)
        return bad

    # -- run history --------------------------------------------------------------
    def append_history(self, record: dict) -> None:
        """Add one command's record (what it ran, on which executor, times, rate, failures or its
        error): a file of its own, so that no command overwrites another's."""
        import time
        import uuid

        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.get("started") or time.time()))
        self.loc.put(f"{HISTORY}/{stamp}-{uuid.uuid4().hex[:8]}.json",
                     json.dumps(record, indent=1, sort_keys=True, default=str).encode())

    def history(self) -> list[dict]:
        """Every command's record, oldest first."""
        out = []
        for rel in sorted(self.loc.sizes(HISTORY)):
            try:
                out.append(json.loads(self.loc.get(rel)))
            except (ValueError, OSError):
                continue  # a torn record
        return sorted(out, key=lambda r: r.get("started") or 0)

    # -- whole files ------------------------------------------------------------
    def write_file(self, rel: str, data: bytes | str, record: bool = True):
        """Any other output (report pages, figures, merged tables), atomically. record=False: not
        listed in the snapshot (per-image outputs, which their stage's own table lists)."""
        data = data.encode() if isinstance(data, str) else data
        self.loc.put(rel, data)
        if record:
            self.manifest.setdefault("files", {})[rel] = {"sha256": sha256(data)}
            self._save()
        return self.path(rel)

    def record_file(self, rel: str, sha: str) -> None:
        """List a file that a worker wrote (write_file's record, without its bytes passing through here)."""
        self.manifest.setdefault("files", {})[rel] = {"sha256": sha}
        self._save()

    def write_table(self, rel: str, table: pa.Table):
        return self.write_file(rel, table_bytes(with_metadata(table, self.metadata)))

    def read_bytes(self, rel: str) -> bytes:
        return self.loc.get(rel)

    def exists(self, rel: str) -> bool:
        return self.loc.exists(rel)

    def update_summary(self, stage: str, summary: dict) -> None:
        self.manifest["summary"][stage] = summary
        self._save()

    def summary(self, stage: str) -> dict | None:
        return self.manifest["summary"].get(stage)

    def path(self, rel: str):
        """A local Path (local folders), or the URL of the file (remote locations)."""
        return Root(self.loc.full(rel)) if self.loc.remote else self.root / rel

    def clean_temporaries(self) -> int:
        """Remove temporary files a killed writer left behind (never committed, so never read)."""
        n = 0
        if not self.loc.remote and self.root.exists():
            for tmp in self.root.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n


def _entry(rec: dict) -> dict:
    return {k: rec[k] for k in ("file", "rows", "bytes", "sha256", "files") if k in rec}


