"""``cyllama-db metrics sample|watch|history``: CPU, memory, disk and GPU samples."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..errors import CommandError
from .args import PROG
from .format import StreamTable, format_value, json_text, plain, print_json, print_table
from .session import open_db, require

__all__ = ["cmd_metrics_history", "cmd_metrics_sample", "cmd_metrics_watch"]


_METRIC_COLUMNS = (
    ("cpu_usage", "cpu %"),
    ("memory_usage", "mem %"),
    ("disk_usage", "disk %"),
    ("gpu_usage", "gpu %"),
    ("gpu_temperature", "gpu °C"),
    ("gpu_memory_used", "gpu MB"),
    ("gpu_power_usage", "gpu W"),
    ("active_models", "models"),
    ("requests_per_minute", "req/min"),
)


def _metric_row(sample: Mapping[str, Any]) -> list[Any]:
    stamp = sample.get("timestamp")
    if isinstance(stamp, int | float):
        stamp = datetime.fromtimestamp(stamp / 1000).astimezone()
    return [stamp, *(sample.get(k) for k, _ in _METRIC_COLUMNS)]


def cmd_metrics_sample(args: argparse.Namespace) -> int:
    """``cyllama-db metrics sample`` (see docs/cli.md); returns the exit code."""
    from ..stores import metrics

    with open_db(args) as db:
        sample = metrics.sample_metrics(db)
        if not args.no_save:
            db.save_metrics(sample)
    if args.json:
        print_json(sample)
        return 0
    print_table([_metric_row(sample)], ["time", *(h for _, h in _METRIC_COLUMNS)])
    return 0


def cmd_metrics_watch(args: argparse.Namespace) -> int:
    """``cyllama-db metrics watch`` (see docs/cli.md); returns the exit code."""
    with open_db(args) as db:
        sampler = require(db, "start_metrics_sampler", "metrics")(interval=args.interval)
        table = StreamTable(
            ["time", *(h for _, h in _METRIC_COLUMNS)],
            # "YYYY-MM-DD HH:MM:SS", then room for e.g. "100.00" ("143771.00" GPU MB)
            [19, *(9 if key == "gpu_memory_used" else 7 for key, _ in _METRIC_COLUMNS)],
            [False, *(True for _ in _METRIC_COLUMNS)],
        )
        if not args.json:
            table.header()
        try:
            while True:
                count = sampler.samples_taken + 1
                if not sampler.wait_for_samples(count, timeout=max(args.interval * 5, 5.0)):
                    if not sampler.running:
                        raise CommandError(f"the metrics sampler stopped: {sampler.last_error}")
                    continue
                history = db.get_metrics_history(minutes=max(args.interval * 3 / 60, 0.1))
                if not history:
                    continue
                latest = history[-1]
                if args.json:
                    print(json_text(plain(latest)), flush=True)
                else:
                    table.row(_metric_row(latest))
        except KeyboardInterrupt:
            return 0
        finally:
            sampler.stop()


def cmd_metrics_history(args: argparse.Namespace) -> int:
    """``cyllama-db metrics history`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        host = getattr(args, "host", None)
        rows = require(db, "get_metrics_history", "metrics")(minutes=args.minutes, host=host)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no samples in the last {format_value(args.minutes)} minutes"
              + (f" from host {host!r}" if host else "")
              + f" (start one: {PROG} metrics watch, or {PROG} dashboard)")
        return 0
    headers = ["time", *(h for _, h in _METRIC_COLUMNS)]
    table = [_metric_row(r) for r in rows]
    if len({r.get("host") for r in rows}) > 1:  # several machines' samples: say whose each is
        headers.append("host")
        table = [[*line, r.get("host")] for line, r in zip(table, rows, strict=True)]
    print_table(table, headers, decimals=2)
    return 0


