"""``cyllama-db info``, ``vacuum``, ``migrate``, ``export`` and ``import``: the database file as a whole."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import CommandError, DatabaseError, UsageError
from .args import PROG
from .format import (
    format_value,
    human_bytes,
    print_json,
    print_pairs,
    print_table,
    progress_for,
    visible,
)
from .session import open_db

__all__ = ["cmd_export", "cmd_import", "cmd_info", "cmd_migrate", "cmd_vacuum"]


# -- info / vacuum / migrate ---------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    """``cyllama-db info`` (see docs/cli.md); returns the exit code."""
    from ..db import migrations

    with open_db(args, reads=True) as db:
        stats = db.get_db_stats()
        size = db.get_database_size()
    file_bytes = stats["file_bytes"]
    counts = {
        k: v
        for k, v in stats.items()
        if k not in ("path", "file_size_mb", "file_bytes", "schema_version")
        and isinstance(v, int)
        and not isinstance(v, bool)
    }
    info = {
        "path": stats.get("path"),
        "file_bytes": file_bytes,
        "used_bytes": size,
        "schema_version": stats.get("schema_version"),
        "latest_schema_version": migrations.latest_version(),
        "counts": counts,
        **{k: v for k, v in stats.items()
           if k not in counts and k not in ("path", "schema_version", "file_size_mb")},
    }
    if args.json:
        print_json(info)
        return 0
    pairs: list[tuple[str, Any]] = [
        ("path", info["path"]),
        ("size", f"{human_bytes(file_bytes)} on disk, {human_bytes(size)} in use"),
        ("schema version", f"{info['schema_version']} (this cyllama-db: {info['latest_schema_version']})"),
    ]
    pairs += [(name.replace("_", " "), n) for name, n in sorted(counts.items())]
    print_pairs(pairs)
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    """``cyllama-db vacuum`` (see docs/cli.md); returns the exit code."""
    with open_db(args) as db:
        before = db.get_db_stats()["file_bytes"]
        db.vacuum()
        after = db.get_db_stats()["file_bytes"]
    if args.json:
        print_json({"path": db.path, "bytes_before": before, "bytes_after": after})
        return 0
    print(f"vacuumed {db.path}: {human_bytes(before)} -> {human_bytes(after)}")
    return 0


def _db_file(args: argparse.Namespace) -> tuple[str, float]:
    """The database path of ``--db`` (resolved as CyllamaDB would) and its busy timeout."""
    from ..db.settings import Settings

    settings = Settings.resolve(path=getattr(args, "db", None), enabled=True)
    return settings.path, settings.busy_timeout


def cmd_migrate(args: argparse.Namespace) -> int:
    """``cyllama-db migrate`` (see docs/cli.md); returns the exit code."""
    from ..db import facade as database
    from ..db import migrations

    del database  # imported for its side effect: every store registers its migrations

    path, busy_timeout = _db_file(args)
    try:
        applied = migrations.read_versions(path, busy_timeout)
    except DatabaseError as exc:
        raise CommandError(f"cannot read the schema version of {path}: {exc.sqlite_error}") from None
    if args.status:
        known = {m.version: m.name for m in migrations.registered_migrations()}
        rows = []
        for version in sorted(set(known) | set(applied)):
            if version in applied:
                state = "applied" if version in known else "unknown (newer cyllama-db)"
                name, at = applied[version]
                name = known.get(version, name)
            else:
                state, name, at = "pending", known[version], None
            rows.append({"version": version, "name": name, "status": state, "applied_at": at})
        result = {
            "path": path,
            "exists": path == ":memory:" or os.path.exists(path),
            "schema_version": max(applied, default=0),
            "latest_version": migrations.latest_version(),
            "migrations": rows,
        }
        if args.json:
            print_json(result)
            return 0
        print(f"{path}: schema version {result['schema_version']}, "
              f"this cyllama-db knows up to {result['latest_version']}")
        print_table([[r["version"], r["name"], r["status"], r["applied_at"]] for r in rows],
                    ["version", "name", "status", "applied_at"])
        return 0
    before = max(applied, default=0)
    with open_db(args) as db:
        after = db.schema_version()
    result = {"path": path, "from_version": before, "to_version": after,
              "applied": [v for v in range(before + 1, after + 1)]}
    if args.json:
        print_json(result)
    elif after == before:
        print(f"{path}: up to date (schema version {after})")
    else:
        print(f"{path}: migrated from schema version {before} to {after}")
    return 0


# -- export / import -----------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """``cyllama-db export`` (see docs/cli.md); returns the exit code."""
    if args.format == "jsonl" and not args.table:
        raise UsageError("--format jsonl needs --table TABLE (one table per file)", f"{PROG} export")
    if args.format == "sqlite" and args.table:
        raise UsageError("--table only applies to --format jsonl", f"{PROG} export")
    if args.path == "-" and args.format != "jsonl":
        raise UsageError("only --format jsonl can be written to stdout ('-')", f"{PROG} export")
    progress = progress_for("exporting")
    if args.path != "-" and not args.force and os.path.exists(args.path) and not os.path.isdir(args.path):
        raise CommandError(f"{args.path} already exists; choose another name or pass --force to overwrite it")
    with open_db(args, reads=True) as db:
        target: Any = sys.stdout if args.path == "-" else args.path
        try:
            result = db.export_database(
                target,
                format=args.format,
                table=args.table,
                overwrite=args.force,
                include_secrets=args.include_secrets,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.finish()
    if args.path == "-":
        return 0
    if args.json:
        print_json(result)
    elif result["format"] == "jsonl":
        print(f"exported {result['rows']} rows of {result['table']} to {result['path']}")
    else:
        note = f", {result['redacted_secrets']} secrets redacted" if result["redacted_secrets"] else ""
        print(f"exported {db.path} to {result['path']} "
              f"({human_bytes(result['bytes'])}, schema version {result['schema_version']}{note})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """``cyllama-db import`` (see docs/cli.md); returns the exit code."""
    progress = progress_for("importing")
    with open_db(args) as db:
        try:
            timeout: Any = {"timeout": None} if args.no_timeout else (
                {} if args.timeout is None else {"timeout": args.timeout.total_seconds()}
            )
            report = db.import_database(
                args.path, on_conflict=args.on_conflict, progress=progress, **timeout
            )
        finally:
            if progress is not None:
                progress.finish()
    if args.json:
        print_json(report)
        return 0
    print(f"imported {visible(report['source'])} (schema version {report['source_schema_version']}) "
          f"into {visible(db.path)}")
    rows = [
        [t, e["mode"] if e["key"] is None else "by " + ",".join(e["key"]), e["rows"], e["inserted"],
         e["unchanged"] + e["duplicates"], e["conflicts"], e["replaced"]]
        for t, e in report["tables"].items()
    ]
    print_table(rows, ["table", "merge", "rows", "added", "already there", "conflicts", "replaced"])
    if report["conflict_count"]:
        kept = report["on_conflict"] == "keep"
        print(f"\n{report['conflict_count']} conflicts (on-conflict={report['on_conflict']}):")
        for c in report["conflicts"][:20]:
            print(f"  {c['table']} {format_value(c['key'])}: {c['resolution']}")
        if report["conflict_count"] > 20:
            print(f"  ... and {report['conflict_count'] - 20} more (--json lists them)")
        if kept:
            print("the current rows were kept; use --on-conflict replace or newer to take imported ones")
    if report.get("skipped_row_count"):
        print(f"\n{report['skipped_row_count']} invalid rows skipped (never stored):")
        for table, entry in report["tables"].items():
            for reason, count in (entry.get("skipped_reasons") or {}).items():
                print(f"  {visible(table)}: {count} x {visible(reason)}")
    if report["skipped_tables"]:
        names = ", ".join(visible(t) for t in report["skipped_tables"])
        print(f"skipped tables this database does not have: {names}")
    if report.get("cache_evicted"):
        print(f"cache size limit: {report['cache_evicted']} entries evicted")
    return 0


