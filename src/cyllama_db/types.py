"""The value types of a generation: :class:`GenerationConfig` (what to sample),
:class:`GenerationStats` and :class:`Response` (what came back).

They are shared by the inference wrapper, the response cache and the
statistics store, and import nothing of theirs, so any store can use them
without importing llama.cpp plumbing (and without an import loop).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from .stores.keys import canonical_json

__all__ = ["GenerationConfig", "GenerationStats", "Response", "hit_stats", "response_format_schema"]


# -- configuration -------------------------------------------------------------------------------

_FLOAT_FIELDS: Final = (
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "mirostat_tau",
    "mirostat_eta",
)
# GenerationConfig.replace() results, by (config, *sorted (name, type, value)).
_REPLACED: dict[tuple[Any, ...], GenerationConfig] = {}
_REPLACED_MAX = 256
# frequency_penalty and presence_penalty may be negative (llama.cpp and the
# OpenAI API both allow it: a negative value favours repetition).
_UNIT_FIELDS: Final = ("top_p", "min_p", "typical_p")


def _check_float(name: str, value: Any, *, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"GenerationConfig.{name} must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond a double's range
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"GenerationConfig.{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"GenerationConfig.{name} must be >= {minimum:g}, got {value!r}")
    return value


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"GenerationConfig.{name} must be an int, got {type(value).__name__}")
    return int(value)


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling options of one generation (immutable; derive variants with :meth:`replace`).

    Defaults are llama-cpp-python's ``create_completion`` defaults, except
    ``max_tokens`` (512 rather than 16):

    ==================== ========= ===================================================
    field                default   meaning
    ==================== ========= ===================================================
    max_tokens           512       most tokens to generate; None = until the context fills
    temperature          0.8       0 = greedy (deterministic)
    top_k                40        keep the k most likely tokens (0 = all)
    top_p                0.95      nucleus sampling
    min_p                0.05      drop tokens below min_p x the top probability
    typical_p            1.0       locally typical sampling (1.0 = off)
    repeat_penalty       1.0       penalty on recently seen tokens (1.0 = off)
    frequency_penalty    0.0       OpenAI-style frequency penalty
    presence_penalty     0.0       OpenAI-style presence penalty
    mirostat_mode        0         0 off, 1 Mirostat, 2 Mirostat 2.0
    mirostat_tau         5.0       Mirostat target entropy
    mirostat_eta         0.1       Mirostat learning rate
    stop_sequences       ()        strings that end the generation (sorted, deduplicated)
    seed                 None      sampling seed; None = the model's; not part of cache keys
    grammar              None      GBNF grammar text (or a ``llama_cpp.LlamaGrammar``), checked
    logit_bias           None      {token_id: bias} added to logits
    tfs_z                1.0       tail-free sampling (1.0 = off; llama-cpp-python's own field)
    suffix               None      text after the completion (infill models; completion only)
    echo                 False     return the prompt before the completion (completion only)
    logprobs             None      completion: how many top log-probabilities per token;
                                   chat: True to return them (see ``top_logprobs``)
    top_logprobs         None      chat: how many top log-probabilities per token
    response_format      None      ``{"type": "json_object", "schema": {...}}`` (llama-cpp-python)
                                   or OpenAI's ``{"type": "json_schema", "json_schema": {...}}``
    tools                None      chat tools (OpenAI shape), kept in order
    tool_choice          None      "auto", "none", "required" or ``{"type": "function", ...}``
    functions            None      chat functions (the older OpenAI name for tools)
    function_call        None      the older OpenAI name for ``tool_choice``
    ==================== ========= ===================================================

    ``stop`` (llama-cpp-python's name) is accepted for ``stop_sequences``
    wherever fields are given by name (``replace``, ``LLM``, ``complete``...).
    The fields after ``logit_bias`` are part of cache keys only when they
    differ from their defaults, so keys made before they existed still hit.
    """

    max_tokens: int | None = 512
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None
    logit_bias: Mapping[int, float] | None = None
    tfs_z: float = 1.0
    suffix: str | None = None
    echo: bool = False
    logprobs: int | bool | None = None
    top_logprobs: int | None = None
    response_format: Mapping[str, Any] | None = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    functions: tuple[Mapping[str, Any], ...] | None = None
    function_call: str | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.max_tokens is not None:
            max_tokens = _check_int("max_tokens", self.max_tokens)
            if max_tokens < 1:
                raise ValueError(
                    f"GenerationConfig.max_tokens must be >= 1, got {max_tokens} "
                    "(use None to generate until the context is full)"
                )
            put("max_tokens", max_tokens)
        for name in _FLOAT_FIELDS:
            put(name, _check_float(name, getattr(self, name)))
        for name in _UNIT_FIELDS:
            if getattr(self, name) > 1.0:
                raise ValueError(f"GenerationConfig.{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"GenerationConfig.repeat_penalty must be > 0, got {self.repeat_penalty!r}")
        put("frequency_penalty", _check_float("frequency_penalty", self.frequency_penalty, minimum=None))
        put("presence_penalty", _check_float("presence_penalty", self.presence_penalty, minimum=None))
        top_k = _check_int("top_k", self.top_k)
        if top_k < 0:
            raise ValueError(f"GenerationConfig.top_k must be >= 0 (0 = no limit), got {top_k}")
        put("top_k", top_k)
        mode = _check_int("mirostat_mode", self.mirostat_mode)
        if mode not in (0, 1, 2):
            raise ValueError(f"GenerationConfig.mirostat_mode must be 0, 1 or 2, got {mode}")
        put("mirostat_mode", mode)
        put("stop_sequences", _normalise_stops(self.stop_sequences))
        if self.seed is not None:
            put("seed", _check_int("seed", self.seed))
        if self.grammar is not None:
            from .llm.grammar import grammar_text

            if not isinstance(self.grammar, str) and not type(self.grammar).__module__.startswith("llama_cpp"):
                raise TypeError(
                    "GenerationConfig.grammar must be GBNF text (str) or a llama_cpp.LlamaGrammar, "
                    f"got {type(self.grammar).__name__}"
                )

            # llama.cpp takes an empty grammar as no constraint: so does the key.
            put("grammar", grammar_text(self.grammar) or None)
        if self.logit_bias is not None:
            put("logit_bias", _normalise_bias(self.logit_bias))
        _check_request_fields(self, put)

    # The canonical JSON is cached on the instance: keying a hit must not
    # re-serialise the config every time.
    def cache_json(self) -> str:
        """Canonical JSON of the fields that decide the output (everything but ``seed``)."""
        cached: str | None = self.__dict__.get("_cache_json")
        if cached is None:
            data = self.to_dict()
            del data["seed"]
            for name, default in _OPTIONAL_KEY_FIELDS.items():
                if data[name] == default and type(data[name]) is type(default):
                    del data[name]
            cached = canonical_json(data)
            object.__setattr__(self, "_cache_json", cached)
        return cached

    def __hash__(self) -> int:
        return hash((self.cache_json(), self.seed))

    def __reduce__(self) -> tuple[Any, ...]:
        # logit_bias is a read-only mapping proxy, which pickle cannot copy.
        return (GenerationConfig.from_dict, (self.to_dict(),))

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with ``changes`` applied; an unknown name raises ``TypeError`` naming it."""
        if "stop" in changes:
            changes = _alias_stop(changes, "GenerationConfig.replace()")
        unknown = [name for name in changes if name not in _CONFIG_FIELDS]
        if unknown:
            raise TypeError(_unknown_message("GenerationConfig", unknown[0], _CONFIG_FIELDS))
        if not changes:
            return self
        # The same overrides on the same config, call after call (complete(...,
        # temperature=0)), would rebuild and revalidate a config every time,
        # which costs more than a cache hit's SELECT. Types are part of the
        # memo key: 0 == False == 0.0, but only some of them are valid.
        try:
            memo_key = (self, *sorted((k, type(v), v) for k, v in changes.items()))
            done = _REPLACED.get(memo_key)
        except TypeError:  # an unhashable value (a list of stops, a dict): no memo
            return dataclasses.replace(self, **changes)
        if done is None:
            done = dataclasses.replace(self, **changes)
            if len(_REPLACED) >= _REPLACED_MAX:
                _REPLACED.clear()
            _REPLACED[memo_key] = done
        return done

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready value (``logit_bias`` keys become strings)."""
        out = {f: getattr(self, f) for f in _CONFIG_FIELDS}
        out["stop_sequences"] = list(self.stop_sequences)
        if self.logit_bias is not None:
            out["logit_bias"] = {str(k): v for k, v in self.logit_bias.items()}
        for name in _JSON_FIELDS:
            value = out[name]
            if value is not None:
                out[name] = json.loads(canonical_json(list(value) if isinstance(value, tuple) else value))
        return out

    def to_json(self) -> str:
        """Canonical JSON of every field (cached on the instance)."""
        cached: str | None = self.__dict__.get("_json")
        if cached is None:
            cached = canonical_json(self.to_dict())
            object.__setattr__(self, "_json", cached)
        return cached

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError`` naming them."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping of GenerationConfig fields, got {type(data).__name__}")
        if "stop" in data:
            data = _alias_stop(data, "GenerationConfig.from_dict()")
        unknown = [k for k in data if k not in _CONFIG_FIELDS]
        if unknown:
            raise TypeError(_unknown_message("GenerationConfig", str(unknown[0]), _CONFIG_FIELDS))
        return cls(**data)

    @property
    def sampled(self) -> bool:
        """Whether the output is random: temperature > 0 and no fixed ``seed``."""
        return self.temperature > 0 and self.seed is None

    @classmethod
    def coerce(cls, value: GenerationConfig | Mapping[str, Any] | None) -> GenerationConfig:
        """``value`` as a config: a config as is, a mapping via :meth:`from_dict`, None = defaults."""
        if value is None:
            return _DEFAULT_CONFIG
        if isinstance(value, GenerationConfig):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(f"config must be a GenerationConfig or a dict, got {type(value).__name__}")


def _normalise_stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(
            f"GenerationConfig.stop_sequences must be a str or a list of str, got {type(value).__name__}"
        ) from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"GenerationConfig.stop_sequences must contain non-empty strings, got {item!r}")
    # Sorted so that the order the user listed them in does not split cache entries.
    return tuple(sorted(set(items)))


def _normalise_bias(value: Any) -> Mapping[int, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"GenerationConfig.logit_bias must be a dict {{token_id: bias}}, got {type(value).__name__}")
    out: dict[int, float] = {}
    for k, v in value.items():
        try:
            token = int(k)
        except (TypeError, ValueError):
            raise TypeError(f"GenerationConfig.logit_bias keys must be token ids, got {k!r}") from None
        out[token] = _check_float(f"logit_bias[{token}]", v, minimum=None)
    return MappingProxyType(dict(sorted(out.items())))


_CONFIG_FIELDS: Final = tuple(f.name for f in dataclasses.fields(GenerationConfig))
# Fields added after keys were first made: left out of cache_json() at these
# defaults, so every key made before they existed is still the same.
_OPTIONAL_KEY_FIELDS: Final[dict[str, Any]] = {
    "tfs_z": 1.0, "suffix": None, "echo": False, "logprobs": None, "top_logprobs": None,
    "response_format": None, "tools": None, "tool_choice": None, "functions": None,
    "function_call": None,
}
# Fields holding JSON structures (frozen as canonical JSON copies).
_JSON_FIELDS: Final = ("response_format", "tools", "tool_choice", "functions", "function_call")


def _alias_stop(values: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``values`` with llama-cpp-python's ``stop`` renamed to ``stop_sequences``."""
    out = dict(values)
    if "stop_sequences" in out:
        raise TypeError(f"{owner} got both stop and stop_sequences; they are the same option")
    out["stop_sequences"] = out.pop("stop")
    return out


def _frozen_json(value: Any, name: str) -> Any:
    """A deep, immutable-by-convention copy of a JSON value (TypeError naming ``name`` otherwise)."""
    try:
        return json.loads(canonical_json(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"GenerationConfig.{name} must hold only JSON values: {exc}") from exc


def _check_tool_list(value: Any, name: str) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"GenerationConfig.{name} must be a list of dicts, got {type(value).__name__}")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise TypeError(f"GenerationConfig.{name}[{i}] must be a dict, got {type(item).__name__}")
        function = item.get("function") if name == "tools" else item
        if name == "tools" and item.get("type", "function") != "function":
            raise ValueError(f"GenerationConfig.tools[{i}] has type {item.get('type')!r}; only 'function' tools exist")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
            where = f"tools[{i}]['function']" if name == "tools" else f"functions[{i}]"
            raise ValueError(f"GenerationConfig.{where} needs a non-empty str 'name'")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, (Mapping, bool)):
            raise TypeError(f"GenerationConfig.{name}[{i}] parameters must be a JSON schema (dict)")
        items.append(_frozen_json(item, f"{name}[{i}]"))
    return tuple(items)


def _check_choice(value: Any, name: str, words: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        if value not in words:
            raise ValueError(f"GenerationConfig.{name} must be one of {', '.join(words)} or a dict, got {value!r}")
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"GenerationConfig.{name} must be a str or a dict, got {type(value).__name__}")
    return _frozen_json(value, name)


def _check_response_format(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"GenerationConfig.response_format must be a dict, got {type(value).__name__}")
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise ValueError(
            "GenerationConfig.response_format['type'] must be 'text', 'json_object' or 'json_schema', "
            f"got {kind!r}"
        )
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), (Mapping, bool)):
            raise ValueError(
                "GenerationConfig.response_format of type 'json_schema' needs "
                "{'json_schema': {'name': ..., 'schema': {...}}}"
            )
    elif kind == "json_object" and "schema" in value and not isinstance(value["schema"], (Mapping, bool)):
        raise TypeError("GenerationConfig.response_format['schema'] must be a JSON schema (dict)")
    frozen: Mapping[str, Any] = _frozen_json(value, "response_format")
    return frozen


def response_format_schema(response_format: Mapping[str, Any] | None) -> Any:
    """The JSON schema a ``response_format`` asks for: a dict/bool, ``{}`` for any JSON, None for text."""
    if response_format is None or response_format.get("type") == "text":
        return None
    if response_format.get("type") == "json_schema":
        return response_format["json_schema"]["schema"]
    return response_format.get("schema", {})


def _check_request_fields(config: GenerationConfig, put: Callable[[str, Any], None]) -> None:
    """Validate (and freeze) the fields after ``logit_bias`` (llama-cpp-python's request options)."""
    put("tfs_z", _check_float("tfs_z", config.tfs_z))
    if config.suffix is not None and not isinstance(config.suffix, str):
        raise TypeError(f"GenerationConfig.suffix must be a str or None, got {type(config.suffix).__name__}")
    if not isinstance(config.echo, bool):
        raise TypeError(f"GenerationConfig.echo must be True or False, got {config.echo!r}")
    logprobs = config.logprobs
    if logprobs is not None and not isinstance(logprobs, bool):
        if _check_int("logprobs", logprobs) < 0:
            raise ValueError(f"GenerationConfig.logprobs must be >= 0, got {logprobs}")
        put("logprobs", int(logprobs))
    if config.top_logprobs is not None and _check_int("top_logprobs", config.top_logprobs) < 0:
        raise ValueError(f"GenerationConfig.top_logprobs must be >= 0, got {config.top_logprobs}")
    if config.response_format is not None:
        put("response_format", _check_response_format(config.response_format))
    for name in ("tools", "functions"):
        value = getattr(config, name)
        if value is not None:
            put(name, _check_tool_list(value, name))
    if config.tool_choice is not None:
        put("tool_choice", _check_choice(config.tool_choice, "tool_choice", ("auto", "none", "required")))
    if config.function_call is not None:
        put("function_call", _check_choice(config.function_call, "function_call", ("auto", "none")))


_DEFAULT_CONFIG: Final = GenerationConfig()


def _unknown_message(owner: str, name: str, known: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{owner} got an unexpected keyword argument {name!r}.{hint}"


# -- results -------------------------------------------------------------------------------------

_STATS_INT: Final = ("prompt_tokens", "generated_tokens", "total_tokens")
_STATS_FLOAT: Final = ("prompt_time_ms", "generation_time_ms", "total_time_ms", "tokens_per_second")


@dataclass
class GenerationStats:
    """Token counts and timings of one generation (every field optional).

    Times come from llama.cpp's own performance counters (prompt
    evaluation and token generation) where available; ``total_time_ms`` is
    the wall time of the call. For a cache hit the counts are those of the
    original generation, the prompt/generation times are 0, the total is the
    time the lookup took, and ``tokens_per_second`` is None.
    """

    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    total_tokens: int | None = None
    prompt_time_ms: float | None = None
    generation_time_ms: float | None = None
    total_time_ms: float | None = None
    tokens_per_second: float | None = None

    def __post_init__(self) -> None:
        for name in _STATS_INT:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"GenerationStats.{name} must be an int or None, got {value!r}")
        for name in _STATS_FLOAT:
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    abs(value) < 2**1023 if isinstance(value, int) else math.isfinite(value)
                ):
                    raise TypeError(f"GenerationStats.{name} must be a finite number or None, got {value!r}")
                object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready value (None for what is unknown), in declaration order."""
        return {name: getattr(self, name) for name in _STATS_INT + _STATS_FLOAT}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationStats:
        """Inverse of :meth:`to_dict`; missing fields are None.

        Raises ``TypeError`` naming an unknown key, or a field of the wrong
        type (counts must be ints, times and rates finite numbers).
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"GenerationStats.from_dict needs a mapping, got {type(data).__name__}")
        unknown = [k for k in data if k not in _STATS_INT + _STATS_FLOAT]
        if unknown:
            raise TypeError(_unknown_message("GenerationStats", str(unknown[0]), _STATS_INT + _STATS_FLOAT))
        return cls(**data)


@dataclass
class Response:
    """The result of one generation; ``str(response)`` is the text.

    ``finish_reason`` is llama.cpp's: ``"stop"`` (end of sequence or a stop
    sequence), ``"length"`` (``max_tokens`` reached), or ``"cancelled"`` for
    a stream the consumer closed early.
    """

    text: str
    finish_reason: str | None = None
    model_path: str = ""
    cache_hit: bool = False
    stats: GenerationStats = field(default_factory=GenerationStats)
    kind: str = "completion"

    # Not fields: where to_openai() finds llama-cpp-python's dict. ``_source``
    # is the dict a generation returned; ``_stored`` the cache row's
    # response_json (parsed only if to_openai() is called); ``_key`` the cache key.
    _source: Mapping[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _stored: str | None = field(default=None, init=False, repr=False, compare=False)
    _key: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("completion", "chat"):
            raise ValueError(f"Response.kind must be 'completion' or 'chat', got {self.kind!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"Response.text must be a str, got {type(self.text).__name__}")
        if self.finish_reason is not None and not isinstance(self.finish_reason, str):
            raise TypeError(f"Response.finish_reason must be a str or None, got {self.finish_reason!r}")
        if isinstance(self.model_path, os.PathLike):
            self.model_path = os.fspath(self.model_path)
        if not isinstance(self.model_path, str):
            raise TypeError(f"Response.model_path must be a str, got {self.model_path!r}")
        if not isinstance(self.cache_hit, bool):
            raise TypeError(f"Response.cache_hit must be a bool, got {self.cache_hit!r}")
        if self.stats is None:
            self.stats = GenerationStats()
        elif isinstance(self.stats, Mapping):
            self.stats = GenerationStats.from_dict(self.stats)
        elif not isinstance(self.stats, GenerationStats):
            raise TypeError(f"Response.stats must be a GenerationStats, got {type(self.stats).__name__}")

    def __str__(self) -> str:
        return self.text

    def to_openai(self, model: str | None = None) -> dict[str, Any]:
        """llama-cpp-python's (OpenAI-shaped) dict of this result: ``id``, ``object``,
        ``created``, ``model``, ``choices``, ``usage``, plus ``"cyllama_db": {"cache_hit",
        "cache_key"}``.

        Tool calls, log-probabilities and usage of the original generation are
        kept through the cache; a hit gets a fresh ``id`` and ``created``
        (``cyllama_db.original_id`` names the generation it replays).
        ``model`` is the dict's ``model`` (default: :attr:`model_path`).
        The dict is new on every call and ``json.dumps`` takes it as is.
        """
        from .llm.openai import build_dict, mark, plain, rebuild

        name = self.model_path if model is None else model
        source = self._source
        if source is not None:
            out = plain(source)
            out.pop("cyllama_db", None)
            if model is not None:
                out["model"] = model
        else:
            stored = self._stored_openai()
            if stored is not None:
                out = rebuild(stored, self.kind, self.text, name)
            else:
                stats = self.stats
                out = build_dict(
                    self.kind, self.text, self.finish_reason, name, stats.prompt_tokens, stats.generated_tokens
                )
        if self.cache_hit and source is not None:
            out = rebuild(out, self.kind, self.text, name)
        return mark(out, self.cache_hit, self._key)

    def _stored_openai(self) -> Any:
        if self._stored is None:
            return None
        try:
            return json.loads(self._stored).get("openai")
        except (ValueError, AttributeError):
            return None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls of a chat answer (OpenAI shape), ``[]`` when there are none."""
        if self.kind != "chat":
            return []
        message = self.to_openai()["choices"][0].get("message") or {}
        return list(message.get("tool_calls") or [])

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (``stats`` as :meth:`GenerationStats.to_dict`)."""
        out = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "model_path": self.model_path,
            "cache_hit": self.cache_hit,
            "stats": self.stats.to_dict(),
        }
        if self.kind != "completion":
            out["kind"] = self.kind
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON (UTF-8 text kept as is); :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Response:
        """Inverse of :meth:`to_dict`. Only ``text`` is required.

        Raises ``TypeError`` naming an unknown key or a value of the wrong
        type: ``text`` and ``model_path`` must be str, ``finish_reason`` a str
        or None, ``cache_hit`` a bool (not ``"false"``), ``stats`` a mapping of
        :class:`GenerationStats` fields.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"Response.from_dict needs a mapping, got {type(data).__name__}")
        unknown = [k for k in data if k not in ("text", "finish_reason", "model_path", "cache_hit", "stats", "kind")]
        if unknown:
            raise TypeError(f"Response.from_dict got an unexpected key {unknown[0]!r}")
        if "text" not in data:
            raise TypeError("Response.from_dict needs a 'text' key")
        stats = data.get("stats")
        if stats is not None and not isinstance(stats, Mapping):
            raise TypeError(f"Response.stats must be a mapping of GenerationStats fields, got {stats!r}")
        model_path = data.get("model_path", "")
        if not isinstance(model_path, str):  # a str in JSON; __post_init__ also takes paths
            raise TypeError(f"Response.model_path must be a str, got {model_path!r}")
        return cls(
            text=data["text"],
            finish_reason=data.get("finish_reason"),
            model_path=model_path,
            cache_hit=data.get("cache_hit", False),
            stats=GenerationStats.from_dict(stats or {}),
            kind=data.get("kind", "completion"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Response:
        """A Response from :meth:`to_json`'s output; validated as :meth:`from_dict` does."""
        return cls.from_dict(json.loads(text))


def hit_stats(original: GenerationStats, elapsed_ms: float) -> GenerationStats:
    """The stats of a cache hit: the original's token counts, no model time, the lookup's wall time."""
    return GenerationStats(
        prompt_tokens=original.prompt_tokens,
        generated_tokens=original.generated_tokens,
        total_tokens=original.total_tokens,
        prompt_time_ms=0.0,
        generation_time_ms=0.0,
        total_time_ms=elapsed_ms,
        tokens_per_second=None,
    )


def _as_hit(response: Response, started: float) -> Response:
    elapsed = (time.perf_counter() - started) * 1000.0
    hit = dataclasses.replace(response, cache_hit=True, stats=hit_stats(response.stats, elapsed))
    _carry_source(hit, response)
    return hit


def _carry_source(new: Response, old: Response) -> Response:
    """Give ``new`` the llama-cpp-python dict (or stored skeleton) and key of ``old``."""
    new._source, new._stored, new._key = old._source, old._stored, old._key
    return new
