"""``StaleIfErrorBackend``: serve the last known value of a key while the store is down.

A ``[[kv]]`` binding with ``stale_if_error = true`` wraps its backend in this class.
Every successful ``get``/``get_entry`` and every write through this process records
the key's value in a bounded LRU cache (``max_entries`` keys and ``max_bytes`` of
values, per process, so per worker in isolated mode). When the store raises
``KVUnavailable``, ``get`` answers from that cache instead: the value this process
last saw, which may be older than what other nodes have written since. Expiration is
still honoured (an expired cached value is missing), and a key this process never
saw still raises ``KVUnavailable``. Everything else (revisions, atomic commits,
listings, writes) goes to the store and fails while it is down: a stale revision
would only make compare-and-set fail later, and a stale listing is not a cheap
guarantee to give.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from edgerun.bindings.kv.backend import (
    KVBackend,
    KVCheck,
    KVEntry,
    KVMutation,
    KVRecord,
    KVVersionedRecord,
)
from edgerun.clock import Clock, SystemClock
from edgerun.errors import KVUnavailable

__all__ = ["DEFAULT_STALE_BYTES", "DEFAULT_STALE_ENTRIES", "StaleIfErrorBackend"]

DEFAULT_STALE_ENTRIES: Final = 1024
"""How many keys a stale-if-error cache remembers by default."""

DEFAULT_STALE_BYTES: Final = 8 * 1024 * 1024
"""How many value bytes a stale-if-error cache holds by default."""


class StaleIfErrorBackend:
    """A ``KVBackend`` over ``inner`` whose ``get`` falls back to the last seen value.

    See the module docstring for what is cached and when it is served. ``clock``
    decides expiry of cached values (default: the system clock).
    """

    def __init__(
        self,
        inner: KVBackend,
        clock: Clock | None = None,
        *,
        max_entries: int = DEFAULT_STALE_ENTRIES,
        max_bytes: int = DEFAULT_STALE_BYTES,
    ) -> None:
        self._inner = inner
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        # None records "known missing" (a delete, or a read that found nothing), so a
        # stale read does not resurrect a value this process saw deleted.
        self._seen: OrderedDict[bytes, KVRecord | None] = OrderedDict()
        self._bytes = 0

    @property
    def inner(self) -> KVBackend:
        """The wrapped backend."""
        return self._inner

    def _remember(self, key: bytes, record: KVRecord | None) -> None:
        old = self._seen.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        size = 0 if record is None else len(record[0])
        if size > self._max_bytes:
            return  # too big to keep: stale reads of it fail like uncached keys
        self._seen[key] = record
        self._bytes += size
        while len(self._seen) > self._max_entries or self._bytes > self._max_bytes:
            _, dropped = self._seen.popitem(last=False)
            if dropped is not None:
                self._bytes -= len(dropped[0])

    def _stale(self, key: bytes, exc: KVUnavailable) -> KVRecord | None:
        if key not in self._seen:
            raise exc
        self._seen.move_to_end(key)
        record = self._seen[key]
        if record is not None and record[1] is not None and record[1] <= self._clock.time():
            return None
        return record

    async def get(self, key: bytes) -> KVRecord | None:
        """The store's record, or the last one seen here while the store is unreachable."""
        try:
            record = await self._inner.get(key)
        except KVUnavailable as exc:
            return self._stale(key, exc)
        self._remember(key, record)
        return record

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        """The store's versioned record (never stale: revisions feed compare-and-set)."""
        entry = await self._inner.get_entry(key)
        self._remember(key, None if entry is None else entry[:3])
        return entry

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        """Write through to the store, then remember the value."""
        await self._inner.put(key, value, expiration, metadata)
        self._remember(key, (value, expiration, metadata))

    async def delete(self, key: bytes) -> None:
        """Delete in the store, then remember the key as missing."""
        await self._inner.delete(key)
        self._remember(key, None)

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        """Commit in the store; on success remember what was written."""
        result = await self._inner.commit(checks, mutations)
        if result is not None:
            for key, value, expiration, metadata in mutations:
                self._remember(key, None if value is None else (value, expiration, metadata))
        return result

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        """List from the store (never stale)."""
        return await self._inner.scan(start, end, limit)

    async def close(self) -> None:
        """Close the wrapped backend and forget the cache."""
        self._seen.clear()
        self._bytes = 0
        await self._inner.close()
