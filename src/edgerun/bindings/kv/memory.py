"""``MemoryKVBackend``: a KV store in a dict, for tests and ``--kv memory``.

Nothing is persisted and nothing is shared between instances: each backend is its
own store, gone when the process exits.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence

from edgerun.bindings.kv.backend import (
    KVCheck,
    KVEntry,
    KVMutation,
    KVRecord,
    KVVersionedRecord,
)
from edgerun.clock import Clock, SystemClock

__all__ = ["MemoryKVBackend"]


class MemoryKVBackend:
    """An in-process ``KVBackend``: a dict for point access plus a sorted key list.

    Expired entries are hidden from every read at once (checked against ``clock``)
    and dropped lazily when read, or in bulk by ``sweep()``. Revisions come from one
    counter per backend, so a deleted and recreated key never repeats a revision.
    ``commit`` runs without an ``await``, which makes it atomic on the event loop. Not
    thread-safe: use it from one event loop.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._data: dict[bytes, KVRecord] = {}
        self._sorted: list[bytes] = []  # same keys as _data, ascending, for scans
        self._revisions: dict[bytes, int] = {}  # same keys as _data
        self._counter = 0

    def _remove(self, key: bytes) -> None:
        del self._data[key]
        del self._revisions[key]
        del self._sorted[bisect_left(self._sorted, key)]

    def _write(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> int:
        if key not in self._data:
            insort(self._sorted, key)
        self._data[key] = (value, expiration, metadata)
        self._counter += 1
        self._revisions[key] = self._counter
        return self._counter

    async def get(self, key: bytes) -> KVRecord | None:
        """The live record for ``key``, or ``None`` if missing or expired."""
        record = self._data.get(key)
        if record is None:
            return None
        expiration = record[1]
        if expiration is not None and expiration <= self._clock.time():
            self._remove(key)
            return None
        return record

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        """The live record for ``key`` with its revision, or ``None``."""
        record = await self.get(key)
        if record is None:
            return None
        return (*record, str(self._revisions[key]))

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        """Create or replace ``key``."""
        self._write(key, value, expiration, metadata)

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        """Apply ``mutations`` if every check holds; ``None`` on a failed check."""
        now = self._clock.time()
        for key, revision in checks:
            record = self._data.get(key)
            live = record is not None and (record[1] is None or record[1] > now)
            current = str(self._revisions[key]) if live else None
            if current != revision:
                return None
        out: list[str | None] = []
        for key, value, expiration, metadata in mutations:
            if value is None:
                if key in self._data:
                    self._remove(key)
                out.append(None)
            else:
                out.append(str(self._write(key, value, expiration, metadata)))
        return out

    async def delete(self, key: bytes) -> None:
        """Remove ``key`` if present."""
        if key in self._data:
            self._remove(key)

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        """Up to ``limit`` live entries with ``start <= key < end``, in key order."""
        now = self._clock.time()
        out: list[KVEntry] = []
        keys = self._sorted
        for i in range(bisect_left(keys, start), len(keys)):
            key = keys[i]
            if end is not None and key >= end:
                break
            _, expiration, metadata = self._data[key]
            if expiration is None or expiration > now:
                out.append((key, expiration, metadata))
                if len(out) >= limit:
                    break
        return out

    def sweep(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""
        now = self._clock.time()
        expired = [key for key, (_, exp, _) in self._data.items() if exp is not None and exp <= now]
        for key in expired:
            del self._data[key]
            del self._revisions[key]
        if expired:
            self._sorted = sorted(self._data)
        return len(expired)

    async def close(self) -> None:
        """Drop all data; idempotent."""
        self._data.clear()
        self._sorted.clear()
        self._revisions.clear()
