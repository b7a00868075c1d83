"""Small timing helpers shared by the benchmarks (stdlib only)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence


def timings_us(fn: Callable[[int], object], n: int) -> list[float]:
    """Call ``fn(i)`` for i in range(n); return each call's time in microseconds."""
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1e6)
    return out


def interleaved(fns: Sequence[Callable[[int], object]], n: int) -> list[list[float]]:
    """Call every ``fn(i)`` for each i in turn; return each one's times in microseconds.

    An operation and its baseline timed this way see the same moments, so
    load from other processes on a shared machine hits both alike.
    """
    out: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for times, fn in zip(out, fns, strict=True):
            start = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - start) * 1e6)
    return out


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, values: Sequence[float], baseline: Sequence[float] | None = None) -> str:
    p50, p99 = statistics.median(values), pct(values, 0.99)
    ratio = f"{p50 / statistics.median(baseline):6.2f}x" if baseline else "   base"
    return f"{name:<44} {p50:10.1f} {p99:10.1f}   {ratio}"


def header(title: str) -> str:
    return f"\n{title}\n{'operation':<44} {'p50 us':>10} {'p99 us':>10}   vs baseline"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (llama.cpp logs there even with verbose=False)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
