"""What a run prints: one-line log messages and per-pass progress, on stderr."""
from __future__ import annotations

import sys
import time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
        elif now - self.last >= self.every or self.done == n or self.done >= self.total:  # first, then every few s
            print(self.line(), file=self.stream, flush=True)
            self.last = now

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
