"""``cyllama-db models list|show|add|update|rm|args``: the model registry."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .._time import _shown
from ..errors import CommandError, UsageError
from .args import PROG, typed_value
from .format import print_json, print_pairs, print_table, visible
from .session import open_db, require

__all__ = [
    "cmd_models_add",
    "cmd_models_args",
    "cmd_models_list",
    "cmd_models_rm",
    "cmd_models_show",
    "cmd_models_update",
]


def _param_value(name: str, text: str) -> Any:
    """A ``--param name=value`` value converted to the parameter's type."""
    from ..stores.params import PARAMS_BY_NAME

    param = PARAMS_BY_NAME.get(name)
    kind = None if param is None else param.type
    what = f"--param {name}"
    if text.lower() in ("null", "none") and kind not in (None, "str"):
        return None
    if kind in ("float", "bool", "json"):
        return typed_value(text, kind, what)
    if kind in ("int", "gpu_layers"):
        if kind == "gpu_layers" and text in ("all", "auto"):
            return text
        number = typed_value(text, "int", what)
        if not -(2**63) <= number < 2**63:  # what SQLite and llama.cpp can hold
            raise UsageError(f"{what}: {_shown(text)} is out of range (a 64-bit integer)")
        return number
    if kind == "str" or param is not None:
        return text
    # An unknown name: let the registry say so (with suggestions); keep JSON scalars typed.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params_from(pairs: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
    return {name: _param_value(name, value) for name, value in (pairs or [])}


def _redacted(model: Mapping[str, Any], show_secrets: bool) -> dict[str, Any]:
    from ..stores.params import redact

    return redact(dict(model), show_secrets=show_secrets)


def _find_model(db: Any, name: str) -> dict[str, Any]:
    model = require(db, "get_model_by_name", "model registry")(name)
    if model is None:
        raise CommandError(f"no model named {name!r} (see: {PROG} models list)")
    return dict(model)


def cmd_models_list(args: argparse.Namespace) -> int:
    """``cyllama-db models list`` (see docs/cli.md); returns the exit code."""
    filters = {}
    if args.status:
        filters["status"] = args.status
    if args.type:
        filters["type"] = args.type
    with open_db(args, reads=True) as db:
        models = [dict(m) for m in require(db, "get_models", "model registry")(**filters)]
    models = [_redacted(m, args.show_secrets) for m in models]
    if args.json:
        print_json(models)
        return 0
    if not models:
        print("no models registered")
        return 0
    print_table(
        [[m.get("id"), m.get("name"), m.get("type"), m.get("status"), m.get("quantization"),
          m.get("size_label"), m.get("last_used_at"), m.get("model_path")] for m in models],
        ["id", "name", "type", "status", "quant", "size", "last used", "path"],
    )
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    """``cyllama-db models show`` (see docs/cli.md); returns the exit code."""
    with open_db(args, reads=True) as db:
        model = _redacted(_find_model(db, args.name), args.show_secrets)
    if args.json:
        print_json(model)
        return 0
    # The full GGUF key/value set is long: --json shows it.
    print_pairs([
        (k, v.replace("\n", "\\n") if isinstance(v, str) else v)
        for k, v in model.items()
        if v is not None and k not in ("metadata", "gguf_metadata")
    ])
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    """``cyllama-db models add`` (see docs/cli.md); returns the exit code."""
    params = _params_from(args.param)
    if args.type:
        params["type"] = args.type
    if args.status:
        params["status"] = args.status
    with open_db(args) as db:
        result = require(db, "register_model", "model registry")(args.path, name=args.name, **params)
        # An id (or the record itself): print what was registered either way.
        found = db.get_model(result) if isinstance(result, int) else result
    record: dict[str, Any] = dict(found or {"name": args.name, "id": result})
    if args.json:
        print_json(_redacted(record, False))
        return 0
    print(visible(f"registered {record['name']!r} (id {record['id']}): "
                  f"{record.get('architecture') or '?'} {record.get('size_label') or ''} "
                  f"{record.get('quantization') or ''}".rstrip()))
    return 0


def cmd_models_update(args: argparse.Namespace) -> int:
    """``cyllama-db models update`` (see docs/cli.md); returns the exit code."""
    params = _params_from(args.param)
    if args.status:
        params["status"] = args.status
    if args.type:
        params["type"] = args.type
    if args.rename is not None:
        if not args.rename.strip():
            raise UsageError("--rename needs a non-empty NEW_NAME", f"{PROG} models update")
        params["name"] = args.rename
    if not params:
        raise UsageError("nothing to change: give --param KEY=VALUE, --status, --type or --rename",
                         f"{PROG} models update")
    with open_db(args) as db:
        _find_model(db, args.name)
        updated = require(db, "update_model", "model registry")(args.name, **params)
    if args.json:
        print_json(_redacted(dict(updated or {"name": args.name}), False))
        return 0
    print(f"updated {args.name!r}: {', '.join(sorted(params))}")
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    """``cyllama-db models rm`` (see docs/cli.md); returns the exit code."""
    with open_db(args) as db:
        _find_model(db, args.name)
        require(db, "delete_model", "model registry")(args.name)
    if args.json:
        print_json({"name": args.name, "removed": True})
        return 0
    print(f"removed {args.name!r}")
    return 0


def cmd_models_args(args: argparse.Namespace) -> int:
    """``cyllama-db models args`` (see docs/cli.md); returns the exit code."""
    import warnings

    with open_db(args, reads=True) as db:
        model = _find_model(db, args.name)
        if args.llama_kwargs:
            kwargs = require(db, "to_llama_kwargs", "model registry")(model)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                argv = require(db, "to_server_args", "model registry")(
                    model, redact_secrets=not args.show_secrets
                )
    if args.llama_kwargs:
        if not args.show_secrets:
            kwargs = _redacted(kwargs, False)
        if args.json:
            print_json(kwargs)
        else:
            for key, value in kwargs.items():
                print(visible(f"{key}={value!r}"))
        return 0
    if args.json:
        print_json(argv)
    else:
        print(visible(shlex.join(["llama-server", *argv])))
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return 0


