"""GBNF grammars and JSON schemas are validated before llama.cpp sees them (issue 12, part 5).

llama-cpp-python 0.3 hands grammar text to llama.cpp unparsed, and a grammar
llama.cpp refuses crashes the process at sampling time.  ``cyllama_db.llm.grammar``
ports llama.cpp's parser; these tests hold it to real llama.cpp in three ways:

* tables of valid and invalid grammars, each checked against
  ``llama_sampler_init_grammar`` (which returns NULL for a grammar llama.cpp
  refuses: safe to call, no crash) and, for a few, a real generation;
* for several invalid grammars, a raw ``Llama.create_completion`` in a
  subprocess that must not exit 0 (it crashes), which is why the validator exists;
* a differential run of a few hundred random and mutated grammars.

Everything that touches llama.cpp runs in a subprocess with a timeout, so a
crash fails a test instead of killing the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyllama_db.errors import CyllamaDBError, GrammarError, JSONSchemaError
from cyllama_db.llm import grammar as _grammar
from cyllama_db.llm.grammar import check_gbnf, check_json_schema, grammar_text

# llama.cpp's own example grammars (grammars/*.gbnf), the small ones.
ARITHMETIC = r"""
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
"""
LIST = r"""
root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
"""
CHESS = r"""
# Specifies chess moves as a list in algebraic notation, using PGN conventions
root    ::= "1. " move " " move "\n" ([1-9] [0-9]? ". " move " " move "\n")+
move    ::= (pawn | nonpawn | castle) [+#]?
nonpawn ::= [NBKQR] [a-h]? [1-8]? "x"? [a-h] [1-8]
pawn    ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBKQR])?
castle  ::= "O-O" "-O"?
"""
JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"""

VALID: dict[str, str] = {
    "literal": 'root ::= "yes" | "no"',
    "arithmetic": ARITHMETIC,
    "list": LIST,
    "chess": CHESS,
    "json": JSON_GBNF,
    "escapes": r'root ::= "\x41\u00e9\U0001F600\t\n\r\"\\\[\]\-" [\]\-\\a-c]',
    "negated class and any char": r"root ::= [^a-z0-9] . [^\]]",
    "bounded repetitions": 'root ::= "a"{2} "b"{1,3} "c"{2,} "d"{ 0 , 1 } "e"?',
    "repetition at llama.cpp's limit": 'root ::= "a"{0,2000} "b"{2000}',
    "huge maximum means no maximum": 'root ::= "a"{5,99999}',
    "token ids": "root ::= <[104]> !<[5]>",
    "newlines inside parentheses": 'root ::= (\n  "a"\n  | "b" # comment\n)+',
    "continued alternatives": 'root ::= "a" |\n  "b" |\n\n  "c"',
    "crlf line ends and comments": '# top\r\nroot ::= x # why\r\nx ::= "x"\r\n',
    "rules defined after use": 'root ::= a-b c1\na-b ::= "ab"\nc1 ::= [0-9]',
    "empty alternative": 'root ::= "x" a\na ::= | "y"',
    "empty root": "root ::=",
    "right recursion": 'root ::= "(" root ")" | ""',
    "tail left recursion through an empty rule": 'root ::= ws root | "a"\nws ::= " "*',
    "hidden left recursion root never reaches": 'root ::= "a"\nb ::= ws b "c"\nws ::= " "*',
    "unicode literal": 'root ::= "héllo wörld ✓"',
    "dropped unused reference": "root ::= undefined{0}",
}

# Grammar, fragment of the message.  The first group is refused by llama.cpp's
# parser (llama_sampler_init_grammar returns NULL); DEVIATIONS are accepted by
# it and then crash or hang the sampler.
INVALID: dict[str, tuple[str, str]] = {
    "unclosed paren": ("root ::= (", "line 1, column 11: expected ')'"),
    "unclosed paren, later line": ('root ::= "a"\nx ::= ("b" | "c"\n', "to close the '(' at line 2, column 7"),
    "stray close paren": ('root ::= "a" )', "a ')' with no '('"),
    "unterminated string": ('root ::= "abc', "line 1, column 10: unterminated string"),
    "unterminated class": ("root ::= [a-z", "unterminated character class"),
    "unknown escape": (r'root ::= "\q"', r"unknown escape '\\q"),
    "short hex escape": (r'root ::= "\x4"', "needs exactly 2 hex digits"),
    "short unicode escape": (r'root ::= "\u12"', "needs exactly 4 hex digits"),
    "undefined rule": ("root ::= item", "rule 'item' is used but never defined"),
    "undefined rule, line 2": ('root ::= a\na ::= "x" b', "line 2, column 11: rule 'b' is used"),
    "missing root": ('item ::= "x"', "no 'root' rule"),
    "only a comment": ("# nothing here\n", "defines no rules"),
    "blank": ("   \n\t", "defines no rules"),
    "left recursion": ('root ::= root "a" | "b"', "rule 'root' is left-recursive"),
    "indirect left recursion": ('root ::= x\nx ::= y "a"\ny ::= x? "b"', "left-recursive"),
    "repetition with nothing before": ('root ::= * "a"', "'*' must follow an item"),
    "repetition after an empty string": ('root ::= ""+', "'+' must follow an item"),
    "repetition after |": ('root ::= "a" | ?', "'?' must follow an item"),
    "brace without number": ('root ::= "a"{,3}', "expected a repetition count"),
    "brace not closed": ('root ::= "a"{1,2', "expected '}'"),
    "brace with junk": ('root ::= "a"{1 2}', "expected ',' or '}'"),
    "repetition minimum over the limit": ('root ::= "a"{2001}', "above llama.cpp's limit of 2000"),
    "repetition product over the limit": ('root ::= ("a"? "b"?){667}', "more than 2000 rules"),
    "number too large": ('root ::= "a"{0,99999999999999999999}', "is too large"),
    "missing ::=": ('root = "a"', "expected '::=' after the rule name 'root'"),
    "underscore in a name": ('root ::= my_rule\nmy_rule ::= "a"', "expected another item"),
    "rule name missing": ('::= "a"', "expected a rule name"),
    "second rule on the same line": ('root ::= "a" x ::= "b"', "expected another item"),
    "token id too big": ("root ::= <[4294967296]>", "token id 4294967296 is too large"),
    "unterminated token": ("root ::= <abc", "unterminated token reference"),
    "bang without token": ('root ::= !"a"', "expected '<' after '!'"),
    "lone surrogate": ('root ::= "\ud800"', "not encodable as UTF-8"),
}
DEVIATIONS: dict[str, tuple[str, str]] = {
    "maximum below minimum": ('root ::= "a"{3,1}', "the maximum is smaller than the minimum"),
    "hidden left recursion": ('root ::= ws root "b" | "a"\nws ::= " "*', "a case llama.cpp misses"),
    "NUL character": ('root ::= "a"\x00 junk', "NUL character"),
}
# Invalid grammars that a raw llama-cpp-python generation must not survive.
CRASHERS = ["unclosed paren", "unterminated string", "undefined rule", "missing root", "left recursion",
            "maximum below minimum", "hidden left recursion"]


# -- llama.cpp in a subprocess -------------------------------------------------------------------

PRELUDE = """
import json, resource, sys
if MEMORY_LIMIT:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
import llama_cpp
from llama_cpp import llama_cpp as C
"""

# Prints one line per grammar, before and after, so a crash names the grammar it died on.
ORACLE = PRELUDE + """
llm = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
for i, g in enumerate(json.load(open(sys.argv[2]))):
    print(i, "?", flush=True)
    sampler = C.llama_sampler_init_grammar(llm._model.vocab, g.encode("utf-8"), b"root")
    print(i, int(bool(sampler)), flush=True)
    if sampler:
        C.llama_sampler_free(sampler)
"""

GENERATE = PRELUDE + """
llm = llama_cpp.Llama(sys.argv[1], verbose=False, n_ctx=256)
def run(g):
    grammar = llama_cpp.LlamaGrammar.from_string(g, verbose=False)
    out = llm.create_completion("Hello", grammar=grammar, max_tokens=int(sys.argv[3]), temperature=0)
    return out["choices"][0]["text"]
print("baseline", json.dumps(run('root ::= "ok"')), flush=True)
for g in json.load(open(sys.argv[2])):
    print("text", json.dumps(run(g)), flush=True)
print("survived", flush=True)
"""


def _python(script: str, args: list[str], tmp_path: Path, memory_limit: int = 0,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"script-{len(list(tmp_path.iterdir()))}.py"
    path.write_text(script.replace("MEMORY_LIMIT", str(memory_limit)))
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONFAULTHANDLER": ""},
    )


def _llama_cpp_accepts(grammars: list[str], model: Path, tmp_path: Path) -> list[bool]:
    """llama.cpp's own verdict on each grammar; fails the test, naming the grammar, on a crash."""
    data = tmp_path / "grammars.json"
    data.write_text(json.dumps(grammars))
    proc = _python(ORACLE, [str(model), str(data)], tmp_path)
    verdicts = {}
    last = None
    for line in proc.stdout.splitlines():
        index, verdict = line.split()
        last = int(index)
        if verdict != "?":
            verdicts[last] = verdict == "1"
    assert proc.returncode == 0 and len(verdicts) == len(grammars), (
        f"llama.cpp crashed (exit {proc.returncode}) on grammar {grammars[last or 0]!r}: {proc.stderr[-2000:]}"
    )
    return [verdicts[i] for i in range(len(grammars))]


def _generate(grammars: list[str], model: Path, tmp_path: Path, max_tokens: int = 4,
              memory_limit: int = 0) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "generate.json"
    data.write_text(json.dumps(grammars))
    return _python(GENERATE, [str(model), str(data), str(max_tokens)], tmp_path, memory_limit)


# -- the tables ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_grammar_is_returned_unchanged(name: str) -> None:
    text = VALID[name]
    assert check_gbnf(text) is text


@pytest.mark.parametrize("name", sorted(INVALID) + sorted(DEVIATIONS))
def test_invalid_grammar_raises_grammar_error_naming_the_problem(name: str) -> None:
    text, fragment = {**INVALID, **DEVIATIONS}[name]
    with pytest.raises(GrammarError) as info:
        check_gbnf(text)
    message = str(info.value)
    assert message.startswith("grammar: ")
    assert fragment in message, message
    assert isinstance(info.value, ValueError) and isinstance(info.value, CyllamaDBError)


def test_error_names_line_and_column_of_the_problem() -> None:
    with pytest.raises(GrammarError, match=r"^grammar: line 1, column 11: expected '\)' to close the '\(' "
                                           r"at line 1, column 10, found the end of the grammar$"):
        check_gbnf("root ::= (")
    with pytest.raises(GrammarError, match=r"line 3, column 11: unterminated string"):
        check_gbnf('root ::= a\n\na ::= "x" "y\n')


@pytest.mark.llama
def test_tables_agree_with_llama_cpp(tiny_model_path: Path, tmp_path: Path) -> None:
    """Every VALID grammar is accepted by llama.cpp, every INVALID one refused."""
    valid = [VALID[k] for k in sorted(VALID)]
    invalid = [INVALID[k][0] for k in sorted(INVALID) if k != "lone surrogate"]  # not UTF-8-encodable
    verdicts = _llama_cpp_accepts(valid + invalid, tiny_model_path, tmp_path)
    assert verdicts == [True] * len(valid) + [False] * len(invalid)


@pytest.mark.llama
def test_valid_grammars_constrain_a_real_generation(tiny_model_path: Path, tmp_path: Path) -> None:
    cases = {
        'root ::= "yes" | "no"': r"yes|no",
        "root ::= [0-9]{3}": r"[0-9]{1,3}",
        ARITHMETIC: r"[a-z0-9_()+\-*/= \t\n]*",
        LIST: r"-( .*)?",
        CHESS: r"1(\..*)?",
        JSON_GBNF: r"\{.*",
        "root ::= <[104]> [a-z]": r"h[a-z]?",
        VALID["tail left recursion through an empty rule"]: r" *a?",
        VALID["hidden left recursion root never reaches"]: r"a",
        check_json_schema({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}): r"\{.*",
    }
    proc = _generate(list(cases), tiny_model_path, tmp_path, max_tokens=6)
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("text ")]
    assert len(texts) == len(cases)
    for (grammar, pattern), text in zip(cases.items(), texts, strict=True):
        assert re.fullmatch(pattern, text, re.DOTALL), (grammar, text)


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("name", CRASHERS)
def test_raw_llama_cpp_does_not_survive_the_invalid_grammar(name: str, tiny_model_path: Path,
                                                             tmp_path: Path) -> None:
    """Why the validator exists: the same call straight to llama-cpp-python kills the process.

    The child first generates with a valid grammar (so a broken setup cannot
    pass this test), then with the invalid one; it must never print "survived".
    Its memory is capped where llama.cpp allocates until it dies, so that stays cheap.
    """
    grammar = {**INVALID, **DEVIATIONS}[name][0]
    capped = name in ("maximum below minimum", "hidden left recursion")  # these allocate until they die
    proc = _generate([grammar], tiny_model_path, tmp_path, memory_limit=(768 << 20) if capped else 0)
    if capped and "baseline" not in proc.stdout:
        pytest.skip(f"this llama.cpp build cannot run under a 768 MiB address-space cap: {proc.stderr[-300:]}")
    assert "baseline" in proc.stdout, proc.stderr[-2000:]
    assert "survived" not in proc.stdout
    assert proc.returncode != 0


# -- differential testing against llama.cpp ------------------------------------------------------

PIECES = ["a", "yes", " ", r"\n", r"\t", r"\"", r"\\", r"\x41", r"\u00e9", r"\U0001F600", "é", r"\[", r"\-",
          "#", "|", "("]
CLASS_PIECES = ["a-z", "0-9", "_", r"\]", r"\n", r"\x20", "é-ü", "-", "#"]
REPEATS = ["", "", "", "*", "+", "?", "{2}", "{1,3}", "{0,}", "{ 1 , 2 }", "{0,2500}"]
NAMES = ["root", "item", "word-2", "ws", "x9"]
SIGNIFICANT = list('()[]{}"\\|*+?.#<>!^-,:= \n\t0123456789axroot')


def random_grammar(rng: random.Random) -> str:
    """A valid grammar: rules reference only later rules (no cycles, so no left recursion)."""
    names = NAMES[: rng.randint(1, len(NAMES))]

    def item(later: list[str], depth: int) -> str:
        kind = rng.random()
        if kind < 0.3:
            text = '"' + "".join(rng.choices(PIECES, k=rng.randint(1, 3))) + '"'
        elif kind < 0.5:
            text = "[" + rng.choice(["", "^"]) + "".join(rng.choices(CLASS_PIECES, k=rng.randint(1, 3))) + "]"
        elif kind < 0.7 and later:
            text = rng.choice(later)
        elif kind < 0.75:
            text = "."
        elif kind < 0.8:
            text = rng.choice(["<[3]>", "!<[5]>", "<|bos|>", "!<|eos|>"])
        elif depth < 2:
            text = "(" + rng.choice(["", "\n  ", " "]) + alternatives(later, depth + 1) + rng.choice(["", "\n", " # c\n"]) + ")"
        else:
            text = '"z"'
        return text + rng.choice(REPEATS)

    def alternatives(later: list[str], depth: int) -> str:
        sequences = [" ".join(item(later, depth) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        return rng.choice([" | ", " |\n    ", "|"]).join(sequences)

    lines = [f"{name} ::= {alternatives(names[i + 1:], 0)}{rng.choice(['', '  # note'])}" for i, name in enumerate(names)]
    return rng.choice(["", "# grammar\n"]) + rng.choice(["\n", "\r\n", "\n\n"]).join(lines) + rng.choice(["", "\n"])


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(chars))
        op = rng.random()
        if op < 0.4 and chars:
            del chars[min(at, len(chars) - 1)]
        elif op < 0.8:
            chars.insert(at, rng.choice(SIGNIFICANT))
        elif chars:
            chars[min(at, len(chars) - 1)] = rng.choice(SIGNIFICANT)
    return "".join(chars)


@pytest.mark.llama
@pytest.mark.slow
def test_random_and_mutated_grammars_get_llama_cpp_s_verdict(tiny_model_path: Path, tmp_path: Path) -> None:
    """check_gbnf and llama.cpp agree on 600 random grammars, half of them mutated (about half invalid)."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(tiny_model_path), vocab_only=True, verbose=False)
    rng = random.Random(12)
    grammars = [random_grammar(rng) for _ in range(600)]
    grammars = [mutate(rng, g) if i % 2 else g for i, g in enumerate(grammars)]
    ours: list[bool] = []
    compared: list[str] = []
    for g in grammars:
        try:
            check_gbnf(g, vocab=vocab)
            ours.append(True)
        except GrammarError as exc:
            if any(s in str(exc) for s in ("smaller than the minimum", "llama.cpp misses", "ends generation")):
                continue  # the deliberate deviations: llama.cpp accepts these, then crashes
            ours.append(False)
        compared.append(g)
    theirs = _llama_cpp_accepts(compared, tiny_model_path, tmp_path)
    disagreements = [(g, o, t) for g, o, t in zip(compared, ours, theirs, strict=True) if o != t]
    assert not disagreements, disagreements[:5]
    assert 150 < sum(theirs) < len(compared) - 150  # both verdicts well represented


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_generated_grammars_are_accepted(rng: random.Random) -> None:
    grammar = random_grammar(rng)
    assert check_gbnf(grammar) == grammar


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutations_raise_nothing_but_grammar_error(rng: random.Random) -> None:
    grammar = mutate(rng, random_grammar(rng))
    try:
        assert check_gbnf(grammar) == grammar
    except GrammarError as exc:
        assert re.match(r"grammar: (line \d+, column \d+: )?\S", str(exc))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*SIGNIFICANT, "é", "\r", "_", "\x00"]), max_size=60))
def test_arbitrary_text_raises_nothing_but_grammar_error(text: str) -> None:
    with contextlib.suppress(GrammarError):
        check_gbnf(text)


# -- details ------------------------------------------------------------------------------------------


def test_empty_text_means_no_constraint_as_in_llama_cpp() -> None:
    assert check_gbnf("") == ""


@pytest.mark.parametrize("value", [None, 42, b'root ::= "a"', ["root ::= x"]])
def test_non_text_is_a_grammar_error(value: Any) -> None:
    with pytest.raises(GrammarError, match="must be GBNF text"):
        check_gbnf(value)


def test_results_are_memoised_including_failures() -> None:
    _grammar._analyse.cache_clear()
    for _ in range(3):
        check_gbnf(JSON_GBNF)
        with pytest.raises(GrammarError):
            check_gbnf("root ::= (")
    info = _grammar._analyse.cache_info()
    assert (info.misses, info.hits) == (2, 4)


def test_deep_nesting_as_the_json_schema_converter_writes_it() -> None:
    deep = "root ::= " + "(" * 3000 + '"a"' + ")" * 3000
    assert check_gbnf(deep) == deep
    with pytest.raises(GrammarError, match=rf"line 1, column {len(deep)}: expected '\)'"):
        check_gbnf(deep[:-1])


@pytest.mark.llama
def test_token_references_are_checked_against_the_vocabulary(tiny_model_path: Path) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(str(tiny_model_path), vocab_only=True, verbose=False)
    assert check_gbnf("root ::= <|bos|> !<|eos|> <[273]>{0}", vocab=vocab)
    for grammar, fragment in [
        ("root ::= <hello>", "tokens in this model's vocabulary, not one"),
        ("root ::= <[274]>", "token id 274 is outside this model's vocabulary (ids 0 to 273)"),
        ('root ::= "ok" <|eos|>', "token <|eos|> ends generation"),
        ('root ::= "ok" <[273]>', "token 273 ends generation"),
    ]:
        assert check_gbnf(grammar) == grammar  # without the vocabulary: syntax only
        with pytest.raises(GrammarError, match=re.escape(fragment)):
            check_gbnf(grammar, vocab=vocab)


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("grammar", ['root ::= "ok" <|eos|>', "root ::= <[274]>", "root ::= <hello>"])
def test_raw_llama_cpp_does_not_survive_bad_token_references(grammar: str, tiny_model_path: Path,
                                                             tmp_path: Path) -> None:
    proc = _generate([grammar], tiny_model_path, tmp_path)
    assert "baseline" in proc.stdout, proc.stderr[-2000:]
    assert "survived" not in proc.stdout
    assert proc.returncode != 0


# -- JSON schemas --------------------------------------------------------------------------------------

SCHEMAS: list[Any] = [
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "string"}}},
     "required": ["a"]},
    {"type": "string", "pattern": "^[a-z]{2,4}$"},
    {"enum": ["x", "y", 3]},
    {"anyOf": [{"type": "null"}, {"type": "number"}]},
    {"type": "string", "maxLength": 500},
    {"$defs": {"p": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/p"}},
    '{"type": "boolean"}',
    True,
    {},
]
BAD_SCHEMAS: list[tuple[Any, str]] = [
    ({"type": "nonsense"}, "Unrecognized schema"),
    ({"$ref": "#/definitions/missing"}, "cannot convert it to a grammar"),
    ({"$ref": "https://example.com/schema.json"}, "Fetching remote schemas is not allowed"),
    ({"type": "string", "pattern": r"^\d+$"}, "invalid grammar"),  # the converter writes "\d": llama.cpp refuses it
    ({"type": "string", "maxLength": 1500}, "more than 2000 rules"),
    ({"enum": []}, "invalid grammar"),
    ('{"type": "object"', "not valid JSON"),
    ("[1, 2]", "must be a dict"),
    (42, "must be a dict"),
    (None, "must be a dict"),
    (False, "false matches no value"),
    ({"type": "number", "minimum": float("nan")}, "not JSON-serialisable"),
]


@pytest.mark.llama
@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_json_schema_converts_to_a_valid_grammar(schema: Any) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")
    gbnf = check_json_schema(schema)
    assert re.search(r"^root ::= ", gbnf, re.MULTILINE)
    assert check_gbnf(gbnf) is gbnf


@pytest.mark.llama
@pytest.mark.parametrize(("schema", "fragment"), BAD_SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_bad_json_schema_raises_json_schema_error(schema: Any, fragment: str) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")
    with pytest.raises(JSONSchemaError, match=r"^JSON schema: ") as info:
        check_json_schema(schema)
    assert fragment in str(info.value)
    assert isinstance(info.value, GrammarError) and isinstance(info.value, ValueError)


@pytest.mark.llama
def test_json_schema_grammars_agree_with_llama_cpp(tiny_model_path: Path, tmp_path: Path) -> None:
    """The converter's grammars that check_json_schema passes are accepted by llama.cpp, the others refused."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    passed = [check_json_schema(s) for s in SCHEMAS]
    refused = [json_schema_to_gbnf(json.dumps(s)) for s, frag in BAD_SCHEMAS if frag in ("invalid grammar", "more than 2000 rules")]
    assert _llama_cpp_accepts(passed + refused, tiny_model_path, tmp_path) == [True] * len(passed) + [False] * len(refused)


# -- grammar_text --------------------------------------------------------------------------------------


def test_grammar_text_of_none_and_text() -> None:
    assert grammar_text(None) is None
    assert grammar_text(LIST) is LIST
    with pytest.raises(GrammarError, match="line 1, column 11"):
        grammar_text("root ::= (")


@pytest.mark.llama
def test_grammar_text_reads_a_llama_grammar_object() -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")
    LlamaGrammar = llama_cpp.LlamaGrammar

    assert grammar_text(LlamaGrammar.from_string(CHESS, verbose=False)) == CHESS
    with pytest.raises(GrammarError, match="rule 'item' is used but never defined"):
        grammar_text(LlamaGrammar.from_string("root ::= item", verbose=False))


def test_grammar_text_refuses_other_objects_without_importing_llama_cpp() -> None:
    class Lookalike:
        _grammar = 'root ::= "a"'

    before = "llama_cpp" in sys.modules
    for value in (Lookalike(), 3, {"type": "string"}):
        with pytest.raises(GrammarError, match=r"must be GBNF text \(str\) or a llama_cpp\.LlamaGrammar"):
            grammar_text(value)
    assert ("llama_cpp" in sys.modules) == before


def test_importing_the_module_does_not_import_llama_cpp() -> None:
    code = "import sys, cyllama_db.llm.grammar; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False", out.stderr


def test_docs_describe_the_errors() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "inference.md").read_text()
    section = doc[doc.index("## Grammars and JSON schemas"):]
    for name in ("GrammarError", "JSONSchemaError", "check_gbnf"):
        assert name in section
    assert "before llama.cpp" in section
