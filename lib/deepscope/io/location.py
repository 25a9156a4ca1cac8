"""An output location: a local folder or any fsspec URL (s3://, gs://, memory://), read and written
by relative path, and the atomic writes a local folder needs (a temporary file renamed into place,
then the folder synced, so that a reader never sees half a file). The commit protocol over it
(parts, log, snapshot) is io/store.py's."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepscope.errors import UserError


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A file object whose bytes become `path` only when the block ends without an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
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


def _atomic_write(path: Path, data: bytes) -> None:
    with _atomic_file(path) as f:
        f.write(data)


def write_single_file(path: str | os.PathLike, data: bytes) -> None:
    """A single output file outside any output folder (a figure, a query result), atomically."""
    _atomic_write(Path(path), data)


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


class Location:
    """A folder on some filesystem: put/get/list relative paths. Picklable (workers get a copy)."""

    def __init__(self, url: str | os.PathLike):
        self.url = str(url).rstrip("/") or "/"
        self.remote = is_remote(self.url)
        if not self.remote:
            self.url = os.path.abspath(self.url.removeprefix("file://"))
        self._fs = None

    def __getstate__(self):
        return {"url": self.url, "remote": self.remote, "_fs": None}

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.url)
        return self._fs

    def full(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def _key(self, rel: str) -> str:
        """The path as the filesystem object wants it (no protocol)."""
        return self.fs._strip_protocol(self.full(rel))

    def put(self, rel: str, data: bytes) -> None:
        if self.remote:
            self.fs.pipe_file(self._key(rel), data)  # a single PUT: atomic on object stores
        else:
            _atomic_write(Path(self.full(rel)), data)

    @contextlib.contextmanager
    def writing(self, rel: str):
        """A file object to write rel in pieces (a file too large to hold twice in memory); it
        appears whole when the block ends without an error (locally a rename, remotely one upload)."""
        if self.remote:
            with self.fs.open(self._key(rel), "wb") as f:
                yield f
        else:
            with _atomic_file(Path(self.full(rel))) as f:
                yield f

    def get(self, rel: str) -> bytes:
        if self.remote:
            return self.fs.cat_file(self._key(rel))
        return Path(self.full(rel)).read_bytes()

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._key(rel)) if self.remote else os.path.exists(self.full(rel))

    def rm(self, rel: str) -> None:
        try:
            if self.remote:
                self.fs.rm_file(self._key(rel))
            else:
                os.unlink(self.full(rel))
        except FileNotFoundError:
            pass

    def rm_folder(self, rel: str) -> None:
        """Every file below rel, and locally the folder itself (object stores have no folders)."""
        if not self.remote:
            import shutil

            shutil.rmtree(self.full(rel), ignore_errors=True)
            return
        for f in self.sizes(rel):
            self.rm(f)

    def sizes(self, rel: str = "") -> dict[str, int]:
        """Every file below rel (relative path -> bytes), in one listing."""
        if not self.remote:
            top = Path(self.full(rel))
            out = {}
            for dirpath, _, files in os.walk(top):
                for f in files:
                    p = os.path.join(dirpath, f)
                    try:
                        out[os.path.relpath(p, self.url)] = os.stat(p).st_size
                    except FileNotFoundError:
                        pass
            return out
        base = self._key("")
        try:
            found = self.fs.find(self._key(rel), detail=True)
        except FileNotFoundError:
            return {}
        return {k[len(base) + 1:]: int(v.get("size") or 0) for k, v in found.items()}

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        if self.remote:
            return pq.read_table(io.BytesIO(self.get(rel)), columns=columns)
        return pq.read_table(self.full(rel), columns=columns)

    def read_row_group(self, rel: str, group: int, columns: list[str] | None = None) -> pa.Table:
        """One row group of a Parquet file (remotely: ranged reads, not the whole object)."""
        if self.remote:
            with self.fs.open(self._key(rel), "rb") as f:
                return pq.ParquetFile(f).read_row_group(group, columns=columns)
        return pq.ParquetFile(self.full(rel)).read_row_group(group, columns=columns)

    def check_writable(self) -> None:
        """One small write and delete, so that a location that cannot be written fails before any work."""
        probe = f".deepscope-write-probe-{os.getpid()}"
        try:
            if not self.remote:
                os.makedirs(self.url, exist_ok=True)
            self.put(probe, b"ok")
            self.rm(probe)
        except Exception as e:  # permission, unknown bucket, no credentials, read-only file system
            reason = getattr(e, "strerror", None) or (str(e).splitlines() or [""])[0]
            raise UserError(f"cannot write to the output location {self.url}: {type(e).__name__}: {reason}") from None


class Root(str):
    """The output location as shown to people: a str that also joins with `/` (like a Path)."""

    def __truediv__(self, other) -> "Root":
        return Root(f"{self.rstrip('/')}/{other}")
