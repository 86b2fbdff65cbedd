"""The KV binding: ``env.KV`` (Cloudflare Workers KV API, Deno KV style tuple keys).

``open_kv`` builds a ``KVNamespace`` over a backend: ``"sqlite"`` (one file per
project, many namespaces; the default), ``"memory"`` (per process, for tests) or
``"nats"`` (a NATS JetStream KV bucket per namespace, shared by every node; needs the
``nats`` extra). All three pass one conformance battery, compare-and-set included.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit, urlunsplit

from edgerun.bindings.kv.api import (
    GetType,
    KVAtomic,
    KVCommitResult,
    KVConflict,
    KVKeyInfo,
    KVListResult,
    KVNamespace,
    KVValueWithMetadata,
    KVVersionedValue,
)
from edgerun.bindings.kv.backend import (
    KVBackend,
    KVCheck,
    KVEntry,
    KVMutation,
    KVRecord,
    KVVersionedRecord,
)
from edgerun.bindings.kv.keys import KVKey, KVKeyPart
from edgerun.bindings.kv.limits import DEFAULT_LIMITS, KVLimits
from edgerun.bindings.kv.memory import MemoryKVBackend
from edgerun.bindings.kv.sqlite import SqliteKVBackend
from edgerun.bindings.kv.stale import StaleIfErrorBackend
from edgerun.clock import Clock, SystemClock

__all__ = [
    "BACKENDS",
    "DEFAULT_LIMITS",
    "GetType",
    "KVAtomic",
    "KVBackend",
    "KVCheck",
    "KVCommitResult",
    "KVConflict",
    "KVEntry",
    "KVKey",
    "KVKeyInfo",
    "KVKeyPart",
    "KVLimits",
    "KVListResult",
    "KVMutation",
    "KVNamespace",
    "KVRecord",
    "KVValueWithMetadata",
    "KVVersionedRecord",
    "KVVersionedValue",
    "MemoryKVBackend",
    "SqliteKVBackend",
    "StaleIfErrorBackend",
    "open_kv",
]

BACKENDS = ("sqlite", "memory", "nats")
"""The backend names ``open_kv`` accepts."""


def open_kv(
    namespace: str,
    *,
    backend: str = "sqlite",
    path: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    limits: KVLimits | None = None,
    url: str | None = None,
    stale_if_error: bool = False,
) -> KVNamespace:
    """Open KV namespace ``namespace`` on ``backend`` and return its ``KVNamespace``.

    ``"sqlite"`` requires ``path``, the project's KV database file (created if
    missing; shared by all its namespaces and by other processes). ``"memory"``
    ignores ``path``: the store lives and dies with the returned object. ``clock``
    decides expiry (default: system clock); ``limits`` defaults to ``KVLimits()``.
    Raises ``ValueError`` for an empty namespace, an unknown backend or a missing
    path; ``KVUnavailable``/``KVError`` when the sqlite file cannot be used. Close the
    result with ``await kv.close()``.

    ``"nats"`` requires ``url`` (``nats://host:port``, JetStream enabled) and ignores
    ``path``; it connects on first use, so an unreachable server surfaces as
    ``KVUnavailable`` from the first operation, not here. Its default limits are
    ``NATS_LIMITS`` (values up to 1 MiB minus header room, the size of one message on
    a default nats-server); the namespace must be ASCII letters, digits, ``_``, ``-``.
    ``url`` may end in ``?hub=DOMAIN`` when the server is a regional leaf of a hub with
    JetStream domain ``DOMAIN``: the bucket then lives in the hub, reads come from a
    local mirror and writes go through the hub (see ``edgerun.bindings.kv.nats``).

    ``stale_if_error=True`` wraps the backend in ``StaleIfErrorBackend``: while the
    store is unreachable, ``get`` serves the last value this process saw for the key.
    """
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"a KV namespace name must be a non-empty str, got {namespace!r}")
    clock = clock if clock is not None else SystemClock()
    store: KVBackend
    if backend == "sqlite":
        if path is None:
            raise ValueError(
                f"the sqlite KV backend needs a path (the project's KV database file) "
                f"to open namespace {namespace!r}"
            )
        store = SqliteKVBackend(path, namespace, clock)
    elif backend == "memory":
        store = MemoryKVBackend(clock)
    elif backend == "nats":
        if url is None:
            raise ValueError(
                f"the nats KV backend needs a url (nats://host:port) to open namespace "
                f"{namespace!r}"
            )
        # Imported here so the other backends work without the nats extra installed.
        from edgerun.bindings.kv.nats import NATS_LIMITS, NatsKVBackend

        server, hub = _nats_url(url)
        # A regional leaf reads from its local mirror (eventual across regions,
        # read-your-writes per worker); a plain server or cluster reads the leader.
        store = NatsKVBackend(
            server, namespace, clock, hub_domain=hub, consistent_reads=hub is None
        )
        limits = limits if limits is not None else NATS_LIMITS
    else:
        raise ValueError(f"unknown KV backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if stale_if_error:
        store = StaleIfErrorBackend(store, clock)
    return KVNamespace(store, name=namespace, clock=clock, limits=limits)


def _nats_url(url: str) -> tuple[str, str | None]:
    """Split ``nats://host:port?hub=DOMAIN`` into the server URL and the hub domain."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"hub"})
    hubs = query.get("hub", [])
    if unknown or len(hubs) > 1 or (hubs and not hubs[0]):
        raise ValueError(
            f"NATS url {url!r}: the only query parameter is hub=DOMAIN (the JetStream "
            f"domain of the hub when this server is a regional leaf)"
        )
    return urlunsplit(parts._replace(query="")), hubs[0] if hubs else None
