"""Build the frozen schema sample databases of ``tests/data/`` (one per schema version).

Usage (from the repository root)::

    python tests/data/make_schema_samples.py          # write the samples that are missing
    python tests/data/make_schema_samples.py --force 7  # rebuild one that never shipped

``schema_v{N}.db`` is what cyllama-db at schema version N left on disk: it is
made by the real migration runner (:func:`cyllama_db.db.migrations.migrate`) with
the registry narrowed to migrations 1..N, and then filled through raw SQL
written against that version's columns (not through the store APIs, which
are free to change). ``schema_samples.json`` lists, per version, the rows
and the values a user must read back through the public API once a current
cyllama-db has opened (and migrated) the file; ``tests/test_reliability_schema.py``
checks them on a copy of each file.

The samples are fixtures of released formats: once a version has shipped its
file must never be rebuilt, since a rebuild would be made by newer code and
prove nothing about old files. So this script only writes the files that are
missing (plus their manifest entries) and keeps every existing one byte for
byte; ``--force N`` is for a version still under development.

When a migration is added: register it, then run this script. It writes
``schema_v{N}.db`` for the new version, with rows for every table the
builders below know. Give a new table a builder (and add it to
``BUILDERS`` under the version that creates it). A migration that changes the
columns of an existing table needs a new builder for the new shape, used from
that version on; never edit a builder that made a released sample.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

# After the path set-up; importing the package registers every store's migrations.
import cyllama_db  # noqa: E402
from cyllama_db import (  # noqa: E402
    GenerationConfig,
    cached,
    generate_cache_key,
    model_identity,
)
from cyllama_db.db import facade as _facade  # noqa: E402, F401  (loads every store's migrations)
from cyllama_db.db import migrations  # noqa: E402

MANIFEST = HERE / "schema_samples.json"
MAX_BYTES = 100_000

#: When the sample rows were "written" (Unix seconds, deliberately not round).
T = 1717171717.123456
T_MS = int(T * 1000)
#: A model file that does not exist anywhere: its cache identity is its basename,
#: so the cache keys below do not depend on any file.
MODEL = "/nonexistent/cyllama-schema-samples/tiny-Q4_K_M.gguf"
OTHER_MODEL = "/nonexistent/cyllama-schema-samples/other model (copy) ü.gguf"
#: Expiry of live cache entries: 2100-01-01, far beyond any test run.
FAR_FUTURE = 4102444800.5

LONG_TEXT = "".join(
    f"line {i}: naïve café, 日本語, emoji 🦙, quotes \"'`, tab\t, backslash \\ ;\n" for i in range(36)
)
STACK = (
    "Traceback (most recent call last):\n"
    '  File "app.py", line 3, in <module>\n'
    "    run()\n"
    "ValueError: bad value: 'ü'\n"
)

Rows = list[dict[str, Any]]
Builder = Callable[[sqlite3.Connection, int], dict[str, Rows]]


# -- v1: config and metadata -----------------------------------------------------------------


def _config_text(value: Any, value_type: str) -> str:
    # The v1 encoding, spelled out here on purpose (not config.encode_value).
    if value_type == "bool":
        return "true" if value else "false"
    if value_type == "int":
        return str(value)
    if value_type == "float":
        return repr(value)
    if value_type == "json":
        return json.dumps(value)
    return str(value)


def build_config_and_metadata(conn: sqlite3.Connection, version: int) -> dict[str, Rows]:
    config: Rows = [
        {"key": "sample.version", "value": version, "type": "int"},
        {"key": "sample.name", "value": "llama-ü-模型 🦙", "type": "str"},
        {"key": "sample.empty", "value": "", "type": "str"},
        {"key": "sample.long", "value": LONG_TEXT, "type": "str"},
        {"key": "sample.count", "value": 42, "type": "int"},
        {"key": "sample.negative", "value": -7, "type": "int"},
        {"key": "sample.big", "value": 2**62 + 1, "type": "int"},
        {"key": "sample.ratio", "value": 0.1 + 0.2, "type": "float"},
        {"key": "sample.tiny", "value": 5e-324, "type": "float"},
        {"key": "sample.flag_on", "value": True, "type": "bool"},
        {"key": "sample.flag_off", "value": False, "type": "bool"},
        {
            "key": "sample.settings",
            "value": {"nested": {"list": [1, 2.5, "三", None, True]}, "empty": {}, "quote": "\"'\\"},
            "type": "json",
        },
        {"key": "sample.list", "value": [], "type": "json"},
        {"key": "sample.none", "value": None, "type": "json"},
        {"key": "ключ with spaces & 'quotes'", "value": "значение", "type": "str"},
    ]
    for i, row in enumerate(config):
        conn.execute(
            "INSERT INTO config (key, value, value_type, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (row["key"], _config_text(row["value"], row["type"]), row["type"], T + i, T + i + 0.5),
        )
    metadata: Rows = [
        {"key": "theme", "value": "dark"},
        {"key": "ünïcode-ключ", "value": "värde 🌍"},
        {"key": "long", "value": LONG_TEXT[:1000]},
        {"key": "number_as_text", "value": "3.14"},
    ]
    reserved: Rows = [
        # What the library itself had written on the first open at that version.
        {"key": "db_version", "value": str(version)},
        {"key": "server_start_time", "value": str(T_MS)},
    ]
    for row in metadata + reserved:
        conn.execute(
            "INSERT INTO metadata (key, value, updated_at) VALUES (?, ?, ?)",
            (row["key"], row["value"], T_MS),
        )
    return {"config": config, "metadata": metadata, "reserved_metadata": reserved}


# -- v2: response cache ----------------------------------------------------------------------


def _lookup(word: str) -> Any:  # pragma: no cover - only its cache key is used
    raise AssertionError("never called")


def build_cache(conn: sqlite3.Connection, version: int) -> dict[str, Rows]:
    completion_config = {"temperature": 0.0, "max_tokens": 64, "stop_sequences": ["\n\n", "###"]}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Wie geht's? 你好 🦙"},
    ]
    entries: Rows = [
        {
            "kind": "completion",
            "prompt": "Translate to French: ‘naïve café’ 🦙\n\ttabs and \"quotes\"",
            "model_path": MODEL,
            "config": completion_config,
            "response_text": "« café naïf » 🦙",
            "finish_reason": "stop",
            "prompt_tokens": 12,
            "tokens_generated": 9,
            "expires_at": None,
            "hit_count": 3,
            "live": True,
        },
        {
            "kind": "chat",
            "prompt": messages,
            "model_path": MODEL,
            "config": None,
            "response_text": "Gut, danke! 很好。",
            "finish_reason": "length",
            "prompt_tokens": 30,
            "tokens_generated": 8,
            "expires_at": FAR_FUTURE,
            "hit_count": 0,
            "live": True,
        },
        {
            "kind": "completion",
            "prompt": "Summarise:\n" + LONG_TEXT[:2000],
            "model_path": OTHER_MODEL,
            "config": {"temperature": 0.7, "seed": 1234},
            "response_text": "A long text. " * 20,
            "finish_reason": "stop",
            "prompt_tokens": 900,
            "tokens_generated": 60,
            "expires_at": FAR_FUTURE,
            "hit_count": 0,
            "live": True,
        },
        {
            # Expired long ago: reads as a miss and counts as expired.
            "kind": "completion",
            "prompt": "expired prompt",
            "model_path": MODEL,
            "config": None,
            "response_text": "stale",
            "finish_reason": "stop",
            "prompt_tokens": 2,
            "tokens_generated": 1,
            "expires_at": T + 10,
            "hit_count": 0,
            "live": False,
        },
        {
            # An @cached(name="sample.lookup") function result.
            "kind": "function",
            "prompt": {"function": "sample.lookup", "args": {"word": "naïve"}},
            "model_path": "sample.lookup",
            "config": None,
            "response_text": json.dumps({"result": [1, 2.5, "ü"], "ok": True}, ensure_ascii=False),
            "value": {"result": [1, 2.5, "ü"], "ok": True},
            "finish_reason": None,
            "prompt_tokens": None,
            "tokens_generated": None,
            "expires_at": None,
            "hit_count": 1,
            "live": True,
        },
    ]
    for i, entry in enumerate(entries):
        created = T + i
        if entry["kind"] == "function":
            fn = cached(name=entry["prompt"]["function"], db=False)(_lookup)
            key = fn.cache_key(**entry["prompt"]["args"])
            prompt_text = json.dumps(entry["prompt"]["args"], sort_keys=True, separators=(",", ":"))
            identity = "fn:" + entry["model_path"]
            config_json = "{}"
            stored_path = entry["model_path"]
            response_json = None
        else:
            key = generate_cache_key(entry["prompt"], entry["model_path"], entry["config"])
            prompt_text = (
                entry["prompt"]
                if isinstance(entry["prompt"], str)
                else json.dumps(entry["prompt"], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            )
            identity = model_identity(entry["model_path"])
            config_json = GenerationConfig.coerce(entry["config"]).to_json()
            stored_path = os.path.abspath(entry["model_path"])
            response_json = json.dumps(
                {
                    "finish_reason": entry["finish_reason"],
                    "model_path": stored_path,
                    "stats": {
                        "prompt_tokens": entry["prompt_tokens"],
                        "generated_tokens": entry["tokens_generated"],
                        "total_tokens": entry["prompt_tokens"] + entry["tokens_generated"],
                        "prompt_time_ms": 10.25,
                        "generation_time_ms": 72.5,
                        "total_time_ms": 82.75,
                        "tokens_per_second": 124.1379,
                    },
                }
            )
        entry["cache_key"] = key
        prompt_bytes = prompt_text.encode("utf-8")
        size = len(prompt_bytes) + len(entry["response_text"].encode("utf-8")) + 160
        hits = entry["hit_count"]
        conn.execute(
            "INSERT INTO cache (cache_key, kind, prompt, prompt_hash, model_path, model_name,"
            " model_identity, config_json, response_text, response_json, finish_reason,"
            " prompt_tokens, tokens_generated, tokens_per_second, generation_time_ms, size_bytes,"
            " created_at, expires_at, hit_count, last_hit_at, last_used_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                entry["kind"],
                prompt_text,
                hashlib.sha256(prompt_bytes).hexdigest(),
                stored_path,
                os.path.basename(stored_path),
                identity,
                config_json,
                entry["response_text"],
                response_json,
                entry["finish_reason"],
                entry["prompt_tokens"],
                entry["tokens_generated"],
                None if entry["kind"] == "function" else 124.1379,
                None if entry["kind"] == "function" else 72.5,
                size,
                created,
                entry["expires_at"],
                hits,
                created + 100 if hits else None,
                created + 100 if hits else created,
            ),
        )
    return {"cache": entries}


# -- v3: generation statistics ---------------------------------------------------------------


def build_stats(conn: sqlite3.Connection, version: int) -> dict[str, Rows]:
    columns = (
        "session_id", "model_path", "model_name", "prompt_tokens", "generated_tokens",
        "total_tokens", "prompt_time_ms", "generation_time_ms", "total_time_ms",
        "tokens_per_second", "temperature", "max_tokens", "finish_reason", "cache_hit",
        "created_at",
    )
    values = [
        ("sample-session-ü", MODEL, "Tiny Llama ü", 12, 9, 21, 15.5, 72.9, 88.4, 123.456,
         0.0, 64, "stop", 0, T),
        ("sample-session-ü", MODEL, "Tiny Llama ü", 12, 9, 21, 0.0, 0.0, 0.125, None,
         0.0, 64, "stop", 1, T + 1.5),
        ("другая сессия", OTHER_MODEL, None, None, None, None, None, None, None, None,
         1.5, None, None, 0, T + 2.25),
    ]
    rows: Rows = []
    for value in values:
        cursor = conn.execute(
            f"INSERT INTO stats ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            value,
        )
        row = dict(zip(columns, value, strict=True))
        row["id"] = cursor.lastrowid
        row["cache_hit"] = bool(row["cache_hit"])
        rows.append(row)
    return {"stats": rows}


# -- v4: structured logs ---------------------------------------------------------------------


def build_logs(conn: sqlite3.Connection, version: int) -> dict[str, Rows]:
    values: Rows = [
        {
            "level": "INFO",
            "category": "sample",
            "message": "started ✓ — ünïcode 🦙",
            "context": {"k": [1, "二"], "nested": {"x": None, "f": 0.5}},
            "model_path": MODEL,
            "prompt_preview": "Translate to French: ‘naïve café’",
            "error_type": None,
            "error_message": None,
            "stack_trace": None,
            "created_at": T,
        },
        {
            "level": "ERROR",
            "category": "sample.errors",
            "message": "boom",
            "context": None,
            "model_path": None,
            "prompt_preview": None,
            "error_type": "ValueError",
            "error_message": "bad value: 'ü'",
            "stack_trace": STACK,
            "created_at": T + 1.5,
        },
        {
            "level": "DEBUG",
            "category": "sample",
            "message": LONG_TEXT[:2000],
            "context": {},
            "model_path": None,
            "prompt_preview": None,
            "error_type": None,
            "error_message": None,
            "stack_trace": None,
            "created_at": T + 2.25,
        },
        {
            "level": "CRITICAL",
            "category": None,
            "message": "no category",
            "context": {"list": [], "text": "a\nb"},
            "model_path": None,
            "prompt_preview": None,
            "error_type": None,
            "error_message": None,
            "stack_trace": None,
            "created_at": T + 3,
        },
    ]
    for row in values:
        cursor = conn.execute(
            "INSERT INTO logs (level, category, message, context_json, model_path, prompt_preview,"
            " error_type, error_message, stack_trace, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row["level"],
                row["category"],
                row["message"],
                None if row["context"] is None else json.dumps(row["context"], ensure_ascii=False),
                row["model_path"],
                row["prompt_preview"],
                row["error_type"],
                row["error_message"],
                row["stack_trace"],
                row["created_at"],
            ),
        )
        row["id"] = cursor.lastrowid
    return {"logs": values}


# -- v5: model registry ----------------------------------------------------------------------


def build_models(conn: sqlite3.Connection, version: int) -> dict[str, Rows]:
    # (column, stored value, value read back); parameters as the v5 columns stored them.
    full = [
        ("name", "tiny-ü 🦙", "tiny-ü 🦙"),
        ("type", "llama", "llama"),
        ("status", "running", "running"),
        ("created_at", T, T),
        ("updated_at", T + 1.5, T + 1.5),
        ("filename", "tiny-Q4_K_M.gguf", "tiny-Q4_K_M.gguf"),
        ("size_bytes", 123456789, 123456789),
        ("file_mtime_ns", 1717171717123456789, None),
        ("format", "gguf", "gguf"),
        ("architecture", "llama", "llama"),
        ("size_label", "270M", "270M"),
        ("parameter_count", 268098176, 268098176),
        ("quantization", "Q4_K_M", "Q4_K_M"),
        ("context_length", 32768, 32768),
        ("vocab_size", 262144, 262144),
        ("gguf_chat_template", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
         "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"),
        ("metadata_json", json.dumps({"general.name": "Tiny ü", "llama.block_count": 2}),
         {"general.name": "Tiny ü", "llama.block_count": 2}),
        ("fingerprint", "0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
        ("first_seen_at", T, T),
        ("last_used_at", T + 2.25, T + 2.25),
        ("model_path", MODEL, MODEL),
        ("ctx_size", 8192, 8192),
        ("temperature", 0.7, 0.7),
        ("flash_attn", "on", "on"),
        ("mmap", 0, False),
        ("cont_batching", 1, True),
        ("gpu_layers", "99", 99),
        ("api_key", "sk-sample-secret-ü", "sk-sample-secret-ü"),
        ("control_vector_layer_range", "[1,4]", [1, 4]),
        ("custom_params", '{"--spec-type":"ngram","--flag":true}', {"--spec-type": "ngram", "--flag": True}),
        ("chat_template", "chatml", "chatml"),
    ]
    minimal = [
        ("name", "minimal", "minimal"),
        ("type", "embedding", "embedding"),
        ("status", "stopped", "stopped"),
        ("created_at", T + 3, T + 3),
        ("updated_at", T + 3, T + 3),
    ]
    rows: Rows = []
    for spec in (full, minimal):
        names = [c for c, _, _ in spec]
        quoted = ", ".join('"' + c + '"' for c in names)
        cursor = conn.execute(
            f"INSERT INTO models ({quoted})"
            f" VALUES ({', '.join('?' * len(names))})",
            [stored for _, stored, _ in spec],
        )
        row: dict[str, Any] = {"id": cursor.lastrowid}
        for column, _stored, shown in spec:
            if column == "file_mtime_ns":
                continue
            row["gguf_metadata" if column == "metadata_json" else column] = shown
        rows.append(row)
    return {"models": rows}


# -- v6: metrics history ---------------------------------------------------------------------


def build_metrics(conn: sqlite3.Connection, version: int) -> dict[str, Rows]:
    gpus = [{"index": 0, "name": "NVIDIA ü", "gpu_usage": 12.5, "gpu_memory_used": 1024.0}]
    values: Rows = [
        {
            "timestamp_ms": T_MS,
            "cpu_usage": 12.5, "memory_usage": 43.21, "disk_usage": 77.0,
            "gpu_usage": 12.5, "gpu_temperature": 61.0, "gpu_memory_used": 1024.0,
            "gpu_memory_total": 81559.0, "gpu_power_usage": 70.125,
            "active_models": 1, "uptime": 3600, "requests_per_minute": 2.5,
            "gpus": gpus, "created_at_ms": T_MS,
        },
        {
            "timestamp_ms": T_MS + 1000,
            "cpu_usage": 0.0, "memory_usage": 43.25, "disk_usage": 77.0,
            "gpu_usage": None, "gpu_temperature": None, "gpu_memory_used": None,
            "gpu_memory_total": None, "gpu_power_usage": None,
            "active_models": 0, "uptime": 3601, "requests_per_minute": 0.0,
            "gpus": [], "created_at_ms": T_MS + 1000,
        },
    ]
    fields = (
        "cpu_usage", "memory_usage", "disk_usage", "gpu_usage", "gpu_temperature",
        "gpu_memory_used", "gpu_memory_total", "gpu_power_usage", "active_models", "uptime",
        "requests_per_minute",
    )
    for row in values:
        cursor = conn.execute(
            f"INSERT INTO metrics_history (timestamp, {', '.join(fields)}, gpus_json, created_at)"
            f" VALUES ({', '.join('?' * (len(fields) + 3))})",
            (
                row["timestamp_ms"],
                *(row[f] for f in fields),
                json.dumps(row["gpus"], ensure_ascii=False) if row["gpus"] else None,
                row["created_at_ms"],
            ),
        )
        row["id"] = cursor.lastrowid
    return {"metrics_history": values}


#: The rows of each table, under the schema version that created the table.
BUILDERS: dict[int, Builder] = {
    1: build_config_and_metadata,
    2: build_cache,
    3: build_stats,
    4: build_logs,
    5: build_models,
    6: build_metrics,
    # v7 adds the cache's namespace column (default ''): the v2 builder's rows
    # are in the default namespace, which is what a file from before v7 holds.
    7: lambda conn, version: {},
    # v8 adds stats_totals (filled by a trigger from the v3 builder's rows),
    # new stats_rollup columns (same), cache_totals.evictions (0) and three
    # nullable metrics_history columns for the sampled process (NULL in the
    # v6 builder's rows, as in every file from before v8).
    8: lambda conn, version: {},
    # v9 adds the full-text search indexes (filled from the logs and cache rows
    # by the migration itself), v10 the readable views: no table of their own to fill.
    9: lambda conn, version: {},
    10: lambda conn, version: {},
    # v11 adds metrics_history.host (NULL in the v6 builder's rows, as in every
    # file from before v11) and shows it in the metrics view.
    11: lambda conn, version: {},
}


# -- building --------------------------------------------------------------------------------


@contextlib.contextmanager
def migrations_up_to(version: int) -> Iterator[None]:
    """Narrow the migration registry to versions 1..``version`` (restored afterwards)."""
    registry = migrations._MIGRATIONS
    saved = dict(registry)
    registry.clear()
    registry.update({v: m for v, m in saved.items() if v <= version})
    try:
        yield
    finally:
        registry.clear()
        registry.update(saved)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(version: int, target: Path) -> dict[str, Any]:
    """Write ``target`` at schema ``version``; return its manifest entry."""
    missing = [v for v in range(1, version + 1) if v not in BUILDERS]
    if missing:
        raise SystemExit(
            f"no row builder for schema version(s) {missing}: add one to BUILDERS in {__file__} "
            "(a builder may return {} for a migration that adds no table)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / target.name
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            # Small pages keep the committed files small (the library never
            # changes a file's page size, so this is also an unusual layout to survive).
            conn.execute("PRAGMA page_size = 1024")
            conn.execute("PRAGMA journal_mode = DELETE")
            with migrations_up_to(version):
                applied = migrations.migrate(conn, str(path))
            if applied != list(range(1, version + 1)):
                raise SystemExit(f"expected migrations 1..{version} to be applied, got {applied}")
            rows: dict[str, Rows] = {}
            conn.execute("BEGIN IMMEDIATE")
            for v in range(1, version + 1):
                rows.update(BUILDERS[v](conn, version))
            conn.execute("COMMIT")
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            conn.execute("VACUUM")
            if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise SystemExit(f"{target.name}: integrity_check failed")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "delete":
                raise SystemExit(f"{target.name}: journal mode is not DELETE")
        finally:
            conn.close()
        leftovers = [p.name for p in Path(tmp).iterdir() if p.name != target.name]
        if leftovers:
            raise SystemExit(f"{target.name}: unexpected side files {leftovers}")
        size = path.stat().st_size
        if size >= MAX_BYTES:
            raise SystemExit(f"{target.name} is {size} bytes; keep samples under {MAX_BYTES}")
        os.replace(path, target)
    return {
        "file": target.name,
        "schema_version": version,
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "made_with": f"cyllama-db {getattr(cyllama_db, '__version__', '?')}, SQLite {sqlite3.sqlite_version}",
        "tables": tables,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--force",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="rebuild schema_vN.db even though it exists (only for a version that never shipped)",
    )
    args = parser.parse_args(argv)
    latest = migrations.latest_version()
    manifest: dict[str, Any] = {"samples": {}}
    if MANIFEST.exists():
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    manifest["about"] = (
        "Frozen sample databases, one per schema version, made by tests/data/make_schema_samples.py; "
        "'rows' are the values the public API must read back after opening a copy. "
        "Never rebuild a released version's file."
    )
    samples = manifest.setdefault("samples", {})
    for version in range(1, latest + 1):
        target = HERE / f"schema_v{version}.db"
        entry = samples.get(str(version))
        if target.exists() and version not in args.force:
            if entry is None:
                raise SystemExit(f"{target.name} exists but has no entry in {MANIFEST.name}")
            if entry["sha256"] != sha256(target):
                raise SystemExit(f"{target.name} no longer matches its sha256 in {MANIFEST.name}")
            print(f"kept   {target.name} (frozen)")
            continue
        samples[str(version)] = build(version, target)
        print(f"wrote  {target.name} ({target.stat().st_size} bytes)")
    manifest = {
        "about": manifest["about"],
        "clock": T,
        "samples": {k: samples[k] for k in sorted(samples, key=int)},
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
