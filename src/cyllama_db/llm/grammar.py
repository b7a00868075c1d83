"""Validate GBNF grammars and JSON schemas before llama.cpp sees them.

llama-cpp-python 0.3's ``LlamaGrammar.from_string`` only keeps the text:
llama.cpp parses it when the sampler is built, and a grammar it refuses gives
a NULL sampler that crashes the process (SIGSEGV) instead of raising.  This
module is a pure-Python port of llama.cpp's grammar parser
(``src/llama-grammar.cpp``: ``llama_grammar_parser::parse`` and the checks of
``llama_grammar_init_impl``), so a bad grammar becomes a :class:`GrammarError`
naming the line and column.

It accepts what the bundled llama.cpp accepts, with a few deliberate
exceptions, each a grammar llama.cpp would crash on, hang on or misread:

* a repetition ``{m,n}`` with ``n < m`` (llama.cpp loops allocating until the
  process runs out of memory);
* a NUL character (llama.cpp silently ignores everything after it);
* a left-recursive cycle through rules that may match nothing, when something
  follows the recursive reference (llama.cpp's check misses it, and its
  sampler then grows a stack until the process aborts);
* with ``vocab`` given, a token id outside the vocabulary or a required
  end-of-generation token (llama.cpp aborts when the sampler reaches either).

Token references such as ``<think>`` and ``<[id]>`` depend on the model's
vocabulary: pass ``vocab`` to check them against a loaded model.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from ..errors import GrammarError, JSONSchemaError, MissingDependencyError

__all__ = ["check_gbnf", "check_json_schema", "grammar_text"]

_MAX_REPETITION = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1

# Rule elements: a rule id (>= 0) is a reference to that rule, then:
_END, _ALT, _TERM, _TOKEN = -1, -2, -3, -4  # _TOKEN - i: the i-th token reference

_SPACE = re.compile(r"(?:[ \t]+|#[^\r\n\x00]*)*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]+|#[^\r\n\x00]*)*")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('trn\\"[]-')


# (position, "<text>" or id, negated with '!', still in the grammar after x{0} dropped items)
_TokenRef = tuple[int, "str | int", bool, bool]


class _Fail(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def _found(text: str, pos: int) -> str:
    if pos >= len(text):
        return "the end of the grammar"
    rest = text[pos : pos + 16].split("\n", 1)[0].split("\r", 1)[0]
    return repr(rest) if rest else "the end of the line"


class _Frame:
    """A rule being parsed: the top-level rule or a group inside it."""

    __slots__ = ("last", "n_before", "n_prev", "nested", "rule", "rule_id", "start")

    def __init__(self, rule_id: int, nested: bool, start: int, n_before: int) -> None:
        self.rule_id, self.nested, self.start, self.n_before = rule_id, nested, start, n_before
        self.rule: list[int] = []
        self.last = 0  # llama.cpp's last_sym_start: where the item a repetition applies to starts
        self.n_prev = 1  # llama.cpp's n_prev_rules


class _Parser:
    """The state of ``llama_grammar_parser``: symbol ids by name and rules by id."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.s = text + "\x00"  # the C string's terminator
        self.symbol_ids: dict[str, int] = {}
        self.rules: list[list[int]] = []  # [] is llama.cpp's empty (undefined) rule
        self.first_use: dict[int, int] = {}  # symbol id -> position of its first reference
        self.defined_at: dict[int, int] = {}
        self.owner: dict[int, str] = {}  # generated symbol id -> the rule it was made for
        self.tokens: list[_TokenRef] = []

    # -- helpers of llama-grammar.cpp ------------------------------------------------
    def space(self, pos: int, newline_ok: bool) -> int:
        return (_SPACE_NL if newline_ok else _SPACE).match(self.s, pos).end()  # type: ignore[union-attr]

    def symbol_id(self, name: str) -> int:
        return self.symbol_ids.setdefault(name, len(self.symbol_ids))

    def generate_symbol_id(self, base: str) -> int:
        next_id = len(self.symbol_ids)
        self.symbol_ids[f"{base}_{next_id}"] = next_id
        self.owner[next_id] = base
        return next_id

    def add_rule(self, rule_id: int, rule: list[int]) -> None:
        if len(self.rules) <= rule_id:
            self.rules.extend([] for _ in range(rule_id + 1 - len(self.rules)))
        self.rules[rule_id] = rule

    def integer(self, pos: int, what: str, limit: int = _UINT64_MAX) -> tuple[int, int]:
        m = _INT.match(self.s, pos)
        if m is None:
            raise _Fail(pos, f"expected {what}, found {_found(self.text, pos)}")
        value = int(m.group())
        if value > limit:
            raise _Fail(pos, f"{what} {m.group()} is too large (at most {limit})")
        return value, m.end()

    def char(self, pos: int) -> int:
        """Position after one (possibly escaped) character; llama.cpp's ``parse_char``."""
        s = self.s
        if s[pos] == "\\":
            esc = s[pos + 1]
            size = {"x": 2, "u": 4, "U": 8}.get(esc)
            if size is not None:
                for i in range(size):
                    if s[pos + 2 + i] not in _HEX:
                        raise _Fail(pos, f"escape '\\{esc}' needs exactly {size} hex digits, "
                                    f"found {_found(self.text, pos)}")
                return pos + 2 + size
            if esc in _SIMPLE_ESCAPES:
                return pos + 2
            raise _Fail(pos, f"unknown escape {_found(self.text, pos)}; llama.cpp knows "
                        r"\x.. \u.... \U........ \t \n \r \\ \" \[ \] \-")
        if s[pos] != "\x00":
            return pos + 1
        raise _Fail(pos, "unexpected end of the grammar")

    # -- llama_grammar_parser ------------------------------------------------------------
    def parse(self) -> None:
        pos = self.space(0, True)
        while self.s[pos] != "\x00":
            pos = self.parse_rule(pos)

    def parse_rule(self, pos: int) -> int:
        m = _NAME.match(self.s, pos)
        if m is None:
            raise _Fail(pos, f"expected a rule name (letters, digits and '-'), found {_found(self.text, pos)}")
        name = m.group()
        rule_id = self.symbol_id(name)
        self.defined_at.setdefault(rule_id, pos)
        pos = self.space(m.end(), False)
        if self.s[pos : pos + 3] != "::=":
            raise _Fail(pos, f"expected '::=' after the rule name {name!r}, found {_found(self.text, pos)}")
        pos = self.parse_alternates(self.space(pos + 3, True), name, rule_id, False)
        c = self.s[pos]
        if c == "\r":
            pos += 2 if self.s[pos + 1] == "\n" else 1
        elif c == "\n":
            pos += 1
        elif c != "\x00":
            hint = "; a ')' with no '(' before it?" if c == ")" else ""
            raise _Fail(pos, f"unexpected {_found(self.text, pos)} in rule {name!r}: expected another "
                        f"item, '|' or the end of the line{hint}")
        return self.space(pos, True)

    def parse_alternates(self, pos: int, name: str, rule_id: int, nested: bool) -> int:
        """llama.cpp's ``parse_alternates``, with the recursion into groups on an explicit stack."""
        s = self.s
        stack = [_Frame(rule_id, nested, pos, 0)]
        while True:
            f = stack[-1]
            pos = self.parse_sequence(pos, name, f)
            if s[pos] == "(":  # a group: parse it as a new rule, then come back
                n_before = len(self.symbol_ids)
                stack.append(_Frame(self.generate_symbol_id(name), True, pos, n_before))
                pos = self.space(pos + 1, True)
                continue
            if s[pos] == "|":
                f.rule.append(_ALT)
                f.last, f.n_prev = len(f.rule), 1
                pos = self.space(pos + 1, True)
                continue
            f.rule.append(_END)
            self.add_rule(f.rule_id, f.rule)
            stack.pop()
            if not stack:
                return pos
            parent = stack[-1]
            parent.n_prev = max(1, len(self.symbol_ids) - f.n_before)
            parent.last = len(parent.rule)
            parent.rule.append(f.rule_id)
            if s[pos] != ")":
                raise _Fail(pos, f"expected ')' to close the '(' at {_where(self.text, f.start)}, "
                            f"found {_found(self.text, pos)}")
            pos = self.space(pos + 1, parent.nested)

    def parse_sequence(self, pos: int, name: str, f: _Frame) -> int:
        """Items up to the next '|', ')', '(' or end of rule; llama.cpp's ``parse_sequence``."""
        s, text, rule, nested = self.s, self.text, f.rule, f.nested

        def repeat(at: int, min_times: int, max_times: int | None) -> None:
            if f.last == len(rule):
                raise _Fail(at, f"{text[at]!r} must follow an item to repeat (a string, [class], "
                            "rule name, '.', or (group))")
            if max_times is not None and max_times < min_times:
                raise _Fail(at, f"repetition {{{min_times},{max_times}}}: the maximum is smaller than "
                            "the minimum (llama.cpp would run out of memory on it)")
            prev = rule[f.last:]
            total = max_times if max_times else (min_times or 1)
            if f.n_prev * total > _MAX_REPETITION:
                raise _Fail(at, f"this repetition expands to more than {_MAX_REPETITION} rules, llama.cpp's "
                            "limit; repeat fewer times or repeat a simpler item")
            if min_times == 0:
                del rule[f.last:]
            else:
                rule.extend(prev * (min_times - 1))
            n_opt = 1 if max_times is None else max_times - min_times
            last_rec = 0
            for i in range(n_opt):
                rec_id = self.generate_symbol_id(name)
                rec = list(prev)
                if i > 0 or max_times is None:
                    rec.append(rec_id if max_times is None else last_rec)
                rec += (_ALT, _END)
                self.add_rule(rec_id, rec)
                last_rec = rec_id
            if n_opt > 0:
                rule.append(last_rec)
            f.n_prev *= total

        while True:
            c = s[pos]
            start = pos
            if c == '"':
                pos += 1
                f.last, f.n_prev = len(rule), 1
                while s[pos] != '"':
                    if s[pos] == "\x00":
                        raise _Fail(start, "unterminated string: no closing '\"'")
                    pos = self.char(pos)
                    rule.append(_TERM)
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                if s[pos] == "^":
                    pos += 1
                f.last, f.n_prev = len(rule), 1
                while s[pos] != "]":
                    if s[pos] == "\x00":
                        raise _Fail(start, "unterminated character class: no closing ']'")
                    pos = self.char(pos)
                    rule.append(_TERM)
                    if s[pos] == "-" and s[pos + 1] != "]":
                        if s[pos + 1] == "\x00":
                            raise _Fail(start, "unterminated character class: no closing ']'")
                        pos = self.char(pos + 1)
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                if c == "!":
                    pos += 1
                pos = self.token(pos, c == "!")
                f.last, f.n_prev = len(rule), 1
                rule.append(_TOKEN - len(self.tokens) + 1)  # a terminal that remembers which token
                pos = self.space(pos, nested)
            elif (m := _NAME.match(s, pos)) is not None:
                ref = self.symbol_id(m.group())
                self.first_use.setdefault(ref, pos)
                pos = self.space(m.end(), nested)
                f.last, f.n_prev = len(rule), 1
                rule.append(ref)
            elif c == "(":
                return pos
            elif c == ".":
                f.last, f.n_prev = len(rule), 1
                rule.append(_TERM)
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                pos = self.space(pos + 1, nested)
                repeat(start, 0 if c != "+" else 1, None if c != "?" else 1)
            elif c == "{":
                pos = self.space(pos + 1, nested)
                min_times, pos = self.integer(pos, "a repetition count after '{'")
                pos = self.space(pos, nested)
                max_times: int | None = None
                if s[pos] == "}":
                    max_times = min_times
                elif s[pos] == ",":
                    pos = self.space(pos + 1, nested)
                    if s[pos] in "0123456789":
                        max_times, pos = self.integer(pos, "a repetition maximum")
                        pos = self.space(pos, nested)
                    if s[pos] != "}":
                        raise _Fail(pos, f"expected '}}' to close the repetition, found {_found(text, pos)}")
                else:
                    raise _Fail(pos, f"expected ',' or '}}' in the repetition, found {_found(text, pos)}")
                pos = self.space(pos + 1, nested)
                if min_times > _MAX_REPETITION:
                    raise _Fail(start, f"repetition minimum {min_times} is above llama.cpp's limit of "
                                f"{_MAX_REPETITION}")
                if max_times is not None and max_times > _MAX_REPETITION:
                    max_times = None  # llama.cpp treats a huge maximum as "no maximum"
                repeat(start, min_times, max_times)
            else:
                return pos

    def token(self, pos: int, negated: bool) -> int:
        """Position after ``<[id]>`` or ``<text>``; llama.cpp's ``parse_token``."""
        s, text = self.s, self.text
        if s[pos] != "<":
            raise _Fail(pos, f"expected '<' after '!', found {_found(text, pos)}")
        start = pos
        pos += 1
        if s[pos] == "[":
            token_id, pos = self.integer(pos + 1, "a token id", _UINT32_MAX)
            if s[pos] != "]" or s[pos + 1] != ">":
                raise _Fail(pos, f"expected ']>' to close the token id, found {_found(text, pos)}")
            self.tokens.append((start, token_id, negated, True))
            return pos + 2
        end = s.find(">", pos)
        if end < 0 or end >= len(text):
            raise _Fail(start, "unterminated token reference: no closing '>'")
        self.tokens.append((start, s[start : end + 1], negated, True))
        return end + 1


def _nullable(alts: list[list[list[int]]]) -> list[bool]:
    """Which rules can match the empty string (a worklist fixpoint)."""
    nullable = [False] * len(alts)
    remaining: list[int] = []  # per candidate alternative: references not yet known nullable
    owner: list[int] = []
    users: list[list[int]] = [[] for _ in alts]
    queue: list[int] = []
    for a, rule_alts in enumerate(alts):
        for alt in rule_alts:
            if any(e < 0 for e in alt):
                continue  # a terminal: never empty
            users_k = len(remaining)
            remaining.append(len(alt))
            owner.append(a)
            for e in alt:
                users[e].append(users_k)
            if not alt:
                queue.append(a)
    while queue:
        a = queue.pop()
        if not nullable[a]:
            nullable[a] = True
            for k in users[a]:
                remaining[k] -= 1
                if remaining[k] == 0:
                    queue.append(owner[k])
    return nullable


def _left_edges(alts: list[list[list[int]]], nullable: list[bool]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Edges a -> b where rule a can start with rule b, and those where more of a follows b."""
    edges: list[list[int]] = [[] for _ in alts]
    growing: list[tuple[int, int]] = []
    for a, rule_alts in enumerate(alts):
        for alt in rule_alts:
            for i, e in enumerate(alt):
                if e < 0:
                    break
                edges[a].append(e)
                if i + 1 < len(alt):
                    growing.append((a, e))
                if not nullable[e]:
                    break
    return edges, growing


def _left_recursion(rules: list[list[int]], root: int) -> tuple[int, bool] | None:
    """(a left-recursive rule, whether llama.cpp's own check misses it), or None.

    llama.cpp (``llama_grammar_detect_left_recursion``) only counts a rule as
    possibly empty when one of its alternatives is literally empty, so it misses
    ``e ::= ws e ")"`` with ``ws ::= " "*``.  Expanding such a cycle pushes the
    continuation (``")"``) on the sampler's stack every round, until
    ``std::bad_alloc`` aborts the process.  A missed cycle where every step is in
    tail position, or that ``root`` never reaches, is harmless and allowed.
    """
    alts: list[list[list[int]]] = []
    for rule in rules:
        alts.append([[]])
        for e in rule[:-1]:
            if e == _ALT:
                alts[-1].append([])
            else:
                alts[-1][-1].append(e)
    edges, _ = _left_edges(alts, [any(not alt for alt in a) for a in alts])
    comp = _components(edges)
    for a, targets in enumerate(edges):
        if any(comp[a] == comp[b] for b in targets):
            return a, False
    reachable, todo = {root}, [root]
    while todo:
        for e in rules[todo.pop()]:
            if e >= 0 and e not in reachable:
                reachable.add(e)
                todo.append(e)
    edges, growing = _left_edges(alts, _nullable(alts))
    comp = _components(edges)
    for a, b in growing:
        if comp[a] == comp[b] and a in reachable:
            return a, True
    return None


def _components(edges: list[list[int]]) -> list[int]:
    """Strongly connected component of every node (iterative Tarjan)."""
    n = len(edges)
    index, low, comp = [0] * n, [0] * n, [-1] * n
    on_stack = [False] * n
    stack: list[int] = []
    counter, n_comp = 1, 0
    for first in range(n):
        if index[first]:
            continue
        work = [(first, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            for j in range(i, len(edges[v])):
                w = edges[v][j]
                if not index[w]:
                    work += [(v, j + 1), (w, 0)]
                    break
                if on_stack[w]:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp[w] = n_comp
                        if w == v:
                            break
                    n_comp += 1
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
    return comp


@functools.lru_cache(maxsize=256)
def _analyse(text: str, root: str) -> tuple[str | None, tuple[_TokenRef, ...]]:
    """(error message or None, named token references) for one grammar text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{_where(text, exc.start)}: not encodable as UTF-8 (a lone surrogate?)", ()
    nul = text.find("\x00")
    if nul >= 0:
        return f"{_where(text, nul)}: NUL character; llama.cpp would silently ignore the rest", ()
    if text == "":
        return None, ()  # llama.cpp: an empty grammar means no constraint
    p = _Parser(text)
    try:
        p.parse()
    except _Fail as exc:
        return f"{_where(text, exc.pos)}: {exc.message}", ()
    names = {v: k for k, v in p.symbol_ids.items()}
    # llama.cpp's check: every rule defined, every reference to a defined rule
    # (a reference dropped by x{0} never counts).
    n = len(p.rules)
    undefined = [i for i in range(n) if not p.rules[i]]
    undefined += [e for rule in p.rules for e in rule if e >= 0 and (e >= n or not p.rules[e])]
    if undefined:
        name = min((names[i] for i in undefined), key=lambda k: p.first_use.get(p.symbol_ids[k], 0))
        at = p.first_use.get(p.symbol_ids[name], 0)
        return f"{_where(text, at)}: rule {name!r} is used but never defined; add a line '{name} ::= ...'", ()
    if not p.rules:
        return "the grammar defines no rules; it needs at least 'root ::= ...'", ()
    root_id = p.symbol_ids.get(root)
    if root_id is None or root_id >= n:  # the second: only 'x{0}' mentions it; llama.cpp would crash
        return (
            f"the grammar has no {root!r} rule; llama.cpp starts from it, so add '{root} ::= ...' "
            "(or rename the top rule)"
        ), ()
    found = _left_recursion(p.rules, root_id)
    if found is not None:
        bad, hidden = found
        rule_name = p.owner.get(bad, names[bad])
        at = p.defined_at.get(p.symbol_ids.get(rule_name, bad), 0)
        why = (
            "through rules that can match nothing, a case llama.cpp misses and then loops on until it aborts"
            if hidden else "which llama.cpp does not support"
        )
        return (
            f"{_where(text, at)}: rule {rule_name!r} is left-recursive (it can start with itself), {why}; "
            "rewrite e.g. 'x ::= x \"+\" y | y' as 'x ::= y (\"+\" y)*'"
        ), ()
    # Vocabulary checks: every <text> is tokenized while parsing; ids only matter where they stay.
    kept = {_TOKEN - e for rule in p.rules for e in rule if e <= _TOKEN}
    return None, tuple((pos, t, neg, i in kept) for i, (pos, t, neg, _) in enumerate(p.tokens))


def check_gbnf(text: str, *, vocab: Any = None, root: str = "root") -> str:
    """Return ``text`` unchanged if llama.cpp accepts it as a GBNF grammar, else raise :class:`GrammarError`.

    The message starts with ``grammar: line L, column C:`` and says what is
    wrong: unbalanced parentheses, unterminated strings or classes, unknown
    escapes, bad repetition bounds, undefined rules, a missing ``root`` rule,
    left recursion.  Results are memoised, so checking the same text again
    costs a dictionary lookup.  The empty string is valid and, as in
    llama.cpp, means "no constraint".

    Token references depend on the model: ``<think>`` must be exactly one
    token of its vocabulary, ``<[id]>`` an id below its vocabulary size, and
    neither an end-of-generation token (llama.cpp aborts on those two).
    ``vocab`` (a ``llama_cpp.Llama``, or anything with its
    ``tokenize(bytes, add_bos=, special=)`` and ``n_vocab()``) checks them;
    without it they are checked for syntax only, so pass it before the
    grammar reaches llama.cpp.
    """
    if not isinstance(text, str):
        raise GrammarError(f"grammar: must be GBNF text (str), got {type(text).__name__}")
    error, tokens = _analyse(text, root)
    if error is not None:
        raise GrammarError(f"grammar: {error}")
    if vocab is not None and tokens:
        _check_tokens(text, tokens, vocab)
    return text


def _check_tokens(text: str, tokens: tuple[_TokenRef, ...], vocab: Any) -> None:
    """llama.cpp's vocabulary checks of token references, plus the ones it aborts on."""
    n_vocab = vocab.n_vocab()
    model = getattr(vocab, "_model", None)
    for pos, token, negated, kept in tokens:
        where = f"grammar: {_where(text, pos)}: token"
        if isinstance(token, int):
            if not kept:
                continue
            if token >= n_vocab:
                raise GrammarError(f"{where} id {token} is outside this model's vocabulary (ids 0 to "
                                   f"{n_vocab - 1}); llama.cpp would abort on it")
            token_id = token
        else:
            ids = vocab.tokenize(token.encode("utf-8"), add_bos=False, special=True)
            if len(ids) != 1:
                raise GrammarError(f"{where} {token} is {len(ids)} tokens in this model's vocabulary, not "
                                   "one; use a string literal instead, or <[id]> with the token's id")
            token_id = ids[0]
        if kept and not negated and model is not None:
            import llama_cpp  # vocab is a llama_cpp.Llama: already imported

            if llama_cpp.llama_vocab_is_eog(model.vocab, token_id):
                raise GrammarError(
                    f"{where} {token} ends generation, and llama.cpp only lets it through once the grammar "
                    "is complete, so requiring it aborts the process; end the rule there instead"
                )


@functools.lru_cache(maxsize=64)
def _convert(schema_json: str) -> tuple[str | None, str]:
    """(error message or None, GBNF) for one schema, as JSON text."""
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError:
        return "missing", ""
    try:
        gbnf = json_schema_to_gbnf(schema_json)
    except Exception as exc:  # the converter asserts, raises KeyError, ValueError, re.error...
        return f"cannot convert it to a grammar: {type(exc).__name__}: {exc}", ""
    try:
        check_gbnf(gbnf)
    except GrammarError as exc:
        return f"llama-cpp-python's converter turned it into an invalid grammar ({exc})", ""
    return None, gbnf


def check_json_schema(schema: dict[str, Any] | bool | str) -> str:
    """Convert a JSON schema to GBNF with llama-cpp-python's converter and validate the result.

    ``schema`` is a dict, JSON text of one, or ``True`` (any JSON value).
    Returns the grammar text; raises :class:`JSONSchemaError` (a
    :class:`GrammarError`, so a ``ValueError``) for broken JSON text, a value
    that is not a schema, ``False`` (nothing matches it), and anything the
    converter refuses: an unknown ``type``, a ``$ref`` that does not resolve
    (only local ``#/...`` references are followed; nothing is fetched), an
    unsupported ``pattern``.  Needs llama-cpp-python
    (:class:`MissingDependencyError` otherwise).
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise JSONSchemaError(f"JSON schema: the text is not valid JSON: {exc}") from None
    if schema is True:
        schema = {}
    elif schema is False:
        raise JSONSchemaError("JSON schema: false matches no value, so nothing could be generated")
    if not isinstance(schema, dict):
        raise JSONSchemaError(
            f"JSON schema: must be a dict (or JSON text of one) or True, got {type(schema).__name__}"
        )
    try:
        schema_json = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JSONSchemaError(f"JSON schema: not JSON-serialisable: {exc}") from None
    error, gbnf = _convert(schema_json)
    if error == "missing":
        raise MissingDependencyError(
            "converting a JSON schema to a grammar needs llama-cpp-python: pip install 'cyllama-db[llama]'"
        )
    if error is not None:
        raise JSONSchemaError(f"JSON schema: {error}. Check the schema's 'type' and '$ref' values.")
    return gbnf


def grammar_text(value: object, *, vocab: Any = None) -> str | None:
    """The validated GBNF text of ``value``: ``None``, GBNF text, or a ``llama_cpp.LlamaGrammar``.

    Returns ``None`` for ``None``; raises :class:`GrammarError` for an invalid
    grammar or any other type.  ``vocab`` is passed to :func:`check_gbnf`.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return check_gbnf(value, vocab=vocab)
    cls = type(value)
    if cls.__module__.split(".", 1)[0] == "llama_cpp" and isinstance(getattr(value, "_grammar", None), str):
        root = getattr(value, "_root", "root")
        return check_gbnf(value._grammar, vocab=vocab, root=root if isinstance(root, str) else "root")  # type: ignore[attr-defined]
    raise GrammarError(
        f"grammar: must be GBNF text (str) or a llama_cpp.LlamaGrammar, got {cls.__module__}.{cls.__qualname__}"
    )
