"""Build real, tiny GGUF files for tests, examples and benchmarks.

The writers here use the ``gguf`` package (and numpy), which are imported
inside the functions: importing :mod:`cyllama_db.testing` costs nothing and
does not require them.  Install them with ``pip install gguf numpy`` (both are
in the ``dev`` extra).

* :func:`write_tiny_llama` -- a random-weight llama-architecture model with a
  GPT-2 style byte-level BPE vocabulary.  ``llama_cpp.Llama`` loads it in
  milliseconds and greedy decoding produces (nonsense, but deterministic and
  non-empty) text, which makes it suitable for end-to-end tests of anything
  that drives llama-cpp-python.
* :func:`write_large_vocab_gguf` -- the same architecture with a
  150k-token vocabulary and merge list (the size of Qwen/Llama-3 tokenizers),
  for benchmarking metadata readers.  Also loadable by llama.cpp.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import gguf
    import numpy as np

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "bytes_to_unicode",
    "write_large_vocab_gguf",
    "write_tiny_llama",
]

StrPath = Union[str, "os.PathLike[str]"]

#: Plain-text Jinja chat template (no special tokens), understood by
#: llama-cpp-python's ``Jinja2ChatFormatter`` and therefore by
#: ``Llama.create_chat_completion``.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

#: Metadata key recording the ``seed`` the weights were generated from.
SEED_KEY = "cyllama_db.testing.seed"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"

# A handful of merges so the BPE tokenizer actually merges something (and
# "Hello" becomes a single token).  Each merged text is also a vocabulary
# entry, as llama.cpp requires.
_TINY_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġ", "a"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n"),
    ("l", "l"),
    ("Ġt", "he"),
    ("H", "e"),
    ("He", "ll"),
    ("Hell", "o"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("Ġwor", "l"),
    ("Ġworl", "d"),
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping.

    Byte-level BPE vocabularies (tokenizer model ``gpt2`` in GGUF) store every
    token in this alphabet: printable ASCII maps to itself, space to ``Ġ``,
    newline to ``Ċ``, and so on.
    """
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _size_label(n_params: int) -> str:
    from gguf.utility import model_weight_count_rounded_notation

    return str(model_weight_count_rounded_notation(n_params))


def _int_type(values: Sequence[int]) -> gguf.GGUFValueType:
    import gguf

    fits = all(-(2**31) <= v < 2**31 for v in values)
    return gguf.GGUFValueType.INT32 if fits else gguf.GGUFValueType.INT64


def _infer_value(value: Any) -> tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]:
    """Pick a GGUF type for a plain Python metadata value."""
    import gguf

    T = gguf.GGUFValueType
    if isinstance(value, bool):
        return value, T.BOOL, None
    if isinstance(value, int):
        return value, _int_type([value]), None
    if isinstance(value, float):
        return value, T.FLOAT32, None
    if isinstance(value, str):
        return value, T.STRING, None
    if isinstance(value, (list, tuple)) and value:
        items = list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return items, T.ARRAY, _int_type(items)
        _v, sub, _s = _infer_value(items[0])
        if sub == T.ARRAY:
            raise TypeError("nested arrays cannot be stored in GGUF metadata")
        return items, T.ARRAY, sub
    raise TypeError(f"cannot store {value!r} as GGUF metadata (empty or unsupported type)")


class _Meta:
    """Ordered metadata with GGUF types, so later values can replace earlier ones."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]] = {}

    def set(
        self,
        key: str,
        value: Any,
        vtype: gguf.GGUFValueType,
        sub_type: gguf.GGUFValueType | None = None,
    ) -> None:
        self.items[key] = (value, vtype, sub_type)

    def update(self, extra: Mapping[str, Any] | None) -> None:
        """Apply user overrides; a known key keeps its type (llama.cpp checks types)."""
        for key, value in (extra or {}).items():
            if key in self.items:
                _old, vtype, sub = self.items[key]
                if vtype.name == "ARRAY":
                    value = list(value)
                self.items[key] = (value, vtype, sub)
            else:
                self.items[key] = _infer_value(value)

    def write_to(self, writer: gguf.GGUFWriter) -> None:
        for key, (value, vtype, sub) in self.items.items():
            writer.add_key_value(key, value, vtype, sub)


def _llama_metadata(
    *,
    name: str,
    n_vocab: int,
    n_embd: int,
    n_layer: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    n_ctx_train: int,
    file_type: int,
    size_label: str,
    tokens: Sequence[str],
    token_types: Sequence[int],
    scores: Sequence[float] | None,
    merges: Sequence[str],
    bos_id: int,
    eos_id: int,
    chat_template: str | None,
    seed: int,
) -> _Meta:
    import gguf

    T = gguf.GGUFValueType
    K = gguf.Keys
    arch = "llama"
    m = _Meta()
    m.set(K.General.NAME, name, T.STRING)
    m.set(K.General.SIZE_LABEL, size_label, T.STRING)
    m.set(K.General.FILE_TYPE, file_type, T.UINT32)
    m.set(K.General.QUANTIZATION_VERSION, gguf.GGML_QUANT_VERSION, T.UINT32)
    # Metadata-only fingerprints (cyllama_db.stores.gguf.model_fingerprint) would
    # otherwise not tell apart models that differ only in their random weights.
    m.set(SEED_KEY, seed, T.UINT64)
    m.set(K.LLM.VOCAB_SIZE.format(arch=arch), n_vocab, T.UINT32)
    m.set(K.LLM.CONTEXT_LENGTH.format(arch=arch), n_ctx_train, T.UINT32)
    m.set(K.LLM.EMBEDDING_LENGTH.format(arch=arch), n_embd, T.UINT32)
    m.set(K.LLM.BLOCK_COUNT.format(arch=arch), n_layer, T.UINT32)
    m.set(K.LLM.FEED_FORWARD_LENGTH.format(arch=arch), n_ff, T.UINT32)
    m.set(K.Attention.HEAD_COUNT.format(arch=arch), n_head, T.UINT32)
    m.set(K.Attention.HEAD_COUNT_KV.format(arch=arch), n_head_kv, T.UINT32)
    m.set(K.Attention.LAYERNORM_RMS_EPS.format(arch=arch), 1e-5, T.FLOAT32)
    m.set(K.Rope.DIMENSION_COUNT.format(arch=arch), n_embd // n_head, T.UINT32)
    m.set(K.Rope.FREQ_BASE.format(arch=arch), 10000.0, T.FLOAT32)
    m.set(K.Tokenizer.MODEL, "gpt2", T.STRING)
    # "default" is a pre-tokenizer llama.cpp knows; leaving it out works too
    # but prints a "GENERATION QUALITY WILL BE DEGRADED" warning.
    m.set(K.Tokenizer.PRE, "default", T.STRING)
    m.set(K.Tokenizer.LIST, list(tokens), T.ARRAY, T.STRING)
    m.set(K.Tokenizer.TOKEN_TYPE, list(token_types), T.ARRAY, T.INT32)
    if scores is not None:
        m.set(K.Tokenizer.SCORES, list(scores), T.ARRAY, T.FLOAT32)
    m.set(K.Tokenizer.MERGES, list(merges), T.ARRAY, T.STRING)
    m.set(K.Tokenizer.BOS_ID, bos_id, T.UINT32)
    m.set(K.Tokenizer.EOS_ID, eos_id, T.UINT32)
    m.set(K.Tokenizer.ADD_BOS, True, T.BOOL)
    m.set(K.Tokenizer.ADD_EOS, False, T.BOOL)
    if chat_template:
        m.set(K.Tokenizer.CHAT_TEMPLATE, chat_template, T.STRING)
    return m


def _llama_tensors(
    rng: np.random.Generator,
    *,
    n_vocab: int,
    n_embd: int,
    n_layer: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    output_bias: np.ndarray | None,
    embd_dtype: Any,
) -> dict[str, np.ndarray]:
    """Random llama weights, numpy shapes (out, in) = ggml ne reversed.

    Dimension 0 of every token embedding is a large constant, so after the
    final RMS norm it is a near-constant feature.  Column 0 of the output
    matrix is then effectively a per-token logit bias (llama has no output
    bias tensor), which ``output_bias`` uses to steer greedy decoding away
    from EOS and unprintable byte tokens.
    """
    import numpy as np

    f32 = np.float32
    head_dim = n_embd // n_head
    scale = 1.0 / np.sqrt(n_embd)

    def mat(rows: int, cols: int, std: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * std).astype(f32)

    embd = mat(n_vocab, n_embd, 0.3)
    embd[:, 0] = 4.0
    t: dict[str, np.ndarray] = {"token_embd.weight": embd.astype(embd_dtype)}
    for i in range(n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(n_embd, dtype=f32)
        t[p + "attn_q.weight"] = mat(n_head * head_dim, n_embd, scale)
        t[p + "attn_k.weight"] = mat(n_head_kv * head_dim, n_embd, scale)
        t[p + "attn_v.weight"] = mat(n_head_kv * head_dim, n_embd, scale)
        t[p + "attn_output.weight"] = mat(n_embd, n_head * head_dim, 0.1 * scale)
        t[p + "ffn_norm.weight"] = np.ones(n_embd, dtype=f32)
        t[p + "ffn_gate.weight"] = mat(n_ff, n_embd, scale)
        t[p + "ffn_up.weight"] = mat(n_ff, n_embd, scale)
        t[p + "ffn_down.weight"] = mat(n_embd, n_ff, 0.1 / np.sqrt(n_ff))
    t["output_norm.weight"] = np.ones(n_embd, dtype=f32)
    if output_bias is not None:
        out = mat(n_vocab, n_embd, 0.5)
        out[:, 0] = output_bias.astype(f32)
        t["output.weight"] = out
    return t


def _write(path: Path, meta: _Meta, tensors: Mapping[str, np.ndarray]) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    try:
        meta.write_to(writer)
        for tname, arr in tensors.items():
            writer.add_tensor(tname, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def _check_dims(n_embd: int, n_head: int, n_head_kv: int) -> None:
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(
            f"n_embd ({n_embd}) must be divisible by n_head ({n_head}) and "
            f"n_head by n_head_kv ({n_head_kv})"
        )


def write_tiny_llama(
    path: StrPath,
    *,
    seed: int = 0,
    n_embd: int = 64,
    n_layer: int = 2,
    n_ff: int = 128,
    n_head: int = 4,
    n_head_kv: int | None = None,
    n_ctx_train: int = 512,
    name: str = "tiny-test-llama",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a tiny random-weight llama model (~0.5 MB, float32) to ``path``.

    The vocabulary is GPT-2 style byte-level BPE: the 256 byte tokens, the
    merges in ``_TINY_MERGES`` and BOS/EOS control tokens (last two ids).
    Output weights favour ASCII letters and space and penalise EOS, so greedy
    decoding of e.g. ``"Hello"`` yields a few deterministic words instead of
    stopping immediately.  Different seeds give different weights and text
    (and, via the ``cyllama_db.testing.seed`` key, different fingerprints).

    ``n_ctx_train`` defaults to 512, llama-cpp-python's default ``n_ctx``:
    a smaller value makes llama.cpp print an "n_ctx_seq > n_ctx_train"
    warning to stderr even with ``verbose=False``.

    ``extra_metadata`` adds or overrides metadata keys; an override of a
    standard key keeps that key's GGUF type, new keys get a type inferred
    from the Python value (bool, int32/int64, float32, str, or a list).

    Returns the path written.  Needs ``gguf`` and ``numpy``.
    """
    import gguf
    import numpy as np

    n_head_kv = n_head if n_head_kv is None else n_head_kv
    _check_dims(n_embd, n_head, n_head_kv)
    byte_chars = bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    merges: list[str] = []
    for left, right in _TINY_MERGES:
        merges.append(f"{left} {right}")
        tokens.append(left + right)
    bos_id, eos_id = len(tokens), len(tokens) + 1
    tokens += [BOS_TOKEN, EOS_TOKEN]
    n_vocab = len(tokens)
    TT = gguf.TokenType
    token_types = [int(TT.NORMAL)] * (n_vocab - 2) + [int(TT.CONTROL)] * 2

    # Column-0 weights act as a logit bias (see _llama_tensors; the feature is
    # ~5-7 after the norm): favour ASCII letters, space and merged tokens over
    # control bytes, punctuation, UTF-8 fragments and, most of all, BOS/EOS.
    good = {byte_chars[c] for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ "}
    bias = np.array(
        [0.25 if (tok in good or i >= 256) else -0.5 for i, tok in enumerate(tokens)],
        dtype=np.float32,
    )
    bias[bos_id] = bias[eos_id] = -1.0

    rng = np.random.default_rng(seed)
    tensors = _llama_tensors(
        rng,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        output_bias=bias,
        embd_dtype=np.float32,
    )
    n_params = sum(int(a.size) for a in tensors.values())
    meta = _llama_metadata(
        name=name,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ctx_train=n_ctx_train,
        file_type=int(gguf.LlamaFileType.ALL_F32),
        size_label=_size_label(n_params),
        tokens=tokens,
        token_types=token_types,
        scores=[0.0] * n_vocab,
        merges=merges,
        bos_id=bos_id,
        eos_id=eos_id,
        chat_template=chat_template,
        seed=seed,
    )
    meta.update(extra_metadata)
    return _write(Path(path), meta, tensors)


# Relative frequency of token lengths (in characters, index = length) in
# real ~150k BPE vocabularies: mean ~6.5, long tail.
_TOKEN_LENGTH_WEIGHTS = (0, 0, 4, 8, 10, 11, 10, 9, 7, 5, 4, 3, 2, 1, 1, 1)


def _large_vocab(n_vocab: int, seed: int) -> tuple[list[str], list[str], int]:
    """Tokens and a consistent merge list for a byte-level BPE vocabulary.

    Every merge "a b" joins two existing tokens into a new one that is also
    in the vocabulary, like a real trained tokenizer, so llama.cpp accepts it.
    Returns (tokens, merges, number of normal tokens); the special tokens
    (EOS first) follow the normal ones.
    """
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_chars = bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    n_merges = n_vocab - len(tokens) - len(specials)
    if n_merges < 0:
        raise ValueError(f"n_vocab must be at least {len(tokens) + len(specials)}")
    seen = set(tokens)
    by_len: dict[int, list[str]] = {
        1: [byte_chars[c] for c in b"abcdefghijklmnopqrstuvwxyz"] + ["Ġ"]
    }
    rnd = random.Random(seed)
    lengths: list[int] = []
    merges: list[str] = []
    while len(merges) < n_merges:
        if not lengths:
            lengths = rnd.choices(range(len(_TOKEN_LENGTH_WEIGHTS)), _TOKEN_LENGTH_WEIGHTS, k=4096)
        target = lengths.pop()
        right_len = 1 if target == 2 else rnd.choice((1, 1, 2))
        lefts, rights = by_len.get(target - right_len), by_len.get(right_len)
        if not lefts or not rights:
            continue
        left = lefts[rnd.randrange(len(lefts))]
        right = rights[rnd.randrange(len(rights))]
        new = left + right
        if new in seen:
            continue
        seen.add(new)
        tokens.append(new)
        merges.append(f"{left} {right}")
        by_len.setdefault(target, []).append(new)
    n_normal = len(tokens)
    return tokens + specials, merges, n_normal


def write_large_vocab_gguf(
    path: StrPath,
    n_vocab: int = 150_000,
    *,
    seed: int = 0,
    n_embd: int = 16,
    n_layer: int = 1,
    n_ff: int = 32,
    n_head: int = 2,
    n_ctx_train: int = 4096,
    name: str = "large-vocab-test",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a llama model with an ``n_vocab``-token BPE vocabulary.

    The metadata has the shape of a real modern GGUF: ``tokenizer.ggml.tokens``
    (n_vocab strings), ``scores`` (float32), ``token_type`` (int32) and
    ``merges`` (~n_vocab strings), followed by scalar keys and the chat
    template.  Weights are minimal (``n_embd`` = 16, token embeddings in F16,
    output tied to them), giving a ~5 MB file dominated by the vocabulary,
    which ``llama_cpp.Llama`` loads (with or without ``vocab_only=True``).
    """
    import gguf
    import numpy as np

    _check_dims(n_embd, n_head, n_head)
    tokens, merges, n_normal = _large_vocab(n_vocab, seed)
    eos_id = n_normal
    token_types = [int(gguf.TokenType.NORMAL)] * n_normal + [int(gguf.TokenType.CONTROL)] * (
        len(tokens) - n_normal
    )
    scores = [-float(i) for i in range(len(tokens))]
    rng = np.random.default_rng(seed)
    tensors = _llama_tensors(
        rng,
        n_vocab=len(tokens),
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head,
        output_bias=None,
        embd_dtype=np.float16,
    )
    n_params = sum(int(a.size) for a in tensors.values())
    meta = _llama_metadata(
        name=name,
        n_vocab=len(tokens),
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head,
        n_ctx_train=n_ctx_train,
        file_type=int(gguf.LlamaFileType.MOSTLY_F16),
        size_label=_size_label(n_params),
        tokens=tokens,
        token_types=token_types,
        scores=scores,
        merges=merges,
        bos_id=eos_id,
        eos_id=eos_id,
        chat_template=chat_template,
        seed=seed,
    )
    meta.update(extra_metadata)
    return _write(Path(path), meta, tensors)
