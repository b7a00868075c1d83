"""Benchmark cyllama_db's GGUF header reader against the alternatives.

Writes a llama model with a large (default 150k-token, Qwen/Llama-3 sized)
BPE vocabulary into a temporary directory, then times reading its metadata
with:

* ``cyllama_db.stores.gguf.read_gguf_header`` / ``summarize_gguf`` /
  ``model_fingerprint`` (cold and cached),
* ``gguf.GGUFReader`` (llama.cpp's reference Python reader),
* ``llama_cpp.Llama(model_path, vocab_only=True)`` when llama-cpp-python is
  installed (what code that "just wants the metadata" often does).

Every timing is the median of several runs with the file in the page cache.

Usage::

    python benchmarks/gguf_bench.py [--n-vocab 150000] [--runs 9] [--reader-runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import quiet_stderr  # noqa: E402

from cyllama_db import CyllamaDB  # noqa: E402
from cyllama_db.stores.gguf import (  # noqa: E402
    clear_fingerprint_cache,
    model_fingerprint,
    read_gguf_header,
    summarize_gguf,
)
from cyllama_db.testing import write_large_vocab_gguf  # noqa: E402


def timeit(
    fn: Callable[[], Any], runs: int, setup: Callable[[], None] | None = None
) -> list[float]:
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(
    path: Path, runs: int, reader_runs: int, *, gguf_reader: bool = True, registry: bool = True
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every metadata reader on ``path`` (seconds per run).

    Returns ``(results, skipped)``: ``results`` maps a reader's name to its
    run times; ``skipped`` maps the name of a reader that could not run to
    why (``Llama(vocab_only=True)`` without llama-cpp-python,
    ``gguf.GGUFReader`` without gguf).
    """
    results: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    read_gguf_header(path)  # page cache and compiled regexes, as for every reader below
    results["read_gguf_header"] = timeit(lambda: read_gguf_header(path), runs)
    results["summarize_gguf (+sha256)"] = timeit(lambda: summarize_gguf(path), runs)
    results["model_fingerprint (cold)"] = timeit(
        lambda: model_fingerprint(path), runs, setup=clear_fingerprint_cache
    )
    model_fingerprint(path)
    results["model_fingerprint (cached)"] = timeit(lambda: model_fingerprint(path), runs)

    if registry:
        # The registry end to end: a first registration reads the header; an
        # unchanged file (same path, size, mtime) is served from the table.
        with CyllamaDB(":memory:") as db:

            def forget() -> None:
                db.delete_all_models()
                clear_fingerprint_cache()

            results["register_model (new file)"] = timeit(
                lambda: db.register_model(path), runs, setup=forget
            )
            results["register_model (unchanged)"] = timeit(lambda: db.register_model(path), runs)

    try:
        import llama_cpp
    except ImportError:
        skipped["Llama(vocab_only=True)"] = "llama-cpp-python not installed"
    else:

        def load_vocab() -> None:
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            llm.close()

        with quiet_stderr():
            load_vocab()  # warm-up: first call initialises the backends
            results["Llama(vocab_only=True)"] = timeit(load_vocab, runs)

    if not gguf_reader:
        skipped["gguf.GGUFReader"] = "not run (--no-gguf-reader)"
    else:
        try:
            import gguf
        except ImportError:
            skipped["gguf.GGUFReader"] = "gguf not installed"
        else:
            results["gguf.GGUFReader"] = timeit(lambda: gguf.GGUFReader(path), reader_runs)
    return results, skipped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-vocab", type=int, default=150_000)
    ap.add_argument("--runs", type=int, default=9, help="runs for the fast readers")
    ap.add_argument("--reader-runs", type=int, default=3, help="runs for gguf.GGUFReader (slow)")
    ap.add_argument("--no-gguf-reader", action="store_true", help="skip gguf.GGUFReader")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large-vocab.gguf"
        t0 = time.perf_counter()
        write_large_vocab_gguf(path, n_vocab=args.n_vocab)
        write_s = time.perf_counter() - t0
        header = read_gguf_header(path)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(
            f"file: {path.stat().st_size / 1e6:.1f} MB, {args.n_vocab} tokens, "
            f"{header.kv['tokenizer.ggml.merges']['length']} merges, "
            f"metadata {header.metadata_size / 1e6:.2f} MB (written in {write_s:.1f} s)"
        )
        results, skipped = measure(
            path, args.runs, args.reader_runs, gguf_reader=not args.no_gguf_reader
        )
        for name, why in skipped.items():
            print(f"{name}: skipped ({why})")

    base = statistics.median(results["read_gguf_header"])
    print()
    print(f"{'reader':<28} {'median':>11} {'min':>11} {'runs':>5} {'vs read_gguf_header':>20}")
    for name, times in results.items():
        med = statistics.median(times)
        print(
            f"{name:<28} {med * 1e3:>8.2f} ms {min(times) * 1e3:>8.2f} ms {len(times):>5} "
            f"{med / base:>19.3g}x"
        )
    if "Llama(vocab_only=True)" in results:
        ratio = statistics.median(results["Llama(vocab_only=True)"]) / statistics.median(
            results["register_model (new file)"]
        )
        verdict = "met" if ratio >= 20 else "NOT met"
        print(
            f"\nregister_model (new file) is {ratio:.1f}x faster than Llama(vocab_only=True) "
            f"(target >= 20x: {verdict})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
