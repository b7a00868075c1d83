"""Tests for the declarative model-parameter catalogue (cyllama_db.stores.params)."""

from __future__ import annotations

import inspect
import json
import math
import re
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyllama_db.stores.params import (
    GROUPS,
    IDENTITY_COLUMNS,
    PARAMS,
    PARAMS_BY_NAME,
    REDACTED,
    Param,
    ParameterTypeError,
    ParameterValueError,
    ServerArgWarning,
    UnknownParameterError,
    from_sql,
    parameter_table_markdown,
    redact,
    sqlite_type,
    to_llama_kwargs,
    to_sampling_kwargs,
    to_server_args,
    to_sql,
    validate_params,
)

SEED_SCHEMA = Path("/work/shared/seeds/002_08dff430bfaab98e.txt")


# Named (non-**kwargs) parameters of llama_cpp.Llama.__init__ / create_completion in
# llama-cpp-python 0.3.36, so the mapping is checked even where llama_cpp is absent.
LLAMA_INIT_KWARGS = frozenset(
    [
        "model_path",
        "n_gpu_layers",
        "split_mode",
        "main_gpu",
        "tensor_split",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "kv_overrides",
        "seed",
        "n_ctx",
        "n_batch",
        "n_ubatch",
        "n_threads",
        "n_threads_batch",
        "rope_scaling_type",
        "pooling_type",
        "attention_type",
        "rope_freq_base",
        "rope_freq_scale",
        "yarn_ext_factor",
        "yarn_attn_factor",
        "yarn_beta_fast",
        "yarn_beta_slow",
        "yarn_orig_ctx",
        "logits_all",
        "embedding",
        "offload_kqv",
        "flash_attn",
        "op_offload",
        "swa_full",
        "no_perf",
        "last_n_tokens_size",
        "lora_base",
        "lora_scale",
        "lora_path",
        "numa",
        "chat_format",
        "chat_handler",
        "draft_model",
        "tokenizer",
        "type_k",
        "type_v",
        "spm_infill",
        "verbose",
    ]
)
COMPLETION_KWARGS = frozenset(
    [
        "prompt",
        "suffix",
        "max_tokens",
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "logprobs",
        "echo",
        "stop",
        "frequency_penalty",
        "presence_penalty",
        "repeat_penalty",
        "top_k",
        "stream",
        "seed",
        "tfs_z",
        "mirostat_mode",
        "mirostat_tau",
        "mirostat_eta",
        "model",
        "stopping_criteria",
        "logits_processor",
        "grammar",
        "logit_bias",
    ]
)


# ---------------------------------------------------------------------------
# coverage of the seed schema
# ---------------------------------------------------------------------------


def _seed_model_columns(text: str) -> list[str]:
    section = text.split("### 2. `models` Table", 1)[1].split("### 3.", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def test_every_seed_column_is_a_parameter() -> None:
    if not SEED_SCHEMA.exists():
        pytest.skip("seed schema not available")
    columns = _seed_model_columns(SEED_SCHEMA.read_text(encoding="utf-8", errors="replace"))
    assert len(columns) > 150, "seed parsing broke"
    expected = set(columns) - set(IDENTITY_COLUMNS)
    names = {p.name for p in PARAMS}
    assert expected - names == set(), "seed columns without a Param"
    assert names - expected == set(), "Params that are not seed columns"
    # declaration order follows the seed (first occurrence; no_host is listed twice there)
    first_seen = list(dict.fromkeys(c for c in columns if c in names))
    assert [p.name for p in PARAMS] == first_seen


@pytest.mark.parametrize(
    "name",
    [
        "model_path", "hf_token", "ctx_size", "n_parallel", "cpu_strict_batch", "cache_type_k",
        "mmap", "mlock", "gpu_layers", "tensor_split", "no_host", "kv_unified", "temperature",
        "top_nsigma", "dry_sequence_breaker", "sampler_seq", "seed", "json_schema_file", "escape",
        "yarn_beta_fast", "flash_attn", "mmproj_offload", "control_vector_layer_range",
        "n_gpu_layers_draft", "spec_replace", "log_colors", "logit_bias", "api_key", "webui",
        "models_autoload", "prefill_assistant", "ctx_checkpoints", "pooling", "fit_target",
        "polling_batch", "reasoning_budget", "custom_params",
    ],
)  # fmt: skip
def test_spot_parameters_present(name: str) -> None:
    assert name in PARAMS_BY_NAME


def test_identity_columns_are_not_parameters() -> None:
    assert not set(IDENTITY_COLUMNS) & set(PARAMS_BY_NAME)


def test_names_unique_and_index_complete() -> None:
    names = [p.name for p in PARAMS]
    assert len(names) == len(set(names))
    assert names.count("no_host") == 1
    assert list(PARAMS_BY_NAME) == names
    assert all(PARAMS_BY_NAME[p.name] is p for p in PARAMS)


def test_groups_are_seed_sections_in_order() -> None:
    assert {p.group for p in PARAMS} == set(GROUPS)
    seen = list(dict.fromkeys(p.group for p in PARAMS))
    assert seen == list(GROUPS), "each group is contiguous and in seed order"
    assert PARAMS_BY_NAME["no_host"].group == "GPU Offloading"
    assert PARAMS_BY_NAME["custom_params"].group == "Custom Parameters"


# ---------------------------------------------------------------------------
# declarations are self-consistent
# ---------------------------------------------------------------------------


def test_flags_are_long_and_distinct() -> None:
    flags: list[str] = []
    for p in PARAMS:
        for flag in (p.flag, p.negative_flag, p.legacy_flag, p.legacy_negative_flag):
            if flag is not None:
                assert flag.startswith("--"), (p.name, flag)
                assert re.fullmatch(r"--[a-z0-9][a-z0-9-]*", flag), (p.name, flag)
        if p.flag is not None:
            flags.append(p.flag)
        if p.negative_flag is not None:
            flags.append(p.negative_flag)
    # mmap and mlock are the only pair sharing a flag: llama-server's --load-mode
    dupes = {f for f in flags if flags.count(f) > 1}
    assert dupes == {"--load-mode"}
    assert PARAMS_BY_NAME["mmap"].flag == PARAMS_BY_NAME["mlock"].flag == "--load-mode"


def test_negative_flags_only_on_booleans() -> None:
    for p in PARAMS:
        if p.negative_flag or p.legacy_negative_flag or p.bool_as_value:
            assert p.type == "bool", p.name


def test_real_flag_spellings() -> None:
    expect = {
        "ctx_size": "--ctx-size",
        "gpu_layers": "--gpu-layers",
        "temperature": "--temperature",
        "priority": "--prio",
        "polling": "--poll",
        "n_parallel": "--parallel",
        "embeddings": "--embeddings",
        "metrics_enabled": "--metrics",
        "webui": "--webui-config",
        "log_verbose": "--log-verbosity",
        "draft_max": "--spec-draft-n-max",
        "rope_scaling_type": "--rope-scaling",
    }
    assert {n: PARAMS_BY_NAME[n].flag for n in expect} == expect
    assert PARAMS_BY_NAME["kv_offload"].negative_flag == "--no-kv-offload"
    assert PARAMS_BY_NAME["repack"].negative_flag == "--no-repack"
    assert PARAMS_BY_NAME["no_host"].negative_flag is None  # llama-server only has --no-host
    assert PARAMS_BY_NAME["swa_full"].negative_flag is None
    assert PARAMS_BY_NAME["mmap"].legacy_negative_flag == "--no-mmap"


@pytest.mark.parametrize("p", [p for p in PARAMS if p.default is not None], ids=lambda p: p.name)
def test_default_is_a_valid_value(p: Param) -> None:
    assert validate_params({p.name: p.default}) == {p.name: p.default}
    if p.type in ("int", "float"):
        assert type(p.default) is {"int": int, "float": float}[p.type]
    if p.type == "bool":
        assert type(p.default) is bool


@pytest.mark.parametrize("p", [p for p in PARAMS if p.choices], ids=lambda p: p.name)
def test_choices_match_type(p: Param) -> None:
    assert p.choices is not None
    assert len(set(p.choices)) == len(p.choices)
    for choice in p.choices:
        assert validate_params({p.name: choice}) == {p.name: choice}
    assert p.default is None or p.default in p.choices


def test_documented_choice_sets() -> None:
    kv = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
    for name in ("cache_type_k", "cache_type_v", "cache_type_k_draft", "cache_type_v_draft"):
        assert PARAMS_BY_NAME[name].choices == kv
    assert PARAMS_BY_NAME["flash_attn"].choices == ("on", "off", "auto")
    assert PARAMS_BY_NAME["numa"].choices == ("distribute", "isolate", "numactl")
    assert PARAMS_BY_NAME["pooling"].choices == ("none", "mean", "cls", "last", "rank")
    assert PARAMS_BY_NAME["fit"].choices == ("on", "off")
    assert set(PARAMS_BY_NAME["split_mode"].choices or ()) >= {"none", "layer", "row"}
    assert PARAMS_BY_NAME["reasoning_format"].choices == (
        "none",
        "deepseek",
        "deepseek-legacy",
        "auto",
    )
    assert (PARAMS_BY_NAME["priority"].min, PARAMS_BY_NAME["priority"].max) == (-1, 3)


def test_bounds_are_consistent() -> None:
    for p in PARAMS:
        if p.min is not None or p.max is not None:
            assert p.type in ("int", "float", "gpu_layers"), p.name
        if p.min is not None and p.max is not None:
            assert p.min <= p.max, p.name


def test_secrets() -> None:
    assert {p.name for p in PARAMS if p.secret} == {"hf_token", "api_key"}


def test_sqlite_types() -> None:
    assert sqlite_type("ctx_size") == "INTEGER"
    assert sqlite_type(PARAMS_BY_NAME["mmap"]) == "INTEGER"
    assert sqlite_type("temperature") == "REAL"
    assert sqlite_type("flash_attn") == "TEXT"
    assert sqlite_type("custom_params") == "TEXT"
    assert sqlite_type("gpu_layers") == "TEXT"
    for p in PARAMS:
        assert sqlite_type(p) in ("INTEGER", "REAL", "TEXT")
    with pytest.raises(KeyError):
        sqlite_type("nope")


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_unknown_parameter_suggests_close_match() -> None:
    with pytest.raises(UnknownParameterError) as info:
        validate_params({"ctx_sise": 4096})
    err = info.value
    assert isinstance(err, KeyError)
    assert err.name == "ctx_sise"
    assert "ctx_size" in err.suggestions
    assert "ctx_sise" in str(err) and "ctx_size" in str(err)
    assert not str(err).startswith(("'", '"'))  # not KeyError's repr()-quoted message


def test_unknown_parameter_without_match() -> None:
    with pytest.raises(KeyError, match="zzzz") as info:
        validate_params({"zzzz": 1})
    assert info.value.suggestions == ()


@pytest.mark.parametrize(
    ("name", "value", "expected", "got"),
    [
        ("ctx_size", "4096", "int", "str"),
        ("ctx_size", 4096.0, "int", "float"),
        ("ctx_size", True, "int", "bool"),
        ("temperature", "0.7", "float", "str"),
        ("temperature", False, "float", "bool"),
        ("mmap", "yes", "bool", "str"),
        ("mmap", 1.0, "bool", "float"),
        ("host", 127, "str", "int"),
        ("gpu_layers", 9.5, "int or 'auto'/'all'", "float"),
        ("custom_params", ["--x"], "a JSON object", "list"),
        ("spec_replace", object(), "a JSON-serialisable value", "object"),
    ],
)
def test_wrong_type(name: str, value: Any, expected: str, got: str) -> None:
    with pytest.raises(ParameterTypeError) as info:
        validate_params({name: value})
    err = info.value
    assert isinstance(err, TypeError)
    assert (err.name, err.got) == (name, got)
    assert err.expected.startswith(expected)
    assert name in str(err) and got in str(err) and expected in str(err)


@pytest.mark.parametrize(
    ("name", "value", "allowed_fragment"),
    [
        ("flash_attn", "maybe", "on, off, auto"),
        ("cache_type_k", "q9", "q8_0"),
        ("cache_type_v_draft", "Q8_0", "q8_0"),
        ("mmap", 2, "true, false"),
        ("kv_offload", -1, "true, false"),
        ("priority", 4, "-1..3"),
        ("priority_batch", -1, "0..3"),
        ("polling", 101, "0..100"),
        ("ctx_size", -1, ">= 0"),
        ("top_p", 1.5, "0..1"),
        ("temperature", math.nan, "finite"),
        ("temperature", math.inf, "finite"),
        ("gpu_layers", "most", "auto, all"),
        ("gpu_layers", -3, "auto, all"),
        ("mirostat", 3, "0, 1, 2"),
        ("n_parallel", 0, "auto"),
        ("sleep_idle_seconds", 0, "disabled"),
        ("split_mode", "columns", "layer"),
        ("reasoning_format", "deepseek_legacy", "deepseek-legacy"),
        ("tensor_split", "3;1", "proportions"),
        ("cpu_mask", "0xZZ", "hex"),
        ("logit_bias", "15043*2", "TOKEN_ID"),
        ("lora_scaled", "adapter.gguf", "FNAME:SCALE"),
        ("override_kv", "a=double:1", "KEY=TYPE:VALUE"),
        ("chat_template_kwargs", "[1, 2]", "JSON object"),
        ("json_schema", "{not json", "JSON"),
        ("control_vector_layer_range", [3], "START, END"),
        ("spec_replace", ["a", 1], "TARGET, DRAFT"),
        ("fit_target", "1GiB", "MiB"),
        ("custom_params", {"": 1}, "flag names"),
        ("custom_params", {"--x": {"nested": 1}}, "scalar"),
    ],
)
def test_value_not_allowed(name: str, value: Any, allowed_fragment: str) -> None:
    with pytest.raises(ParameterValueError) as info:
        validate_params({name: value})
    err = info.value
    assert isinstance(err, ValueError)
    assert err.name == name
    assert allowed_fragment in err.allowed
    assert name in str(err) and allowed_fragment in str(err)


@pytest.mark.parametrize(
    ("params", "exc"),
    [
        ({"hf_token": b"hf_SECRET"}, ParameterTypeError),
        ({"api_key": ["SECRET-1", "SECRET-2"]}, ParameterTypeError),
        ({"custom_params": {"--api-key": "SK-SECRET", "x": math.nan}}, ParameterTypeError),
        ({"custom_params": {"hf-token": "HF-SECRET", "--x": {"nested": 1}}}, ParameterValueError),
        ({"custom_params": {"--api-key": {"SECRET": 1}}}, ParameterValueError),
        ({"custom_params": {"-hft": "HFT-SECRET", "": 1}}, ParameterValueError),
        ({"custom_params": "--api-key SECRET"}, ParameterTypeError),
        ({"custom_params": [("--api-key", "SECRET")]}, ParameterTypeError),
    ],
)
def test_errors_never_show_secret_values(params: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        validate_params(params)
    err = info.value
    (name,) = params
    assert err.name == name and name in str(err)  # type: ignore[attr-defined]
    assert "SECRET" not in str(err) and "SECRET" not in repr(err), str(err)
    assert "SECRET" not in repr(getattr(err, "value", None))
    if isinstance(err, ParameterTypeError):
        assert err.got in str(err)  # the type is still named


def test_errors_show_custom_params_redacted() -> None:
    with pytest.raises(ParameterTypeError) as info:
        validate_params({"custom_params": {"--api-key": "SK-LEAK", "x": math.nan}})
    assert "'--api-key': '***'" in str(info.value) and "nan" in str(info.value)
    with pytest.raises(ParameterValueError) as value_info:
        validate_params({"custom_params": {"--api-key": "SK-LEAK", "--x": {"a": 1}}})
    assert value_info.value.value == {"--x": {"a": 1}}  # the offending item, shown
    assert "'--x'" in str(value_info.value)
    # other parameters still show the value, which is what helps
    with pytest.raises(ParameterTypeError, match=r"\('4096'\)"):
        validate_params({"ctx_size": "4096"})


def test_secret_value_errors_keep_only_the_redacted_value() -> None:
    with pytest.raises(ParameterValueError) as info:
        raise ParameterValueError("api_key", "SK-LEAK", "anything else")
    assert info.value.value == "***" and "SK-LEAK" not in str(info.value)
    assert "this str value" in str(info.value)


def test_registry_errors_live_in_errors_py() -> None:
    """The parameter and GGUF errors are defined in cyllama_db.errors, same objects everywhere."""
    import cyllama_db
    from cyllama_db import errors
    from cyllama_db.stores import gguf, params

    bases = {
        "UnknownParameterError": (errors.CyllamaDBError, KeyError, TypeError),
        "ParameterTypeError": (errors.CyllamaDBError, TypeError),
        "ParameterValueError": (errors.CyllamaDBError, ValueError),
        "ServerArgWarning": (UserWarning,),
        "GGUFFormatError": (errors.CyllamaDBError, ValueError),
    }
    for name, expected in bases.items():
        cls = getattr(errors, name)
        assert cls.__module__ == "cyllama_db.errors" and name in errors.__all__, name
        assert cls.__bases__ == expected, name
        home = gguf if name == "GGUFFormatError" else params
        assert getattr(home, name) is cls and name in home.__all__, name
        if name != "GGUFFormatError":  # public from the package, as before
            assert getattr(cyllama_db, name) is cls and name in cyllama_db.__all__, name


@pytest.mark.parametrize(
    "name", ["ctx_size", "seed", "threads", "top_k", "gpu_layers", "n_gpu_layers_draft"]
)
@pytest.mark.parametrize("value", [2**63, 2**70, -(2**63) - 1, "9" * 30, "9" * 5000])
def test_ints_beyond_sqlite_int64_are_rejected(name: str, value: Any) -> None:
    p = PARAMS_BY_NAME[name]
    if isinstance(value, str) and p.type != "gpu_layers":
        return  # only gpu_layers reads numbers from text
    with pytest.raises(ParameterValueError) as info:
        validate_params({name: value})
    assert info.value.name == name and name in str(info.value)
    with pytest.raises(ParameterValueError):
        to_sql(name, value)


@pytest.mark.parametrize("name", ["threads", "top_k", "dry_allowed_length"])
def test_int64_extremes_are_accepted(name: str) -> None:
    assert PARAMS_BY_NAME[name].min is None and PARAMS_BY_NAME[name].max is None
    for value in (2**63 - 1, -(2**63)):
        assert validate_params({name: value}) == {name: value}
        con = sqlite3.connect(":memory:")
        try:
            con.execute("CREATE TABLE t (v INTEGER)")
            con.execute("INSERT INTO t VALUES (?)", (to_sql(name, value),))
            assert from_sql(name, con.execute("SELECT v FROM t").fetchone()[0]) == value
        finally:
            con.close()


def test_normalisation() -> None:
    out = validate_params(
        {
            "mmap": 0,
            "mlock": 1,
            "temperature": 1,
            "gpu_layers": "99",
            "n_gpu_layers_draft": " -1 ",
            "fit_target": 2048,
            "control_vector_layer_range": (1, 4),
            "spec_replace": ("<a>", "<b>"),
            "ctx_size": None,
        }
    )
    assert out == {
        "mmap": False,
        "mlock": True,
        "temperature": 1.0,
        "gpu_layers": 99,
        "n_gpu_layers_draft": -1,
        "fit_target": "2048",
        "control_vector_layer_range": [1, 4],
        "spec_replace": ["<a>", "<b>"],
        "ctx_size": None,
    }
    assert type(out["mmap"]) is bool and type(out["temperature"]) is float


def test_validate_does_not_mutate_input() -> None:
    given_ = {"mmap": 1, "custom_params": {"--a": 1}}
    validate_params(given_)
    assert given_ == {"mmap": 1, "custom_params": {"--a": 1}}


# -- hypothesis: valid values survive validation unchanged -----------------------

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
_SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_./", min_size=1, max_size=12)
_INT_LIST_S = st.lists(st.integers(0, 100_000), min_size=1, max_size=4).map(
    lambda xs: ",".join(map(str, xs))
)
_SCALED = st.lists(st.tuples(_SAFE, st.floats(-4, 4, allow_nan=False)), min_size=1, max_size=3).map(
    lambda items: ",".join(f"{path}:{scale!r}" for path, scale in items)
)
_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.floats(-1e9, 1e9, allow_nan=False),
    _TEXT,
)
_JSON_OBJECT_TEXT = st.dictionaries(_SAFE, _JSON_SCALAR, max_size=4).map(json.dumps)

# Parameters whose validator needs a shaped value, not just any value of their type.
_SPECIAL: dict[str, st.SearchStrategy[Any]] = {
    "cpu_mask": st.from_regex(r"(0x)?[0-9a-fA-F]{1,32}", fullmatch=True),
    "cpu_mask_batch": st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True),
    "cpu_range": st.builds("{}-{}".format, st.integers(0, 255), st.integers(0, 255)),
    "cpu_range_batch": st.builds("{}-{}".format, st.integers(0, 255), st.integers(0, 255)),
    "tensor_split": _INT_LIST_S,
    "fit_target": _INT_LIST_S,
    "lora_scaled": _SCALED,
    "control_vector_scaled": _SCALED,
    "logit_bias": st.lists(
        st.tuples(
            st.integers(0, 300_000), st.sampled_from("+-"), st.floats(0, 100, allow_nan=False)
        ),
        min_size=1,
        max_size=4,
    ).map(lambda items: ",".join(f"{t}{s}{b!r}" for t, s, b in items)),
    "override_kv": st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z._]{0,15}", fullmatch=True),
            st.sampled_from(["int:3", "float:0.5", "bool:false", "str:x"]),
        ),
        min_size=1,
        max_size=3,
    ).map(lambda items: ",".join(f"{k}={v}" for k, v in items)),
    "json_schema": st.one_of(_JSON_OBJECT_TEXT, st.just('{"type": "object"}')),
    "webui": _JSON_OBJECT_TEXT,
    "chat_template_kwargs": _JSON_OBJECT_TEXT,
    "control_vector_layer_range": st.lists(st.integers(0, 200), min_size=2, max_size=2),
    "spec_replace": st.lists(_TEXT, min_size=2, max_size=2),
    "custom_params": st.dictionaries(
        st.from_regex(r"(--)?[a-z][a-z-]{0,20}", fullmatch=True),
        st.one_of(_JSON_SCALAR, st.lists(st.one_of(st.integers(-5, 5), _SAFE), max_size=3)),
        max_size=4,
    ),
    "n_parallel": st.integers(-1, 512).filter(bool),
    "sleep_idle_seconds": st.integers(-1, 10**6).filter(bool),
}


def _strategy(p: Param) -> st.SearchStrategy[Any]:
    if p.name in _SPECIAL:
        return _SPECIAL[p.name]
    if p.choices is not None:
        return st.sampled_from(p.choices)
    if p.type == "bool":
        return st.booleans()
    if p.type == "int":
        # SQLite's whole INTEGER range is valid (and nothing beyond it).
        low = -(2**63) if p.min is None else int(p.min)
        high = 2**63 - 1 if p.max is None else int(p.max)
        return st.integers(low, high)
    if p.type == "float":
        return st.floats(p.min, p.max, allow_nan=False, allow_infinity=False)
    if p.type == "gpu_layers":
        return st.one_of(
            st.integers(int(p.min or -1), 10_000),
            st.integers(int(p.min or -1), 2**63 - 1),
            st.sampled_from(["auto", "all"]),
        )
    if p.type == "str":
        return _TEXT
    raise AssertionError(f"no strategy for {p.name} ({p.type})")


def test_every_shaped_parameter_has_a_strategy() -> None:
    for p in PARAMS:
        if p.validator is not None or p.coerce is not None or p.type == "json":
            assert p.name in _SPECIAL, p.name


_CONFIGS = st.lists(
    st.sampled_from(PARAMS).flatmap(lambda p: _strategy(p).map(lambda v: (p.name, v))),
    max_size=25,
).map(dict)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CONFIGS)
def test_valid_values_survive_validation_unchanged(config: dict[str, Any]) -> None:
    out = validate_params(config)
    assert out == config
    assert {k: type(v) for k, v in out.items()} == {k: type(v) for k, v in config.items()}
    # and the derived views accept every valid configuration
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ServerArgWarning)
        argv = to_server_args(config)
    assert all(isinstance(a, str) for a in argv)
    to_sampling_kwargs(config)


@settings(max_examples=60, deadline=None)
@given(_CONFIGS)
def test_sqlite_round_trip(config: dict[str, Any]) -> None:
    names = list(config)
    con = sqlite3.connect(":memory:")
    try:
        cols = ", ".join(f'"{n}" {sqlite_type(n)}' for n in names) or '"x" TEXT'
        con.execute(f"CREATE TABLE models ({cols})")
        if names:
            marks = ", ".join("?" for _ in names)
            quoted = ", ".join(f'"{n}"' for n in names)
            con.execute(
                f"INSERT INTO models ({quoted}) VALUES ({marks})",
                [to_sql(n, config[n]) for n in names],
            )
            row = con.execute(f"SELECT {quoted} FROM models").fetchone()
            assert {n: from_sql(n, v) for n, v in zip(names, row, strict=True)} == config
    finally:
        con.close()


# ---------------------------------------------------------------------------
# llama-server argv
# ---------------------------------------------------------------------------


def test_server_args_for_a_full_config() -> None:
    config: dict[str, Any] = {
        "id": 7,  # identity columns of a registry row are ignored
        "name": "qwen",
        "status": "stopped",
        "model_path": "/models/qwen3-8b-q4_k_m.gguf",
        "ctx_size": 16384,
        "predict": 512,
        "batch_size": 2048,  # default
        "ubatch_size": 1024,
        "n_parallel": 4,
        "cont_batching": True,  # default
        "threads": 8,
        "cpu_strict": True,
        "priority": 2,
        "cache_type_k": "q8_0",
        "cache_type_v": "q8_0",
        "mmap": False,
        "mlock": True,
        "gpu_layers": 99,
        "split_mode": "row",
        "tensor_split": "3,1",
        "kv_offload": False,
        "swa_full": False,  # default
        "temperature": 0.6,
        "top_k": 40,  # default
        "top_p": 0.9,
        "min_p": 0.05,  # default
        "seed": 1234,
        "escape": True,  # default
        "rope_scaling_type": "yarn",
        "rope_scale": 4,
        "flash_attn": "on",
        "control_vector_layer_range": [2, 10],
        "logit_bias": "15043+1, 15044-inf",
        "host": "0.0.0.0",
        "port": 8081,
        "no_webui": True,
        "api_key": "sk-live-123",
        "metrics_enabled": True,
        "jinja": False,
        "sleep_idle_seconds": 300,
        "reasoning_format": "deepseek",
        "reasoning_budget": -1,  # default
        "hf_token": None,  # unset
        "custom_params": {"--spec-type": "ngram-mod", "no-kv-unified": True, "--skipped": False},
    }
    assert to_server_args(config) == [
        "--model", "/models/qwen3-8b-q4_k_m.gguf",
        "--ctx-size", "16384",
        "--predict", "512",
        "--ubatch-size", "1024",
        "--parallel", "4",
        "--threads", "8",
        "--cpu-strict", "1",
        "--prio", "2",
        "--cache-type-k", "q8_0",
        "--cache-type-v", "q8_0",
        "--load-mode", "mlock",
        "--gpu-layers", "99",
        "--split-mode", "row",
        "--tensor-split", "3,1",
        "--no-kv-offload",
        "--temperature", "0.6",
        "--top-p", "0.9",
        "--seed", "1234",
        "--rope-scaling", "yarn",
        "--rope-scale", "4.0",
        "--flash-attn", "on",
        "--control-vector-layer-range", "2", "10",
        "--logit-bias", "15043+1",
        "--logit-bias", "15044-inf",
        "--host", "0.0.0.0",
        "--port", "8081",
        "--no-webui",
        "--api-key", "sk-live-123",
        "--metrics",
        "--no-jinja",
        "--sleep-idle-seconds", "300",
        "--reasoning-format", "deepseek",
        "--spec-type", "ngram-mod",
        "--no-kv-unified",
    ]  # fmt: skip


def test_all_defaults_give_empty_argv() -> None:
    defaults = {p.name: p.default for p in PARAMS if p.default is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_server_args(defaults) == []
    assert to_server_args({}) == []
    assert to_server_args({"gpu_layers": -1}) == []  # llama-server reads -1 as auto
    assert to_server_args({"temperature": 0.8, "top_p": 0.95, "fit_target": 1024}) == []


def test_model_path_flag_and_redaction() -> None:
    cfg = {"model_path": "/m.gguf", "hf_token": "hf_abc", "api_key": "k"}
    assert to_server_args(cfg, model_path_flag="-m") == [
        "-m",
        "/m.gguf",
        "--hf-token",
        "hf_abc",
        "--api-key",
        "k",
    ]
    assert to_server_args(cfg, redact_secrets=True) == [
        "--model", "/m.gguf", "--hf-token", REDACTED, "--api-key", REDACTED,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "argv"),
    [
        ({"kv_offload": True}, []),
        ({"kv_offload": False}, ["--no-kv-offload"]),
        ({"repack": False}, ["--no-repack"]),
        ({"no_host": True}, ["--no-host"]),
        ({"no_webui": False}, []),
        ({"swa_full": True}, ["--swa-full"]),
        ({"kv_unified": False}, ["--no-kv-unified"]),  # no fixed default: always explicit
        ({"kv_unified": True}, ["--kv-unified"]),
        ({"log_prefix": False}, ["--no-log-prefix"]),
        ({"cpu_strict_batch": False}, ["--cpu-strict-batch", "0"]),
        ({"mmproj_auto": 0}, ["--no-mmproj-auto"]),
        ({"escape": False}, ["--no-escape"]),
        ({"embeddings": 1, "reranking": True}, ["--embeddings", "--reranking"]),
        (
            {"gpu_layers": "all", "n_gpu_layers_draft": 0},
            ["--gpu-layers", "all", "--gpu-layers-draft", "0"],
        ),
        ({"draft_max": 8, "draft_min": 2}, ["--spec-draft-n-max", "8", "--spec-draft-n-min", "2"]),
        (
            {"top_nsigma": 1.5, "dry_sequence_breaker": "none"},
            ["--top-nsigma", "1.5", "--dry-sequence-breaker", "none"],
        ),
    ],
)
def test_server_arg_forms(cfg: dict[str, Any], argv: list[str]) -> None:
    assert to_server_args(cfg) == argv


@pytest.mark.parametrize(
    ("mmap", "mlock", "mode"),
    [
        (None, None, None),
        (True, None, None),
        (True, False, None),
        (False, None, "none"),
        (False, False, "none"),
        (False, True, "mlock"),
        (True, True, "mmap+mlock"),
        (None, True, "mmap+mlock"),
    ],
)
def test_mmap_mlock_become_load_mode(
    mmap: bool | None, mlock: bool | None, mode: str | None
) -> None:
    argv = to_server_args({"mmap": mmap, "mlock": mlock})
    assert argv == ([] if mode is None else ["--load-mode", mode])


def test_legacy_flags() -> None:
    cfg = {
        "mmap": False,
        "mlock": True,
        "draft_max": 3,
        "ctx_size_draft": 4096,
        "spec_replace": ["<|a|>", "<b>"],
        "hf_file_v": "v.gguf",
    }
    assert to_server_args(cfg, legacy=True) == [
        "--hf-file-v", "v.gguf",
        "--no-mmap",
        "--mlock",
        "--ctx-size-draft", "4096",
        "--draft-max", "3",  # equal to today's default, but old builds defaulted to 16
        "--spec-replace", "<|a|>", "<b>",
    ]  # fmt: skip
    assert to_server_args({"mmap": True}, legacy=True) == []


def test_unexpressible_values_warn_and_are_skipped() -> None:
    with pytest.warns(ServerArgWarning, match="hf_file_v.*legacy=True"):
        assert to_server_args({"hf_file_v": "v.gguf", "port": 9000}) == ["--port", "9000"]
    with pytest.warns(ServerArgWarning, match="model_url_draft"):
        assert to_server_args({"model_url_draft": "https://x/y.gguf"}) == []
    with pytest.warns(ServerArgWarning, match="list_devices"):
        assert to_server_args({"list_devices": True}) == []
    with pytest.warns(ServerArgWarning, match="verbose_prompt"):
        assert to_server_args({"verbose_prompt": True}) == []


def test_custom_params_come_last_and_render_values() -> None:
    argv = to_server_args(
        {
            "custom_params": {
                "--ctx-size": 1024,
                "spec-ngram-size-n": 12,
                "--x": [1, "b"],
                "--f": 0.25,
                "--n": None,
            },
            "ctx_size": 4096,
        }
    )
    assert argv == [
        "--ctx-size",
        "4096",
        "--ctx-size",
        "1024",
        "--spec-ngram-size-n",
        "12",
        "--x",
        "1",
        "b",
        "--f",
        "0.25",
    ]


def test_server_args_validate_first() -> None:
    with pytest.raises(ParameterValueError):
        to_server_args({"flash_attn": "maybe"})
    with pytest.raises(UnknownParameterError):
        to_server_args({"ctx": 1})


# ---------------------------------------------------------------------------
# llama_cpp.Llama(...) / create_completion(...)
# ---------------------------------------------------------------------------


def test_llama_kwargs_mapping() -> None:
    kwargs = to_llama_kwargs(
        {
            "name": "x",
            "model_path": "/m.gguf",
            "ctx_size": 8192,
            "batch_size": 512,
            "ubatch_size": 256,
            "threads": 6,
            "threads_batch": -1,
            "gpu_layers": "auto",
            "split_mode": "row",
            "main_gpu": 1,
            "tensor_split": "3,1",
            "mmap": False,
            "mlock": True,
            "kv_offload": False,
            "flash_attn": "on",
            "cache_type_k": "q8_0",
            "cache_type_v": "bf16",
            "numa": "isolate",
            "rope_scaling_type": "yarn",
            "rope_freq_base": 1e6,
            "yarn_orig_ctx": 32768,
            "seed": -1,
            "repeat_last_n": 128,
            "lora": "/a.gguf",
            "embeddings": True,
            "pooling": "cls",
            "swa_full": True,
            "op_offload": False,
            "kv_unified": True,  # Llama() has no such keyword
            "override_kv": "a.b=int:3,c=bool:false,d=float:0.5,e=str:hi",
            "temperature": 0.1,  # sampling: not a load option
            "host": "0.0.0.0",  # server only
        }
    )
    assert kwargs == {
        "model_path": "/m.gguf",
        "n_ctx": 8192,
        "n_batch": 512,
        "n_ubatch": 256,
        "n_threads": 6,
        "use_mmap": False,
        "use_mlock": True,
        "type_k": 8,
        "type_v": 30,
        "numa": 2,
        "n_gpu_layers": -1,
        "split_mode": 2,
        "main_gpu": 1,
        "tensor_split": [3.0, 1.0],
        "offload_kqv": False,
        "swa_full": True,
        "last_n_tokens_size": 128,
        "seed": 0xFFFFFFFF,
        "rope_scaling_type": 2,
        "rope_freq_base": 1e6,
        "yarn_orig_ctx": 32768,
        "flash_attn": True,
        "lora_path": "/a.gguf",
        "embedding": True,
        "pooling_type": 2,
        "kv_overrides": {"a.b": 3, "c": False, "d": 0.5, "e": "hi"},
        "op_offload": False,
    }


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"gpu_layers": "all"}, {"n_gpu_layers": -1}),
        ({"gpu_layers": -1}, {"n_gpu_layers": -1}),
        ({"gpu_layers": 0}, {"n_gpu_layers": 0}),
        ({"gpu_layers": "12"}, {"n_gpu_layers": 12}),
        ({"flash_attn": "auto"}, {}),
        ({"flash_attn": "off"}, {"flash_attn": False}),
        ({"threads": 0}, {}),
        ({"repeat_last_n": -1}, {}),
        ({"seed": 7}, {"seed": 7}),
        ({"reranking": True}, {"embedding": True, "pooling_type": 4}),
        ({"reranking": True, "pooling": "mean"}, {"embedding": True, "pooling_type": 1}),
        ({"reranking": False}, {}),
        ({"rope_scale": 4.0}, {"rope_freq_scale": 0.25}),
        ({"rope_scale": 4.0, "rope_freq_scale": 0.5}, {"rope_freq_scale": 0.5}),
        ({"lora_scaled": "/l.gguf:0.5"}, {"lora_path": "/l.gguf", "lora_scale": 0.5}),
        ({"split_mode": "none"}, {"split_mode": 0}),
        ({"cache_type_k": "f32", "cache_type_v": "iq4_nl"}, {"type_k": 0, "type_v": 20}),
        ({"log_disable": True}, {"verbose": False}),
        ({"log_disable": False}, {}),
        ({"chat_template": "chatml", "mmproj": "/p.gguf", "model_draft": "/d.gguf"}, {}),
    ],
)
def test_llama_kwargs_conversions(cfg: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_llama_kwargs(cfg) == expected


def test_llama_kwargs_lora_limits() -> None:
    with pytest.raises(ParameterValueError, match="single"):
        to_llama_kwargs({"lora": "/a.gguf,/b.gguf"})
    with pytest.raises(ParameterValueError, match="not both"):
        to_llama_kwargs({"lora": "/a.gguf", "lora_scaled": "/b.gguf:0.5"})


def test_ggml_type_codes() -> None:
    codes = {
        name: to_llama_kwargs({"cache_type_k": name})["type_k"]
        for name in PARAMS_BY_NAME["cache_type_k"].choices or ()
    }
    assert codes == {
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


def _every_param_config() -> dict[str, Any]:
    """A value for every parameter with a Llama() or completion mapping."""
    cfg: dict[str, Any] = {}
    for p in PARAMS:
        if p.llama_kwarg is None and p.completion_kwarg is None:
            continue
        if p.default is not None:
            cfg[p.name] = p.default
        elif p.choices:
            cfg[p.name] = p.choices[-1]
    cfg.update(
        model_path="/m.gguf",
        threads_batch=4,
        tensor_split="1,1",
        lora="/l.gguf",
        rope_scale=2.0,
        rope_freq_base=10000.0,
        rope_freq_scale=0.5,
        grammar='root ::= "x"',
        logit_bias="1+1",
        override_kv="k=int:1",
        log_disable=True,
    )
    return cfg


def test_llama_kwargs_are_named_llama_parameters() -> None:
    kwargs = to_llama_kwargs(_every_param_config())
    assert set(kwargs) <= LLAMA_INIT_KWARGS
    assert {p.llama_kwarg for p in PARAMS if p.llama_kwarg} <= LLAMA_INIT_KWARGS


def test_sampling_kwargs() -> None:
    kwargs = to_sampling_kwargs(
        {
            "temperature": 0.2,
            "top_k": 20,
            "top_p": 0.8,
            "min_p": 0.0,
            "typical": 0.9,
            "repeat_penalty": 1.1,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "mirostat": 2,
            "mirostat_lr": 0.2,
            "mirostat_ent": 4.0,
            "seed": 99,
            "predict": 64,
            "grammar": 'root ::= "yes" | "no"',
            "logit_bias": "15043+1.5,2-inf",
            "dry_multiplier": 0.8,  # no create_completion equivalent
            "ctx_size": 4096,  # load option
        }
    )
    assert kwargs == {
        "temperature": 0.2,
        "top_k": 20,
        "top_p": 0.8,
        "min_p": 0.0,
        "typical_p": 0.9,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "mirostat_mode": 2,
        "mirostat_eta": 0.2,
        "mirostat_tau": 4.0,
        "seed": 99,
        "max_tokens": 64,
        "grammar": 'root ::= "yes" | "no"',
        "logit_bias": {15043: 1.5, 2: -math.inf},
    }
    assert to_sampling_kwargs({"seed": -1, "predict": -1}) == {"max_tokens": None}
    assert set(to_sampling_kwargs(_every_param_config())) <= COMPLETION_KWARGS


def _named_parameters(fn: Any) -> set[str]:
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    }


def test_llama_kwargs_accepted_by_real_signature() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    # Llama.__init__ swallows **kwargs, so only explicitly named parameters count.
    named = _named_parameters(llama_cpp.Llama.__init__)
    assert set(to_llama_kwargs(_every_param_config())) <= named
    assert {p.llama_kwarg for p in PARAMS if p.llama_kwarg} <= named
    completion = _named_parameters(llama_cpp.Llama.create_completion)
    assert set(to_sampling_kwargs(_every_param_config())) <= completion
    # hard-coded enum values agree with the bindings
    assert to_llama_kwargs({"split_mode": "row"})["split_mode"] == llama_cpp.LLAMA_SPLIT_MODE_ROW
    assert to_llama_kwargs({"pooling": "rank"})["pooling_type"] == llama_cpp.LLAMA_POOLING_TYPE_RANK
    assert (
        to_llama_kwargs({"rope_scaling_type": "yarn"})["rope_scaling_type"]
        == llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
    )
    assert to_llama_kwargs({"numa": "numactl"})["numa"] == llama_cpp.GGML_NUMA_STRATEGY_NUMACTL
    assert to_llama_kwargs({"cache_type_k": "q8_0"})["type_k"] == llama_cpp.GGML_TYPE_Q8_0


@pytest.mark.llama
def test_llama_loads_with_converted_kwargs(tiny_model_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    params = {
        "model_path": str(tiny_model_path),
        "ctx_size": 256,
        "batch_size": 64,
        "threads": 1,
        "gpu_layers": "all",
        "flash_attn": "off",
        "cache_type_k": "f16",
        "seed": 3,
        "log_disable": True,
        "override_kv": "tokenizer.ggml.add_bos_token=bool:true",
    }
    llm = llama_cpp.Llama(**to_llama_kwargs(params))
    try:
        out = llm.create_completion("Hi", **to_sampling_kwargs({"predict": 2, "temperature": 0.0}))
        assert out["choices"][0]["text"] is not None
    finally:
        llm.close()


# ---------------------------------------------------------------------------
# redaction and docs
# ---------------------------------------------------------------------------


def test_redact_hides_secrets() -> None:
    row = {"id": 1, "hf_token": "hf_xyz", "api_key": "sk-1", "ctx_size": 4096, "extra": "kept"}
    out = redact(row)
    assert out == {
        "id": 1,
        "hf_token": REDACTED,
        "api_key": REDACTED,
        "ctx_size": 4096,
        "extra": "kept",
    }
    assert "hf_xyz" not in repr(out) and "sk-1" not in repr(out)
    assert row["hf_token"] == "hf_xyz"  # input untouched
    assert redact({"hf_token": None, "api_key": None}) == {"hf_token": None, "api_key": None}
    assert redact(row, show_secrets=True) == row


def test_parameter_table_markdown() -> None:
    table = parameter_table_markdown()
    lines = table.strip().splitlines()
    assert lines[0].startswith(
        "| Name | Type | Flag | Llama kwarg | Default | Allowed values | Secret |"
    )
    assert len(lines) == 2 + len(PARAMS)
    assert all(
        line.count(" | ") == lines[0].count(" | ") for line in lines[2:] if "\\|" not in line
    )
    row = next(line for line in lines if line.startswith("| `flash_attn` |"))
    assert "`--flash-attn`" in row and "on, off, auto" in row and "`auto`" in row
    assert next(line for line in lines if line.startswith("| `api_key` |")).split(" | ")[6] == "yes"
    assert "`--kv-offload / --no-kv-offload`" in table
