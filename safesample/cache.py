"""A content-addressed on-disk cache for expensive per-row results.

Embeddings, judge verdicts and generations are keyed by what determines them (model, prompt
template, settings) plus a hash of the text, so a rerun, or a rerun after appending rows,
computes only what is new. One SQLite file per namespace under the cache folder:
`$SAFESAMPLE_CACHE_DIR`, else `$XDG_CACHE_HOME/safesample`, else `~/.cache/safesample`.

The cache never stops a run: a corrupt or truncated database is moved aside (`NAME.sqlite.bad-TIME`)
and a fresh one started; a full disk or an unwritable folder turns the cache off for the rest of
the run. Each is one warning on the reporter (the CLI's console, see `report_to`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from safesample.reporter import SILENT, Reporter

T = TypeVar("T")
# Where cache warnings go when a caller passes no reporter (the CLI sets its console).
_reporter: Reporter = SILENT


def report_to(reporter: Reporter) -> None:
    """Send cache warnings (corrupt database moved aside, disk full) to `reporter` by default."""
    global _reporter
    _reporter = reporter


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

    def __init__(self, namespace: str, scope: str, enabled: bool = True, folder: Path | None = None,
                 reporter: Reporter | None = None):
        self.scope = scope
        self.enabled = enabled
        self.reporter = reporter
        self._db: sqlite3.Connection | None = None
        self.path: Path | None = None
        if enabled:
            folder = folder or cache_dir()
            self.path = folder / f"{namespace}.sqlite"
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._give_up(f"cannot create the cache folder {str(folder)!r} ({exc.strerror})")
                return
            self._guarded(self._open, None)

    def _warn(self, message: str) -> None:
        (self.reporter or _reporter).warn(message)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS entries (scope TEXT, key TEXT, value BLOB, "
                       "PRIMARY KEY (scope, key))")
            db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
        self._db = db

    def _guarded(self, action: Callable[[], T], fallback: T) -> T:
        """Run `action`; recover from a corrupt database once, give up the cache on a full disk."""
        for attempt in range(2):
            try:
                return action()
            except sqlite3.DatabaseError as exc:
                if _is_full(exc):
                    self._give_up(f"the cache disk is full ({exc}); going on without the cache")
                    return fallback
                if _is_corrupt(exc) and attempt == 0:
                    self._move_aside(exc)
                    try:
                        self._open()
                    except (sqlite3.Error, OSError) as again:
                        self._give_up(f"cannot start a new cache at {str(self.path)!r} ({again}); going on "
                                      "without the cache")
                        return fallback
                    continue
                if isinstance(exc, sqlite3.OperationalError) and not _is_corrupt(exc):
                    self._give_up(f"the cache at {str(self.path)!r} failed ({exc}); going on without the cache")
                    return fallback
                self._give_up(f"the cache at {str(self.path)!r} is unusable ({exc}); going on without it")
                return fallback
            except OSError as exc:
                self._give_up(f"the cache at {str(self.path)!r} failed ({exc}); going on without the cache")
                return fallback
        return fallback

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None

    def _move_aside(self, exc: BaseException) -> None:
        self._close_db()
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            try:
                os.replace(src, f"{aside}{suffix}")
            except FileNotFoundError:
                pass
            except OSError:
                try:
                    src.unlink()
                except OSError:
                    pass
        self._warn(f"the cache database {str(self.path)!r} is corrupt ({exc}); moved it aside to "
                   f"{str(aside)!r} and started a new one (cached results are recomputed)")

    def _give_up(self, message: str) -> None:
        self._close_db()
        if self.enabled:
            self._warn(message)
        self.enabled = False

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not self._db or not keys:
            return {}
        return self._guarded(lambda: self._get_many(keys), {})

    def _get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
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
        rows = [(self.scope, k, v) for k, v in items]

        def put() -> None:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", rows)

        self._guarded(put, None)

    def close(self) -> None:
        self._close_db()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "disk is full" in text or "disk i/o error" in text or "no space" in text


def _is_corrupt(exc: BaseException) -> bool:
    text = str(exc).lower()
    return ("malformed" in text or "not a database" in text or "corrupt" in text
            or (isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)))
