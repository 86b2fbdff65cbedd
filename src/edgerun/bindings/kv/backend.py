"""The storage contract behind a ``KVNamespace``: ordered bytes in, bytes out.

A backend knows nothing of key types, limits or JSON: ``KVNamespace`` validates and
encodes everything first, so a new backend (NATS, ...) implements five small methods
and passes the same conformance battery (``tests/conformance/test_kv.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["KVBackend", "KVEntry", "KVRecord"]

KVRecord = tuple[bytes, float | None, str | None]
"""A stored value: ``(value, expiration, metadata)``; expiration is epoch seconds or
``None``, metadata is its JSON text or ``None``. A plain tuple so SQLite rows are
returned as they come, with no copy on the hot path."""

KVEntry = tuple[bytes, float | None, str | None]
"""A ``scan`` result: ``(encoded key, expiration, metadata JSON)``."""


@runtime_checkable
class KVBackend(Protocol):
    """Storage for one KV namespace, keyed by encoded keys compared bytewise.

    Contract every implementation meets:

    - Keys are opaque ``bytes``; ``scan`` orders them by unsigned bytewise comparison
      (that is what makes tuple keys sort element-wise, see ``keys``).
    - An entry whose expiration is at or before the backend clock's ``time()`` does not
      exist: ``get`` and ``scan`` never return it, whether or not it was swept yet.
    - A write is visible to the next read through any ``KVBackend`` on the same store.
    - Errors: ``KVUnavailable`` when the store cannot be reached right now (busy,
      disconnected), ``KVError`` for anything else the store reports.
    """

    async def get(self, key: bytes) -> KVRecord | None:
        """The live record for ``key``, or ``None`` if missing or expired."""
        ...

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        """Create or replace ``key`` (value, expiration and metadata all replaced)."""
        ...

    async def delete(self, key: bytes) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        """Up to ``limit`` live entries with ``start <= key < end``, in key order.

        ``end=None`` means no upper bound.
        """
        ...

    async def close(self) -> None:
        """Release the store; idempotent."""
        ...
