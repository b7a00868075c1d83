"""Every public name has a docstring: the API reference is part of the feature."""

from __future__ import annotations

import inspect

import cyllama_db


def _undocumented() -> list[str]:
    missing = []
    for name in cyllama_db.__all__:
        obj = getattr(cyllama_db, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = member.fget if isinstance(member, property) else member
                if (callable(func) or isinstance(member, property)) and not getattr(func, "__doc__", None):
                    missing.append(f"{name}.{attr}")
    for attr, member in inspect.getmembers(cyllama_db.CyllamaDB):
        if not attr.startswith("_") and attr != "clock" and not inspect.getdoc(member):
            missing.append(f"CyllamaDB.{attr}")
    return missing


def test_public_api_has_docstrings() -> None:
    assert _undocumented() == []
