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
