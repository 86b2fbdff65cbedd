"""``SqliteKVBackend``: KV namespaces in one SQLite file per project.

Layout: one table holds every namespace of the project, keyed by
``(namespace, key)`` where ``key`` is the encoded key as a BLOB, so SQLite's bytewise
BLOB order *is* the key order and a prefix listing is a primary-key range scan::

    kv(namespace TEXT, key BLOB, value BLOB, expiration REAL NULL, metadata TEXT NULL,
       version INTEGER)  PRIMARY KEY (namespace, key) WITHOUT ROWID
    kv_expiration ON kv(namespace, expiration) WHERE expiration IS NOT NULL  -- sweeps

``PRAGMA user_version`` records the schema version (1: no ``version`` column; opening
such a file adds it).

``version`` is the row's revision for compare-and-set: an update adds one, and an
insert starts at a random 62-bit number, so a key deleted and created again does not
reuse an old revision (a stale ``check`` against it fails instead of matching by
accident). ``commit`` runs its checks and writes in one ``BEGIN IMMEDIATE``
transaction, so other processes sharing the file see all of it or none of it.

Point reads and writes run synchronously on the caller's event loop: a bare SQLite
point read costs a few microseconds, a hop to a thread several times that. WAL mode
lets readers (the dev server, ``edgerun kv`` in another process) proceed while one
writer writes; ``synchronous=NORMAL`` skips the fsync per commit (a power cut may
lose the last writes; an application crash loses none), which is fine for a cache-like
store. ``busy_timeout`` makes a writer wait for another process's writer rather
than fail at once. Only ``sweep()`` is meant for a thread, and it opens its own
connection.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sqlite3
from collections.abc import Sequence
from typing import Final, cast

from edgerun.bindings.kv.backend import (
    KVCheck,
    KVEntry,
    KVMutation,
    KVRecord,
    KVVersionedRecord,
)
from edgerun.clock import Clock, SystemClock
from edgerun.errors import KVError, KVUnavailable

__all__ = ["SCHEMA_VERSION", "SqliteKVBackend"]

SCHEMA_VERSION: Final = 2
"""The layout version this module writes to ``PRAGMA user_version``."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS kv (
    namespace  TEXT NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB NOT NULL,
    expiration REAL,
    metadata   TEXT,
    version    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiration ON kv (namespace, expiration)
    WHERE expiration IS NOT NULL;
"""

_LIVE: Final = "(expiration IS NULL OR expiration > ?)"
_GET: Final = (
    f"SELECT value, expiration, metadata FROM kv WHERE namespace = ? AND key = ? AND {_LIVE}"
)
_GET_ENTRY: Final = (
    "SELECT value, expiration, metadata, version FROM kv "
    f"WHERE namespace = ? AND key = ? AND {_LIVE}"
)
_VERSION: Final = f"SELECT version FROM kv WHERE namespace = ? AND key = ? AND {_LIVE}"
# random() & (2**62 - 1): a non-negative start that leaves room to count up.
_PUT: Final = (
    "INSERT INTO kv (namespace, key, value, expiration, metadata, version) "
    "VALUES (?, ?, ?, ?, ?, random() & 4611686018427387903) "
    "ON CONFLICT (namespace, key) DO UPDATE SET "
    "value = excluded.value, expiration = excluded.expiration, metadata = excluded.metadata, "
    "version = kv.version + 1"
)
_PUT_RETURNING: Final = _PUT + " RETURNING version"
_MIGRATE_1_TO_2: Final = "ALTER TABLE kv ADD COLUMN version INTEGER NOT NULL DEFAULT 0"
_DELETE: Final = "DELETE FROM kv WHERE namespace = ? AND key = ?"
_SCAN: Final = (
    "SELECT key, expiration, metadata FROM kv "
    f"WHERE namespace = ? AND key >= ? AND key < ? AND {_LIVE} ORDER BY key LIMIT ?"
)
_SCAN_TO_END: Final = (
    "SELECT key, expiration, metadata FROM kv "
    f"WHERE namespace = ? AND key >= ? AND {_LIVE} ORDER BY key LIMIT ?"
)
# Batched so each transaction holds the write lock briefly: the event loop's own
# synchronous writes wait on it.
_SWEEP: Final = (
    "DELETE FROM kv WHERE namespace = ? AND key IN ("
    "SELECT key FROM kv WHERE namespace = ? AND expiration IS NOT NULL AND expiration <= ? "
    "LIMIT ?)"
)

# SQLITE_FULL: the disk, or the file-size limit, refused a write.
_SQLITE_FULL: Final = sqlite3.SQLITE_FULL
# Primary result codes meaning "the store is there but cannot serve right now".
_TRANSIENT: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: autocommit, each statement is its own transaction, so
    # no read transaction is ever left open to pin the WAL.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        _bound_to_file_size_limit(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _file_size_limited() -> bool:
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def _bound_to_file_size_limit(conn: sqlite3.Connection) -> None:
    """Keep the database file under this process's ``RLIMIT_FSIZE``, if it has one.

    An isolated worker runs under ``[limits] max_disk_mb`` as a file-size limit; a
    write past it would fail deep in SQLite as a disk I/O error. Capping the page
    count just below makes SQLite refuse the write itself with ``SQLITE_FULL`` and
    keep the file intact.
    """
    limit, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit == resource.RLIM_INFINITY:
        return
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    # Room for one more page in flight and the file header.
    pages = max(1, limit // page_size - 2)
    conn.execute(f"PRAGMA max_page_count = {int(pages)}")
    # The write-ahead log is a file too: checkpoint (and so rewind it) long before it
    # could reach the limit.
    conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, int(pages) // 4)}")


def _init_schema(conn: sqlite3.Connection, path: str) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise KVError(
            f"KV store {path!r} has schema version {version}; this edgerun understands "
            f"up to {SCHEMA_VERSION}: upgrade edgerun"
        )
    # IMMEDIATE takes the write lock first, so two processes creating the file at
    # once serialise here instead of racing on CREATE.
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated first.
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 1:
            conn.execute(_MIGRATE_1_TO_2)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteKVBackend:
    """A ``KVBackend`` storing namespace ``namespace`` in the SQLite file at ``path``.

    Several namespaces, several backends and several processes may share one file.
    The file (and its directory) is created if missing. ``clock`` decides expiry
    (default: the system clock). ``busy_timeout`` is how many seconds a write waits
    for another process's write before raising ``KVUnavailable``. Raises
    ``KVUnavailable`` when the file cannot be opened, ``KVError`` when it is not a
    KV store this version understands. Use from one event loop; only ``sweep()`` may
    run in another thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        namespace: str,
        clock: Clock | None = None,
        *,
        busy_timeout: float = 5.0,
    ) -> None:
        self._path = os.fspath(path)
        self._namespace = namespace
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._busy_timeout = busy_timeout
        self._closed = False
        if self._path != ":memory:" and not self._path.startswith("file:"):
            parent = os.path.dirname(os.path.abspath(self._path))
            os.makedirs(parent, exist_ok=True)
        try:
            self._conn = _connect(self._path, busy_timeout)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            _init_schema(self._conn, self._path)
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise

    @property
    def path(self) -> str:
        """The SQLite file."""
        return self._path

    @property
    def namespace(self) -> str:
        """The namespace this backend reads and writes."""
        return self._namespace

    def _translate(self, exc: sqlite3.Error) -> KVError:
        where = f"KV store {self._path!r} (namespace {self._namespace!r})"
        if self._closed:
            return KVError(f"{where} is closed")
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL and _file_size_limited():
            # In an isolated worker, RLIMIT_FSIZE ([limits] max_disk_mb) bounds the file:
            # retrying will not help, deleting or raising the limit will.
            return KVError(
                f"{where} is full ({exc}): the deployment's files are bounded by "
                "[limits] max_disk_mb; delete keys or raise it in edgerun.toml"
            )
        if code is not None and code & 0xFF in _TRANSIENT:
            return KVUnavailable(f"{where} is unavailable: {exc}; retry later")
        return KVError(f"{where} failed: {exc}")

    async def get(self, key: bytes) -> KVRecord | None:
        """The live record for ``key``, or ``None`` if missing or expired."""
        try:
            row = self._conn.execute(_GET, (self._namespace, key, self._clock.time())).fetchone()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        return cast("KVRecord | None", row)

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        """The live record for ``key`` with its revision (the row version), or ``None``."""
        try:
            row = self._conn.execute(
                _GET_ENTRY, (self._namespace, key, self._clock.time())
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        if row is None:
            return None
        return (row[0], row[1], row[2], str(row[3]))

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        """Check and write in one ``BEGIN IMMEDIATE`` transaction; ``None`` on conflict.

        Synchronous from BEGIN to COMMIT (no ``await``), so no other coroutine can use
        the connection mid-transaction; the write lock keeps other processes out.
        """
        conn = self._conn
        ns = self._namespace
        now = self._clock.time()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key, revision in checks:
                    row = conn.execute(_VERSION, (ns, key, now)).fetchone()
                    if (None if row is None else str(row[0])) != revision:
                        conn.execute("ROLLBACK")
                        return None
                out: list[str | None] = []
                for key, value, expiration, metadata in mutations:
                    if value is None:
                        conn.execute(_DELETE, (ns, key))
                        out.append(None)
                    else:
                        (version,) = conn.execute(
                            _PUT_RETURNING, (ns, key, value, expiration, metadata)
                        ).fetchone()
                        out.append(str(version))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        return out

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        """Create or replace ``key``, committed before returning."""
        try:
            self._conn.execute(_PUT, (self._namespace, key, value, expiration, metadata))
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def delete(self, key: bytes) -> None:
        """Remove ``key`` if present."""
        try:
            self._conn.execute(_DELETE, (self._namespace, key))
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        """Up to ``limit`` live entries with ``start <= key < end``, in key order."""
        now = self._clock.time()
        try:
            if end is None:
                cursor = self._conn.execute(_SCAN_TO_END, (self._namespace, start, now, limit))
            else:
                cursor = self._conn.execute(_SCAN, (self._namespace, start, end, now, limit))
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        return cast("list[KVEntry]", rows)

    def sweep(self, batch: int = 1000) -> int:
        """Delete this namespace's expired rows; returns how many were deleted.

        Blocking and thread-safe: run it with ``asyncio.to_thread``. It uses its own
        connection and deletes in transactions of ``batch`` rows, so the event loop's
        writes are never held up for long. Reads never depend on it: expired rows are
        filtered out by every query.
        """
        now = self._clock.time()
        total = 0
        try:
            conn = _connect(self._path, self._busy_timeout)
            try:
                while True:
                    deleted = conn.execute(
                        _SWEEP, (self._namespace, self._namespace, now, batch)
                    ).rowcount
                    total += deleted
                    if deleted < batch:
                        return total
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def close(self) -> None:
        """Close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        # Lets SQLite refresh stale planner statistics (cheap); best effort, since
        # every write is already committed.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA optimize")
        self._conn.close()
