"""Full-text search (SQLite FTS5): db.get_logs(search=...), db.search_cache(...) and their CLI.

Real SQLite, real FTS5. The indexes are checked against the rows they index
(a fresh index built from the same rows must hold exactly the same terms),
through every way rows come and go: inserts, re-stores, eviction,
invalidation, cleanup, pruning, imports and files from before the index.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB, GenerationConfig
from cyllama_db.cli import main
from cyllama_db.errors import SearchUnavailableError
from cyllama_db.stores import search as _search
from cyllama_db.stores.search import (
    CACHE_FTS,
    CACHE_INDEX,
    LOGS_FTS,
    LOGS_INDEX,
    fts5_available,
    fts_query,
    refresh,
)

DATA = Path(__file__).parent / "data"
CONFIG = GenerationConfig(temperature=0.0, max_tokens=8)

pytestmark = pytest.mark.skipif(not fts5_available(), reason="this SQLite has no FTS5")


@pytest.fixture
def logs_db(any_db: CyllamaDB) -> CyllamaDB:
    any_db.log("INFO", "The disk is full on the Café server")
    any_db.log("ERROR", "Naïve retry failed", error=ValueError("bad Müller value"))
    any_db.log("WARNING", "ΛΆΜΑ answered in Greek; Москва replied in Russian")
    any_db.log("INFO", "日本語 のテスト")
    any_db.log("INFO", "tokenizer warmed up", context={"prompt": "full text of the prompt here"})
    return any_db


def _messages(rows: list[dict]) -> list[str]:
    return [r["message"] for r in rows]


# -- logs ------------------------------------------------------------------------------------


def test_logs_words_are_anded_in_any_order_and_case(logs_db: CyllamaDB) -> None:
    assert _messages(logs_db.get_logs(search="full disk")) == ["The disk is full on the Café server"]
    assert _messages(logs_db.get_logs(search="DISK")) == ["The disk is full on the Café server"]
    assert logs_db.get_logs(search="disk unicorn") == []


def test_logs_phrases_keep_word_order(logs_db: CyllamaDB) -> None:
    assert _messages(logs_db.get_logs(search='"disk is full"')) == ["The disk is full on the Café server"]
    assert logs_db.get_logs(search='"full is disk"') == []
    # An unclosed quote still makes a phrase of the rest.
    assert _messages(logs_db.get_logs(search='"the disk is')) == ["The disk is full on the Café server"]


def test_logs_prefixes(logs_db: CyllamaDB) -> None:
    assert _messages(logs_db.get_logs(search="serv*")) == ["The disk is full on the Café server"]
    assert _messages(logs_db.get_logs(search='"the dis"*')) == ["The disk is full on the Café server"]
    assert logs_db.get_logs(search="serv") == []  # without the star a word is a whole word


def test_logs_non_ascii_case_and_accents(logs_db: CyllamaDB) -> None:
    assert _messages(logs_db.get_logs(search="cafe")) == ["The disk is full on the Café server"]
    assert _messages(logs_db.get_logs(search="CAFÉ")) == ["The disk is full on the Café server"]
    assert _messages(logs_db.get_logs(search="naive")) == ["Naïve retry failed"]
    # error_message is indexed too, diacritics folded: "Müller" found as "muller".
    assert _messages(logs_db.get_logs(search="muller")) == ["Naïve retry failed"]
    assert len(logs_db.get_logs(search="λάμα")) == 1  # Greek case folding
    # remove_diacritics folds the accents of Latin letters only: a Greek tonos stays.
    assert logs_db.get_logs(search="λαμα") == []
    assert len(logs_db.get_logs(search="москва")) == 1  # Cyrillic case folding
    assert len(logs_db.get_logs(search="日本語")) == 1
    # prompt_preview is indexed (the prompt of a context).
    assert _messages(logs_db.get_logs(search="prompt here")) == ["tokenizer warmed up"]


def test_logs_search_combines_with_the_other_filters(logs_db: CyllamaDB) -> None:
    logs_db.log("ERROR", "disk error on node 2")
    assert _messages(logs_db.get_logs(search="disk")) == [
        "disk error on node 2", "The disk is full on the Café server"
    ]  # newest first, as every listing
    assert _messages(logs_db.get_logs(search="disk", level="ERROR")) == ["disk error on node 2"]
    assert _messages(logs_db.get_logs(search="disk", limit=1, offset=1)) == [
        "The disk is full on the Café server"
    ]


@pytest.mark.parametrize(
    "text",
    ['disk OR unicorn', 'NEAR(disk full)', 'message:disk', '^disk', 'disk -unicorn', 'disk AND',
     'disk)', '(disk', 'disk"', 'di"sk', "disk;drop table logs", "disk NOT full"],
)
def test_query_syntax_is_never_interpreted(logs_db: CyllamaDB, text: str) -> None:
    """FTS5 operators in the search text are words (or punctuation), never syntax or an error."""
    rows = logs_db.get_logs(search=text)
    # Every word of the text must be in the match: "OR", "NEAR", "unicorn"... are not in it.
    assert all("unicorn" not in r["message"] for r in rows)
    if text in ("^disk", "disk)", "(disk", 'disk"'):
        assert _messages(rows) == ["The disk is full on the Café server"]
    else:
        # 'message:disk' is the phrase "message disk", 'di"sk' the phrase "di sk",
        # 'disk;drop' the phrase "disk drop"; OR, NEAR, NOT, AND, unicorn are words.
        assert rows == []
    assert logs_db.get_db_stats()["log_entries"] == 5


def test_query_translation() -> None:
    assert fts_query("disk full") == '"disk" "full"'
    assert fts_query('"a phrase" pre*') == '"a phrase" "pre"*'
    assert fts_query('say "hi') == '"say" "hi"'
    assert fts_query("x OR y") == '"x" "OR" "y"'
    assert fts_query('a"b') == '"a b"'
    for empty in ("", "   ", "*", '""', "!!! ???", "🦙"):
        with pytest.raises(ValueError, match="no words"):
            fts_query(empty)
    with pytest.raises(TypeError, match="search must be a str"):
        fts_query(b"disk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        fts_query("x" * 2000)


def test_bad_search_values(logs_db: CyllamaDB) -> None:
    with pytest.raises(ValueError, match="no words"):
        logs_db.get_logs(search="***")
    with pytest.raises(TypeError, match="search"):
        logs_db.get_logs(search=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no words"):
        logs_db.search_cache("  ")
    with pytest.raises(TypeError, match="query"):
        logs_db.search_cache(None)  # type: ignore[arg-type]


def test_pruned_logs_leave_the_index(logs_db: CyllamaDB) -> None:
    assert logs_db.get_logs(search="cafe")
    logs_db.prune_logs(keep_last=1)
    assert logs_db.get_logs(search="cafe") == []
    _assert_index_matches_rows(logs_db)


# -- cache -----------------------------------------------------------------------------------


def _keys(rows: list[dict]) -> list[str]:
    return [r["prompt"] for r in rows]


@pytest.fixture
def cache_db(any_db: CyllamaDB) -> CyllamaDB:
    any_db.cache_response("What is the capital of France?", "m.gguf", CONFIG, "Paris, near the café.")
    any_db.cache_response("Translate: good morning", "m.gguf", CONFIG, "Guten Morgen, Herr Müller")
    any_db.cache_response(
        [{"role": "system", "content": "Réponds en français"}, {"role": "user", "content": "Où est Zürich?"}],
        "m.gguf", CONFIG, "En Suisse.",
    )
    any_db.cache_response("Write a haiku", "other.gguf", CONFIG, "autumn moon rising", namespace="poems")
    return any_db


def test_search_cache_over_prompts_and_responses(cache_db: CyllamaDB) -> None:
    assert _keys(cache_db.search_cache("capital")) == ["What is the capital of France?"]
    assert _keys(cache_db.search_cache("paris")) == ["What is the capital of France?"]  # the response
    assert _keys(cache_db.search_cache("cafe")) == ["What is the capital of France?"]
    assert _keys(cache_db.search_cache('"good morning"')) == ["Translate: good morning"]
    assert _keys(cache_db.search_cache("muller")) == ["Translate: good morning"]
    assert _keys(cache_db.search_cache("mor*")) == ["Translate: good morning"]
    hit = cache_db.search_cache("paris")[0]
    assert hit["response_text"] == "Paris, near the café."
    assert hit["snippet"] == "[Paris], near the café."
    assert hit["model_name"] == "m.gguf" and hit["kind"] == "completion"


def test_chat_prompts_are_searched_as_their_text(cache_db: CyllamaDB) -> None:
    """A chat prompt is stored as ASCII JSON (\\u escapes): the index has the decoded text."""
    found = cache_db.search_cache("zurich")
    assert len(found) == 1 and found[0]["kind"] == "chat"
    assert "\\u00fc" in found[0]["prompt"]  # stored escaped...
    assert "[Zürich]" in found[0]["snippet"]  # ...found and shown decoded
    assert len(cache_db.search_cache("francais reponds")) == 1
    assert cache_db.search_cache("content") == []  # JSON keys are not text


def test_search_cache_filters_and_ranking(cache_db: CyllamaDB) -> None:
    assert _keys(cache_db.search_cache("haiku", namespace="poems")) == ["Write a haiku"]
    assert cache_db.search_cache("haiku", namespace="") == []
    assert cache_db.search_cache("haiku", model_path="m.gguf") == []
    assert _keys(cache_db.search_cache("haiku", model_path="other.gguf")) == ["Write a haiku"]
    cache_db.cache_response("moon", "m.gguf", CONFIG, "moon moon moon, the moon")
    # BM25: the entry that is all about the moon ranks first.
    assert _keys(cache_db.search_cache("moon")) == ["moon", "Write a haiku"]
    assert len(cache_db.search_cache("moon", limit=1)) == 1


def test_expired_entries_are_left_out_unless_asked(cache_db: CyllamaDB) -> None:
    now = cache_db.clock()
    cache_db.cache_response("short lived answer", "m.gguf", CONFIG, "ephemeral", ttl=10)
    assert _keys(cache_db.search_cache("ephemeral")) == ["short lived answer"]
    cache_db.clock = lambda: now + 60  # type: ignore[method-assign]
    assert cache_db.search_cache("ephemeral") == []
    assert _keys(cache_db.search_cache("ephemeral", include_expired=True)) == ["short lived answer"]


def test_restores_invalidation_and_cleanup_keep_the_index_exact(cache_db: CyllamaDB) -> None:
    cache_db.cache_response("What is the capital of France?", "m.gguf", CONFIG, "It is Paris again")
    assert cache_db.search_cache("cafe") == []  # the old response left the index
    assert _keys(cache_db.search_cache("again")) == ["What is the capital of France?"]
    assert cache_db.invalidate_cache(prompt="Translate: good morning") == 1
    assert cache_db.search_cache("muller") == []
    _assert_index_matches_rows(cache_db)
    now = cache_db.clock()
    cache_db.cache_response("soon gone", "m.gguf", CONFIG, "vanishing", ttl=1)
    cache_db.clock = lambda: now + 5  # type: ignore[method-assign]
    assert cache_db.cleanup_cache() == 1
    assert cache_db.search_cache("vanishing", include_expired=True) == []
    _assert_index_matches_rows(cache_db)


def test_eviction_keeps_the_index_exact(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "small.db", max_cache_size_mb=0.02) as db:
        for i in range(60):
            db.cache_response(f"prompt number {i} über", "m.gguf", CONFIG, f"answer {i} " + "x" * 600)
        stored = db.get_cache_stats()["entries"]
        assert 0 < stored < 60  # evicted
        assert len(db.search_cache("uber", limit=100)) == stored
        assert db.search_cache('"prompt number 0"') == []  # the oldest went
        _assert_index_matches_rows(db)


# -- keeping up: old files, imports, other tools ---------------------------------------------------


def test_a_file_from_before_the_index_is_indexed_when_upgraded(tmp_path: Path) -> None:
    copy = tmp_path / "v7.db"
    shutil.copyfile(DATA / "schema_v7.db", copy)
    with CyllamaDB(copy) as db:
        # Rows written by schema version 7 (tests/data/make_schema_samples.py), found by their words.
        assert [r["message"] for r in db.get_logs(search="unicode")] == ["started ✓ — ünïcode 🦙"]
        assert len(db.get_logs(search="muller OR boom")) == 0  # all words must appear
        assert any("naïve café" in r["prompt"] for r in db.search_cache('"naive cafe"'))
        _assert_index_matches_rows(db)


def test_writes_by_other_tools_are_indexed(file_db: CyllamaDB) -> None:
    file_db.log("INFO", "written by the library")
    file_db.close()
    conn = sqlite3.connect(file_db.path)
    with conn:
        conn.execute(
            "INSERT INTO logs (level, message, created_at) VALUES ('INFO', 'written by the sqlite3 shell', 1.0)"
        )
        conn.execute("DELETE FROM logs WHERE message = 'written by the library'")
    conn.close()
    with CyllamaDB(file_db.path) as db:
        assert _messages(db.get_logs(search="written")) == ["written by the sqlite3 shell"]
        _assert_index_matches_rows(db)


def test_export_and_import_round_trip_the_search(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "a.db") as source:
        source.log("INFO", "exported log about zebras")
        source.cache_response("zebra question", "m.gguf", CONFIG, "striped answer")
        source.export_database(tmp_path / "copy.db")
        source.export_database(tmp_path / "logs.jsonl", format="jsonl", table="logs")
        with pytest.raises(ValueError, match="no table"):
            source.export_database(tmp_path / "fts.jsonl", format="jsonl", table=LOGS_FTS)
    with CyllamaDB(tmp_path / "copy.db") as copy:
        assert _messages(copy.get_logs(search="zebras")) == ["exported log about zebras"]
    with CyllamaDB(tmp_path / "b.db") as target:
        target.log("INFO", "local log about lions")
        report = target.import_database(tmp_path / "a.db")
        assert not any(t.startswith(("logs_fts", "cache_fts")) for t in report["tables"])
        assert _messages(target.get_logs(search="zebras")) == ["exported log about zebras"]
        assert _messages(target.get_logs(search="lions")) == ["local log about lions"]
        assert _keys(target.search_cache("striped")) == ["zebra question"]
        target.import_database(tmp_path / "a.db")  # twice: nothing doubled
        assert len(target.get_logs(search="zebras")) == 1
        _assert_index_matches_rows(target)


# -- deferred indexing -----------------------------------------------------------------------


def _indexed(db: CyllamaDB, name: str) -> int:
    with db.pool.read() as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {name}_docsize").fetchone()[0])


def test_inserts_are_indexed_in_batches_not_one_by_one(file_db: CyllamaDB) -> None:
    from cyllama_db.stores.logs import LOG_INDEX_BATCH

    file_db.cache_response("question 0", "m.gguf", CONFIG, "answer")
    assert len(file_db.search_cache("question")) == 1
    for i in range(1, 10):
        file_db.cache_response(f"question {i}", "m.gguf", CONFIG, "answer")
    assert _indexed(file_db, CACHE_FTS) == 1  # an insert writes no index
    assert len(file_db.search_cache("question", limit=100)) == 10  # a search syncs first
    assert _indexed(file_db, CACHE_FTS) == 10
    for i in range(LOG_INDEX_BATCH - 1):
        file_db.log("INFO", f"line {i}")
    assert _indexed(file_db, LOGS_FTS) == 0
    file_db.log("INFO", "the last of a batch")
    assert _indexed(file_db, LOGS_FTS) == LOG_INDEX_BATCH  # every 256th write indexes the batch


def test_close_indexes_what_is_left(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        db.log("INFO", "written just before closing")
        db.cache_response("last words", "m.gguf", CONFIG, "spoken")
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute(f"SELECT COUNT(*) FROM {LOGS_FTS}_docsize").fetchone()[0] >= 1
        assert conn.execute(f"SELECT COUNT(*) FROM {CACHE_FTS}_docsize").fetchone() == (1,)
    finally:
        conn.close()


def test_a_reused_rowid_never_shows_the_old_text(file_db: CyllamaDB) -> None:
    """The cache's ids are reused (no AUTOINCREMENT): a new row must not inherit the old index entry."""
    file_db.cache_response("first", "m.gguf", CONFIG, "crocodile")
    file_db.cache_response("second", "m.gguf", CONFIG, "alligator")
    assert _keys(file_db.search_cache("alligator")) == ["second"]  # synced: both indexed
    path = file_db.path
    file_db.close()
    conn = sqlite3.connect(path)  # another tool: delete the top row, insert one that takes its id
    with conn:
        top = conn.execute("SELECT MAX(id) FROM cache").fetchone()[0]
        conn.execute("DELETE FROM cache WHERE id = ?", (top,))
        conn.execute(
            "INSERT INTO cache (id, cache_key, prompt, prompt_hash, model_path, model_name, model_identity,"
            " config_json, response_text, size_bytes, created_at, last_used_at)"
            " VALUES (?, 'k2', 'third', 'h', 'm.gguf', 'm.gguf', 'm.gguf', '{}', 'gecko', 1, 1, 1)",
            (top,),
        )
    conn.close()
    with CyllamaDB(path, readonly=True) as ro:  # cannot sync: must still not mix the two up
        assert ro.search_cache("alligator", include_expired=True) == []
    with CyllamaDB(path) as db:
        assert db.search_cache("alligator", include_expired=True) == []
        assert _keys(db.search_cache("gecko", include_expired=True)) == ["third"]
        _assert_index_matches_rows(db)


def test_updates_in_place_are_reindexed(file_db: CyllamaDB) -> None:
    file_db.log("INFO", "original wording")
    assert file_db.get_logs(search="original")
    with file_db.pool.transaction() as conn:
        conn.execute("UPDATE logs SET message = 'corrected wording' WHERE message = 'original wording'")
    assert file_db.get_logs(search="original") == []
    assert _messages(file_db.get_logs(search="corrected")) == ["corrected wording"]
    _assert_index_matches_rows(file_db)


def test_triggers_work_with_trusted_schema_off(file_db: CyllamaDB) -> None:
    """The triggers touch plain tables only: writes work where virtual tables may not be used
    from triggers (an import's merge runs with trusted_schema=OFF)."""
    file_db.log("INFO", "kept")
    file_db.log("INFO", "dropped")
    file_db.cache_response("q", "m.gguf", CONFIG, "old answer")
    assert file_db.get_logs(search="dropped") and file_db.search_cache("old")
    with file_db.pool.transaction() as conn:
        conn.execute("PRAGMA trusted_schema = OFF")
        try:
            conn.execute("DELETE FROM logs WHERE message = 'dropped'")
            conn.execute("UPDATE cache SET response_text = 'new answer'")
            conn.execute("INSERT INTO logs (level, message, created_at) VALUES ('INFO', 'added', 1.0)")
        finally:
            conn.execute("PRAGMA trusted_schema = ON")
    assert file_db.get_logs(search="dropped") == []
    assert _messages(file_db.get_logs(search="added")) == ["added"]
    assert file_db.search_cache("old") == [] and len(file_db.search_cache("new")) == 1
    _assert_index_matches_rows(file_db)


# -- without FTS5 ----------------------------------------------------------------------------


def test_without_fts5_search_is_a_clear_error_and_the_rest_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_search, "fts5_available", lambda: False)
    with CyllamaDB(tmp_path / "nofts.db") as db:
        assert "no FTS5" in caplog.text
        db.log("INFO", "still logged")
        db.cache_response("p", "m.gguf", CONFIG, "still cached")
        assert _messages(db.get_logs()) == ["still logged"]
        with pytest.raises(SearchUnavailableError, match="no full-text search index"):
            db.get_logs(search="logged")
        with pytest.raises(SearchUnavailableError, match="FTS5"):
            db.search_cache("cached")
        with db.pool.read() as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert LOGS_FTS not in names and CACHE_FTS not in names
    assert issubclass(SearchUnavailableError, RuntimeError)


# -- command line ----------------------------------------------------------------------------


@pytest.fixture
def cli_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cli.db"
    with CyllamaDB(path) as db:
        db.log("WARNING", "disk almost full on the naïve host")
        db.log("INFO", "all good")
        db.cache_response("Où est la gare?", "tiny.gguf", CONFIG, "La gare est près du café.")
    yield path


def test_cli_logs_q(cli_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(cli_db), "logs", "-q", "naive full"]) == 0
    out = capsys.readouterr().out
    assert "disk almost full" in out and "all good" not in out
    assert main(["--db", str(cli_db), "logs", "--search", "good", "--json"]) == 0
    assert [e["message"] for e in json.loads(capsys.readouterr().out)] == ["all good"]
    assert main(["--db", str(cli_db), "logs", "-q", "!!"]) == 2
    assert "no words" in capsys.readouterr().err


def test_cli_cache_search(cli_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(cli_db), "cache", "search", "cafe"]) == 0
    out = capsys.readouterr().out
    assert "[café]" in out and "tiny.gguf" in out
    assert main(["--db", str(cli_db), "cache", "search", "gare", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["response_text"] == "La gare est près du café."
    assert main(["--db", str(cli_db), "cache", "search", "unicorn"]) == 0
    assert "no cache entries match" in capsys.readouterr().out
    assert main(["--db", str(cli_db), "cache", "search", "*"]) == 2


# -- helpers ---------------------------------------------------------------------------------


def _assert_index_matches_rows(db: CyllamaDB) -> None:
    """After a sync, each index holds exactly the terms a fresh index of the current rows would
    (compared through FTS5's vocabulary tables), and nothing is left pending."""
    for index in (LOGS_INDEX, CACHE_INDEX):
        refresh(db.pool, index)
    with db.pool.read() as conn:
        for index in (LOGS_INDEX, CACHE_INDEX):
            name, table, cols = index.name, index.table, index.cols
            exprs = index.values(table)
            assert conn.execute(f"SELECT COUNT(*) FROM {name}_pending").fetchone() == (0,)
            conn.execute(f"DROP TABLE IF EXISTS temp.fresh_{name}")
            conn.execute(
                f"CREATE VIRTUAL TABLE temp.fresh_{name} USING fts5({cols}, tokenize='{_search.FTS_TOKENIZER}')"
            )
            conn.execute(f"INSERT INTO temp.fresh_{name} (rowid, {cols}) SELECT id, {exprs} FROM {table}")
            conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab_{name} USING fts5vocab(main, {name}, 'instance')")
            conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.fresh_vocab_{name} USING fts5vocab(temp, fresh_{name}, 'instance')"
            )
            live = conn.execute(f"SELECT * FROM temp.vocab_{name} ORDER BY 1, 2, 3, 4").fetchall()
            fresh = conn.execute(f"SELECT * FROM temp.fresh_vocab_{name} ORDER BY 1, 2, 3, 4").fetchall()
            for temp in (f"vocab_{name}", f"fresh_vocab_{name}", f"fresh_{name}"):
                conn.execute(f"DROP TABLE temp.{temp}")
            assert live == fresh, f"{name} differs from its rows"
            # FTS5's own check of its internal structures (rank 0: not against the content).
            conn.execute(f"INSERT INTO {name} ({name}, rank) VALUES ('integrity-check', 0)")
