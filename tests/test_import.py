from __future__ import annotations

import subprocess
import sys


def test_import_does_not_load_heavy_modules() -> None:
    code = (
        "import sys, cyllama_db\n"
        "heavy = [m for m in ('llama_cpp', 'psutil', 'pynvml', 'numpy', 'gguf', 'opentelemetry',"
        " 'prometheus_client') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_are_exported() -> None:
    import cyllama_db

    for name in cyllama_db.__all__:
        assert hasattr(cyllama_db, name), name
    for name in ("CyllamaDB", "configure_db", "get_db", "CyllamaDBError", "SchemaVersionError"):
        assert name in cyllama_db.__all__


def test_the_async_api_loads_asyncio_only_when_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cyllama_db\n"
        "assert 'asyncio' not in sys.modules, 'import cyllama_db loaded asyncio'\n"
        "from cyllama_db import AsyncLLM, complete_async\n"
        "assert 'asyncio' in sys.modules and AsyncLLM.__module__ == 'cyllama_db.aio'\n"
        "assert 'AsyncLLM' in dir(cyllama_db)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_import_loads_the_errors_only_and_names_load_on_first_use() -> None:
    code = (
        "import sys, cyllama_db\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('cyllama_db'))\n"
        "assert loaded == ['cyllama_db', 'cyllama_db.errors'], loaded\n"
        "assert 'typing' not in sys.modules, 'import cyllama_db loaded typing'\n"
        "from cyllama_db import cached, CyllamaDB\n"
        "import cyllama_db.decorators\n"
        "assert callable(cached) and cyllama_db.cached is cached, 'the module shadowed the decorator'\n"
        "assert 'cyllama_db.db.facade' in sys.modules and 'cyllama_db.cli' not in sys.modules\n"
        "assert 'llama_cpp' not in sys.modules\n"
        "assert sorted(dir(cyllama_db)) == sorted(cyllama_db.__all__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    import pytest

    import cyllama_db

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cyllama_db.nope  # noqa: B018
