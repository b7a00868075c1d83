"""Declarative catalogue of llama-server / llama.cpp model launch parameters.

:data:`PARAMS` is the single source of truth for the model registry: it names
every stored parameter together with its value type, its llama-server flag, the
``llama_cpp.Llama(...)`` keyword it maps to and llama-server's default.  Every
other view (the registry's column types, validation, the ``llama-server`` argv,
``Llama(**kwargs)``, the documentation table) is derived from it.

Flags and defaults follow the llama.cpp revision vendored by
llama-cpp-python 0.3.36 (:data:`LLAMA_CPP_REVISION`).  Where that revision
renamed or removed a flag that older llama-server builds used, the old
spelling is kept in :attr:`Param.legacy_flag` and
``to_server_args(..., legacy=True)`` emits it.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..errors import (
    ParameterTypeError,
    ParameterValueError,
    ServerArgWarning,
    UnknownParameterError,
)

__all__ = [
    "FILE_COLUMNS",
    "GROUPS",
    "IDENTITY_COLUMNS",
    "LLAMA_CPP_REVISION",
    "PARAMS",
    "PARAMS_BY_NAME",
    "REDACTED",
    "Param",
    "ParamType",
    "ParameterTypeError",
    "ParameterValueError",
    "ServerArgWarning",
    "UnknownParameterError",
    "from_sql",
    "parameter_table_markdown",
    "redact",
    "redact_text",
    "redact_url",
    "shown_in_errors",
    "sqlite_type",
    "to_llama_kwargs",
    "to_sampling_kwargs",
    "to_server_args",
    "to_sql",
    "validate_params",
]

#: llama.cpp commit whose ``common/arg.cpp`` the flags and defaults were taken from
#: (the one vendored by llama-cpp-python 0.3.36).
LLAMA_CPP_REVISION: Final = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

#: Registry columns that are not launch parameters; the ``to_*`` helpers skip them
#: so that a whole registry row can be passed in.
IDENTITY_COLUMNS: Final = ("id", "name", "type", "status", "created_at", "updated_at")

#: Keys of a registry record that describe the model file (the seed design's
#: GGUF metadata cache, filled by ``register_model``); skipped like
#: :data:`IDENTITY_COLUMNS`.  The GGUF's own chat template is
#: ``gguf_chat_template``: ``chat_template`` is the llama-server override.
FILE_COLUMNS: Final = (
    "filename",
    "size_bytes",
    "format",
    "architecture",
    "size_label",
    "parameter_count",
    "quantization",
    "context_length",
    "vocab_size",
    "gguf_chat_template",
    "gguf_metadata",
    "fingerprint",
    "first_seen_at",
    "last_used_at",
)

#: What :func:`redact` puts in place of a secret.
REDACTED: Final = "***"

ParamType = Literal["int", "float", "bool", "str", "json", "gpu_layers"]
_TYPES: Final = frozenset({"int", "float", "bool", "str", "json", "gpu_layers"})


# ---------------------------------------------------------------------------
# what an error may show (the errors themselves are in cyllama_db.errors)
# ---------------------------------------------------------------------------


def shown_in_errors(name: str, value: object) -> tuple[bool, object]:
    """How an error message may show ``value`` of parameter ``name``: ``(hidden, shown)``.

    Error messages end up in logs and tracebacks, so a secret parameter's
    value is never shown (``hidden`` is True, ``shown`` is :data:`REDACTED`:
    show only its type) and ``custom_params`` is shown with the values of
    its secret flags redacted. :class:`~cyllama_db.ParameterTypeError` and
    :class:`~cyllama_db.ParameterValueError` use it.
    """
    p = PARAMS_BY_NAME.get(name)
    if p is not None and p.secret:
        return True, REDACTED
    if name == "custom_params":
        return (False, _redact_custom(value)) if isinstance(value, Mapping) else (True, REDACTED)
    return False, value


# ---------------------------------------------------------------------------
# the Param record
# ---------------------------------------------------------------------------

_Converter = Callable[[Any], dict[str, Any]]
_Validator = Callable[["Param", Any], Any]


@dataclass(frozen=True)
class Param:
    """One llama-server / llama.cpp model parameter.

    ``default`` is what llama-server uses when the flag is absent (``None``:
    unset, decided at run time or read from the model).  ``flag`` is the long
    llama-server flag (``None``: the target llama-server has no such flag).
    For booleans, ``flag`` is the form meaning ``True`` and ``negative_flag``
    the form meaning ``False`` (``None`` where llama-server has no such form).
    """

    name: str
    type: ParamType
    group: str
    flag: str | None = None
    llama_kwarg: str | None = None
    default: Any = None
    choices: tuple[Any, ...] | None = None
    secret: bool = False
    description: str = ""
    negative_flag: str | None = None
    #: inclusive bounds for int / float (and the integer form of gpu_layers)
    min: float | None = None
    max: float | None = None
    #: keyword of ``Llama.create_completion`` this maps to (sampling parameters)
    completion_kwarg: str | None = None
    #: value -> ``{llama_kwarg: converted}``; ``None`` means identity on llama_kwarg
    to_llama: _Converter | None = None
    #: value -> ``{completion_kwarg: converted}``; ``None`` means identity
    to_completion: _Converter | None = None
    #: extra check / normalisation after the type check; raises ParameterValueError
    validator: _Validator | None = None
    #: rewrites an older stored representation before the type check
    coerce: Callable[[Any], Any] | None = None
    #: False: llama-server does not accept it, or it makes the server exit
    launch: bool = True
    #: spelling of older (pre load-mode / pre spec-draft) llama-server builds
    legacy_flag: str | None = None
    legacy_negative_flag: str | None = None
    #: number of argv words after the flag (2: value is a 2-item list)
    nargs: int = 1
    #: comma-separated value emitted as one repeated flag per item
    repeat: bool = False
    #: boolean passed as ``--flag 1`` / ``--flag 0`` instead of a switch
    bool_as_value: bool = False

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"{self.name}: unknown parameter type {self.type!r}")
        for flag in (self.flag, self.negative_flag, self.legacy_flag, self.legacy_negative_flag):
            if flag is not None and not flag.startswith("--"):
                raise ValueError(f"{self.name}: flag {flag!r} must be a long '--' flag")

    @property
    def allowed(self) -> str:
        """Human-readable description of the accepted values."""
        if self.choices is not None:
            return ", ".join(map(str, self.choices))
        if self.type == "bool":
            return "true, false (or 1, 0)"
        if self.type == "gpu_layers":
            low = "" if self.min is None else f" >= {_num(self.min)}"
            return f"integer{low}, auto, all"
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)}..{_num(self.max)}"
        if self.min is not None:
            return f">= {_num(self.min)}"
        if self.max is not None:
            return f"<= {_num(self.max)}"
        return ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# ---------------------------------------------------------------------------
# value checks used by the declarations
# ---------------------------------------------------------------------------

_KV_CACHE_TYPES: Final = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# ggml.h `enum ggml_type`; hard-coded so llama_cpp need not be importable.
_GGML_TYPE: Final = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
# llama.h enums, mirrored by llama_cpp.LLAMA_* / GGML_NUMA_STRATEGY_*.
_SPLIT_MODE: Final = {"none": 0, "layer": 1, "row": 2, "tensor": 3}
_ROPE_SCALING: Final = {"none": 0, "linear": 1, "yarn": 2}
_POOLING: Final = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
_NUMA: Final = {"distribute": 1, "isolate": 2, "numactl": 3}
_LLAMA_DEFAULT_SEED: Final = 0xFFFFFFFF

_HEX_MASK = re.compile(r"(0[xX])?[0-9a-fA-F]+")
_CPU_RANGE = re.compile(r"\d*-\d*")
_NUM_LIST = re.compile(r"\d+(\.\d*)?([,/]\d+(\.\d*)?)*")
_INT_LIST = re.compile(r"\d+([,/]\d+)*")
_KV_OVERRIDE = re.compile(r"[^=,]+=(int|float|bool|str):[^,]*")
_LOGIT_BIAS = re.compile(r"\s*(\d+)\s*([+-])\s*(\S+)\s*")


def _fullmatch(pattern: re.Pattern[str], what: str) -> _Validator:
    def check(p: Param, value: Any) -> Any:
        if not pattern.fullmatch(value):
            raise ParameterValueError(p.name, value, what)
        return value

    return check


def _split_csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _check_scaled_list(p: Param, value: str) -> str:
    items = _split_csv(value)
    for item in items:
        path, sep, scale = item.rpartition(":")
        if not sep or not path:
            raise ParameterValueError(p.name, value, "comma-separated FNAME:SCALE items")
        try:
            float(scale)
        except ValueError:
            raise ParameterValueError(p.name, value, "comma-separated FNAME:SCALE items") from None
    if not items:
        raise ParameterValueError(p.name, value, "comma-separated FNAME:SCALE items")
    return value


def _parse_logit_bias(value: str) -> dict[int, float]:
    """Parse llama-server's ``TOKEN_ID(+/-)BIAS[,...]`` notation."""
    out: dict[int, float] = {}
    for item in _split_csv(value):
        m = _LOGIT_BIAS.fullmatch(item)
        if m is None:
            raise ValueError(item)
        bias = float(m.group(3))  # "inf" is legal: bans or forces the token
        if math.isnan(bias):
            raise ValueError(item)
        out[int(m.group(1))] = -bias if m.group(2) == "-" else bias
    if not out:
        raise ValueError(value)
    return out


def _check_logit_bias(p: Param, value: str) -> str:
    try:
        _parse_logit_bias(value)
    except ValueError:
        raise ParameterValueError(
            p.name, value, "comma-separated TOKEN_ID+BIAS / TOKEN_ID-BIAS items"
        ) from None
    return value


def _check_json_text(p: Param, value: str) -> str:
    try:
        json.loads(value)
    except ValueError:
        raise ParameterValueError(p.name, value, "a JSON document") from None
    return value


def _check_json_object_text(p: Param, value: str) -> str:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ParameterValueError(p.name, value, 'a JSON object, e.g. \'{"key": "value"}\'')
    return value


def _check_int_pair(p: Param, value: Any) -> list[int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
    if not ok:
        raise ParameterValueError(p.name, value, "[START, END] (two non-negative integers)")
    return list(value)


def _check_str_pair(p: Param, value: Any) -> list[str]:
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
    ):
        raise ParameterValueError(p.name, value, "[TARGET, DRAFT] (two strings)")
    return list(value)


def _check_custom_params(p: Param, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParameterTypeError(p.name, "a JSON object (dict of flag -> value)", value)
    scalar = (str, int, float, bool, type(None))
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip("-"):
            # The key alone: its value might be a secret.
            raise ParameterValueError(
                p.name, {key: "..."}, "non-empty flag names such as '--spec-type'"
            )
        if not isinstance(item, scalar) and not (
            isinstance(item, list) and all(isinstance(i, scalar) for i in item)
        ):
            raise ParameterValueError(p.name, {key: item}, "scalar values or lists of scalars")
    return value


def _check_nonzero(p: Param, value: int) -> int:
    if value == 0:
        raise ParameterValueError(p.name, value, "-1 (auto) or a positive number")
    return value


def _check_sleep(p: Param, value: int) -> int:
    if value == 0:
        raise ParameterValueError(p.name, value, "-1 (disabled) or a positive number of seconds")
    return value


def _coerce_fit_target(value: Any) -> Any:
    # The seed stored one INTEGER; llama-server takes a MiB value per device as text.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return value


# ---------------------------------------------------------------------------
# Llama() / create_completion converters
# ---------------------------------------------------------------------------


def _kw(name: str, fn: Callable[[Any], Any]) -> _Converter:
    """Converter emitting ``{name: fn(value)}``, or nothing when fn returns None."""

    def convert(value: Any) -> dict[str, Any]:
        out = fn(value)
        return {} if out is None else {name: out}

    return convert


def _positive_or_none(value: int) -> int | None:
    # llama-server maps <= 0 to "all hardware threads"; Llama() does that for None.
    return value if value > 0 else None


def _gpu_layers_to_llama(value: int | str) -> int:
    # Llama() has no memory fitting; -1 means "offload every layer" there.
    if value in ("auto", "all") or (isinstance(value, int) and value < 0):
        return -1
    return int(value)


def _tensor_split_to_llama(value: str) -> list[float]:
    return [float(x) for x in re.split(r"[,/]+", value) if x]


def _seed_to_llama(value: int) -> int:
    return _LLAMA_DEFAULT_SEED if value < 0 else value


def _flash_attn_to_llama(value: str) -> bool | None:
    # Llama() 0.3.36 takes a bool; "auto" has no equivalent, so leave its default.
    return {"on": True, "off": False}.get(value)


def _lora_to_llama(value: str) -> dict[str, Any]:
    paths = _split_csv(value)
    if len(paths) != 1:
        raise ParameterValueError(
            "lora", value, "a single adapter path for llama_cpp.Llama (it loads one LoRA)"
        )
    return {"lora_path": paths[0]}


def _lora_scaled_to_llama(value: str) -> dict[str, Any]:
    items = _split_csv(value)
    if len(items) != 1:
        raise ParameterValueError(
            "lora_scaled", value, "a single FNAME:SCALE for llama_cpp.Llama (it loads one LoRA)"
        )
    path, _, scale = items[0].rpartition(":")
    return {"lora_path": path, "lora_scale": float(scale)}


def _override_kv_to_llama(value: str) -> dict[str, Any]:
    out: dict[str, bool | int | float | str] = {}
    for item in _split_csv(value):
        key, _, typed = item.partition("=")
        kind, _, raw = typed.partition(":")
        if kind == "int":
            out[key] = int(raw)
        elif kind == "float":
            out[key] = float(raw)
        elif kind == "bool":
            out[key] = raw.strip().lower() in ("true", "1")
        else:
            out[key] = raw
    return {"kv_overrides": out}


def _rope_scale_to_llama(value: float) -> float | None:
    return 1.0 / value if value else None


def _repeat_last_n_to_llama(value: int) -> int | None:
    # -1 ("the whole context") is resolved by llama-server, not by Llama().
    return value if value >= 0 else None


def _predict_to_completion(value: int) -> dict[str, Any]:
    # Explicit None: create_completion's own default is 16 tokens, not "unlimited".
    return {"max_tokens": value if value > 0 else None}


def _seed_to_completion(value: int) -> int | None:
    return value if value >= 0 else None


def _logit_bias_to_completion(value: str) -> dict[int, float]:
    return _parse_logit_bias(value)


# ---------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------

_MODEL = "Model Path & Loading"
_CTX = "Context & Processing"
_THREAD = "Threading"
_MEM = "Memory & Performance"
_GPU = "GPU Offloading"
_ADVMEM = "Advanced Memory"
_SAMPLING = "Sampling Parameters"
_GRAMMAR = "Grammar & Constraints"
_ROPE = "RoPE & Attention"
_MM = "Multi-modal"
_LORA = "LoRA & Control Vectors"
_DRAFT = "Draft Model (Speculative Decoding)"
_LOG = "Logging"
_SERVER = "Server Configuration"
_EXAMPLE = "Example-Specific"
_ADV = "Advanced"
_CUSTOM = "Custom Parameters"

#: Section names, in the seed schema's order.
GROUPS: Final = (
    _MODEL, _CTX, _THREAD, _MEM, _GPU, _ADVMEM, _SAMPLING, _GRAMMAR, _ROPE,
    _MM, _LORA, _DRAFT, _LOG, _SERVER, _EXAMPLE, _ADV, _CUSTOM,
)  # fmt: skip

_ONOFFAUTO: Final = ("on", "off", "auto")

# One line per parameter reads better here than ruff format's one-argument-per-line.
# fmt: off
P = Param
PARAMS: tuple[Param, ...] = (
    # -- Model Path & Loading -------------------------------------------------
    P("model_path", "str", _MODEL, "--model", "model_path", description="Path of the GGUF model file"),
    P("model_url", "str", _MODEL, "--model-url", description="Model download URL"),
    P("docker_repo", "str", _MODEL, "--docker-repo", description="Docker Hub model repository ([<repo>/]<model>[:quant])"),
    P("hf_repo", "str", _MODEL, "--hf-repo", description="Hugging Face repository (<user>/<model>[:quant])"),
    P("hf_repo_draft", "str", _MODEL, "--hf-repo-draft", description="Hugging Face repository of the draft model"),
    P("hf_file", "str", _MODEL, "--hf-file", description="Hugging Face model file (overrides the quant in hf_repo)"),
    P("hf_file_v", "str", _MODEL, None, legacy_flag="--hf-file-v",
      description="Hugging Face vocoder model file (flag removed from current llama-server)"),
    P("hf_token", "str", _MODEL, "--hf-token", secret=True,
      description="Hugging Face access token (llama-server falls back to $HF_TOKEN)"),
    # -- Context & Processing -------------------------------------------------
    P("ctx_size", "int", _CTX, "--ctx-size", "n_ctx", default=0, min=0,
      description="Context size in tokens (0 = from the model)"),
    P("predict", "int", _CTX, "--predict", default=-1, min=-2, completion_kwarg="max_tokens",
      to_completion=_predict_to_completion,
      description="Tokens to predict (-1 = unlimited)"),
    P("batch_size", "int", _CTX, "--batch-size", "n_batch", default=2048, min=1,
      description="Logical maximum batch size"),
    P("ubatch_size", "int", _CTX, "--ubatch-size", "n_ubatch", default=512, min=1,
      description="Physical maximum batch size"),
    P("n_parallel", "int", _CTX, "--parallel", default=-1, min=-1, validator=_check_nonzero,
      description="Number of server slots (-1 = auto)"),
    P("cont_batching", "bool", _CTX, "--cont-batching", default=True, negative_flag="--no-cont-batching",
      description="Continuous (dynamic) batching"),
    # -- Threading --------------------------------------------------------------
    P("threads", "int", _THREAD, "--threads", "n_threads", default=-1,
      to_llama=_kw("n_threads", _positive_or_none),
      description="CPU threads for generation (<= 0 = all hardware threads)"),
    P("threads_batch", "int", _THREAD, "--threads-batch", "n_threads_batch",
      to_llama=_kw("n_threads_batch", _positive_or_none),
      description="Threads for batch and prompt processing (default: same as threads)"),
    P("cpu_mask", "str", _THREAD, "--cpu-mask", validator=_fullmatch(_HEX_MASK, "a hex CPU mask"),
      description="CPU affinity mask (arbitrarily long hex)"),
    P("cpu_range", "str", _THREAD, "--cpu-range", validator=_fullmatch(_CPU_RANGE, "lo-hi, e.g. '0-7'"),
      description="CPU range for affinity (lo-hi)"),
    P("cpu_strict", "bool", _THREAD, "--cpu-strict", default=False, bool_as_value=True,
      description="Strict CPU placement"),
    P("cpu_mask_batch", "str", _THREAD, "--cpu-mask-batch", validator=_fullmatch(_HEX_MASK, "a hex CPU mask"),
      description="CPU affinity mask for batch processing (default: same as cpu_mask)"),
    P("cpu_range_batch", "str", _THREAD, "--cpu-range-batch",
      validator=_fullmatch(_CPU_RANGE, "lo-hi, e.g. '0-7'"), description="CPU range for batch processing"),
    P("cpu_strict_batch", "bool", _THREAD, "--cpu-strict-batch", bool_as_value=True,
      description="Strict CPU placement for batch processing (default: same as cpu_strict)"),
    P("priority", "int", _THREAD, "--prio", default=0, min=-1, max=3,
      description="Process/thread priority: -1 low, 0 normal, 1 medium, 2 high, 3 realtime"),
    P("priority_batch", "int", _THREAD, "--prio-batch", default=0, min=0, max=3,
      description="Priority for batch processing: 0 normal .. 3 realtime"),
    # -- Memory & Performance ---------------------------------------------------
    P("cache_ram", "int", _MEM, "--cache-ram", default=8192, min=-1,
      description="Max prompt-cache size in MiB (-1 = no limit, 0 = disabled)"),
    P("cache_type_k", "str", _MEM, "--cache-type-k", "type_k", default="f16", choices=_KV_CACHE_TYPES,
      to_llama=_kw("type_k", _GGML_TYPE.__getitem__), description="KV cache data type for K"),
    P("cache_type_v", "str", _MEM, "--cache-type-v", "type_v", default="f16", choices=_KV_CACHE_TYPES,
      to_llama=_kw("type_v", _GGML_TYPE.__getitem__), description="KV cache data type for V"),
    # mmap and mlock share llama-server's --load-mode; to_server_args() combines them.
    P("mmap", "bool", _MEM, "--load-mode", "use_mmap", default=True, legacy_flag="--mmap",
      legacy_negative_flag="--no-mmap",
      description="Memory-map the model (emitted as --load-mode together with mlock)"),
    P("mlock", "bool", _MEM, "--load-mode", "use_mlock", default=False, legacy_flag="--mlock",
      description="Lock the model in RAM (emitted as --load-mode together with mmap)"),
    P("numa", "str", _MEM, "--numa", "numa", choices=("distribute", "isolate", "numactl"),
      to_llama=_kw("numa", _NUMA.__getitem__), description="NUMA optimisation strategy"),
    P("defrag_thold", "float", _MEM, "--defrag-thold",
      description="KV cache defragmentation threshold (deprecated, ignored by llama-server)"),
    # -- GPU Offloading ---------------------------------------------------------
    P("device", "str", _GPU, "--device", description="Comma-separated devices to offload to (none = no offload)"),
    P("list_devices", "bool", _GPU, "--list-devices", default=False, launch=False,
      description="Print available devices and exit (never passed to a server launch)"),
    P("gpu_layers", "gpu_layers", _GPU, "--gpu-layers", "n_gpu_layers", default="auto", min=-1,
      to_llama=_kw("n_gpu_layers", _gpu_layers_to_llama),
      description="Max layers in VRAM: a number, 'auto' (-1) or 'all'"),
    P("split_mode", "str", _GPU, "--split-mode", "split_mode", default="layer",
      choices=("none", "layer", "row", "tensor"), to_llama=_kw("split_mode", _SPLIT_MODE.__getitem__),
      description="How to split the model across GPUs"),
    P("tensor_split", "str", _GPU, "--tensor-split", "tensor_split",
      validator=_fullmatch(_NUM_LIST, "comma-separated proportions, e.g. '3,1'"),
      to_llama=_kw("tensor_split", _tensor_split_to_llama), description="Fraction of the model per GPU, e.g. '3,1'"),
    P("main_gpu", "int", _GPU, "--main-gpu", "main_gpu", default=0, min=0, description="Main GPU index"),
    P("kv_offload", "bool", _GPU, "--kv-offload", "offload_kqv", default=True, negative_flag="--no-kv-offload",
      description="Offload the KV cache to the GPU"),
    P("repack", "bool", _GPU, "--repack", default=True, negative_flag="--no-repack",
      description="Weight repacking (extra buffer types)"),
    P("no_host", "bool", _GPU, "--no-host", default=False, description="Bypass the host buffer"),
    # -- Advanced Memory --------------------------------------------------------
    P("swa_full", "bool", _ADVMEM, "--swa-full", "swa_full", default=False, description="Full-size SWA cache"),
    P("override_tensor", "str", _ADVMEM, "--override-tensor",
      description="Tensor buffer overrides (<tensor name pattern>=<buffer type>,...)"),
    P("cpu_moe", "bool", _ADVMEM, "--cpu-moe", default=False, description="Keep all MoE weights in the CPU"),
    P("n_cpu_moe", "int", _ADVMEM, "--n-cpu-moe", min=0, description="Keep MoE weights of the first N layers in the CPU"),
    P("kv_unified", "bool", _ADVMEM, "--kv-unified", negative_flag="--no-kv-unified",
      description="Single unified KV buffer (default: on when n_parallel is auto)"),
    # -- Sampling Parameters ----------------------------------------------------
    P("temperature", "float", _SAMPLING, "--temperature", default=0.8, completion_kwarg="temperature",
      description="Sampling temperature"),
    P("top_k", "int", _SAMPLING, "--top-k", default=40, completion_kwarg="top_k", description="Top-k sampling (0 = disabled)"),
    P("top_p", "float", _SAMPLING, "--top-p", default=0.95, min=0.0, max=1.0, completion_kwarg="top_p",
      description="Top-p sampling (1.0 = disabled)"),
    P("min_p", "float", _SAMPLING, "--min-p", default=0.05, min=0.0, max=1.0, completion_kwarg="min_p",
      description="Min-p sampling (0.0 = disabled)"),
    P("top_nsigma", "float", _SAMPLING, "--top-nsigma", default=-1.0, description="Top-n-sigma sampling (-1.0 = disabled)"),
    P("xtc_probability", "float", _SAMPLING, "--xtc-probability", default=0.0, min=0.0, max=1.0,
      description="XTC probability (0.0 = disabled)"),
    P("xtc_threshold", "float", _SAMPLING, "--xtc-threshold", default=0.1, description="XTC threshold (> 0.5 disables XTC)"),
    P("typical", "float", _SAMPLING, "--typical", default=1.0, completion_kwarg="typical_p",
      description="Locally typical sampling p (1.0 = disabled)"),
    P("repeat_last_n", "int", _SAMPLING, "--repeat-last-n", "last_n_tokens_size", default=64, min=-1,
      to_llama=_kw("last_n_tokens_size", _repeat_last_n_to_llama),
      description="Last n tokens considered for penalties (0 = disabled, -1 = context size)"),
    P("repeat_penalty", "float", _SAMPLING, "--repeat-penalty", default=1.0, completion_kwarg="repeat_penalty",
      description="Repeat penalty (1.0 = disabled)"),
    P("presence_penalty", "float", _SAMPLING, "--presence-penalty", default=0.0, completion_kwarg="presence_penalty",
      description="Presence penalty (0.0 = disabled)"),
    P("frequency_penalty", "float", _SAMPLING, "--frequency-penalty", default=0.0,
      completion_kwarg="frequency_penalty", description="Frequency penalty (0.0 = disabled)"),
    P("dry_multiplier", "float", _SAMPLING, "--dry-multiplier", default=0.0, description="DRY multiplier (0.0 = disabled)"),
    P("dry_base", "float", _SAMPLING, "--dry-base", default=1.75, description="DRY base"),
    P("dry_allowed_length", "int", _SAMPLING, "--dry-allowed-length", default=2, description="DRY allowed length"),
    P("dry_penalty_last_n", "int", _SAMPLING, "--dry-penalty-last-n", default=64, min=0,
      description="DRY penalty window in tokens (0 = disabled)"),
    P("dry_sequence_breaker", "str", _SAMPLING, "--dry-sequence-breaker",
      description="DRY sequence breaker (replaces the defaults; 'none' = no breakers)"),
    P("dynatemp_range", "float", _SAMPLING, "--dynatemp-range", default=0.0, description="Dynamic temperature range (0.0 = disabled)"),
    P("dynatemp_exp", "float", _SAMPLING, "--dynatemp-exp", default=1.0, description="Dynamic temperature exponent"),
    P("mirostat", "int", _SAMPLING, "--mirostat", default=0, choices=(0, 1, 2), completion_kwarg="mirostat_mode",
      description="Mirostat: 0 disabled, 1 Mirostat, 2 Mirostat 2.0"),
    P("mirostat_lr", "float", _SAMPLING, "--mirostat-lr", default=0.1, completion_kwarg="mirostat_eta",
      description="Mirostat learning rate (eta)"),
    P("mirostat_ent", "float", _SAMPLING, "--mirostat-ent", default=5.0, completion_kwarg="mirostat_tau",
      description="Mirostat target entropy (tau)"),
    P("samplers", "str", _SAMPLING, "--samplers",
      default="penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature",
      description="Sampler order, separated by ';'"),
    P("sampler_seq", "str", _SAMPLING, "--sampler-seq", default="edskypmxt", description="Simplified sampler sequence"),
    P("seed", "int", _SAMPLING, "--seed", "seed", default=-1, min=-1, max=_LLAMA_DEFAULT_SEED,
      to_llama=_kw("seed", _seed_to_llama), completion_kwarg="seed",
      to_completion=_kw("seed", _seed_to_completion), description="RNG seed (-1 = random)"),
    # -- Grammar & Constraints --------------------------------------------------
    P("grammar", "str", _GRAMMAR, "--grammar", completion_kwarg="grammar",
      description="BNF-like grammar (GBNF) constraining generation"),
    P("grammar_file", "str", _GRAMMAR, "--grammar-file", description="File to read the grammar from"),
    P("json_schema", "str", _GRAMMAR, "--json-schema", validator=_check_json_text,
      description="JSON schema constraining generation"),
    P("json_schema_file", "str", _GRAMMAR, "--json-schema-file", description="File containing a JSON schema"),
    P("ignore_eos", "bool", _GRAMMAR, "--ignore-eos", default=False,
      description="Ignore the end-of-stream token and keep generating"),
    P("escape", "bool", _GRAMMAR, "--escape", default=True, negative_flag="--no-escape",
      description="Process escape sequences (\\n, \\t, ...)"),
    # -- RoPE & Attention -------------------------------------------------------
    P("rope_scaling_type", "str", _ROPE, "--rope-scaling", "rope_scaling_type", choices=("none", "linear", "yarn"),
      to_llama=_kw("rope_scaling_type", _ROPE_SCALING.__getitem__),
      description="RoPE frequency scaling method (default: from the model)"),
    P("rope_scale", "float", _ROPE, "--rope-scale", "rope_freq_scale", min=0.0,
      to_llama=_kw("rope_freq_scale", _rope_scale_to_llama),
      description="RoPE context scaling factor (sets rope_freq_scale = 1/N)"),
    P("rope_freq_base", "float", _ROPE, "--rope-freq-base", "rope_freq_base", min=0.0,
      description="RoPE base frequency (default: from the model)"),
    P("rope_freq_scale", "float", _ROPE, "--rope-freq-scale", "rope_freq_scale", min=0.0,
      description="RoPE frequency scaling factor (default: from the model)"),
    P("yarn_orig_ctx", "int", _ROPE, "--yarn-orig-ctx", "yarn_orig_ctx", default=0, min=0,
      description="YaRN original context size (0 = training context)"),
    P("yarn_ext_factor", "float", _ROPE, "--yarn-ext-factor", "yarn_ext_factor", default=-1.0,
      description="YaRN extrapolation mix factor (negative = from the model)"),
    P("yarn_attn_factor", "float", _ROPE, "--yarn-attn-factor", "yarn_attn_factor", default=-1.0,
      description="YaRN attention magnitude scale (negative = from the model)"),
    P("yarn_beta_slow", "float", _ROPE, "--yarn-beta-slow", "yarn_beta_slow", default=-1.0,
      description="YaRN high correction dim (negative = from the model)"),
    P("yarn_beta_fast", "float", _ROPE, "--yarn-beta-fast", "yarn_beta_fast", default=-1.0,
      description="YaRN low correction dim (negative = from the model)"),
    P("flash_attn", "str", _ROPE, "--flash-attn", "flash_attn", default="auto", choices=_ONOFFAUTO,
      to_llama=_kw("flash_attn", _flash_attn_to_llama), description="Flash attention: on, off or auto"),
    # -- Multi-modal ------------------------------------------------------------
    P("mmproj", "str", _MM, "--mmproj", description="Multimodal projector file"),
    P("mmproj_url", "str", _MM, "--mmproj-url", description="Multimodal projector URL"),
    P("mmproj_auto", "bool", _MM, "--mmproj-auto", default=True, negative_flag="--no-mmproj-auto",
      description="Use the projector found next to an -hf model"),
    P("mmproj_offload", "bool", _MM, "--mmproj-offload", default=True, negative_flag="--no-mmproj-offload",
      description="Offload the multimodal projector to the GPU"),
    P("image_min_tokens", "int", _MM, "--image-min-tokens", min=0,
      description="Min tokens per image (dynamic-resolution models; default: from the model)"),
    P("image_max_tokens", "int", _MM, "--image-max-tokens", min=0,
      description="Max tokens per image (dynamic-resolution models; default: from the model)"),
    # -- LoRA & Control Vectors -------------------------------------------------
    P("lora", "str", _LORA, "--lora", "lora_path", to_llama=_lora_to_llama,
      description="LoRA adapter path(s), comma-separated"),
    P("lora_scaled", "str", _LORA, "--lora-scaled", "lora_path", validator=_check_scaled_list,
      to_llama=_lora_scaled_to_llama, description="LoRA adapter(s) with scale (FNAME:SCALE,...)"),
    P("control_vector", "str", _LORA, "--control-vector", description="Control vector file(s), comma-separated"),
    P("control_vector_scaled", "str", _LORA, "--control-vector-scaled", validator=_check_scaled_list,
      description="Control vector(s) with scale (FNAME:SCALE,...)"),
    P("control_vector_layer_range", "json", _LORA, "--control-vector-layer-range", nargs=2,
      validator=_check_int_pair, description="Layer range [START, END] for control vectors, inclusive"),
    # -- Draft Model (Speculative Decoding) -------------------------------------
    # Where llama-server kept an old alias, it is used so older builds understand it too.
    P("model_draft", "str", _DRAFT, "--model-draft", description="Draft model path"),
    P("model_url_draft", "str", _DRAFT, None,
      description="Draft model download URL (llama-server has no such flag; stored only)"),
    P("ctx_size_draft", "int", _DRAFT, None, legacy_flag="--ctx-size-draft", min=0,
      description="Draft model context size (flag removed from current llama-server)"),
    P("threads_draft", "int", _DRAFT, "--threads-draft", description="Draft model threads (default: same as threads)"),
    P("threads_batch_draft", "int", _DRAFT, "--threads-batch-draft",
      description="Draft model batch threads (default: same as threads_draft)"),
    P("draft_max", "int", _DRAFT, "--spec-draft-n-max", default=3, min=0, legacy_flag="--draft-max",
      description="Max tokens to draft"),
    P("draft_min", "int", _DRAFT, "--spec-draft-n-min", default=0, min=0, legacy_flag="--draft-min",
      description="Min draft tokens"),
    P("draft_p_min", "float", _DRAFT, "--draft-p-min", default=0.0, min=0.0, max=1.0,
      description="Min speculative decoding probability (greedy)"),
    P("cache_type_k_draft", "str", _DRAFT, "--cache-type-k-draft", default="f16", choices=_KV_CACHE_TYPES,
      description="KV cache data type for K of the draft model"),
    P("cache_type_v_draft", "str", _DRAFT, "--cache-type-v-draft", default="f16", choices=_KV_CACHE_TYPES,
      description="KV cache data type for V of the draft model"),
    P("cpu_moe_draft", "bool", _DRAFT, "--cpu-moe-draft", default=False,
      description="Keep all MoE weights of the draft model in the CPU"),
    P("n_cpu_moe_draft", "int", _DRAFT, "--n-cpu-moe-draft", min=0,
      description="Keep MoE weights of the first N draft layers in the CPU"),
    P("n_gpu_layers_draft", "gpu_layers", _DRAFT, "--gpu-layers-draft", default="auto", min=-1,
      description="Max draft model layers in VRAM: a number, 'auto' (-1) or 'all'"),
    P("device_draft", "str", _DRAFT, "--device-draft", description="Devices for the draft model"),
    P("spec_replace", "json", _DRAFT, None, legacy_flag="--spec-replace", nargs=2, validator=_check_str_pair,
      description="[TARGET, DRAFT]: translate TARGET into DRAFT (flag removed from current llama-server)"),
    # -- Logging ----------------------------------------------------------------
    P("log_disable", "bool", _LOG, "--log-disable", "verbose", default=False,
      to_llama=_kw("verbose", lambda v: False if v else None), description="Disable logging"),
    P("log_file", "str", _LOG, "--log-file", description="Log to this file"),
    P("log_colors", "str", _LOG, "--log-colors", default="auto", choices=_ONOFFAUTO, description="Coloured logging"),
    P("log_verbose", "int", _LOG, "--log-verbosity", default=3, min=0,
      description="Verbosity threshold: 0 generic .. 3 info, 4 trace, 5 debug"),
    P("log_prefix", "bool", _LOG, "--log-prefix", negative_flag="--no-log-prefix", description="Prefix in log messages"),
    P("log_timestamps", "bool", _LOG, "--log-timestamps", negative_flag="--no-log-timestamps",
      description="Timestamps in log messages"),
    P("logit_bias", "str", _LOG, "--logit-bias", repeat=True, validator=_check_logit_bias,
      completion_kwarg="logit_bias", to_completion=_kw("logit_bias", _logit_bias_to_completion),
      description="Logit bias: TOKEN_ID(+/-)BIAS, comma-separated"),
    # -- Server Configuration ---------------------------------------------------
    P("host", "str", _SERVER, "--host", default="127.0.0.1", description="Address(es) to listen on"),
    P("port", "int", _SERVER, "--port", default=8080, min=0, max=65535, description="Port to listen on"),
    P("api_prefix", "str", _SERVER, "--api-prefix", description="Path prefix the server serves from"),
    P("path", "str", _SERVER, "--path", description="Directory of static files to serve"),
    P("webui", "str", _SERVER, "--webui-config", validator=_check_json_object_text,
      description="JSON object of default Web UI settings"),
    P("webui_config_file", "str", _SERVER, "--webui-config-file", description="JSON file of default Web UI settings"),
    P("no_webui", "bool", _SERVER, "--no-webui", default=False, negative_flag="--webui", description="Disable the Web UI"),
    P("embeddings", "bool", _SERVER, "--embeddings", "embedding", default=False,
      description="Restrict the server to embeddings"),
    P("reranking", "bool", _SERVER, "--reranking", "embedding", default=False,
      to_llama=lambda v: {"embedding": True, "pooling_type": _POOLING["rank"]} if v else {},
      description="Enable the reranking endpoint (implies embeddings, rank pooling)"),
    P("api_key", "str", _SERVER, "--api-key", secret=True, description="API key(s) for authentication, comma-separated"),
    P("api_key_file", "str", _SERVER, "--api-key-file", description="File of API keys, one per line"),
    P("ssl_key_file", "str", _SERVER, "--ssl-key-file", description="PEM-encoded SSL private key file"),
    P("ssl_cert_file", "str", _SERVER, "--ssl-cert-file", description="PEM-encoded SSL certificate file"),
    P("timeout", "int", _SERVER, "--timeout", default=3600, min=0, description="Server read/write timeout in seconds"),
    P("threads_http", "int", _SERVER, "--threads-http", default=-1, description="Threads for HTTP requests (-1 = auto)"),
    P("cache_reuse", "int", _SERVER, "--cache-reuse", default=0, min=0,
      description="Min chunk size to reuse from the cache via KV shifting"),
    P("metrics_enabled", "bool", _SERVER, "--metrics", default=False, description="Prometheus metrics endpoint"),
    P("props_enabled", "bool", _SERVER, "--props", default=False, description="Allow changing properties via POST /props"),
    P("slots_enabled", "bool", _SERVER, "--slots", default=True, negative_flag="--no-slots",
      description="Slots monitoring endpoint"),
    P("slot_save_path", "str", _SERVER, "--slot-save-path", description="Directory to save slot KV caches in"),
    P("media_path", "str", _SERVER, "--media-path", description="Directory for local media files (file:// URLs)"),
    P("models_dir", "str", _SERVER, "--models-dir", description="Models directory for the router server"),
    P("models_preset", "str", _SERVER, "--models-preset", description="INI file of model presets for the router server"),
    P("models_max", "int", _SERVER, "--models-max", default=4, min=0,
      description="Max models loaded at once by the router (0 = unlimited)"),
    P("models_autoload", "bool", _SERVER, "--models-autoload", default=True, negative_flag="--no-models-autoload",
      description="Router loads models on demand"),
    P("jinja", "bool", _SERVER, "--jinja", default=True, negative_flag="--no-jinja",
      description="Use the Jinja template engine for chat"),
    P("chat_template", "str", _SERVER, "--chat-template",
      description="Chat template: a built-in name or a Jinja template"),
    P("chat_template_file", "str", _SERVER, "--chat-template-file", description="File with a Jinja chat template"),
    P("chat_template_kwargs", "str", _SERVER, "--chat-template-kwargs", validator=_check_json_object_text,
      description="JSON object of extra chat template parameters"),
    P("prefill_assistant", "bool", _SERVER, "--prefill-assistant", default=True,
      negative_flag="--no-prefill-assistant", description="Prefill a trailing assistant message"),
    # -- Example-Specific -------------------------------------------------------
    P("ctx_checkpoints", "int", _EXAMPLE, "--ctx-checkpoints", default=32, min=0,
      description="Max context checkpoints per slot"),
    # -- Advanced ---------------------------------------------------------------
    P("verbose_prompt", "bool", _ADV, "--verbose-prompt", default=False, launch=False,
      description="Print a verbose prompt (llama-cli only; llama-server rejects it)"),
    P("warmup", "bool", _ADV, "--warmup", default=True, negative_flag="--no-warmup",
      description="Warm up with an empty run"),
    P("spm_infill", "bool", _ADV, "--spm-infill", "spm_infill", default=False,
      description="Suffix/Prefix/Middle infill pattern"),
    P("pooling", "str", _ADV, "--pooling", "pooling_type", choices=("none", "mean", "cls", "last", "rank"),
      to_llama=_kw("pooling_type", _POOLING.__getitem__), description="Embedding pooling (default: from the model)"),
    P("context_shift", "bool", _ADV, "--context-shift", default=False, negative_flag="--no-context-shift",
      description="Context shift on infinite generation"),
    P("rpc", "str", _ADV, "--rpc", description="RPC servers (host:port), comma-separated"),
    P("offline", "bool", _ADV, "--offline", default=False, description="Offline mode: use the cache, no network"),
    P("override_kv", "str", _ADV, "--override-kv", "kv_overrides",
      validator=_fullmatch(re.compile(rf"{_KV_OVERRIDE.pattern}(,{_KV_OVERRIDE.pattern})*"),
                           "KEY=TYPE:VALUE,... with TYPE int, float, bool or str"),
      to_llama=_override_kv_to_llama, description="Override model metadata (KEY=TYPE:VALUE,...)"),
    P("op_offload", "bool", _ADV, "--op-offload", "op_offload", default=True, negative_flag="--no-op-offload",
      description="Offload host tensor operations to the device"),
    P("fit", "str", _ADV, "--fit", default="on", choices=("on", "off"),
      description="Adjust unset arguments to fit device memory"),
    P("fit_target", "str", _ADV, "--fit-target", default="1024", coerce=_coerce_fit_target,
      validator=_fullmatch(_INT_LIST, "MiB per device, e.g. '1024' or '1024,2048'"),
      description="Target free-memory margin per device for fit, in MiB ('1024' or '1024,2048')"),
    P("fit_ctx", "int", _ADV, "--fit-ctx", default=4096, min=0, description="Min context size fit may choose"),
    P("check_tensors", "bool", _ADV, "--check-tensors", default=False, description="Check tensor data for invalid values"),
    P("sleep_idle_seconds", "int", _ADV, "--sleep-idle-seconds", default=-1, min=-1, validator=_check_sleep,
      description="Sleep after this many idle seconds (-1 = never)"),
    P("polling", "int", _ADV, "--poll", default=50, min=0, max=100,
      description="Polling level while waiting for work (0 = none, 100 = busy wait)"),
    P("polling_batch", "int", _ADV, "--poll-batch", min=0, max=100,
      description="Polling level for batch processing (default: same as polling)"),
    P("reasoning_format", "str", _ADV, "--reasoning-format", default="auto",
      choices=("none", "deepseek", "deepseek-legacy", "auto"), description="How reasoning (thought) text is returned"),
    P("reasoning_budget", "int", _ADV, "--reasoning-budget", default=-1, min=-1,
      description="Thinking token budget (-1 = unrestricted, 0 = none)"),
    # -- Custom Parameters ------------------------------------------------------
    P("custom_params", "json", _CUSTOM, None, validator=_check_custom_params,
      description="Extra llama-server flags as a JSON object {flag: value}, appended last"),
)
# fmt: on
del P

PARAMS_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
if len(PARAMS_BY_NAME) != len(PARAMS):  # pragma: no cover - guards future edits
    raise RuntimeError("duplicate parameter names in PARAMS")

#: Keys of a registry record derived from other stores, skipped like
#: :data:`IDENTITY_COLUMNS` when a record is passed back in.
DERIVED_COLUMNS: Final = ("use_count",)

_NOT_PARAMS: Final = frozenset(IDENTITY_COLUMNS) | frozenset(FILE_COLUMNS) | frozenset(DERIVED_COLUMNS)
if _NOT_PARAMS & PARAMS_BY_NAME.keys():  # pragma: no cover - guards future edits
    raise RuntimeError(f"registry columns named like parameters: {_NOT_PARAMS & PARAMS_BY_NAME.keys()}")

# Flags of secret parameters, so the same secret given through custom_params
# ({"--api-key": ...}) is redacted too.
_SECRET_FLAGS: Final = frozenset(
    flag for p in PARAMS if p.secret for flag in (p.flag, p.legacy_flag) if flag
)
# The same without dashes, plus llama-server's short form of --hf-token.
_SECRET_FLAG_WORDS: Final = frozenset({f.lstrip("-") for f in _SECRET_FLAGS} | {"hft"})


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _lookup(name: str) -> Param:
    try:
        return PARAMS_BY_NAME[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), PARAMS_BY_NAME, n=3, cutoff=0.6)
        raise UnknownParameterError(str(name), close) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(p: Param, value: float) -> None:
    if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
        raise ParameterValueError(p.name, value, p.allowed)


#: SQLite's INTEGER range: a larger Python int cannot be bound (OverflowError).
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _check_int64(p: Param, value: int) -> None:
    if not _INT64_MIN <= value <= _INT64_MAX:
        allowed = p.allowed or "any integer"
        raise ParameterValueError(
            p.name, value, f"{allowed} (within SQLite's 64-bit range -2**63..2**63-1)"
        )


def _validate_one(p: Param, value: Any) -> Any:
    if value is None:
        return None
    if p.coerce is not None:
        value = p.coerce(value)
    if p.type == "int":
        if not _is_int(value):
            raise ParameterTypeError(p.name, "int", value)
        _check_int64(p, value)
        _check_range(p, value)
    elif p.type == "float":
        if not (_is_int(value) or isinstance(value, float)):
            raise ParameterTypeError(p.name, "float", value)
        try:
            value = float(value)
        except OverflowError:  # an int beyond a double's range
            raise ParameterValueError(p.name, value, "a finite number") from None
        if not math.isfinite(value):
            raise ParameterValueError(p.name, value, "a finite number")
        _check_range(p, value)
    elif p.type == "bool":
        # SQLite hands booleans back as 0/1, so those are accepted and normalised.
        if _is_int(value):
            if value not in (0, 1):
                raise ParameterValueError(p.name, value, p.allowed)
            value = bool(value)
        elif not isinstance(value, bool):
            raise ParameterTypeError(p.name, "bool", value)
    elif p.type == "str":
        if not isinstance(value, str):
            raise ParameterTypeError(p.name, "str", value)
    elif p.type == "gpu_layers":
        # A TEXT column turns 99 into '99'; read it back as the number.
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            try:
                value = int(value)
            except ValueError:  # beyond Python's int-from-text digit limit
                raise ParameterValueError(p.name, value, p.allowed) from None
        if _is_int(value):
            _check_int64(p, value)
            _check_range(p, value)
        elif isinstance(value, str):
            if value not in ("auto", "all"):
                raise ParameterValueError(p.name, value, p.allowed)
        else:
            raise ParameterTypeError(p.name, "int or 'auto'/'all'", value)
    elif p.type == "json":
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ParameterTypeError(p.name, "a JSON-serialisable value", value) from None
    if p.choices is not None and value not in p.choices:
        raise ParameterValueError(p.name, value, p.allowed)
    if p.validator is not None:
        value = p.validator(p, value)
    return value


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against :data:`PARAMS` and return normalised values.

    ``None`` means "unset" and is kept.  Normalisation: ints become floats for
    float parameters, ``0``/``1`` become ``False``/``True`` for booleans, a
    numeric string becomes an int for ``gpu_layers``, an int ``fit_target``
    becomes its string form and tuples in pair parameters become lists.

    Raises:
        UnknownParameterError: a name not in :data:`PARAMS` (a ``KeyError``),
            with close matches suggested.
        ParameterTypeError: a value of the wrong type (a ``TypeError``).
        ParameterValueError: a value outside the allowed set or range
            (a ``ValueError``).
    """
    _check_params_mapping(params)
    return {name: _validate_one(_lookup(name), value) for name, value in params.items()}


def _check_params_mapping(params: Any) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a mapping of parameter names to values (a dict or a ModelRecord), "
            f"got {type(params).__name__}"
        )


def _launch_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validated, set (non-None) parameters, identity columns dropped."""
    _check_params_mapping(params)
    picked = {k: v for k, v in params.items() if k not in _NOT_PARAMS}
    return {k: v for k, v in validate_params(picked).items() if v is not None}


# ---------------------------------------------------------------------------
# llama_cpp.Llama(...) / create_completion(...)
# ---------------------------------------------------------------------------


def to_llama_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``llama_cpp.Llama(**kwargs)`` (llama-cpp-python 0.3.x).

    Only set parameters that have a ``Llama()`` equivalent are emitted; enum
    names become the integer constants of llama.h / ggml.h (hard-coded, so
    ``llama_cpp`` is not imported).  Notable choices:

    * ``gpu_layers``: ``"all"``, ``"auto"`` and ``-1`` all become ``-1``
      (``Llama()`` offloads every layer).  ``Llama()`` cannot fit layers to
      free VRAM like llama-server's ``auto``; offloading all is what ``auto``
      does whenever the model fits and is a no-op on CPU-only builds.
    * ``flash_attn``: ``"on"``/``"off"`` become ``True``/``False``; ``"auto"``
      is omitted because ``Llama()`` 0.3.36 only takes a bool.
    * ``threads``/``threads_batch`` <= 0 and ``repeat_last_n`` = -1 are
      omitted (``Llama()`` picks its own automatic values).
    * ``seed`` -1 becomes ``LLAMA_DEFAULT_SEED`` (random).
    * ``reranking`` sets ``embedding=True`` and rank pooling; ``rope_scale``
      N sets ``rope_freq_scale=1/N``.  When two parameters feed the same
      keyword the later one in :data:`PARAMS` wins, as on the llama-server
      command line.
    * ``lora``/``lora_scaled`` must name a single adapter (``Llama()`` loads
      one); both set, or a list, raises :class:`ParameterValueError`.
    * ``chat_template``, ``mmproj`` and ``model_draft`` are not emitted:
      ``Llama()`` wants handler objects for those (``chat_handler``,
      ``draft_model``), which the inference layer must build.
    """
    values = _launch_params(params)
    if values.get("lora") is not None and values.get("lora_scaled") is not None:
        raise ParameterValueError(
            "lora", values["lora"], "lora or lora_scaled, not both, for llama_cpp.Llama"
        )
    out: dict[str, Any] = {}
    for p in PARAMS:
        if p.name not in values or p.llama_kwarg is None:
            continue
        value = values[p.name]
        out.update(p.to_llama(value) if p.to_llama is not None else {p.llama_kwarg: value})
    return out


def to_sampling_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Llama.create_completion`` / ``create_chat_completion``.

    Maps temperature, top_k, top_p, min_p, typical (``typical_p``),
    repeat_penalty, presence/frequency_penalty, mirostat (``mirostat_mode``),
    mirostat_lr (``mirostat_eta``), mirostat_ent (``mirostat_tau``), seed
    (-1 omitted: random), predict (``max_tokens``; <= 0 becomes ``None``:
    until the context is full) and logit_bias (parsed to ``{token_id: bias}``).
    Only set parameters are emitted, so an unset ``predict`` leaves
    ``create_completion``'s own 16-token default in place.

    ``grammar`` is passed through as the GBNF *string*: ``create_completion``
    wants a ``llama_cpp.LlamaGrammar``, so the caller must wrap it with
    ``LlamaGrammar.from_string(...)`` (and build one from ``json_schema`` with
    ``LlamaGrammar.from_json_schema(...)``, which is not emitted here).
    Samplers that ``create_completion`` lacks (DRY, XTC, top-n-sigma,
    dynamic temperature) are not emitted.
    """
    values = _launch_params(params)
    out: dict[str, Any] = {}
    for p in PARAMS:
        if p.name not in values or p.completion_kwarg is None:
            continue
        value = values[p.name]
        out.update(
            p.to_completion(value) if p.to_completion is not None else {p.completion_kwarg: value}
        )
    return out


# ---------------------------------------------------------------------------
# llama-server argv
# ---------------------------------------------------------------------------


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form; std::stof reads it
    return str(value)


def _same_as_default(p: Param, value: Any) -> bool:
    if p.default is None:
        return False
    if p.type == "gpu_layers":
        # llama-server reads -1 as "auto".
        return (value == -1 and p.default == "auto") or value == p.default
    if p.type == "float":
        return float(value) == float(p.default)
    return bool(value == p.default)


def _load_mode(mmap: bool | None, mlock: bool | None) -> str | None:
    """--load-mode for the seed's two booleans; None when both are llama-server's default."""
    use_mmap = True if mmap is None else mmap
    if not mlock:
        return None if use_mmap else "none"
    return "mmap+mlock" if use_mmap else "mlock"


def _custom_args(custom: Mapping[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in custom.items():
        flag = key if key.startswith("-") else f"--{key}"
        if value is None or value is False:
            continue  # "not set"; a negative form must be spelled out as its own flag
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(_render, value)]
        else:
            argv += [flag, _render(value)]
    return argv


def to_server_args(
    params: Mapping[str, Any],
    *,
    model_path_flag: str = "--model",
    legacy: bool = False,
    redact_secrets: bool = False,
) -> list[str]:
    """Build the llama-server argv (without the program name) for ``params``.

    Parameters are emitted in :data:`PARAMS` order, only when set and different
    from llama-server's default.  Booleans become their switch forms (``True``:
    the flag, ``False``: the ``--no-…`` form; nothing when that is the
    default).  ``mmap``/``mlock`` become one ``--load-mode``; ``logit_bias``
    becomes one ``--logit-bias`` per item.  ``custom_params`` (a JSON object
    ``{flag: value}``; ``true`` = bare flag, ``false``/``null`` = skipped, a list
    = several words) comes last, so it overrides earlier flags.

    Args:
        params: parameter values; identity columns (``id``, ``name``...) are ignored.
        model_path_flag: flag used for ``model_path`` (e.g. ``"-m"``).
        legacy: use the flags of llama-server builds from before the
            ``--load-mode``/``--spec-draft-*`` rework (``--no-mmap``,
            ``--mlock``, ``--draft-max``, ``--ctx-size-draft``,
            ``--spec-replace``, ``--hf-file-v``).
        redact_secrets: put :data:`REDACTED` in place of secret values (for logs).

    A set parameter that the target llama-server cannot take (no flag, or one
    that makes the server exit) is skipped with a :class:`ServerArgWarning`.
    """
    if not isinstance(model_path_flag, str) or not model_path_flag.startswith("-"):
        raise TypeError(f"model_path_flag must be a flag such as '--model', got {model_path_flag!r}")
    for name, given in (("legacy", legacy), ("redact_secrets", redact_secrets)):
        if not isinstance(given, bool):
            raise TypeError(f"{name} must be True or False, got {type(given).__name__} {given!r}")
    values = _launch_params(params)
    argv: list[str] = []
    load_mode_done = False
    for p in PARAMS:
        if p.name not in values or p.name == "custom_params":
            continue
        value = values[p.name]

        if p.name in ("mmap", "mlock") and not legacy:
            if not load_mode_done:
                load_mode_done = True
                mode = _load_mode(values.get("mmap"), values.get("mlock"))
                if mode is not None:
                    argv += ["--load-mode", mode]
            continue

        flag, negative = p.flag, p.negative_flag
        use_legacy = legacy and bool(p.legacy_flag or p.legacy_negative_flag)
        if use_legacy:
            flag, negative = p.legacy_flag, p.legacy_negative_flag
        # Renamed flags changed defaults too (draft_max: 16 -> 3), so an old build
        # gets every set value; a boolean's default switch form may not exist there.
        if _same_as_default(p, value) and (not use_legacy or p.type == "bool"):
            continue
        if p.name == "model_path":
            flag = model_path_flag
        if flag is None or not p.launch:
            why = (
                "llama-server has no flag for it"
                if flag is None
                else "llama-server does not take it at launch"
            )
            if flag is None and p.legacy_flag and not legacy:
                why += f" (older builds: {p.legacy_flag}; pass legacy=True)"
            warnings.warn(
                f"model parameter {p.name!r} not passed to llama-server: {why}",
                ServerArgWarning,
                stacklevel=2,
            )
            continue
        if p.secret and redact_secrets:
            value = REDACTED

        if p.type == "bool" and not p.bool_as_value:
            switch = flag if value else negative
            if switch is None:
                warnings.warn(
                    f"model parameter {p.name!r}={value!r} not passed to llama-server: it has no flag for that value",
                    ServerArgWarning,
                    stacklevel=2,
                )
                continue
            argv.append(switch)
        elif p.nargs > 1:
            argv += [flag, *map(_render, value)]
        elif p.repeat:
            for item in _split_csv(value):
                argv += [flag, item]
        else:
            argv += [flag, _render(value)]

    custom = values.get("custom_params")
    if custom:
        argv += _custom_args(_redact_custom(custom) if redact_secrets else custom)
    if redact_secrets:
        # URL passwords (--model-url https://user:PW@host/...) and secrets written
        # inline (--api-key=sk-...) in any word.
        argv = [redact_text(word) for word in argv]
    return argv


# ---------------------------------------------------------------------------
# secrets, SQL, docs
# ---------------------------------------------------------------------------


def redact(params: Mapping[str, Any], show_secrets: bool = False) -> dict[str, Any]:
    """Copy of ``params`` with secret values (``hf_token``, ``api_key``) replaced by ``"***"``.

    Secret flags inside ``custom_params`` (``{"--api-key": ...}``) are redacted too.

    ``None`` stays ``None`` (so "unset" remains visible); keys that are not
    parameters (identity columns...) pass through unchanged.  With
    ``show_secrets=True`` the copy is returned unredacted.
    """
    out = dict(params)
    if show_secrets:
        return out
    for name, value in out.items():
        p = PARAMS_BY_NAME.get(name)
        if p is not None and p.secret and value is not None:
            out[name] = REDACTED
        elif name == "custom_params" and isinstance(value, Mapping):
            out[name] = _redact_custom(value)
        elif name == "custom_params" and isinstance(value, str):
            # An invalid stored value is shown as stored (see ModelRecord).
            out[name] = _redact_custom_text(value)
        elif isinstance(value, str):
            out[name] = redact_text(value)  # URL passwords, inline secret flags
        elif isinstance(value, list) and any(isinstance(v, str) for v in value):
            out[name] = [redact_text(v) if isinstance(v, str) else v for v in value]
    return out


#: What :func:`redact_text` puts in place of a URL's password (pip's marker).
URL_REDACTED: Final = "****"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/?#@\s:]*)(?::(?P<password>[^/?#@\s]*))?@")


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden, as pip shows them.

    ``https://user:PW@host/x`` becomes ``https://user:****@host/x``; a lone
    user name (often a token: ``https://TOKEN@host/``) becomes ``****``.
    """
    if "@" not in text or "://" not in text:
        return text

    def hide(match: re.Match[str]) -> str:
        if match.group("password") is None:
            return f"{match.group('scheme')}{URL_REDACTED}@"
        return f"{match.group('scheme')}{match.group('user')}:{URL_REDACTED}@"

    return _URL_CREDENTIALS.sub(hide, text)


def _inline_secret_pattern() -> re.Pattern[str]:
    words = "|".join(
        re.escape(w).replace("\\-", "[-_]") for w in sorted(_SECRET_FLAG_WORDS, key=len, reverse=True)
    )
    return re.compile(rf"(?i)(?P<flag>(?<![\w-])-{{1,2}}(?:{words}))(?P<sep>=|\s+)(?P<value>\S+)")


_INLINE_SECRET: re.Pattern[str] | None = None


def redact_text(text: str) -> str:
    """``text`` with URL passwords (:func:`redact_url`) and inline secret flags hidden.

    An inline flag is a secret flag and its value in one word or line
    (``--api-key=sk-...``, ``--hf-token hf_...``): the value becomes :data:`REDACTED`.
    """
    global _INLINE_SECRET
    text = redact_url(text)
    if "-" not in text:
        return text
    if _INLINE_SECRET is None:
        _INLINE_SECRET = _inline_secret_pattern()
    return _INLINE_SECRET.sub(lambda m: f"{m.group('flag')}{m.group('sep')}{REDACTED}", text)


def _is_secret_flag(key: object) -> bool:
    """Whether a ``custom_params`` key is a secret flag (``--api-key``, ``hf-token``, ``-hft``)."""
    if not isinstance(key, str):
        return False
    return key.strip().lstrip("-").lower().replace("_", "-") in _SECRET_FLAG_WORDS


def _is_set_secret(key: object, value: object) -> bool:
    # None/False mean "flag not passed": nothing to hide.
    return value is not None and value is not False and _is_secret_flag(key)


def _redact_custom(custom: Mapping[Any, Any]) -> dict[Any, Any]:
    """``custom_params`` with the values of secret flags (``--api-key``...) redacted.

    Keys are matched loosely (``api_key``, ``--API-KEY``, ``-hft``): redacting
    a value llama-server would reject costs nothing, leaking one does.
    """
    return {
        (redact_text(key) if isinstance(key, str) else key): (
            REDACTED if _is_set_secret(key, value)
            else redact_text(value) if isinstance(value, str)
            else [redact_text(v) if isinstance(v, str) else v for v in value] if isinstance(value, list)
            else value
        )
        for key, value in custom.items()
    }


def _redact_custom_text(text: Any) -> Any:
    """A stored ``custom_params`` value (JSON text) with its secret flags redacted.

    Returns ``text`` itself when there is nothing to redact, so callers can
    tell whether it changed.  Text that is not a JSON object but mentions a
    secret flag becomes :data:`REDACTED` as a whole.
    """
    if not isinstance(text, (str, bytes)):
        return text
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        redacted = _redact_custom(parsed)
        if redacted == parsed:
            return text
        return json.dumps(redacted, separators=(",", ":"))
    decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    lowered = decoded.lower().replace("_", "-")
    if any(word in lowered for word in _SECRET_FLAG_WORDS):
        return REDACTED
    hidden = redact_url(decoded)
    return text if hidden == decoded else hidden


def _restore_custom_text(incoming: Any, stored: Any) -> Any:
    """``custom_params`` JSON text from a redacted export, its secrets taken from ``stored``.

    A redacted secret means "not exported", never the literal ``"***"``: each
    redacted flag gets the value ``stored`` (this database's row) has for it,
    or is dropped when there is none; a wholly redacted value becomes
    ``stored``.  Used by ``import_database``.
    """
    if incoming == REDACTED:
        return stored
    try:
        parsed = json.loads(incoming) if isinstance(incoming, (str, bytes)) else None
    except ValueError:
        return incoming
    if not isinstance(parsed, dict) or not _has_redactions(parsed):
        return incoming
    try:
        mine = json.loads(stored) if isinstance(stored, (str, bytes)) else {}
    except ValueError:
        mine = {}
    if not isinstance(mine, dict):
        mine = {}
    # What each of this database's entries looks like once redacted.
    mine_by_shown = {redact_text(k) if isinstance(k, str) else k: k for k in mine}
    restored: dict[str, Any] = {}
    for key, value in parsed.items():
        if value == REDACTED and _is_secret_flag(key):
            if key in mine:
                restored[key] = mine[key]
            continue
        if isinstance(key, str) and REDACTED in key and redact_text(key.replace(REDACTED, "x")) == key:
            # A flag with its secret inline (--api-key=***): this database's own, or none.
            original = mine_by_shown.get(key)
            if original is not None:
                restored[original] = mine[original]
            continue
        if isinstance(value, str) and REDACTED in value:
            # A URL password or an inline flag hidden inside the text: this database's own.
            stored_value = mine.get(key)
            if isinstance(stored_value, str) and redact_text(stored_value) == value:
                value = stored_value
        restored[key] = value
    return json.dumps(restored, separators=(",", ":"))


def _has_redactions(parsed: Mapping[str, Any]) -> bool:
    return any(
        value == REDACTED
        or (isinstance(key, str) and REDACTED in key)
        or (isinstance(value, str) and REDACTED in value)
        for key, value in parsed.items()
    )


def sqlite_type(param: Param | str) -> str:
    """SQLite column type for a parameter: INTEGER (int, bool), REAL (float), TEXT (others)."""
    p = param if isinstance(param, Param) else _lookup(param)
    return {"int": "INTEGER", "bool": "INTEGER", "float": "REAL"}.get(p.type, "TEXT")


def to_sql(param: Param | str, value: Any) -> Any:
    """Value to bind for a parameter's column (JSON dumped, bools as 0/1)."""
    p = param if isinstance(param, Param) else _lookup(param)
    value = _validate_one(p, value)
    if value is None:
        return None
    if p.type == "bool":
        return int(value)
    if p.type == "json":
        return json.dumps(value, separators=(",", ":"))
    if p.type == "gpu_layers":
        return str(value)
    return value


def from_sql(param: Param | str, value: Any) -> Any:
    """Inverse of :func:`to_sql`: a column value back to its Python form."""
    p = param if isinstance(param, Param) else _lookup(param)
    if value is None:
        return None
    if p.type == "json" and isinstance(value, (str, bytes)):
        value = json.loads(value)
    return _validate_one(p, value)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parameter_table_markdown() -> str:
    """Markdown table of every parameter, generated from :data:`PARAMS` (for the docs)."""
    lines = [
        "| Name | Type | Flag | Llama kwarg | Default | Allowed values | Secret | Description |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in PARAMS:
        flag = p.flag or (f"({p.legacy_flag}, removed)" if p.legacy_flag else "")
        if p.flag and p.negative_flag:
            flag = f"{p.flag} / {p.negative_flag}"
        default = (
            ""
            if p.default is None
            else json.dumps(p.default)
            if isinstance(p.default, bool)
            else str(p.default)
        )
        cells = [
            f"`{p.name}`",
            p.type,
            f"`{flag}`" if flag else "",
            f"`{p.llama_kwarg}`" if p.llama_kwarg else "",
            f"`{default}`" if default else "",
            p.allowed,
            "yes" if p.secret else "",
            p.description,
        ]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
