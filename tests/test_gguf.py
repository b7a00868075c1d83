"""Tests for the pure-Python GGUF header reader and the tiny-model writers.

``gguf.GGUFReader`` (the reference implementation from llama.cpp) is the
oracle for parsing; llama-cpp-python is the oracle for "this file is a real,
loadable model".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyllama_db.errors import CyllamaDBError
from cyllama_db.stores import gguf as _gguf
from cyllama_db.stores.gguf import (
    LLAMA_FTYPE_NAMES,
    GGUFFormatError,
    GGUFHeader,
    clear_fingerprint_cache,
    model_fingerprint,
    quantization_name,
    read_gguf_header,
    summarize_gguf,
)
from cyllama_db.testing import (
    DEFAULT_CHAT_TEMPLATE,
    SEED_KEY,
    write_large_vocab_gguf,
    write_tiny_llama,
)

gguf = pytest.importorskip("gguf")

# Large enough to need the chunked string skipper many times over, small
# enough that GGUFReader (which takes ~8 s for 150k tokens) stays quick.
LARGE_TEST_VOCAB = 20_000


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def large_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_large_vocab_gguf(
        tmp_path_factory.mktemp("large") / "large.gguf", n_vocab=LARGE_TEST_VOCAB
    )


@pytest.fixture(scope="module")
def large_vocab_reader(large_vocab_model: Path) -> Any:
    return gguf.GGUFReader(large_vocab_model)


@pytest.fixture(autouse=True)
def _fresh_fingerprint_cache() -> None:
    clear_fingerprint_cache()


# --- helpers ----------------------------------------------------------------


def assert_matches_gguf_reader(path: Path, header: GGUFHeader, reader: Any = None) -> None:
    """Field-for-field comparison against llama.cpp's own Python reader."""
    if reader is None:
        reader = gguf.GGUFReader(path)
    T = gguf.GGUFValueType
    expected_keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert list(header.kv) == expected_keys  # same keys, same order
    assert header.version == reader.fields["GGUF.version"].contents()
    assert header.tensor_count == len(reader.tensors)
    assert header.data_offset == reader.data_offset
    assert header.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert header.file_size == path.stat().st_size
    for key in expected_keys:
        field = reader.fields[key]
        ours = header.kv[key]
        if field.types[0] == T.ARRAY:
            length = len(field.data)
            if isinstance(ours, list):
                assert ours == field.contents(), key
            else:
                assert ours == {
                    "type": "array",
                    "item_type": field.types[-1].name.lower(),
                    "length": length,
                }, key
        else:
            assert ours == field.contents(), key
            assert type(ours) is type(field.contents()), key


def raw_gguf(
    kvs: list[tuple[str, int, bytes]],
    *,
    version: int = 3,
    magic: bytes = b"GGUF",
    tensor_count: int = 0,
    tail: bytes = b"",
) -> bytes:
    """Hand-built GGUF bytes, for malformed files GGUFWriter refuses to write."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b"".join(s(k) + struct.pack("<I", t) + v for k, t, v in kvs)
    return magic + struct.pack("<IQQ", version, tensor_count, len(kvs)) + body + tail


def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


# --- agreement with gguf.GGUFReader -----------------------------------------


def test_tiny_model_matches_gguf_reader(tiny_model: Path) -> None:
    header = read_gguf_header(tiny_model)
    assert_matches_gguf_reader(tiny_model, header)
    # The 274-entry vocabulary is over the 64-item default, so it is a marker.
    assert header.kv["tokenizer.ggml.tokens"] == {
        "type": "array",
        "item_type": "string",
        "length": 274,
    }
    assert header.kv["tokenizer.ggml.merges"][:2] == ["Ġ t", "h e"]
    assert header.metadata_size > 0
    assert header.version == 3


def test_large_vocab_matches_gguf_reader(large_vocab_model: Path, large_vocab_reader: Any) -> None:
    header = read_gguf_header(large_vocab_model)
    assert_matches_gguf_reader(large_vocab_model, header, large_vocab_reader)
    for key in ("tokens", "scores", "token_type"):
        assert header.kv[f"tokenizer.ggml.{key}"]["length"] == LARGE_TEST_VOCAB
    # The chat template comes after the big arrays: proves they were skipped exactly.
    assert header.kv["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE


def test_full_decode_of_big_arrays_matches_gguf_reader(
    large_vocab_model: Path, large_vocab_reader: Any
) -> None:
    header = read_gguf_header(large_vocab_model, max_array_items=10**9)
    reader = large_vocab_reader
    for key in ("tokens", "merges", "scores", "token_type"):
        name = f"tokenizer.ggml.{key}"
        assert header.kv[name] == reader.fields[name].contents(), name


def test_string_arrays_with_long_and_odd_strings(tmp_path: Path) -> None:
    """Strings >= 256 bytes take the struct fallback; mix them with short ones."""
    rnd = random.Random(1234)
    alphabet = "abcxyzĠ€𝄞\n\x00 "
    lengths = [rnd.choice([0, 1, 7, 255, 256, 257, 300, 1000]) for _ in range(1500)]
    lengths[700] = 70_000
    strings = ["".join(rnd.choice(alphabet) for _ in range(n)) for n in lengths]
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_array("test.strings", strings)
    w.add_uint32("test.after", 123456)
    w.add_string("test.after_str", "tail")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    header = read_gguf_header(path)
    assert header.kv["test.strings"]["length"] == len(strings)
    assert header.kv["test.after"] == 123456
    assert header.kv["test.after_str"] == "tail"
    assert_matches_gguf_reader(path, header)
    assert read_gguf_header(path, max_array_items=10_000).kv["test.strings"] == strings


def test_every_short_string_length_is_skipped_exactly(tmp_path: Path) -> None:
    """Each of the 256 regex alternatives (and the fallback) is exercised in bulk."""
    lengths = list(range(300)) * 4
    random.Random(7).shuffle(lengths)
    strings = [chr(ord("a") + n % 26) * n for n in lengths]
    path = tmp_path / "lengths.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_array("test.strings", strings)
    w.add_array("test.ascending", [chr(ord("a") + n % 26) * n for n in range(2000)])
    w.add_int32("test.after", -5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    header = read_gguf_header(path)
    assert header.kv["test.after"] == -5
    assert header.kv["test.strings"]["length"] == len(strings)
    assert read_gguf_header(path, max_array_items=5000).kv["test.strings"] == strings


def test_max_array_items_boundary(tmp_path: Path) -> None:
    path = tmp_path / "arrays.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_array("a64", list(range(64)))
    w.add_array("a65", list(range(65)))
    w.add_array("s64", ["x"] * 64)
    w.add_array("s65", ["x"] * 65)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    kv = read_gguf_header(path).kv
    assert kv["a64"] == list(range(64))
    assert kv["a65"] == {"type": "array", "item_type": "int32", "length": 65}
    assert kv["s64"] == ["x"] * 64
    assert kv["s65"] == {"type": "array", "item_type": "string", "length": 65}
    kv3 = read_gguf_header(path, max_array_items=3).kv
    assert kv3["a64"] == {"type": "array", "item_type": "int32", "length": 64}
    assert read_gguf_header(path, max_array_items=0).kv["s64"]["length"] == 64


_SCALAR_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "UINT8": st.integers(0, 2**8 - 1),
    "INT8": st.integers(-(2**7), 2**7 - 1),
    "UINT16": st.integers(0, 2**16 - 1),
    "INT16": st.integers(-(2**15), 2**15 - 1),
    "UINT32": st.integers(0, 2**32 - 1),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "UINT64": st.integers(0, 2**64 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "FLOAT32": st.floats(width=32, allow_nan=False),
    "FLOAT64": st.floats(allow_nan=False),
    "BOOL": st.booleans(),
    "STRING": st.text(max_size=300),
}


@st.composite
def _metadata_entry(draw: st.DrawFn) -> tuple[str, Any, str, str | None]:
    type_name = draw(st.sampled_from(sorted(_SCALAR_STRATEGIES)))
    values = _SCALAR_STRATEGIES[type_name]
    if draw(st.booleans()):
        return (
            draw(st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)),
            draw(values),
            type_name,
            None,
        )
    items = draw(st.lists(values, min_size=1, max_size=80))
    key = draw(st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True))
    return key, items, "ARRAY", type_name


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entries=st.lists(_metadata_entry(), max_size=12, unique_by=lambda e: e[0]))
def test_random_metadata_matches_gguf_reader(
    tmp_path: Path, entries: list[tuple[str, Any, str, str | None]]
) -> None:
    T = gguf.GGUFValueType
    path = tmp_path / "random.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, value, vtype, sub in entries:
        w.add_key_value(key, value, T[vtype], T[sub] if sub else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_matches_gguf_reader(path, read_gguf_header(path))


# --- summaries --------------------------------------------------------------


def test_summarize_tiny_model(tiny_model: Path) -> None:
    s = summarize_gguf(tiny_model)
    json.dumps(s)  # must be JSON-serialisable as is
    assert s["format"] == "gguf"
    assert s["architecture"] == "llama"
    assert s["name"] == "tiny-test-llama"
    assert s["quantization"] == "F32"
    assert s["file_type"] == 0
    assert s["context_length"] == 512
    assert s["vocab_size"] == 274
    assert s["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert s["file_size"] == tiny_model.stat().st_size
    assert s["fingerprint"] == model_fingerprint(tiny_model)
    reader = gguf.GGUFReader(tiny_model)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    assert s["parameter_count"] == n_params
    assert s["size_label"] == gguf.utility.model_weight_count_rounded_notation(n_params)
    assert s["tensor_count"] == len(reader.tensors)
    assert s["metadata"]["general.name"] == "tiny-test-llama"


def test_summarize_large_vocab(large_vocab_model: Path) -> None:
    s = summarize_gguf(large_vocab_model)
    assert s["vocab_size"] == LARGE_TEST_VOCAB
    assert s["quantization"] == "F16"
    assert s["context_length"] == 4096
    assert s["metadata"]["tokenizer.ggml.merges"]["item_type"] == "string"


def test_summarize_without_optional_keys(tmp_path: Path) -> None:
    """Tensor-less file with only an architecture: everything else is None."""
    path = tmp_path / "bare.gguf"
    path.write_bytes(
        raw_gguf(
            [
                ("general.architecture", 8, gguf_string("mamba")),
                ("mamba.vocab_size", 4, struct.pack("<I", 50)),
            ]
        )
    )
    s = summarize_gguf(path)
    assert s["architecture"] == "mamba"
    assert s["vocab_size"] == 50  # falls back to {arch}.vocab_size
    for key in (
        "name",
        "size_label",
        "parameter_count",
        "quantization",
        "context_length",
        "chat_template",
    ):
        assert s[key] is None, key


def test_quantization_names_match_gguf_constants() -> None:
    for member in gguf.LlamaFileType:
        if member.name == "GUESSED":
            continue
        expected = member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        assert LLAMA_FTYPE_NAMES[member.value] == expected
        assert quantization_name(member.value) == expected
    assert quantization_name(15) == "Q4_K_M"
    assert quantization_name(7) == "Q8_0"
    assert quantization_name(0) == "F32"
    assert quantization_name(1024 | 15) == "Q4_K_M (guessed)"
    assert quantization_name(999) == "UNKNOWN_999"
    assert quantization_name(None) is None


def test_quantization_names_match_llama_h() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    names = {
        getattr(llama_cpp, n): n.removeprefix("LLAMA_FTYPE_")
        .removeprefix("MOSTLY_")
        .removeprefix("ALL_")
        for n in dir(llama_cpp)
        if n.startswith("LLAMA_FTYPE_") and n != "LLAMA_FTYPE_GUESSED"
    }
    assert names  # the binding exposes the enum
    for value, name in names.items():
        assert LLAMA_FTYPE_NAMES[value] == name


# --- fingerprints -----------------------------------------------------------


def test_fingerprint_is_path_independent(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy.gguf"
    copy.parent.mkdir()
    shutil.copyfile(tiny_model, copy)
    fp = model_fingerprint(tiny_model)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert model_fingerprint(copy) == fp
    assert model_fingerprint(str(copy)) == fp


def test_fingerprint_changes_with_one_metadata_value(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf")
    b = write_tiny_llama(tmp_path / "b.gguf", extra_metadata={"llama.context_length": 1024})
    # Same type and width, so the files differ only in those 4 bytes.
    assert a.stat().st_size == b.stat().st_size
    assert model_fingerprint(a) != model_fingerprint(b)
    assert read_gguf_header(b).kv["llama.context_length"] == 1024


def test_fingerprint_changes_with_size(tiny_model: Path, tmp_path: Path) -> None:
    padded = tmp_path / "padded.gguf"
    padded.write_bytes(tiny_model.read_bytes() + b"\0" * 32)
    assert model_fingerprint(padded) != model_fingerprint(tiny_model)


def test_fingerprint_differs_between_seeds(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=1)
    b = write_tiny_llama(tmp_path / "b.gguf", seed=2)
    assert read_gguf_header(a).kv[SEED_KEY] == 1
    assert model_fingerprint(a) != model_fingerprint(b)


def test_fingerprint_is_cached(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_read = _gguf._read

    def counting_read(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(os.fspath(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(_gguf, "_read", counting_read)
    fp = model_fingerprint(tiny_model)
    assert model_fingerprint(tiny_model) == fp
    assert model_fingerprint(str(tiny_model)) == fp
    assert len(calls) == 1

    # A new mtime is a new cache key: the file is read again.
    st = tiny_model.stat()
    os.utime(tiny_model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert model_fingerprint(tiny_model) == fp
    assert len(calls) == 2

    clear_fingerprint_cache()
    model_fingerprint(tiny_model)
    assert len(calls) == 3


def test_summarize_primes_fingerprint_cache(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = summarize_gguf(tiny_model)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("model_fingerprint re-read the file")

    monkeypatch.setattr(_gguf, "_read", fail)
    assert model_fingerprint(tiny_model) == s["fingerprint"]


def test_fingerprint_ignores_symlinked_path(tiny_model: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny_model)
    assert model_fingerprint(link) == model_fingerprint(tiny_model)


# --- errors -----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    for fn in (read_gguf_header, model_fingerprint, summarize_gguf):
        with pytest.raises(FileNotFoundError, match=r"nope\.gguf"):
            fn(missing)


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (b"GGML" + b"\0" * 40, "b'GGML'"),
        (b"", "b''"),
        (b"GG", "b'GG'"),
        (b"\x00" * 100, r"b'\\x00"),
    ],
)
def test_bad_magic(tmp_path: Path, content: bytes, shown: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"bad\.gguf: not a GGUF file \(magic {shown}"):
        read_gguf_header(path)
    with pytest.raises(GGUFFormatError):
        model_fingerprint(path)


def test_format_errors_are_library_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"nope")
    with pytest.raises(CyllamaDBError):
        read_gguf_header(path)


def test_truncated_files(tiny_model: Path, large_vocab_model: Path, tmp_path: Path) -> None:
    for source in (tiny_model, large_vocab_model):
        data = source.read_bytes()
        header = read_gguf_header(source)
        cuts = {
            6,
            24,
            30,
            100,
            24 + header.metadata_size // 2,
            24 + header.metadata_size - 1,
            header.header_size - 1,
        }
        for cut in sorted(cuts):
            path = tmp_path / f"cut{cut}.gguf"
            path.write_bytes(data[:cut])
            with pytest.raises(
                ValueError, match=r"cut\d+\.gguf: truncated GGUF header at offset \d+"
            ):
                read_gguf_header(path)


def test_tensor_data_is_not_needed(tiny_model: Path, tmp_path: Path) -> None:
    """Cutting into the tensor data changes the size but still parses."""
    header = read_gguf_header(tiny_model)
    path = tmp_path / "headonly.gguf"
    path.write_bytes(tiny_model.read_bytes()[: header.header_size])
    assert read_gguf_header(path).kv == header.kv


def test_unsupported_versions(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    path.write_bytes(raw_gguf([], version=1))
    with pytest.raises(ValueError, match="unsupported GGUF version 1"):
        read_gguf_header(path)
    path.write_bytes(raw_gguf([], version=3 << 24))  # a v3 file written big-endian
    with pytest.raises(ValueError, match="big-endian"):
        read_gguf_header(path)


def test_version_2_is_supported(tmp_path: Path) -> None:
    path = tmp_path / "v2.gguf"
    path.write_bytes(raw_gguf([("general.name", 8, gguf_string("old"))], version=2))
    header = read_gguf_header(path)
    assert header.version == 2
    assert header.kv == {"general.name": "old"}


def test_malformed_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    cases = [
        ([("a", 99, b"\0" * 8)], "invalid GGUF type 99"),
        ([("a", 9, struct.pack("<IQ", 99, 1) + b"\0" * 8)], "array of invalid GGUF type 99"),
        ([("a", 9, struct.pack("<IQ", 9, 1) + b"\0" * 16)], "nested array"),
        ([("a", 4, b"\0" * 4), ("a", 4, b"\0" * 4)], "duplicate metadata key 'a'"),
        (
            [("a", 4, b"\0" * 4), ("general.alignment", 4, struct.pack("<I", 24))],
            "not a power of two",
        ),
        # Corrupt huge counts fail fast instead of looping.
        ([("a", 9, struct.pack("<IQ", 8, 2**60))], "truncated GGUF header"),
        ([("a", 9, struct.pack("<IQ", 6, 2**40))], "truncated GGUF header"),
        ([("a", 8, struct.pack("<Q", 2**62))], "truncated GGUF header"),
    ]
    for kvs, message in cases:
        path.write_bytes(raw_gguf(kvs))
        with pytest.raises(ValueError, match=message):
            read_gguf_header(path)
    path.write_bytes(raw_gguf([], tensor_count=2**50))
    with pytest.raises(ValueError, match="truncated GGUF header"):
        read_gguf_header(path)


# --- the models load in llama.cpp -------------------------------------------


@pytest.mark.llama
def test_tiny_model_generates_deterministically(tiny_model: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(tiny_model), verbose=False)
    try:
        assert llm.n_vocab() == 274
        assert llm.metadata["llama.context_length"] == "512"
        assert llm.metadata["general.name"] == "tiny-test-llama"
        first = llm.create_completion("Hello", max_tokens=8, temperature=0)
        second = llm.create_completion("Hello", max_tokens=8, temperature=0)
        text = first["choices"][0]["text"]
        assert text.strip(), "greedy generation produced no text"
        assert first["choices"][0]["finish_reason"] == "length"  # never hit EOS
        assert second["choices"][0]["text"] == text
        chat = llm.create_chat_completion(
            [{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
        )
        assert chat["choices"][0]["message"]["content"].strip()
    finally:
        llm.close()

    # A fresh instance (fresh context, fresh sampler) gives the same text.
    llm2 = llama_cpp.Llama(model_path=str(tiny_model), verbose=False)
    try:
        again = llm2.create_completion("Hello", max_tokens=8, temperature=0)
        assert again["choices"][0]["text"] == text
    finally:
        llm2.close()


@pytest.mark.llama
@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": 3, "n_embd": 32, "n_layer": 1, "n_ff": 64, "n_head": 2},
        {"seed": 4, "n_head_kv": 2, "n_ctx_train": 1024},
    ],
)
def test_tiny_model_variants_generate(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    path = write_tiny_llama(tmp_path / "v.gguf", **kwargs)
    llm = llama_cpp.Llama(model_path=str(path), verbose=False)
    try:
        out = llm.create_completion("Hello", max_tokens=8, temperature=0)
        assert out["choices"][0]["text"].strip()
    finally:
        llm.close()


def test_extra_metadata_types(tmp_path: Path) -> None:
    extra = {
        "general.name": "renamed",
        "llama.context_length": 2048,
        "custom.flag": True,
        "custom.small": -3,
        "custom.big": 2**40,
        "custom.ratio": 0.5,
        "custom.ints": [1, 2, 2**33],
        "custom.words": ["a", "b"],
    }
    path = write_tiny_llama(tmp_path / "x.gguf", extra_metadata=extra)
    header = read_gguf_header(path)
    for key, value in extra.items():
        assert header.kv[key] == value, key
    reader = gguf.GGUFReader(path)
    T = gguf.GGUFValueType
    assert reader.fields["llama.context_length"].types == [T.UINT32]  # kept its type
    assert reader.fields["custom.small"].types == [T.INT32]
    assert reader.fields["custom.big"].types == [T.INT64]
    assert reader.fields["custom.ints"].types == [T.ARRAY, T.INT64]
    with pytest.raises(TypeError):
        write_tiny_llama(tmp_path / "bad.gguf", extra_metadata={"custom.empty": []})


@pytest.mark.llama
def test_large_vocab_model_loads_vocab_only(large_vocab_model: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(large_vocab_model), vocab_only=True, verbose=False)
    try:
        assert llm.n_vocab() == LARGE_TEST_VOCAB
        # BPE merges are applied: "ab"-style merged tokens exist in the vocabulary.
        assert len(llm.tokenize(b"hello world", add_bos=False)) < len("hello world")
    finally:
        llm.close()


def test_testing_module_imports_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cyllama_db.testing, cyllama_db.stores.gguf; "
        "print(sorted(m for m in ('gguf', 'numpy', 'llama_cpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
