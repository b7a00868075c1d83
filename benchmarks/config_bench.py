"""Config store round-trips next to the raw sqlite3 statements they wrap.

    python benchmarks/config_bench.py
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import header, row, timings_us

from cyllama_db import CyllamaDB

N = 5000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
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
        raw_w = timings_us(raw_write, N)
        ours_w = timings_us(lambda i: db.set_config(f"k{i}", i), N)
        raw_r = timings_us(raw_read, N)
        ours_r = timings_us(lambda i: db.get_config(f"k{i}"), N)
        print(header(f"config store, {N} keys, WAL file"))
        print(row("raw sqlite3 INSERT OR REPLACE (BEGIN IMMEDIATE)", raw_w))
        print(row("db.set_config", ours_w, raw_w))
        print(row("raw sqlite3 SELECT by key", raw_r))
        print(row("db.get_config", ours_r, raw_r))
        db.close()
        raw.close()


if __name__ == "__main__":
    main()
