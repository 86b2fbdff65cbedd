"""The storage contract behind a ``KVNamespace``: ordered bytes in, bytes out.

A backend knows nothing of key types, limits or JSON: ``KVNamespace`` validates and
encodes everything first, so a new backend implements a few small methods and passes
the same conformance battery (``tests/conformance/test_kv.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "KVBackend",
    "KVCheck",
    "KVEntry",
    "KVMutation",
    "KVRecord",
    "KVVersionedRecord",
]

KVRecord = tuple[bytes, float | None, str | None]
"""A stored value: ``(value, expiration, metadata)``; expiration is epoch seconds or
``None``, metadata is its JSON text or ``None``. A plain tuple so SQLite rows are
returned as they come, with no copy on the hot path."""

KVVersionedRecord = tuple[bytes, float | None, str | None, str]
"""A stored value with its revision: ``(value, expiration, metadata, revision)``.

A revision is an opaque string that changes on every write of the key; two reads
return the same revision exactly when no write happened in between (the backend
makes a delete-then-recreate produce a new revision too)."""

KVEntry = tuple[bytes, float | None, str | None]
"""A ``scan`` result: ``(encoded key, expiration, metadata JSON)``."""

KVCheck = tuple[bytes, str | None]
"""An atomic precondition: ``(encoded key, revision)``; ``None`` means "no live value"."""

KVMutation = tuple[bytes, bytes | None, float | None, str | None]
"""An atomic write: ``(encoded key, value, expiration, metadata)``; value ``None`` is a
delete (expiration and metadata are then ``None``)."""


@runtime_checkable
class KVBackend(Protocol):
    """Storage for one KV namespace, keyed by encoded keys compared bytewise.

    Contract every implementation meets:

    - Keys are opaque ``bytes``; ``scan`` orders them by unsigned bytewise comparison
      (that is what makes tuple keys sort element-wise, see ``keys``).
    - An entry whose expiration is at or before the backend clock's ``time()`` does not
      exist: ``get``, ``get_entry``, ``scan`` and ``commit`` checks treat it as missing,
      whether or not it was swept yet.
    - A write is visible to the next read through any ``KVBackend`` on the same store.
    - ``commit`` is atomic: all checks hold and all mutations apply, or nothing
      changes.
    - Errors: ``KVUnavailable`` when the store cannot be reached right now (busy,
      disconnected), ``KVError`` for anything else the store reports.
    """

    async def get(self, key: bytes) -> KVRecord | None:
        """The live record for ``key``, or ``None`` if missing or expired."""
        ...

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        """The live record for ``key`` with its revision, or ``None``."""
        ...

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        """Create or replace ``key`` (value, expiration and metadata all replaced)."""
        ...

    async def delete(self, key: bytes) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        """Apply ``mutations`` atomically if every check holds.

        A check ``(key, revision)`` holds when the key's live revision equals
        ``revision``, or, for ``None``, when the key has no live value. Keys are
        distinct within ``checks`` and within ``mutations``. Returns ``None`` when a
        check fails (nothing written), else the new revision of each mutation in
        order (``None`` for a delete).
        """
        ...

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        """Up to ``limit`` live entries with ``start <= key < end``, in key order.

        ``end=None`` means no upper bound.
        """
        ...

    async def close(self) -> None:
        """Release the store; idempotent."""
        ...
