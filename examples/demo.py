"""The main job: open the database, store some config, show what it holds."""

from __future__ import annotations

import json
import os
import tempfile

from cyllama_db import CyllamaDB

path = os.environ.get("CYLLAMA_DB_PATH") or os.path.join(tempfile.gettempdir(), "cyllama-demo.db")
with CyllamaDB(path) as db:
    db.set_config("default_temperature", 0.7)
    db.set_config("default_max_tokens", 512)
    print("config:", db.get_all_config())
    print("database:", json.dumps(db.get_db_stats(), indent=2))
