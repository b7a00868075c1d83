"""The return type of complete()/chat()/LLM calls follows ``stream`` (mypy checks a user's script)."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SCRIPT = '''
from typing_extensions import assert_type
from cyllama_db import LLM, Response, Stream, chat, complete

msgs = [{"role": "user", "content": "hi"}]
assert_type(complete("p", "m.gguf"), Response)
assert_type(complete("p", "m.gguf", stream=True), Stream)
assert_type(complete("p", "m.gguf", stream=False, temperature=0.0), Response)
assert_type(chat(msgs, "m.gguf"), Response)
assert_type(chat(msgs, "m.gguf", stream=True), Stream)
llm = LLM("m.gguf")
assert_type(llm("p"), Response)
assert_type(llm("p", stream=True), Stream)
assert_type(llm.chat(msgs), Response)
assert_type(llm.chat(msgs, True), Stream)
print(llm("p").text, llm("p", stream=True).cache_hit)
'''


def test_stream_decides_the_return_type(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    out, err, status = mypy_api.run(
        ["--config-file", str(config), "--no-incremental", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(script)]
    )
    assert status == 0, out + err
