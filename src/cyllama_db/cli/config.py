"""``cyllama-db config get|set|list|unset``: the typed key/value configuration (``db.config``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import CommandError
from .args import PROG, typed_value
from .format import nonfinite_name, plain, print_json, print_table, visible
from .session import open_db

__all__ = ["cmd_config_get", "cmd_config_list", "cmd_config_set", "cmd_config_unset"]


def _value_type(key: str, value: Any) -> str:
    from ..stores.config import encode_value

    return encode_value(key, value)[1]


def _show_value(value: Any) -> str:
    """A config value as text that ``config set`` reads back with the same ``--type``.

    Non-finite floats print as Python spells them (``nan``, ``inf``, ``-inf``)
    at the top level and as ``NaN``/``Infinity`` inside JSON values: both are
    what ``--type float`` and ``--type json`` accept.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(plain(value, nonfinite=float), ensure_ascii=False, allow_nan=True)


def _config_json(value: Any) -> Any:
    # The config store keeps nan/inf (they round-trip); JSON has no such
    # numbers, and null would be indistinguishable from a stored None, so
    # they are written as the strings "NaN", "Infinity" and "-Infinity".
    return plain(value, nonfinite=nonfinite_name)


def cmd_config_get(args: argparse.Namespace) -> int:
    """``cyllama-db config get`` (see docs/cli.md); returns the exit code."""
    missing = object()
    with open_db(args, reads=True) as db:
        value = db.get_config(args.key, missing)
    if value is missing:
        raise CommandError(f"config key {args.key!r} is not set (see: {PROG} config list)")
    if args.json:
        print_json(
            {"key": args.key, "value": _config_json(value), "type": _value_type(args.key, value)}
        )
    else:
        print(visible(_show_value(value), lines=True))
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    """``cyllama-db config set`` (see docs/cli.md); returns the exit code."""
    value = typed_value(args.value, args.type, f"config set {args.key} --type {args.type}")
    with open_db(args) as db:
        db.set_config(args.key, value)
    if args.json:
        print_json({"key": args.key, "value": value, "type": args.type})
        return 0
    print(f"{visible(args.key)} = {visible(_show_value(value), lines=True)} ({args.type})")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    """``cyllama-db config list`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        items = db.get_all_config()
    if args.json:
        print_json([
            {"key": k, "value": _config_json(v), "type": _value_type(k, v)} for k, v in items.items()
        ])
        return 0
    if not items:
        print("no config entries")
        return 0
    print_table([[k, _value_type(k, v), _show_value(v)] for k, v in items.items()], ["key", "type", "value"])
    return 0


def cmd_config_unset(args: argparse.Namespace) -> int:
    """``cyllama-db config unset`` (see docs/cli.md); returns the exit code."""
    with open_db(args) as db:
        existed = db.delete_config(args.key)
    if not existed:
        raise CommandError(f"config key {args.key!r} is not set")
    if args.json:
        print_json({"key": args.key, "removed": True})
        return 0
    print(f"removed {args.key}")
    return 0


