"""A content-addressed on-disk cache for expensive per-row results.

Embeddings, judge verdicts and generations are keyed by what determines them (model, prompt
template, settings) plus a hash of the text, so a rerun, or a rerun after appending rows,
computes only what is new. One SQLite file per namespace under the cache folder:
`$SAFESAMPLE_CACHE_DIR`, else `$XDG_CACHE_HOME/safesample`, else `~/.cache/safesample`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence


def cache_dir() -> Path:
    if env := os.environ.get("SAFESAMPLE_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "safesample"


def text_key(*parts: str) -> str:
    """A stable key for a text (or a tuple of texts, e.g. instruction + response)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def settings_key(**settings) -> str:
    """A short key for everything besides the text that determines a result."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]


class Cache:
    """Bytes by (scope, key) in one SQLite file; `enabled=False` makes every lookup a miss."""

    def __init__(self, namespace: str, scope: str, enabled: bool = True, folder: Path | None = None):
        self.scope = scope
        self.enabled = enabled
        self._db: sqlite3.Connection | None = None
        if enabled:
            folder = folder or cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / f"{namespace}.sqlite", timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS entries (scope TEXT, key TEXT, value BLOB, "
                             "PRIMARY KEY (scope, key))")

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not self._db or not keys:
            return {}
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, value FROM entries WHERE scope = ? AND key IN ({marks})",
                                    [self.scope, *chunk])
            found.update(rows)
        return found

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        if not self._db:
            return
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                                 [(self.scope, k, v) for k, v in items])

    def close(self) -> None:
        if self._db:
            self._db.close()
            self._db = None

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
