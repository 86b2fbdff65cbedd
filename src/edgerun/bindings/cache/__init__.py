"""The Cache API: an HTTP cache shaped like Workers' ``caches.default``.

``Cache`` stores responses keyed by URL and plays them back with HTTP caching
semantics (RFC 9111 for a shared cache, as Cloudflare Workers' Cache API applies them):

- ``await cache.put(request, response)`` stores a GET response that carries an explicit
  freshness lifetime (``s-maxage``, else ``max-age``, else ``Expires`` - ``Date``);
  ``await cache.match(request)`` returns a fresh copy with an ``Age`` header, answers
  ``If-None-Match`` / ``If-Modified-Since`` with 304 and a single byte ``Range`` with
  206; ``await cache.delete(request)`` removes an entry. ``Cloudflare-CDN-Cache-Control``,
  else ``CDN-Cache-Control`` (RFC 9213), else ``Cache-Control`` gives the directives; a
  response to a request with ``Authorization`` needs ``public``, ``s-maxage`` or
  ``must-revalidate`` to be stored (RFC 9111 §3.5).
- Each cache is bounded by ``max_bytes`` (body + header + key bytes) and evicts the
  least recently used entry first. Expired entries are dropped when they are looked up
  or when LRU eviction reaches them.
- Entries live in a ``CacheStore``: private memory by default, or a
  ``SqliteCacheStore`` file that every worker of a deployment on a node shares.
- ``CacheStorage`` is the ``caches`` object: ``caches.default`` and
  ``await caches.open(name)``.

Where Workers' behaviour is not written down, the choices are listed on ``Cache.put``
and ``Cache.match``. Time comes from an injected ``Clock`` so tests never sleep.
"""

from __future__ import annotations

from edgerun.bindings.cache.api import (
    DEFAULT_MAX_BYTES,
    MAX_CACHE_NAME_LENGTH,
    Cache,
    CacheStats,
    CacheStorage,
)
from edgerun.bindings.cache.headers import parse_cache_control
from edgerun.bindings.cache.store import (
    CACHE_FILENAME,
    CacheStore,
    MemoryCacheStore,
    SqliteCacheStore,
)

__all__ = [
    "CACHE_FILENAME",
    "DEFAULT_MAX_BYTES",
    "MAX_CACHE_NAME_LENGTH",
    "Cache",
    "CacheStats",
    "CacheStorage",
    "CacheStore",
    "MemoryCacheStore",
    "SqliteCacheStore",
    "parse_cache_control",
]
