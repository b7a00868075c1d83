"""``cyllama-db dashboard``: serve the local web page (:mod:`cyllama_db.dashboard`) until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import CommandError
from .args import PROG
from .format import json_text
from .session import open_db

__all__ = ["cmd_dashboard"]


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``cyllama-db dashboard`` (see docs/cli.md); returns the exit code."""
    from .. import dashboard

    with open_db(args, reads=True) as db:
        try:
            server = dashboard.make_server(db, args.host, args.port, refresh_seconds=args.refresh)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(f"port {args.port} is in use; try --port 0 (any free port)") from None
            raise
        sampler = None
        if db.settings.readonly and not args.no_sampler:
            print(f"{PROG}: warning: {db.path} is not writable: opened read-only, metrics are "
                  "not sampled", file=sys.stderr)
        elif not args.no_sampler and hasattr(db, "start_metrics_sampler"):
            try:
                sampler = db.start_metrics_sampler(interval=args.interval)
            except ImportError as exc:
                print(f"{PROG}: warning: metrics are not sampled: {exc}", file=sys.stderr)
        if not dashboard.is_loopback(args.host):
            print(f"{PROG}: warning: serving on {args.host}, reachable from other machines; "
                  "the dashboard has no authentication", file=sys.stderr)
        if args.json:
            print(json_text({"database": db.path, "url": server.url}), flush=True)
        else:
            print(f"dashboard for {db.path} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            if sampler is not None:
                sampler.stop()
    return 0


