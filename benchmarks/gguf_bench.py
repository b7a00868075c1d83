"""Benchmark cyllama_db's GGUF header reader against the alternatives.

Writes a llama model with a large (default 150k-token, Qwen/Llama-3 sized)
BPE vocabulary into a temporary directory, then times reading its metadata
with:

* ``cyllama_db._gguf.read_gguf_header`` / ``summarize_gguf`` /
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
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from cyllama_db import CyllamaDB  # noqa: E402
from cyllama_db._gguf import (  # noqa: E402
    clear_fingerprint_cache,
    model_fingerprint,
    read_gguf_header,
    summarize_gguf,
)
from cyllama_db.testing import write_large_vocab_gguf  # noqa: E402


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence llama.cpp's C-level stderr logging (verbose=False misses some)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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

        results: dict[str, list[float]] = {}
        results["read_gguf_header"] = timeit(lambda: read_gguf_header(path), args.runs)
        results["summarize_gguf (+sha256)"] = timeit(lambda: summarize_gguf(path), args.runs)
        results["model_fingerprint (cold)"] = timeit(
            lambda: model_fingerprint(path), args.runs, setup=clear_fingerprint_cache
        )
        model_fingerprint(path)
        results["model_fingerprint (cached)"] = timeit(lambda: model_fingerprint(path), args.runs)

        # The registry end to end: a first registration reads the header; an
        # unchanged file (same path, size, mtime) is served from the table.
        with CyllamaDB(":memory:") as db:

            def forget() -> None:
                db.delete_all_models()
                clear_fingerprint_cache()

            results["register_model (new file)"] = timeit(
                lambda: db.register_model(path), args.runs, setup=forget
            )
            results["register_model (unchanged)"] = timeit(
                lambda: db.register_model(path), args.runs
            )

        try:
            import llama_cpp
        except ImportError:
            print("llama_cpp not importable: skipping Llama(vocab_only=True)")
        else:

            def load_vocab() -> None:
                llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
                llm.close()

            with quiet_stderr():
                load_vocab()  # warm-up: first call initialises the backends
                results["Llama(vocab_only=True)"] = timeit(load_vocab, args.runs)

        if not args.no_gguf_reader:
            try:
                import gguf
            except ImportError:
                print("gguf not importable: skipping gguf.GGUFReader")
            else:
                results["gguf.GGUFReader"] = timeit(lambda: gguf.GGUFReader(path), args.reader_runs)

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
