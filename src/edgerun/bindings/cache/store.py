"""Where a ``Cache`` keeps its entries: in memory, or in SQLite shared by processes.

Internal to ``edgerun.bindings.cache``. A ``CacheStore`` holds the entries of every
cache (by name) of one deployment on one node and bounds each cache by bytes, evicting
the least recently used entry first. ``MemoryCacheStore`` lives and dies with its
process (tests, ``edgerun dev``); ``SqliteCacheStore`` is one file in the deployment's
state directory, so every worker of the deployment sees the same entries and they
outlive the worker that stored them.

As in the KV SQLite backend, point reads and writes run synchronously on the caller's
event loop (a few microseconds each; a thread hop costs more), in WAL mode with
``synchronous=NORMAL`` (a power cut may lose the last writes, acceptable for a cache)
and a busy timeout so concurrent writers in other workers wait instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Final, Protocol

from edgerun.bindings.cache.entry import Entry

# The same file-size bound as KV's file: both live under the worker's RLIMIT_FSIZE.
from edgerun.bindings.kv.sqlite import _bound_to_file_size_limit

__all__ = ["CACHE_FILENAME", "CacheStore", "MemoryCacheStore", "SqliteCacheStore"]


class CacheStore(Protocol):
    """Entries of named caches, each bounded by bytes with LRU eviction."""

    def get(self, cache: str, key: str) -> Entry | None:
        """The entry for ``key`` (marking it most recently used), or None."""
        ...

    def put(self, cache: str, key: str, entry: Entry, max_bytes: int) -> int:
        """Replace ``key``'s entry, evicting LRU entries to stay within ``max_bytes``.

        Returns how many entries were evicted. The caller never passes an entry larger
        than ``max_bytes``.
        """
        ...

    def remove(self, cache: str, key: str) -> Entry | None:
        """Remove and return ``key``'s entry, if any."""
        ...

    def usage(self, cache: str) -> tuple[int, int]:
        """``(entries, bytes)`` stored now in ``cache``."""
        ...

    def release(self, cache: str) -> None:
        """The cache's user is done: a private store drops its entries, a shared one keeps them."""
        ...


class MemoryCacheStore:
    """A per-process store: one ordered dict per cache, LRU first."""

    def __init__(self) -> None:
        self._caches: dict[str, OrderedDict[str, Entry]] = {}
        self._bytes: dict[str, int] = {}

    def _entries(self, cache: str) -> OrderedDict[str, Entry]:
        entries = self._caches.get(cache)
        if entries is None:
            entries = self._caches[cache] = OrderedDict()
            self._bytes[cache] = 0
        return entries

    def get(self, cache: str, key: str) -> Entry | None:
        """See ``CacheStore.get``."""
        entries = self._entries(cache)
        entry = entries.get(key)
        if entry is not None:
            entries.move_to_end(key)
        return entry

    def put(self, cache: str, key: str, entry: Entry, max_bytes: int) -> int:
        """See ``CacheStore.put``."""
        entries = self._entries(cache)
        self.remove(cache, key)
        evicted = 0
        while entries and self._bytes[cache] + entry.size > max_bytes:
            _, old = entries.popitem(last=False)
            self._bytes[cache] -= old.size
            evicted += 1
        entries[key] = entry
        self._bytes[cache] += entry.size
        return evicted

    def remove(self, cache: str, key: str) -> Entry | None:
        """See ``CacheStore.remove``."""
        entry = self._entries(cache).pop(key, None)
        if entry is not None:
            self._bytes[cache] -= entry.size
        return entry

    def usage(self, cache: str) -> tuple[int, int]:
        """See ``CacheStore.usage``."""
        return len(self._entries(cache)), self._bytes[cache]

    def release(self, cache: str) -> None:
        """Drop every entry of ``cache``: nobody else can reach them."""
        self._entries(cache).clear()
        self._bytes[cache] = 0


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cache (
    name        TEXT NOT NULL,
    key         TEXT NOT NULL,
    status      INTEGER NOT NULL,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    vary        TEXT NOT NULL,
    stored_at   REAL NOT NULL,
    initial_age INTEGER NOT NULL,
    lifetime    REAL NOT NULL,
    size        INTEGER NOT NULL,
    etag        TEXT,
    last_mod    REAL,
    used        INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_lru ON cache (name, used, size);
"""
_COLUMNS: Final = (
    "status, headers, body, vary, stored_at, initial_age, lifetime, size, etag, last_mod"
)
_GET: Final = f"SELECT {_COLUMNS} FROM cache WHERE name = ? AND key = ?"
# ``used`` is a per-cache use counter: the largest one of the cache plus one, so the
# LRU order is the same for every worker whatever their clocks say. Per cache, not
# table-wide: eviction is per cache anyway, and ``WHERE name = ?`` lets the max come
# from the (name, used) index in microseconds, where a table-wide max scans every row
# (about 9 ms per hit at 200k entries).
_NEXT_USE: Final = "(SELECT coalesce(max(used), 0) + 1 FROM cache WHERE name = ?)"
_TOUCH: Final = f"UPDATE cache SET used = {_NEXT_USE} WHERE name = ? AND key = ?"
_INSERT: Final = (
    f"INSERT INTO cache (name, key, {_COLUMNS}, used) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_NEXT_USE})"
)
_DELETE: Final = "DELETE FROM cache WHERE name = ? AND key = ?"
_USAGE: Final = "SELECT count(*), coalesce(sum(size), 0) FROM cache WHERE name = ?"
_OLDEST: Final = "SELECT key, size FROM cache WHERE name = ? ORDER BY used LIMIT 1"

CACHE_FILENAME: Final = "cache.sqlite3"
"""The file a deployment's shared cache store lives in, inside its state directory."""


def _entry(row: tuple[object, ...]) -> Entry:
    status, headers, body, vary, stored_at, initial_age, lifetime, size, etag, last_mod = row
    return Entry(
        status=int(status),  # type: ignore[call-overload]
        headers=tuple((str(n), str(v)) for n, v in json.loads(str(headers))),
        body=bytes(body),  # type: ignore[call-overload]
        vary=tuple((str(n), None if v is None else str(v)) for n, v in json.loads(str(vary))),
        stored_at=float(stored_at),  # type: ignore[arg-type]
        initial_age=int(initial_age),  # type: ignore[call-overload]
        lifetime=float(lifetime),  # type: ignore[arg-type]
        size=int(size),  # type: ignore[call-overload]
        etag=None if etag is None else str(etag),
        last_modified=None if last_mod is None else float(last_mod),  # type: ignore[arg-type]
    )


class SqliteCacheStore:
    """A store in one SQLite file, shared by every process that opens the same path.

    ``SqliteCacheStore(path, *, busy_timeout=5.0)`` creates the file and its table if
    needed. Entry times are wall-clock (``Clock.time``), so ages stay right across
    processes and restarts.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        # Autocommit: every statement is its own transaction unless BEGIN says otherwise,
        # so no read transaction stays open to pin the WAL.
        self._conn = sqlite3.connect(
            str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # An isolated worker writes under RLIMIT_FSIZE ([limits] max_disk_mb): cap the
        # pages so SQLite says SQLITE_FULL (a put then stores nothing) instead of a
        # write failing half-way.
        _bound_to_file_size_limit(self._conn)
        self._conn.executescript(_SCHEMA)

    def get(self, cache: str, key: str) -> Entry | None:
        """See ``CacheStore.get``."""
        row = self._conn.execute(_GET, (cache, key)).fetchone()
        if row is None:
            return None
        self._conn.execute(_TOUCH, (cache, cache, key))
        return _entry(row)

    def put(self, cache: str, key: str, entry: Entry, max_bytes: int) -> int:
        """See ``CacheStore.put``: one IMMEDIATE transaction, so the bound holds across
        workers writing at once.

        When the file is full (the worker's ``max_disk_mb``), nothing is stored: a
        cache may always decline, and the old entry for ``key`` is gone either way.
        """
        conn = self._conn
        evicted = 0
        # Outside the transaction: a put that cannot store still replaces what was there.
        conn.execute(_DELETE, (cache, key))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_DELETE, (cache, key))
            _, used = conn.execute(_USAGE, (cache,)).fetchone()
            while used + entry.size > max_bytes:
                oldest = conn.execute(_OLDEST, (cache,)).fetchone()
                if oldest is None:
                    break
                conn.execute(_DELETE, (cache, oldest[0]))
                used -= oldest[1]
                evicted += 1
            conn.execute(
                _INSERT,
                (
                    cache,
                    key,
                    entry.status,
                    json.dumps(entry.headers),
                    entry.body,
                    json.dumps(entry.vary),
                    entry.stored_at,
                    entry.initial_age,
                    entry.lifetime,
                    entry.size,
                    entry.etag,
                    entry.last_modified,
                    cache,  # for _NEXT_USE
                ),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A failed statement may have rolled the transaction back already.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
                return 0
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return evicted

    def remove(self, cache: str, key: str) -> Entry | None:
        """See ``CacheStore.remove``."""
        row = self._conn.execute(
            f"DELETE FROM cache WHERE name = ? AND key = ? RETURNING {_COLUMNS}", (cache, key)
        ).fetchone()
        return None if row is None else _entry(row)

    def usage(self, cache: str) -> tuple[int, int]:
        """See ``CacheStore.usage``."""
        count, size = self._conn.execute(_USAGE, (cache,)).fetchone()
        return int(count), int(size)

    def release(self, cache: str) -> None:
        """Keep the entries: other workers, and later ones, still use them."""

    def close(self) -> None:
        """Close the connection (idempotent); the file and its entries stay."""
        self._conn.close()
