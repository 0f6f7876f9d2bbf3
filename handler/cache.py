"""Persistent answer cache: SQLite in WAL mode, one connection per thread, TTL on read.

Keys are ``backend | normalized query | topk``; values are the JSON text of the answer, so a cached
/retrieve reply is assembled without re-parsing. Several server processes may share one file. Each
process also keeps the most recently stored or read entries in memory (bounded in entries and in
bytes; same TTL), which spares a SQLite query for hot keys.

A cache file that is not a SQLite database (or is corrupt) is moved aside to
``NAME.corrupt-YYYYmmdd-HHMMSS`` and an empty cache started, with a warning in the log; a file that
cannot be used for another reason (no permission, a folder, another program's database) stops the
server with ``CacheError`` naming the file and what to do.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from filelock import FileLock

log = logging.getLogger("handler.cache")

# SQLite result codes meaning "this file is not (or no longer) a database".
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class CacheError(ValueError):
    """The cache file cannot be used; the message names it and says what to do."""


def _is_corrupt(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return type(e) is sqlite3.DatabaseError  # older Pythons: corruption is the bare DatabaseError


def quarantine(path: str | Path) -> Path:
    """Rename a bad cache file (and its -wal/-shm companions) to ``NAME.corrupt-<timestamp>``; return it."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target


def normalize_query(q: str) -> str:
    """Case- and whitespace-insensitive form of a query (BM25 tokenization ignores both)."""
    return " ".join(q.lower().split())


def cache_key(backend: str, query: str, topk: int) -> str:
    """The cache key of one query."""
    return f"{backend}\x1f{normalize_query(query)}\x1f{topk}"


class Cache:
    """Thread-safe SQLite key -> JSON text store with a time-to-live."""

    #: Bytes counted per in-memory entry besides its key and value characters (dict slot, tuple, objects)
    ENTRY_OVERHEAD = 200

    def __init__(
        self, path: str | Path, ttl_s: float, memory_entries: int = 8192, memory_bytes: int = 64_000_000
    ):
        self.path = str(path)
        self.ttl_s = ttl_s
        self.memory_entries = memory_entries
        self.memory_bytes = memory_bytes  # budget of the in-memory entries (approximate: see _cost)
        self._mem: dict[str, tuple[str, float]] = {}  # key -> (value, created); oldest inserted first
        self._mem_bytes = 0
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Worker processes open the file together: one at a time checks it (and moves a bad one aside).
        with FileLock(self.path + ".lock"):
            try:
                self._open_checked()
            except sqlite3.Error as e:
                self.close()
                if not _is_corrupt(e):
                    raise CacheError(self._advice(e)) from None
                moved = quarantine(self.path)
                log.warning(
                    "cache file %s is not a usable SQLite database (%s): moved it to %s and started an "
                    "empty cache",
                    self.path,
                    e,
                    moved,
                )
                try:
                    self._open_checked()
                except sqlite3.Error as e2:
                    self.close()
                    raise CacheError(self._advice(e2)) from None

    def _open_checked(self) -> None:
        """Open the file, create the table, and read one row (which fails on a file that is not a database)."""
        con = self._con()
        con.execute(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        con.execute("SELECT key, value, created FROM cache LIMIT 1").fetchall()

    def _advice(self, e: sqlite3.Error) -> str:
        return (
            f"cache file {self.path!r} cannot be used ({e}): point cache.path (--cache) at a writable file, "
            "or run without the cache (--no-cache, or cache.enabled: false)"
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

    def _cost(self, key: str, value: str) -> int:
        """Memory an entry is counted for: one byte per character (the JSON is mostly ASCII) plus a
        fixed overhead."""
        return len(key) + len(value) + self.ENTRY_OVERHEAD

    def _remember(self, rows: list[tuple[str, str, float]]) -> None:
        """Keep entries in memory, dropping the oldest inserted beyond the entry and byte bounds; an
        entry larger than the whole byte budget is not kept (caller holds the lock)."""
        mem = self._mem
        for key, value, created in rows:
            old = mem.pop(key, None)
            if old is not None:
                self._mem_bytes -= self._cost(key, old[0])
            cost = self._cost(key, value)
            if cost <= self.memory_bytes:
                mem[key] = (value, created)
                self._mem_bytes += cost
        excess = len(mem) - self.memory_entries
        if excess > 0:
            for key in list(itertools.islice(mem, excess)):
                self._mem_bytes -= self._cost(key, mem.pop(key)[0])
        if self._mem_bytes > self.memory_bytes:
            drop = []
            for key, (value, _) in mem.items():  # oldest first
                if self._mem_bytes <= self.memory_bytes:
                    break
                self._mem_bytes -= self._cost(key, value)
                drop.append(key)
            for key in drop:
                del mem[key]

    def get_many(self, keys: list[str], ttl_s: float | None = None) -> dict[str, str]:
        """Values of the keys present and younger than the TTL."""
        if not keys:
            return {}
        ttl = self.ttl_s if ttl_s is None else ttl_s
        oldest = time.time() - ttl
        found: dict[str, str] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            mem = self._mem
            for k in uniq:
                hit = mem.get(k)
                if hit is not None and hit[1] >= oldest:
                    found[k] = hit[0]
        rest = [k for k in uniq if k not in found] if found else uniq
        if rest:
            con = self._con()
            rows: list[tuple[str, str, float]] = []
            for start in range(0, len(rest), 500):
                part = rest[start : start + 500]
                marks = ",".join("?" * len(part))
                rows += con.execute(
                    f"SELECT key, value, created FROM cache WHERE key IN ({marks}) AND created >= ?",
                    (*part, oldest),
                ).fetchall()
            found.update((k, v) for k, v, _ in rows)
            if rows and self.memory_entries > 0 and self.memory_bytes > 0:
                with self._lock:
                    self._remember(rows)
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
        if self.memory_entries > 0 and self.memory_bytes > 0:
            with self._lock:
                self._remember([(k, v, now) for k, v in items.items()])

    def purge_expired(self) -> int:
        """Delete entries older than the TTL; return how many."""
        oldest = time.time() - self.ttl_s
        with self._lock:
            for key in [k for k, (_, created) in self._mem.items() if created < oldest]:
                self._mem_bytes -= self._cost(key, self._mem.pop(key)[0])
        cur = self._con().execute("DELETE FROM cache WHERE created < ?", (oldest,))
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
            "memory_entries": len(self._mem),
            "memory_bytes": self._mem_bytes,
        }

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
