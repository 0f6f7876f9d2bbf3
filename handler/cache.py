"""Persistent answer cache: SQLite in WAL mode, one connection per thread, TTL on read.

Keys are ``backend | normalized query | topk``; values are the JSON text of the answer, so a cached
/retrieve reply is assembled without re-parsing. Several server processes may share one file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("handler.cache")


def normalize_query(q: str) -> str:
    """Case- and whitespace-insensitive form of a query (BM25 tokenization ignores both)."""
    return " ".join(q.lower().split())


def cache_key(backend: str, query: str, topk: int) -> str:
    """The cache key of one query."""
    return f"{backend}\x1f{normalize_query(query)}\x1f{topk}"


class Cache:
    """Thread-safe SQLite key -> JSON text store with a time-to-live."""

    def __init__(self, path: str | Path, ttl_s: float):
        self.path = str(path)
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = self._con()
        con.execute(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=10000")
            self._local.con = con
        return con

    def get_many(self, keys: list[str], ttl_s: float | None = None) -> dict[str, str]:
        """Values of the keys present and younger than the TTL."""
        if not keys:
            return {}
        ttl = self.ttl_s if ttl_s is None else ttl_s
        oldest = time.time() - ttl
        found: dict[str, str] = {}
        con = self._con()
        uniq = list(dict.fromkeys(keys))
        for start in range(0, len(uniq), 500):
            part = uniq[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = con.execute(
                f"SELECT key, value FROM cache WHERE key IN ({marks}) AND created >= ?", (*part, oldest)
            ).fetchall()
            found.update(rows)
        with self._lock:
            self.hits += sum(1 for k in keys if k in found)
            self.misses += sum(1 for k in keys if k not in found)
        return found

    def put_many(self, items: dict[str, str]) -> None:
        """Store values (replacing older ones) in one transaction."""
        if not items:
            return
        now = time.time()
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT OR REPLACE INTO cache (key, value, created) VALUES (?, ?, ?)",
                [(k, v, now) for k, v in items.items()],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def purge_expired(self) -> int:
        """Delete entries older than the TTL; return how many."""
        cur = self._con().execute("DELETE FROM cache WHERE created < ?", (time.time() - self.ttl_s,))
        return cur.rowcount

    def size(self) -> int:
        """Number of stored entries (expired included until purged)."""
        return int(self._con().execute("SELECT COUNT(*) FROM cache").fetchone()[0])

    def stats(self) -> dict[str, object]:
        """Counters for /health."""
        try:
            entries: int | None = self.size()
        except sqlite3.Error:
            entries = None
        total = self.hits + self.misses
        return {
            "enabled": True,
            "path": self.path,
            "entries": entries,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / total, 4) if total else None,
            "errors": self.errors,
            "ttl_s": self.ttl_s,
        }

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
