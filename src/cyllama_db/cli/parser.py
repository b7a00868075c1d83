"""The ``cyllama-db`` argument parser (:func:`build_parser`) and :func:`main`, which runs one command.

Every command opens the database given by ``--db`` (else
``$CYLLAMA_DB_PATH``, else the per-user default), does one thing and exits
with 0 (success), 1 (an error: the message is one line on stderr) or 2 (a
usage mistake: unknown option, malformed value). Read commands take
``--json`` and then print JSON (datetimes as ISO-8601) instead of tables.
Each command group's handlers live in a module of their own (``cache.py``,
``models.py``, ...); ``docs/cli.md`` documents every command and option
defined here (a test checks that).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from ..errors import CommandError, CyllamaDBError, UsageError
from . import cache, config, dashboard, database, logs, metrics, models, stats
from .args import (
    PROG,
    duration,
    float_between,
    key_value,
    non_negative_int,
    port,
    positive_float,
    positive_int,
)
from .format import visible

__all__ = ["Handler", "build_parser", "main"]

#: A command's handler: the parsed arguments in, the exit code out.
Handler = Callable[[argparse.Namespace], int]

# Exceptions that mean "the request cannot be done as asked": reported as one
# line on stderr with exit code 1. Anything else is a bug and keeps its
# traceback (set CYLLAMA_DEBUG=1 to see tracebacks for these too).
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    LookupError,
    ArithmeticError,  # e.g. OverflowError: a number too big for SQLite or the clock
    OSError,
    sqlite3.Error,
    ImportError,
    RuntimeError,
)


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised (one line, exit 2) instead of printed with the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Let SIGTERM end a long-running command as Ctrl-C does: cleanly, exit code 0."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the parser ----------------------------------------------------------------------------


def _add_json(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --json given before the command (the global one) is kept.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of a table (also accepted before the command)")


def _command(
    subparsers: Any, name: str, handler: Handler, help_text: str, *, read: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text
    )
    parser.set_defaults(handler=handler)
    # Also accepted after the command (`cyllama-db info --db x.db`); SUPPRESS
    # keeps a --db given before the command when this one is absent.
    parser.add_argument("--db", metavar="PATH|URL", default=argparse.SUPPRESS,
                        help="database file or URL (same as the global --db)")
    # Every command prints something, so every command takes --json.
    _add_json(parser)
    return parser


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The ``cyllama-db`` argument parser (every command and option)."""
    from .. import __version__
    from ..stores.metrics import MAX_HISTORY_MINUTES, MAX_SAMPLER_INTERVAL, MIN_SAMPLER_INTERVAL
    from ..stores.registry import MODEL_STATUSES

    sampler_interval = float_between(MIN_SAMPLER_INTERVAL, MAX_SAMPLER_INTERVAL)
    parser = _Parser(
        prog=PROG,
        description="Inspect and maintain a cyllama-db database (cache, statistics, logs, "
        "models, metrics, config).",
        epilog="The database is --db PATH (or URL), else $CYLLAMA_DB_URL or $CYLLAMA_DB_PATH, "
        "else the per-user default.",
    )
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        help="database file, or a URL: postgresql://user:password@host:5432/db for a shared server, "
        "sqlite:///file.db (default: $CYLLAMA_DB_URL or $CYLLAMA_DB_PATH, else the per-user data dir)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of tables (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _command(sub, "info", database.cmd_info, "path, size, schema version and row counts per store",
             read=True)
    _command(sub, "vacuum", database.cmd_vacuum, "rebuild the file to reclaim free space")
    p = _command(sub, "migrate", database.cmd_migrate,
                 "apply pending schema migrations (--status: only show them)", read=True)
    p.add_argument("--status", action="store_true",
                   help="list migrations and whether each is applied, without changing the file")

    # config
    config_cmds = _group(sub, "config", "typed key/value configuration")
    p = _command(config_cmds, "get", config.cmd_config_get, "print one value", read=True)
    p.add_argument("key")
    p = _command(config_cmds, "set", config.cmd_config_set, "store a value")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--type", choices=("str", "int", "float", "bool", "json"), default="str",
                   help="how to read VALUE (default: str)")
    _command(config_cmds, "list", config.cmd_config_list, "every key with its type and value", read=True)
    p = _command(config_cmds, "unset", config.cmd_config_unset, "remove a key")
    p.add_argument("key")

    # export / import
    p = _command(sub, "export", database.cmd_export,
                 "write a consistent copy of the database (safe while others write)")
    p.add_argument("path", help="file to write ('-' = stdout, jsonl only)")
    p.add_argument("--format", choices=("sqlite", "jsonl"), default="sqlite",
                   help="sqlite: a complete database file (default); jsonl: one table, a JSON object per row")
    p.add_argument("--table", help="the table to write with --format jsonl")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.add_argument("--include-secrets", action="store_true",
                   help="keep secret model parameters (hf_token, api_key) instead of '***'")
    p = _command(sub, "import", database.cmd_import,
                 "merge another cyllama-db database file into this one", read=True)
    p.add_argument("path", help="database file written by `cyllama-db export`")
    p.add_argument("--on-conflict", choices=("keep", "replace", "newer"), default="keep",
                   help="when a keyed row differs: keep the current one (default), replace it, "
                   "or take the newer")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--timeout", type=duration, default=None, metavar="DURATION",
                       help="stop (writing nothing) if the import takes longer, e.g. 90s, 30m "
                       "(default 10m)")
    limit.add_argument("--no-timeout", action="store_true", help="no time limit")

    # cache
    cache_cmds = _group(sub, "cache", "the response cache")
    p = _command(cache_cmds, "list", cache.cmd_cache_list, "cache entries", read=True)
    p.add_argument("-n", type=positive_int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--sort", choices=("newest", "hits"), default="newest",
                   help="newest first (default) or most-hit first")
    p.add_argument("--model", metavar="PATH", help="only entries of this model")
    p.add_argument("--namespace", metavar="NAME", help="only entries of this namespace")
    p = _command(cache_cmds, "search", cache.cmd_cache_search,
                 "entries whose prompt or response matches TEXT (full-text), best first", read=True)
    p.add_argument("text", help='words (all must appear), "a phrase" in double quotes, prefix*')
    p.add_argument("-n", type=positive_int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--model", metavar="PATH", help="only entries of this model")
    p.add_argument("--namespace", metavar="NAME", help="only entries of this namespace")
    p.add_argument("--expired", action="store_true", help="include expired entries")
    p = _command(cache_cmds, "show", cache.cmd_cache_show, "one entry in full", read=True)
    p.add_argument("key", help="the cache key (a unique prefix is enough)")
    p = _command(cache_cmds, "invalidate", cache.cmd_cache_invalidate, "remove matching entries")
    p.add_argument("--model", metavar="PATH", help="entries of this model")
    p.add_argument("--prompt", help="entries for this exact prompt")
    p.add_argument("--older-than", type=duration, metavar="DURATION",
                   help="entries created longer ago than this (e.g. 7d, 12h), or before a date (2024-05-01)")
    p.add_argument("--namespace", metavar="NAME", help="entries of this namespace")
    p.add_argument("--all", action="store_true", help="every entry")
    _command(cache_cmds, "cleanup", cache.cmd_cache_cleanup,
             "remove expired entries, then least recently used ones over the size limit")
    _command(cache_cmds, "stats", cache.cmd_cache_stats, "entries, size and hit rate", read=True)

    # stats / history
    p = _command(sub, "stats", stats.cmd_stats, "generation statistics per model", read=True)
    p.add_argument("--model", metavar="PATH", help="only this model")
    p.add_argument("--since", type=duration, metavar="DURATION",
                   help="only the last DURATION (e.g. 7d, 24h), or from a date (2024-05-01)")
    p.add_argument("--until", type=duration, metavar="DURATION",
                   help="only up to DURATION ago, or before a date")
    p = _command(sub, "history", stats.cmd_history, "recorded generations, newest first", read=True)
    p.add_argument("-n", type=positive_int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--offset", type=non_negative_int, default=0, help="skip this many first")
    p.add_argument("--model", metavar="PATH", help="only this model")
    p.add_argument("--since", type=duration, metavar="DURATION",
                   help="only the last DURATION (e.g. 24h), or from a date (2024-05-01)")
    p.add_argument("--until", type=duration, metavar="DURATION",
                   help="only up to DURATION ago, or before a date")

    # logs
    p = _command(sub, "logs", logs.cmd_logs, "structured log entries, oldest of the last N first",
                 read=True)
    p.add_argument("-n", type=positive_int, default=50, metavar="N", help="how many (default 50)")
    p.add_argument("--level", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="this level and above")
    p.add_argument("--category", help="only this category (logger name)")
    p.add_argument("--since", type=duration, metavar="DURATION",
                   help="only the last DURATION (e.g. 1h), or from a date (2024-05-01)")
    p.add_argument("-q", "--search", metavar="TEXT",
                   help='only entries whose text matches TEXT (full-text: words, "a phrase", prefix*)')
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new entries until Ctrl-C (with --json: JSON lines)")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="how often --follow checks for new entries (default 1)")

    # models
    models_cmds = _group(sub, "models", "the model registry")
    p = _command(models_cmds, "list", models.cmd_models_list, "registered models", read=True)
    p.add_argument("--status", choices=MODEL_STATUSES,
                   help="only models with this status")
    p.add_argument("--type", help="only models of this type (e.g. llama)")
    p.add_argument("--show-secrets", action="store_true", help="print secrets instead of '***'")
    p = _command(models_cmds, "show", models.cmd_models_show, "every stored field of one model", read=True)
    p.add_argument("name")
    p.add_argument("--show-secrets", action="store_true", help="print secrets instead of '***'")
    p = _command(models_cmds, "add", models.cmd_models_add,
                 "register a GGUF file (reads its metadata, not its weights)")
    p.add_argument("path", help="the .gguf file")
    p.add_argument("--name", help="registry name (default: from the file)")
    p.add_argument("--type", help="model type (default: llama)")
    p.add_argument("--status", choices=MODEL_STATUSES,
                   help="initial status")
    p.add_argument("--param", type=key_value, action="append", metavar="KEY=VALUE",
                   help="a llama-server parameter, e.g. ctx_size=8192 (repeatable)")
    p = _command(models_cmds, "update", models.cmd_models_update, "change a model's parameters")
    p.add_argument("name")
    p.add_argument("--param", type=key_value, action="append", metavar="KEY=VALUE",
                   help="a parameter to set (repeatable; VALUE null unsets it)")
    p.add_argument("--status", choices=MODEL_STATUSES,
                   help="new status")
    p.add_argument("--type", help="new model type")
    p.add_argument("--rename", metavar="NEW_NAME", help="new registry name")
    p = _command(models_cmds, "rm", models.cmd_models_rm, "remove a model from the registry")
    p.add_argument("name")
    p = _command(models_cmds, "args", models.cmd_models_args,
                 "the model's llama-server command line (or Llama() keyword arguments)", read=True)
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--server", action="store_true",
                       help="llama-server argv (the default)")
    which.add_argument("--llama-kwargs", action="store_true",
                       help="keyword arguments for llama_cpp.Llama(...)")
    p.add_argument("--show-secrets", action="store_true", help="print secrets instead of '***'")

    # metrics
    metrics_cmds = _group(sub, "metrics", "CPU, memory, disk and GPU samples")
    p = _command(metrics_cmds, "sample", metrics.cmd_metrics_sample, "take one sample, save and print it",
                 read=True)
    p.add_argument("--no-save", action="store_true", help="print the sample without saving it")
    p = _command(metrics_cmds, "watch", metrics.cmd_metrics_watch,
                 "sample every --interval seconds in the foreground until Ctrl-C", read=True)
    p.add_argument("--interval", type=sampler_interval, default=1.0, metavar="SECONDS",
                   help=f"seconds between samples (default 1, at least {MIN_SAMPLER_INTERVAL:g})")
    p = _command(metrics_cmds, "history", metrics.cmd_metrics_history, "saved samples, oldest first",
                 read=True)
    p.add_argument("--minutes", type=float_between(0, MAX_HISTORY_MINUTES, exclusive_min=True),
                   default=10.0, help="how far back (default 10)")
    p.add_argument("--host", metavar="NAME",
                   help="only the samples this machine took (its host name); default: every machine's")

    # dashboard
    p = _command(sub, "dashboard", dashboard.cmd_dashboard,
                 "serve a local web page with charts of metrics, statistics, cache and models")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8765, help="port (default 8765; 0 = any free)")
    p.add_argument("--interval", type=sampler_interval, default=1.0, metavar="SECONDS",
                   help=f"metrics sampling interval (default 1, at least {MIN_SAMPLER_INTERVAL:g})")
    p.add_argument("--no-sampler", action="store_true",
                   help="do not sample metrics (another process does)")
    p.add_argument("--refresh", type=positive_float, default=5.0, metavar="SECONDS",
                   help="how often the page refreshes its data (default 5)")
    return parser


def _run(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        with _stop_on_sigterm():
            return _run(args)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc.message} (see: {exc.prog} --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CommandError as exc:
        print(f"{PROG}: error: {visible(str(exc))}", file=sys.stderr)
        return 1
    except _USER_ERRORS as exc:
        if os.environ.get("CYLLAMA_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {visible(message)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if isinstance(exc, CyllamaDBError) and not os.environ.get("CYLLAMA_DEBUG"):
            print(f"{PROG}: error: {visible(' '.join(str(exc).split()))}", file=sys.stderr)
            return 1
        raise
