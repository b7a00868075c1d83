"""One model, one name: what a ``model_path=`` filter or a CLI ``--model`` selects.

A model is known by up to four names: its registry name (``tiny``), its
GGUF ``general.name`` (``tiny-test-llama``, what statistics show), its file
name (``tiny.gguf``, what the cache shows) and its path. Any of them selects
the same rows in every store, because they are all resolved to the model
file's identity (the fingerprint of its GGUF header that cache keys use):
every recorded path with that identity matches, wherever the file lives.

Resolution reads the stores through their public methods: the registry's
``db.models.files()``, the statistics' ``recorded_models()`` and the
cache's ``cached_models()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import AmbiguousModelError
from .keys import model_identity

__all__ = ["ModelSelection", "known_models", "select_model"]


@dataclass(frozen=True)
class ModelSelection:
    """The rows a model selector matches: recorded paths, and the file identities they have."""

    selector: str
    paths: frozenset[str]
    identities: frozenset[str]

    def matches(self, path: str | None, identity: str | None = None) -> bool:
        return (path is not None and path in self.paths) or (identity is not None and identity in self.identities)


def _identity_of(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    try:
        return model_identity(path)
    except Exception:  # an unreadable file: matched by its path only
        return None


def _known(db: Any) -> list[tuple[str, str | None, set[str]]]:
    """Every model the stores know: ``(absolute path, identity, names)``."""
    found: dict[str, tuple[str | None, set[str]]] = {}

    def add(path: str | None, identity: str | None, names: Iterable[str | None]) -> None:
        if not path:
            return
        current = found.get(path)
        if current is None:
            current = found[path] = (identity if identity is not None else _identity_of(path), set())
        elif current[0] is None and identity is not None:
            current = found[path] = (identity, current[1])
        current[1].update(n for n in names if n)
        current[1].add(os.path.basename(path))

    for name, path, filename in _call(getattr(db, "models", None), "files"):
        add(path and os.path.abspath(os.path.expanduser(path)), None, [name, filename])
    for path, name in _call(db, "recorded_models"):
        add(path, None, [name])
    for path, name, identity in _call(db, "cached_models"):
        add(path, identity, [name])
    return [(path, identity, names) for path, (identity, names) in found.items()]


def _call(db: Any, method: str) -> list[Any]:
    fn = getattr(db, method, None)
    return list(fn()) if callable(fn) else []


def known_models(db: Any) -> list[tuple[str, str | None, set[str]]]:
    """Every model the stores know, for :func:`select_model` calls made in a row."""
    return _known(db)


def select_model(
    db: Any, selector: str | os.PathLike[str], known: list[tuple[str, str | None, set[str]]] | None = None
) -> ModelSelection:
    """Resolve a registry name, GGUF ``general.name``, file name or path to the rows it means.

    Raises :class:`~cyllama_db.errors.AmbiguousModelError` (a ``ValueError``)
    when the name belongs to several different model files, listing them. A
    selector that matches nothing gives an empty selection (no rows).
    """
    text = os.fspath(selector)
    if not isinstance(text, str) or not text.strip():
        raise TypeError(f"model must be a name or a path (str), got {selector!r}")
    candidate = os.path.abspath(os.path.expanduser(text))
    identities: dict[str, set[str]] = {}  # identity (or "path:<p>") -> the paths it stands for
    direct = _identity_of(candidate)
    if direct is not None:
        identities[direct] = {candidate}
    if known is None:
        known = _known(db)
    for path, identity, names in known:
        if text in names or path == candidate or (direct is not None and identity == direct):
            identities.setdefault(identity or f"path:{path}", set()).add(path)
    all_paths = {p for group in identities.values() for p in group}
    # A path means that path (also where the file changed and its old rows have
    # another identity); only a name can be ambiguous: several files answer to it.
    if len(identities) > 1 and direct is None and candidate not in all_paths and len(all_paths) > 1:
        raise AmbiguousModelError(text, sorted(all_paths))
    ids = frozenset(i for i in identities if not i.startswith("path:"))
    paths = {p for group in identities.values() for p in group}
    # Every recorded path of the same file, wherever it lives.
    paths.update(path for path, identity, _names in known if identity is not None and identity in ids)
    if not paths and not ids:
        paths.add(candidate)  # unknown: as a plain path filter (no rows)
    return ModelSelection(text, frozenset(paths), ids)
