"""Partitions: the unit of work, retry and resume, cut so that they stay put when a dataset grows.
Each kind of dataset plans its own (io/sources.py: one class per kind); the cut of a listing of
ids into partitions is here.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Partition:
    name: str  # p-<digest of its ids>, s-<shard digest>-<first row>, or y-<first index>: never a run id
    size: int  # items
    desc: dict = field(repr=False, hash=False, compare=False)  # what its read task needs (small, picklable)

    @property
    def items(self):
        """The partition's items (id, path, label), read as its task reads them."""
        from deepscope.io.sources import read_partition

        return read_partition(self.desc)


def _hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


def content_defined_chunks(ids: Iterator[str], size: int) -> Iterator[list[str]]:
    """Content-defined chunks of a stream of ids, about `size` long on average (as rsync and dedup
    stores cut byte streams).

    A chunk ends after an id whose hash is 0 modulo (size - size/4) once it holds size/4 ids, or at
    3 x size. Where a chunk ends depends on its own ids only (and, after a forced cut, on the
    previous chunk's end until the next natural cut), so an insertion changes one or two chunks."""
    floor = max(1, size // 4)
    modulus = max(1, size - floor)
    chunk: list[str] = []
    for i in ids:
        chunk.append(i)
        if (len(chunk) >= floor and _hash(i) % modulus == 0) or len(chunk) >= 3 * size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def plan(source: str, size: int):
    """Partitions of a dataset URL, lazily (io/sources.py: Source.partitions)."""
    from deepscope.io.sources import open_source

    return open_source(source).partitions(size)
