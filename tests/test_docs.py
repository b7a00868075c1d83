"""Every ```python block in README.md and docs/*.md runs as written.

Each block runs in a fresh interpreter, in an empty folder with a private
HOME. When llama-cpp-python is importable, a tiny random-weight model is
written there as ``model.gguf`` so examples can say ``LLM("model.gguf")``.
A block whose fence reads ```python no-test is shown but not run (used only
for snippets that need things a test machine lacks, e.g. a GPU).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, match in enumerate(FENCE.finditer(doc.read_text())):
            if "no-test" in match.group(1):
                continue
            found.append((f"{doc.relative_to(ROOT)}#{i}", match.group(2)))
    return found


BLOCKS = _blocks()


def test_docs_have_examples() -> None:
    assert len(BLOCKS) >= 4


def _needs_model(code: str) -> bool:
    return "model.gguf" in code


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_example_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYLLAMA_")}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "home" / ".local" / "share")
    env["MPLBACKEND"] = "Agg"
    if _needs_model(code):
        pytest.importorskip("llama_cpp")
        from cyllama_db.testing import write_tiny_llama

        write_tiny_llama(tmp_path / "model.gguf")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
