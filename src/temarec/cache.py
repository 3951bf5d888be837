"""Persistent cache of every LLM answer and encoder output: SQLite, one key-value table.

Keys are SHA-256 digests of a JSON record (``cache_key``): for an LLM answer the backend, the model, the
prompt-template hash and the hash of the item text (plus the tags of the request), so a changed prompt or model
never reuses old answers; for an embedding the encoder's fingerprint and the content hash (temarec.embeddings).
Each finished unit of work is committed in its own transaction; a run killed at any moment (even SIGKILL)
loses at most the units in flight, and a restarted run reads everything else back from here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class Cache:
    """A thread-safe key -> bytes store. Writes are grouped by the caller into ``put_many`` transactions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a process kill
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
                chunk = keys[start:start + 900]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk).fetchall())
        return found

    def get(self, key: str) -> bytes | None:
        return self.get_many([key]).get(key)

    def put_many(self, items: Mapping[str, bytes]) -> None:
        with self._lock:
            with self._db:  # one transaction
                self._db.executemany("INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)", list(items.items()))

    def put(self, key: str, value: bytes) -> None:
        self.put_many({key: value})

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
