"""The architecture's rules, checked on the source (docs/index.md, "Architecture").

- Stores are objects reached as ``db.<name>``; the facade's flat methods are
  delegates with the store method's signature.
- Modules talk through public methods: no module outside ``db/`` reaches a
  private name on the database or on another store, and no store's SQL names
  another store's table.
- No import loops between modules (module-level imports).
- Public names come from ``cyllama_db.__all__`` only, and the docs import
  from there.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import cyllama_db
from cyllama_db import CyllamaDB
from cyllama_db.db.store import Store

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "cyllama_db"
STORE_ATTRIBUTES = ("config", "metadata", "cache", "stats", "logs", "metrics", "models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


# -- stores are objects ------------------------------------------------------------------------


def test_every_store_is_an_object_reached_by_its_name(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "a.db") as db:
        names = [store.name for store in db.stores]
        assert len(names) == len(set(names))
        for store in db.stores:
            assert isinstance(store, Store)
            assert getattr(db, store.name) is store
            assert store.tables, f"{store.name} owns no table"
        present = [name for name in STORE_ATTRIBUTES if isinstance(getattr(db, name, None), Store)]
        assert set(present) <= set(names)
        owned = [table for store in db.stores for table in store.tables]
        assert len(owned) == len(set(owned)), "a table is owned by two stores"


def _delegates() -> list[tuple[str, object]]:
    return [
        (name, member)
        for name, member in inspect.getmembers(CyllamaDB)
        if getattr(member, "__delegates_to__", None) is not None
    ]


def test_flat_methods_are_delegates_with_the_store_methods_signature() -> None:
    delegates = _delegates()
    assert len(delegates) >= 9
    for name, method in delegates:
        target = method.__delegates_to__  # type: ignore[attr-defined]
        assert inspect.signature(method) == inspect.signature(target), name
        assert inspect.getdoc(method) == inspect.getdoc(target) and inspect.getdoc(method), name


def test_a_delegate_reaches_its_store(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "a.db") as db:
        db.config.set("k", [1, 2])
        assert db.get_config("k") == [1, 2]
        db.set_metadata("owner", "me")
        assert db.metadata.get("owner") == "me"


# -- modules talk through public methods ---------------------------------------------------------

# An attribute access on the database object (or on a store) whose name is private.
_PRIVATE_REACH = re.compile(
    r"\b(?:db|database|self\.db|self\._db|owner|self\.owner)\.(?!_[a-z_]*__)_[a-z][a-z_]*"
)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Source lines without comments and docstrings (string literals that stand alone)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return [
        (n, line.split("#", 1)[0])
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if n not in skip
    ]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("cyllama_db.db")))
def test_no_module_reaches_a_private_name_on_the_database(module: str) -> None:
    found = [f"{n}: {line.strip()}" for n, line in _code_lines(MODULES[module]) if _PRIVATE_REACH.search(line)]
    assert not found, f"{module} uses private names of the database or a store:\n" + "\n".join(found)


def _owners() -> dict[str, str]:
    with CyllamaDB(":memory:") as db:
        return {table: store.name for store in db.stores for table in store.tables}


_TABLE_USE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+([a-z_]+)\b")


def test_no_store_writes_sql_for_another_stores_table() -> None:
    owners = _owners()
    problems = []
    with CyllamaDB(":memory:") as db:
        for store in db.stores:
            module = type(store).__module__
            for n, line in _code_lines(MODULES[module]):
                for table in _TABLE_USE.findall(line):
                    owner = owners.get(table)
                    if owner is not None and owner != store.name:
                        problems.append(f"{module}:{n} ({store.name}) uses {owner}'s table {table}")
    assert not problems, "\n".join(problems)


# -- no import loops ----------------------------------------------------------------------------------


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports at module level (not under TYPE_CHECKING, not in functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in MODULES else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in MODULES)
            elif isinstance(node, ast.ImportFrom) and node.module in MODULES:
                found.add(node.module)

    visit(tree.body)
    found.discard(module)
    return {name for name in found if name in MODULES}


def test_no_import_loops() -> None:
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    # A package's __init__ importing its own submodules is how packages work; a
    # submodule importing its own package's __init__ back is the loop to catch.
    state: dict[str, int] = {}
    loops: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == node.rpartition(".")[0] or node.startswith(nxt + "."):
                continue  # a module importing a name from its own package's __init__
            if state.get(nxt) == 1:
                loops.append([*trail[trail.index(nxt):], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not loops, "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)


# -- public names -------------------------------------------------------------------------------------


def test_all_is_sorted_unique_and_resolves() -> None:
    names = cyllama_db.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(cyllama_db, name) is not None, name


def test_no_public_name_outside_all() -> None:
    subpackages = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    extra = {
        name for name in dir(cyllama_db)
        if not name.startswith("_") and name not in cyllama_db.__all__ and name not in subpackages
    }
    assert not extra, f"public names not in cyllama_db.__all__: {sorted(extra)}"


# The modules whose own names are documented for direct import: the test
# helpers, and the integration entry points a deployment wires up.
DOCUMENTED_MODULES = {"cyllama_db.testing", "cyllama_db.cli", "cyllama_db.dashboard", "cyllama_db.prometheus"}


def test_docs_import_public_names_only() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for page in pages:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for module in re.findall(r"from (cyllama_db(?:\.\w+)+) import", line):
                if module not in DOCUMENTED_MODULES:
                    found.append(f"{page.name}:{n}: {line.strip()}")
    assert not found, "docs import from internal modules:\n" + "\n".join(found)
