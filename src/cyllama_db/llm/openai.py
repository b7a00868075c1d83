"""llama-cpp-python's (OpenAI-shaped) result dicts: build, store, rebuild and replay them.

A generation's dict is stored in the cache as a *skeleton*: the dict with
its text taken out (``choices[0].text`` or ``choices[0].message.content``
set to null), because the text is already the entry's ``response_text``.
A hit puts the text back, gives the dict a fresh ``id`` and ``created``
(every call returns its own response object, as llama-cpp-python does),
and says where it came from in one extra top-level member::

    "cyllama_db": {"cache_hit": true, "cache_key": "<sha256>", "original_id": "cmpl-..."}

A miss carries the same member with ``"cache_hit": false``, so hits and
misses have the same keys. Streams are replayed as chunk dicts shaped like
llama-cpp-python's own.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "MARKER",
    "accumulate_chunks",
    "build_dict",
    "mark",
    "plain",
    "rebuild",
    "replay_chunks",
    "skeleton",
    "split_text",
    "text_of",
]

#: The top-level key that says whether a dict came from the cache.
MARKER: Final = "cyllama_db"

# A word with its leading whitespace, long runs cut at 8 characters (about a
# token or two), so replayed streams arrive in pieces of a familiar size.
_WORDS = re.compile(r"\s*\S{1,8}|\s+")


def _json_default(value: Any) -> Any:
    # llama-cpp-python puts numpy float32 values in its logprobs, which
    # json.dumps refuses; .item() gives the plain Python number.
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def plain(out: Any) -> Any:
    """``out`` with numpy scalars turned into Python numbers (so ``json.dumps`` takes it)."""
    return json.loads(json.dumps(out, default=_json_default))


def split_text(text: str) -> list[str]:
    """Split text into word-sized chunks that join back to exactly ``text``."""
    return _WORDS.findall(text)


def _new_id(kind: str) -> str:
    import uuid  # not at import time: ~2 ms that only dicts of results need
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + str(uuid.uuid4())


def text_of(out: Mapping[str, Any], kind: str) -> str:
    """The generated text of a completion or chat-completion dict."""
    choice = out["choices"][0]
    if kind == "chat":
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


def usage_of(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int]:
    prompt = prompt_tokens or 0
    completion = completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def build_dict(
    kind: str,
    text: str,
    finish_reason: str | None,
    model: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> dict[str, Any]:
    """A llama-cpp-python-shaped dict for a result known only by its text and counts."""
    choice: dict[str, Any]
    if kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": _new_id(kind),
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage_of(prompt_tokens, completion_tokens),
    }


def skeleton(out: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``out`` without its text (and without our marker): what the cache stores beside the text."""
    data = copy.deepcopy(dict(out))
    data.pop(MARKER, None)
    choices = data.get("choices") or [{}]
    first = dict(choices[0])
    if kind == "chat":
        message = dict(first.get("message") or {})
        message["content"] = None if message.get("content") is not None else message.get("content")
        first["message"] = message
    else:
        first["text"] = None
    data["choices"] = [first, *choices[1:]]
    return data


def rebuild(
    skeleton_data: Mapping[str, Any] | str,
    kind: str,
    text: str,
    model: str,
) -> dict[str, Any]:
    """A full dict from a stored skeleton and its text, with a fresh id and creation time."""
    data = json.loads(skeleton_data) if isinstance(skeleton_data, str) else copy.deepcopy(dict(skeleton_data))
    first = data["choices"][0]
    if kind == "chat":
        message = first.setdefault("message", {"role": "assistant"})
        # A tool-call answer has no content; a text answer gets its text back.
        if text or not message.get("tool_calls"):
            message["content"] = text
    else:
        first["text"] = text
    original = data.get("id")
    data["id"] = _new_id(kind)
    data["created"] = int(time.time())
    data["model"] = model
    data.setdefault("usage", usage_of(None, None))
    if original:
        data["_original_id"] = original
    return data


def mark(out: dict[str, Any], cache_hit: bool, key: str | None) -> dict[str, Any]:
    """Add the ``cyllama_db`` member (in place) and return ``out``."""
    original = out.pop("_original_id", None)
    info: dict[str, Any] = {"cache_hit": cache_hit, "cache_key": key}
    if cache_hit and original:
        info["original_id"] = original
    out[MARKER] = info
    return out


def replay_chunks(out: Mapping[str, Any], kind: str) -> Iterator[dict[str, Any]]:
    """Chunk dicts, shaped like llama-cpp-python's stream, that replay the complete dict ``out``."""
    base = {"id": out["id"], "created": out["created"], "model": out["model"]}
    extra = {MARKER: out[MARKER]} if MARKER in out else {}
    first = out["choices"][0]
    finish = first.get("finish_reason")
    if kind == "chat":
        obj = "chat.completion.chunk"
        message = first.get("message") or {}
        yield {**base, "object": obj, **extra,
               "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]}
        for piece in split_text(message.get("content") or ""):
            yield {**base, "object": obj, **extra,
                   "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]}
        tool_calls = message.get("tool_calls")
        if tool_calls:
            deltas = [{"index": i, **copy.deepcopy(call)} for i, call in enumerate(tool_calls)]
            yield {**base, "object": obj, **extra,
                   "choices": [{"index": 0, "delta": {"tool_calls": deltas}, "logprobs": None, "finish_reason": None}]}
        yield {**base, "object": obj, **extra,
               "choices": [{"index": 0, "delta": {}, "logprobs": first.get("logprobs"), "finish_reason": finish}]}
        return
    pieces = split_text(first.get("text") or "")
    logprobs = first.get("logprobs")
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        yield {**base, "object": "text_completion", **extra, "choices": [
            {"text": piece, "index": 0, "logprobs": logprobs if last else None,
             "finish_reason": finish if last else None}]}
    if not pieces:
        yield {**base, "object": "text_completion", **extra, "choices": [
            {"text": "", "index": 0, "logprobs": logprobs, "finish_reason": finish}]}


def _merge_logprobs(total: dict[str, Any] | None, part: Any) -> dict[str, Any] | None:
    if not isinstance(part, Mapping):
        return total
    if total is None:
        return copy.deepcopy(dict(part))
    for name, value in part.items():
        if isinstance(value, list) and isinstance(total.get(name), list):
            total[name].extend(copy.deepcopy(value))
        elif name not in total:
            total[name] = copy.deepcopy(value)
    return total


def accumulate_chunks(chunks: Sequence[Mapping[str, Any]], kind: str, model: str) -> dict[str, Any]:
    """The complete dict that a list of streamed chunk dicts adds up to (for the cache)."""
    text_parts: list[str] = []
    finish: str | None = None
    logprobs: dict[str, Any] | None = None
    tool_calls: dict[int, dict[str, Any]] = {}
    role = "assistant"
    head: Mapping[str, Any] = chunks[0] if chunks else {}
    for chunk in chunks:
        choices = chunk.get("choices") or []
        if not choices:
            continue
        choice = choices[0]
        if choice.get("finish_reason"):
            finish = choice["finish_reason"]
        logprobs = _merge_logprobs(logprobs, choice.get("logprobs"))
        if kind == "chat":
            delta = choice.get("delta") or {}
            role = delta.get("role") or role
            if delta.get("content"):
                text_parts.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", len(tool_calls)))
                current = tool_calls.setdefault(index, {"id": None, "type": "function",
                                                        "function": {"name": "", "arguments": ""}})
                if call.get("id"):
                    current["id"] = call["id"]
                if call.get("type"):
                    current["type"] = call["type"]
                function = call.get("function") or {}
                if function.get("name"):
                    current["function"]["name"] += function["name"]
                if function.get("arguments"):
                    current["function"]["arguments"] += function["arguments"]
        elif choice.get("text"):
            text_parts.append(choice["text"])
    text = "".join(text_parts)
    out = build_dict(kind, text, finish, model, None, None)
    if head.get("id"):
        out["id"] = head["id"]
    if head.get("created"):
        out["created"] = head["created"]
    first = out["choices"][0]
    first["logprobs"] = logprobs
    if kind == "chat":
        first["message"]["role"] = role
        if tool_calls:
            first["message"]["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
            if not text:
                first["message"]["content"] = None
    return out
