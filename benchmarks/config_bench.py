"""Config store round-trips next to the raw sqlite3 statements they wrap.

    python benchmarks/config_bench.py
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import header, interleaved, row

from cyllama_db import CyllamaDB

N = 5000


def measure(tmp: str, n: int = N) -> dict[str, list[float]]:
    """Per-call microseconds: ``raw_write`` / ``set`` and ``raw_read`` / ``get`` (each pair interleaved)."""
    raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")

    def raw_write(i: int) -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k{i}", str(i)))
        raw.execute("COMMIT")

    def raw_read(i: int) -> None:
        raw.execute("SELECT value FROM kv WHERE key = ?", (f"k{i}",)).fetchone()

    db = CyllamaDB(Path(tmp) / "cyllama.db")
    try:
        raw_w, ours_w = interleaved([raw_write, lambda i: db.set_config(f"k{i}", i)], n)
        raw_r, ours_r = interleaved([raw_read, lambda i: db.get_config(f"k{i}")], n)
    finally:
        db.close()
        raw.close()
    return {"raw_write": raw_w, "set": ours_w, "raw_read": raw_r, "get": ours_r}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = measure(tmp)
        print(header(f"config store, {N} keys, WAL file"))
        print(row("raw sqlite3 INSERT OR REPLACE (BEGIN IMMEDIATE)", t["raw_write"]))
        print(row("db.set_config", t["set"], t["raw_write"]))
        print(row("raw sqlite3 SELECT by key", t["raw_read"]))
        print(row("db.get_config", t["get"], t["raw_read"]))


if __name__ == "__main__":
    main()
