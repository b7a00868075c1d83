"""Small timing helpers shared by the benchmarks (stdlib only)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def timings_us(fn: Callable[[int], object], n: int) -> list[float]:
    """Call ``fn(i)`` for i in range(n); return each call's time in microseconds."""
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1e6)
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
