"""Fast, dependency-free reader for GGUF file headers.

Only the fixed header, the metadata key/value section and the tensor-info
table are read; tensor data is never touched.  The file is memory-mapped, so
the cost of a read is dominated by walking the metadata, and the expensive
part of that (tokenizer vocabularies of 100k+ strings) is skipped with a
compiled regular expression rather than a per-string Python loop.

Format reference: llama.cpp ``docs/gguf.md`` / ``ggml/src/gguf.cpp``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Union

from ..errors import GGUFFormatError

__all__ = [
    "LLAMA_FTYPE_NAMES",
    "GGUFFormatError",
    "GGUFHeader",
    "clear_fingerprint_cache",
    "model_fingerprint",
    "quantization_name",
    "read_gguf_header",
    "summarize_gguf",
]

StrPath = Union[str, "os.PathLike[str]"]

GGUF_MAGIC: Final = b"GGUF"
SUPPORTED_VERSIONS: Final = (2, 3)
DEFAULT_ALIGNMENT: Final = 32
DEFAULT_MAX_ARRAY_ITEMS: Final = 64

# Bumping this invalidates every stored fingerprint; only do so if the hashed
# byte ranges change.
_FINGERPRINT_DOMAIN: Final = b"cyllama-db/gguf-fingerprint/v1\x00"

# GGUF value type ids (gguf_type in ggml/include/gguf.h).
_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32 = 0, 1, 2, 3, 4, 5
_T_FLOAT32, _T_BOOL, _T_STRING, _T_ARRAY = 6, 7, 8, 9
_T_UINT64, _T_INT64, _T_FLOAT64 = 10, 11, 12

_TYPE_NAMES: Final[dict[int, str]] = {
    _T_UINT8: "uint8",
    _T_INT8: "int8",
    _T_UINT16: "uint16",
    _T_INT16: "int16",
    _T_UINT32: "uint32",
    _T_INT32: "int32",
    _T_FLOAT32: "float32",
    _T_BOOL: "bool",
    _T_STRING: "string",
    _T_ARRAY: "array",
    _T_UINT64: "uint64",
    _T_INT64: "int64",
    _T_FLOAT64: "float64",
}

# struct format character and item size of every fixed-size type.
_SCALARS: Final[dict[int, tuple[str, int]]] = {
    _T_UINT8: ("B", 1),
    _T_INT8: ("b", 1),
    _T_UINT16: ("H", 2),
    _T_INT16: ("h", 2),
    _T_UINT32: ("I", 4),
    _T_INT32: ("i", 4),
    _T_FLOAT32: ("f", 4),
    _T_BOOL: ("?", 1),
    _T_UINT64: ("Q", 8),
    _T_INT64: ("q", 8),
    _T_FLOAT64: ("d", 8),
}
_SCALAR_STRUCTS: Final[dict[int, struct.Struct]] = {
    t: struct.Struct("<" + fmt) for t, (fmt, _size) in _SCALARS.items()
}

_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor_count, kv_count

#: ``general.file_type`` values -> llama.cpp ``llama_ftype`` names (without the
#: ``LLAMA_FTYPE_[MOSTLY_|ALL_]`` prefix).  Mirrors llama.h and
#: ``gguf.constants.LlamaFileType``; ids 4-6 and 33-35 are no longer written by
#: llama.cpp but still appear in old files.
LLAMA_FTYPE_NAMES: Final[dict[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    5: "Q4_2",
    6: "Q4_3",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    33: "Q4_0_4_4",
    34: "Q4_0_4_8",
    35: "Q4_0_8_8",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}
_FTYPE_GUESSED: Final = 1024


@dataclass
class GGUFHeader:
    """Everything in a GGUF file except the tensor data.

    ``kv`` maps every metadata key to its value.  Scalars and strings are
    plain Python values; arrays with at most ``max_array_items`` items are
    lists; longer arrays are *not* decoded and appear as a marker dict
    ``{"type": "array", "item_type": "string", "length": N}``.
    """

    path: str
    version: int
    tensor_count: int
    kv: dict[str, Any]
    #: Bytes of the metadata key/value section (after the 24-byte fixed header).
    metadata_size: int
    file_size: int
    #: Offset of the first byte after the tensor-info table (the hashed range).
    header_size: int
    #: Offset of the (aligned) start of tensor data.
    data_offset: int
    alignment: int
    #: Total number of tensor elements (weights) across all tensors.
    parameter_count: int


def _array_marker(item_type: int, length: int) -> dict[str, Any]:
    return {"type": "array", "item_type": _TYPE_NAMES[item_type], "length": length}


@lru_cache(maxsize=1)
def _string_skippers() -> tuple[re.Pattern[bytes], re.Pattern[bytes], int]:
    """Regexes that match length-prefixed strings of < 256 bytes.

    A GGUF string is ``uint64 length`` + bytes.  There is one alternative per
    possible length k: the literal 8-byte little-endian length followed by
    exactly k arbitrary bytes, so a match is an exact parse (a length >= 256
    simply fails to match and the caller falls back to struct).  Because each
    alternative starts with a distinct literal byte, the regex engine never
    backtracks into a different parse and dispatches each element in C,
    which is ~2x faster than a ``struct.unpack_from`` loop.  Compiled lazily
    because only files with big string arrays need it.
    """
    chunk = 512
    alts = b"|".join(
        re.escape(struct.pack("<Q", k)) + (b".{%d}" % k if k else b"") for k in range(256)
    )
    one = re.compile(b"(?s:" + alts + b")")
    many = re.compile(b"(?s:(?:" + alts + b"){%d})" % chunk)
    return one, many, chunk


class _Parser:
    """Cursor over the mapped file; every read is bounds-checked."""

    __slots__ = ("buf", "end", "max_items", "path", "pos")

    def __init__(self, buf: mmap.mmap | bytes, path: str, max_items: int) -> None:
        self.buf = buf
        self.end = len(buf)
        self.path = path
        self.pos = 0
        self.max_items = max_items

    def truncated(self, at: int | None = None, what: str = "") -> GGUFFormatError:
        where = self.pos if at is None else at
        detail = f" ({what})" if what else ""
        return GGUFFormatError(f"{self.path}: truncated GGUF header at offset {where}{detail}")

    def need(self, n: int, what: str = "") -> None:
        if self.pos + n > self.end:
            raise self.truncated(what=what)

    def u32(self) -> int:
        self.need(4)
        (v,) = _U32(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self) -> int:
        self.need(8)
        (v,) = _U64(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> str:
        n = self.u64()
        self.need(n, f"string of {n} bytes")
        start = self.pos
        self.pos += n
        return self.buf[start : start + n].decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype == _T_STRING:
            return self.string()
        if vtype == _T_ARRAY:
            return self.array(key)
        sc = _SCALAR_STRUCTS.get(vtype)
        if sc is None:
            raise GGUFFormatError(
                f"{self.path}: key {key!r} has invalid GGUF type {vtype} at offset {self.pos - 4}"
            )
        self.need(sc.size)
        (v,) = sc.unpack_from(self.buf, self.pos)
        self.pos += sc.size
        return v

    def array(self, key: str) -> Any:
        item_type = self.u32()
        n = self.u64()
        if item_type == _T_ARRAY:
            # llama.cpp's gguf loader rejects these too, so no usable model has them.
            raise GGUFFormatError(f"{self.path}: key {key!r} is a nested array (unsupported)")
        if item_type == _T_STRING:
            # Every string needs at least its 8-byte length; checking up front
            # keeps a corrupt count from turning into a very long loop.
            self.need(8 * n, f"array of {n} strings")
            if n <= self.max_items:
                return [self.string() for _ in range(n)]
            self.pos = _skip_strings(self, n)
            return _array_marker(item_type, n)
        scalar = _SCALARS.get(item_type)
        if scalar is None:
            raise GGUFFormatError(
                f"{self.path}: key {key!r} is an array of invalid GGUF type {item_type}"
            )
        fmt, size = scalar
        self.need(size * n, f"array of {n} {_TYPE_NAMES[item_type]}")
        start = self.pos
        self.pos += size * n
        if n <= self.max_items:
            return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start))
        return _array_marker(item_type, n)


def _skip_strings(p: _Parser, n: int) -> int:
    """Return the offset just past ``n`` consecutive GGUF strings at ``p.pos``."""
    buf, pos, end = p.buf, p.pos, p.end
    one, many, chunk = _string_skippers()
    match_many, match_one = many.match, one.match
    while n:
        if n >= chunk:
            m = match_many(buf, pos, end)
            if m is not None:
                pos = m.end()
                n -= chunk
                continue
        # Chunk contains a string >= 256 bytes (or the data is truncated):
        # step through it one string at a time.
        for _ in range(min(n, chunk)):
            m = match_one(buf, pos, end)
            if m is not None:
                pos = m.end()
                continue
            if pos + 8 > end:
                raise p.truncated(pos, "string length")
            (length,) = _U64(buf, pos)
            pos += 8 + length
            if pos > end:
                raise p.truncated(pos - length, f"string of {length} bytes")
        n -= min(n, chunk)
    return pos


def _parse(buf: mmap.mmap | bytes, path: str, file_size: int, max_items: int) -> GGUFHeader:
    if len(buf) < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFFormatError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    p = _Parser(buf, path, max_items)
    p.need(_HEADER.size, "fixed header")
    _magic, version, tensor_count, kv_count = _HEADER.unpack_from(buf, 0)
    if version & 0xFFFF == 0 and version != 0:
        raise GGUFFormatError(f"{path}: big-endian GGUF files are not supported")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFFormatError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    p.pos = _HEADER.size
    # Cheapest possible KV pair is 8 (key len) + 4 (type) + 1 byte value.
    p.need(13 * kv_count, f"{kv_count} metadata entries")

    kv: dict[str, Any] = {}
    for _ in range(kv_count):
        key_at = p.pos
        key = p.string()
        vtype = p.u32()
        if key in kv:
            raise GGUFFormatError(f"{path}: duplicate metadata key {key!r} at offset {key_at}")
        kv[key] = p.value(vtype, key)
    kv_end = p.pos

    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"{path}: general.alignment {alignment!r} is not a power of two")

    # Tensor infos: name, n_dims (u32), dims (u64 * n_dims), type (u32), offset (u64).
    p.need(24 * tensor_count, f"{tensor_count} tensor infos")
    n_params = 0
    for _ in range(tensor_count):
        name_len = p.u64()
        p.need(name_len)
        p.pos += name_len
        n_dims = p.u32()
        if n_dims > 8:
            raise GGUFFormatError(f"{path}: tensor with {n_dims} dimensions at offset {p.pos - 4}")
        p.need(8 * n_dims + 12)
        elements = 1
        for d in struct.unpack_from(f"<{n_dims}Q", buf, p.pos):
            elements *= d
        n_params += elements
        p.pos += 8 * n_dims + 12
    header_size = p.pos
    data_offset = -(-header_size // alignment) * alignment

    return GGUFHeader(
        path=path,
        version=int(version),
        tensor_count=int(tensor_count),
        kv=kv,
        metadata_size=kv_end - _HEADER.size,
        file_size=file_size,
        header_size=header_size,
        data_offset=data_offset,
        alignment=alignment,
        parameter_count=n_params,
    )


def _read(
    path: StrPath, max_items: int, want_fingerprint: bool
) -> tuple[GGUFHeader, str | None, os.stat_result]:
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        # fstat of the open file, so the stat used for cache keys describes
        # exactly the bytes that were read even if the path is replaced.
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            # mmap refuses empty files; report them like any other bad magic.
            raise GGUFFormatError(f"{spath}: not a GGUF file (magic b'')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header = _parse(mm, spath, st.st_size, max_items)
            digest = None
            if want_fingerprint:
                digest = _digest(mm, st.st_size, header.header_size)
    return header, digest, st


def _digest(mm: mmap.mmap, size: int, header_size: int) -> str:
    h = hashlib.sha256(_FINGERPRINT_DOMAIN)
    h.update(size.to_bytes(8, "little"))
    with memoryview(mm) as view:
        h.update(view[:header_size])
    return h.hexdigest()


def read_gguf_header(
    path: StrPath, *, max_array_items: int = DEFAULT_MAX_ARRAY_ITEMS
) -> GGUFHeader:
    """Read the header, metadata and tensor-info table of a GGUF file.

    Arrays longer than ``max_array_items`` (tokenizer vocabularies, merges,
    scores, ...) are skipped and reported as
    ``{"type": "array", "item_type": ..., "length": N}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        GGUFFormatError (a ``ValueError``): not GGUF, truncated, an
            unsupported version, big-endian, or otherwise malformed.
    """
    return _read(path, max_array_items, want_fingerprint=False)[0]


# --- fingerprints -----------------------------------------------------------

_Key = tuple[str, int, int, int, int]
_FP_CACHE_MAX: Final = 4096
_fp_cache: OrderedDict[_Key, str] = OrderedDict()  # LRU
_fp_lock = threading.Lock()


def _cache_key(real: str, st: os.stat_result) -> _Key:
    # Inode/device are included so an atomic replace (new file renamed over the
    # old path) is noticed even if size and the coarse mtime happen to match.
    return (real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _cache_get(key: _Key) -> str | None:
    with _fp_lock:
        fp = _fp_cache.get(key)
        if fp is not None:
            _fp_cache.move_to_end(key)
        return fp


def _cache_put(key: _Key, fp: str) -> None:
    with _fp_lock:
        _fp_cache[key] = fp
        _fp_cache.move_to_end(key)
        while len(_fp_cache) > _FP_CACHE_MAX:
            _fp_cache.popitem(last=False)


def clear_fingerprint_cache() -> None:
    """Forget all cached fingerprints (e.g. after rewriting files in place)."""
    with _fp_lock:
        _fp_cache.clear()


def model_fingerprint(path: StrPath) -> str:
    """Content fingerprint of a GGUF model, independent of its path.

    Hex sha256 over the file size and the raw bytes of everything before the
    tensor data: fixed header, metadata key/value section and tensor-info
    table.  Identical files at different paths get the same fingerprint; any
    metadata edit or size change gives a different one.  Tensor *data* is
    not hashed (that would mean reading gigabytes), so two files differing
    only in weight values of identical shape/type share a fingerprint.

    Results are cached in-process keyed by (realpath, size, mtime_ns, inode,
    device); an in-place rewrite that preserves size and mtime (possible
    within one filesystem timestamp tick) is not detected -- call
    :func:`clear_fingerprint_cache` in that case.
    """
    real = os.path.realpath(path)
    fp = _cache_get(_cache_key(real, os.stat(path)))
    if fp is None:
        # max_items=0: nothing needs decoding, only walking.
        _header, digest, st = _read(path, 0, want_fingerprint=True)
        assert digest is not None
        fp = digest
        _cache_put(_cache_key(real, st), fp)
    return fp


# --- summaries --------------------------------------------------------------


def quantization_name(file_type: int | None) -> str | None:
    """Map a ``general.file_type`` value to its llama.cpp name (``"Q4_K_M"``...).

    Unknown ids map to ``"UNKNOWN_<id>"``; ``None`` stays ``None``.
    """
    if file_type is None:
        return None
    guessed = bool(file_type & _FTYPE_GUESSED)
    base = file_type & ~_FTYPE_GUESSED
    name = LLAMA_FTYPE_NAMES.get(base, f"UNKNOWN_{base}")
    return f"{name} (guessed)" if guessed else name


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _array_len(v: Any) -> int | None:
    if isinstance(v, list):
        return len(v)
    if isinstance(v, dict) and v.get("type") == "array":
        length = v.get("length")
        return length if isinstance(length, int) else None
    return None


def summarize_gguf(
    path: StrPath, *, max_array_items: int = DEFAULT_MAX_ARRAY_ITEMS
) -> dict[str, Any]:
    """Summarise a GGUF model for storage/display; JSON-serialisable.

    Keys: format, architecture, name, size_label, parameter_count (sum of
    tensor element counts; ``None`` for tensor-less files), quantization,
    file_type, context_length, vocab_size, chat_template, tensor_count,
    gguf_version, file_size, fingerprint, metadata (the full ``kv`` dict of
    :func:`read_gguf_header`).  Reads the file once; also primes the
    :func:`model_fingerprint` cache.
    """
    header, digest, st = _read(path, max_array_items, want_fingerprint=True)
    assert digest is not None
    _cache_put(_cache_key(os.path.realpath(path), st), digest)
    kv = header.kv
    arch = _str_or_none(kv.get("general.architecture"))
    vocab_size = _array_len(kv.get("tokenizer.ggml.tokens"))
    if vocab_size is None and arch:
        vocab_size = _int_or_none(kv.get(f"{arch}.vocab_size"))
    file_type = _int_or_none(kv.get("general.file_type"))
    return {
        "format": "gguf",
        "architecture": arch,
        "name": _str_or_none(kv.get("general.name")),
        "size_label": _str_or_none(kv.get("general.size_label")),
        "parameter_count": header.parameter_count if header.tensor_count else None,
        "quantization": quantization_name(file_type),
        "file_type": file_type,
        "context_length": _int_or_none(kv.get(f"{arch}.context_length")) if arch else None,
        "vocab_size": vocab_size,
        "chat_template": _str_or_none(kv.get("tokenizer.chat_template")),
        "tensor_count": header.tensor_count,
        "gguf_version": header.version,
        "file_size": header.file_size,
        "fingerprint": digest,
        "metadata": kv,
    }
