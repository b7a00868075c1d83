"""``cyllama-db stats`` and ``history``: the generation statistics."""

from __future__ import annotations

import argparse

from .format import format_value, percent, print_json, print_table, short_path
from .session import open_db, require

__all__ = ["cmd_history", "cmd_stats"]


def cmd_stats(args: argparse.Namespace) -> int:
    """``cyllama-db stats`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        summary = require(db, "get_stats_summary", "statistics")(
            model_path=args.model, since=args.since, until=args.until
        )
    if args.json:
        print_json(summary)
        return 0
    print(f"generations: {summary['total_generations']}   tokens: {summary['total_tokens']}   "
          f"cache hit rate: {percent(summary.get('cache_hit_rate'))}   "
          f"avg tokens/s: {format_value(summary.get('avg_tokens_per_second'))}")
    by_model = summary.get("by_model") or {}
    if by_model:
        print()
        print_table(
            [[m.get("model_name") or short_path(path), m.get("generations"), m.get("tokens"),
              percent(m.get("cache_hit_rate")), m.get("avg_tokens_per_second"),
              m.get("p50_latency_ms"), m.get("p95_latency_ms")] for path, m in by_model.items()],
            ["model", "generations", "tokens", "hit rate", "tok/s", "p50 ms", "p95 ms"],
        )
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """``cyllama-db history`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        rows = require(db, "get_generation_history", "statistics")(
            limit=args.n, offset=args.offset, model_path=args.model, since=args.since, until=args.until
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no generations recorded")
        return 0
    print_table(
        [[r.get("created_at"), r.get("model_name") or short_path(r.get("model_path")),
          r.get("prompt_tokens"), r.get("generated_tokens"), r.get("total_time_ms"),
          r.get("tokens_per_second"), r.get("cache_hit"), r.get("finish_reason")] for r in rows],
        ["time", "model", "prompt tok", "gen tok", "total ms", "tok/s", "hit", "finish"],
    )
    return 0


