"""``cyllama-db cache list|search|show|invalidate|cleanup|stats``: the response cache."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import CommandError, UsageError
from ..stores.search import fts_query
from .args import PROG
from .format import human_bytes, percent, preview, print_json, print_pairs, print_table, short_path
from .session import open_db, require

__all__ = [
    "cmd_cache_cleanup",
    "cmd_cache_invalidate",
    "cmd_cache_list",
    "cmd_cache_search",
    "cmd_cache_show",
    "cmd_cache_stats",
]


def cmd_cache_list(args: argparse.Namespace) -> int:
    """``cyllama-db cache list`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        entries = [
            dict(e)
            for e in db.list_cache_entries(
                limit=args.n, order=args.sort, model_path=args.model, namespace=args.namespace
            )
        ]
    if args.json:
        print_json(entries)
        return 0
    if not entries:
        print("no cache entries")
        return 0
    print_table(
        [[str(e.get("cache_key", ""))[:16], e.get("model_name") or short_path(e.get("model_path")),
          e.get("namespace") or "-", e.get("hit_count"), e.get("size_bytes"), e.get("created_at"),
          e.get("expires_at"), preview(e.get("prompt"))] for e in entries],
        ["key", "model", "namespace", "hits", "bytes", "created", "expires", "prompt"],
    )
    return 0


def cmd_cache_search(args: argparse.Namespace) -> int:
    """``cyllama-db cache search`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        try:
            fts_query(args.text, "TEXT")
        except ValueError as exc:
            raise UsageError(str(exc), f"{PROG} cache search") from None
        entries = require(db, "search_cache", "cache")(
            args.text, limit=args.n, model_path=args.model, namespace=args.namespace,
            include_expired=args.expired,
        )
    if args.json:
        print_json(entries)
        return 0
    if not entries:
        print(f"no cache entries match {args.text!r}")
        return 0
    print_table(
        [[str(e.get("cache_key", ""))[:16], e.get("model_name") or short_path(e.get("model_path")),
          e.get("namespace") or "-", e.get("hit_count"), e.get("created_at"),
          preview(e.get("snippet"), 72)] for e in entries],
        ["key", "model", "namespace", "hits", "created", "match"],
    )
    return 0


def cmd_cache_show(args: argparse.Namespace) -> int:
    """``cyllama-db cache show`` (see docs/cli.md); returns the exit code."""
    prefix = args.key.strip().lower()
    if not prefix:
        raise UsageError("KEY must not be empty", f"{PROG} cache show")
    with open_db(args, reads=True) as db:
        rows = db.cache.find(prefix, limit=2)
    if not rows:
        raise CommandError(f"no cache entry with key {args.key!r} (see: {PROG} cache list)")
    if len(rows) > 1:
        raise CommandError(f"key prefix {args.key!r} matches several entries; give more of the key")
    entry = rows[0]
    if args.json:
        print_json(entry)
    else:
        print_pairs([(k, v.replace("\n", "\\n") if isinstance(v, str) else v) for k, v in entry.items()])
    return 0


def cmd_cache_invalidate(args: argparse.Namespace) -> int:
    """``cyllama-db cache invalidate`` (see docs/cli.md); returns the exit code."""
    criteria = args.model or args.prompt is not None or args.older_than is not None or args.namespace
    if not (args.all or criteria):
        raise UsageError(
            "give --model, --prompt, --older-than, --namespace or --all (to empty the whole cache)",
            f"{PROG} cache invalidate",
        )
    if args.all and criteria:
        raise UsageError("--all cannot be combined with other criteria", f"{PROG} cache invalidate")
    with open_db(args) as db:
        fn = require(db, "invalidate_cache", "cache")
        removed = fn(
            prompt=args.prompt, model_path=args.model, older_than=args.older_than, namespace=args.namespace
        )
    if args.json:
        print_json({"removed": removed})
        return 0
    print(f"removed {removed} cache entries")
    return 0


def cmd_cache_cleanup(args: argparse.Namespace) -> int:
    """``cyllama-db cache cleanup`` (see docs/cli.md); returns the exit code."""
    with open_db(args) as db:
        removed = require(db, "cleanup_cache", "cache")()
    if args.json:
        print_json({"removed": removed})
        return 0
    print(f"removed {removed} expired or over-limit cache entries")
    return 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    """``cyllama-db cache stats`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        stats = dict(require(db, "get_cache_stats", "cache")())
        summary = db.get_stats_summary() if hasattr(db, "get_stats_summary") else {}
    # Hits over lookups is only known for recorded generations: take it from the statistics.
    stats["hit_rate"] = summary.get("cache_hit_rate") if summary.get("total_generations") else None
    if args.json:
        print_json(stats)
        return 0
    limit = stats.get("max_size_mb")
    used = stats.get("size_bytes")
    pairs: list[tuple[str, Any]] = [
        ("entries", stats.get("entries")),
        ("size", f"{human_bytes(used)}"
                 + (f" of {human_bytes(limit * 1_048_576)} ({100 * used / (limit * 1_048_576):.1f}%)"
                    if limit and used is not None else "")),
        ("hits served", stats.get("hits")),
        ("hit rate", percent(stats["hit_rate"]) + " of recorded generations"
         if stats["hit_rate"] is not None else "- (no generations recorded)"),
        ("expired", stats.get("expired")),
        ("oldest", stats.get("oldest")),
    ]
    for kind, n in (stats.get("by_kind") or {}).items():
        pairs.append((f"{kind} entries", n))
    ttl = stats.get("default_ttl_seconds")
    pairs.append(("default ttl", "never expires" if ttl is None else f"{ttl / 3600:g} h"))
    print_pairs(pairs)
    return 0


