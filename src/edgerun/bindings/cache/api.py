"""``Cache`` and ``CacheStorage``: storing, looking up and evicting responses.

The public names are re-exported by ``edgerun.bindings.cache``; see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from edgerun.bindings.cache.entry import Entry, respond
from edgerun.bindings.cache.headers import (
    age_seconds,
    cache_directives,
    delta_seconds,
    field_names,
    parse_http_date,
    split_list,
    vary_value,
)
from edgerun.bindings.cache.store import CacheStore, MemoryCacheStore
from edgerun.clock import Clock, SystemClock
from edgerun.errors import CacheError
from edgerun.http import Headers, Request, Response

__all__ = ["DEFAULT_MAX_BYTES", "MAX_CACHE_NAME_LENGTH", "Cache", "CacheStats", "CacheStorage"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default bound of one cache: 64 MiB of bodies, headers and keys."""

MAX_CACHE_NAME_LENGTH = 1024
"""Longest name ``CacheStorage.open`` accepts (the Workers runtime's limit)."""

# RFC 9111 §3.1: a cache does not store connection-scoped header fields. ``age`` is
# dropped too because match() recomputes it from the stored one.
_NOT_STORED = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "age"}
)


def _byte_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _cache_key(request: Request | str) -> tuple[str, str, Headers]:
    """``(key, method, headers)`` of a put/match/delete argument.

    The key is the absolute http(s) URL with scheme and host lowercased, an empty path
    made ``/`` and the fragment dropped (browsers never send it). Raises ``CacheError``
    for anything else, ``TypeError`` for a non-Request, non-str argument.
    """
    if isinstance(request, str):
        url, method, headers = request, "GET", Headers()
    elif isinstance(request, Request):
        url, method, headers = request.url, request.method, request.headers
    else:
        raise TypeError(
            f"a cache key must be a Request or a URL string, not {type(request).__name__}"
        )
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise CacheError(f"cannot use {url!r} as a cache key: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise CacheError(
            f"cannot use {url!r} as a cache key: give an absolute http:// or https:// URL"
        )
    netloc = parts.netloc if "@" in parts.netloc else parts.netloc.lower()
    key = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return key, method, headers


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cache's counters, for metrics.

    ``hits`` and ``misses`` count ``match`` calls (every call is exactly one of them);
    ``entries`` and ``bytes`` describe what is stored now (expired entries count until
    they are dropped); ``evictions`` counts entries pushed out to make room.
    """

    hits: int
    misses: int
    entries: int
    bytes: int
    evictions: int


class Cache:
    """An HTTP cache of GET responses keyed by URL, bounded by bytes.

    ``Cache(name="default", *, max_bytes=64 MiB, clock=None, store=None)``. ``max_bytes`` bounds the
    sum of every entry's size (body + header names and values + URL + the stored Vary
    values); storing past it evicts least recently used entries (a ``match`` hit counts
    as a use). Each cache holds at most one response per URL; ``name`` is the name it
    was opened under. Raises ``ValueError`` if ``max_bytes`` is not a positive int.
    ``store`` holds the entries: by default a private in-memory one; a
    ``SqliteCacheStore`` shares them with every process opening the same file (the
    workers of one deployment), with LRU and the byte bound across all of them.
    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
        store: CacheStore | None = None,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"Cache max_bytes must be a positive int, got {max_bytes!r}")
        self.name = name
        self._max_bytes = max_bytes
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._store: CacheStore = store if store is not None else MemoryCacheStore()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def max_bytes(self) -> int:
        """The byte bound this cache never exceeds."""
        return self._max_bytes

    @property
    def stats(self) -> CacheStats:
        """Current counters (see ``CacheStats``); entries and bytes are the store's."""
        entries, size = self._store.usage(self.name)
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            entries=entries,
            bytes=size,
            evictions=self._evictions,
        )

    def __repr__(self) -> str:
        entries, size = self._store.usage(self.name)
        return f"<Cache {self.name!r} entries={entries} bytes={size}>"

    async def put(self, request: Request | str, response: Response) -> None:
        """Store ``response`` under ``request`` (a Request or a URL string meaning GET).

        The directives come from ``Cloudflare-CDN-Cache-Control``, else
        ``CDN-Cache-Control``, else ``Cache-Control`` (RFC 9213); ``Age`` is its first
        value. Raises ``CacheError`` — nothing changes — when the request is not a GET, the
        URL is not absolute http(s), the response is a 206 or carries ``Vary: *``, or
        its streamed body was already consumed. Otherwise whatever was stored for the
        URL is replaced, and the new response is silently not stored (as Workers does,
        so the old one is gone too) when:

        - ``Cache-Control`` has ``no-store``, ``no-cache`` (there is no origin to
          revalidate with) or an unqualified ``private``;
        - it has ``Set-Cookie`` and no ``private=Set-Cookie`` (with it, the response
          is stored without its ``Set-Cookie``; any field named by a qualified
          ``private`` or ``no-cache`` is stripped the same way);
        - the request carries ``Authorization`` and the response has none of
          ``public``, ``s-maxage`` or ``must-revalidate`` (RFC 9111 §3.5);
        - it has no explicit lifetime (``s-maxage``, else ``max-age``, else ``Expires``
          minus ``Date``): unlike Cloudflare there are no per-status default TTLs, and
          an invalid value counts as already stale;
        - its ``Age`` already reaches that lifetime, it is a 304, or its size exceeds
          ``max_bytes``.

        The body is read to the end (a streamed one too) and kept in ``response``, so
        the caller can still send it. Connection-scoped headers are not stored and a
        wrong ``Content-Length`` is corrected.
        """
        key, method, request_headers = _cache_key(request)
        if method != "GET":
            raise CacheError(
                f"only GET requests can be cached, got {method} {key}; "
                "cache under a GET request or URL string instead"
            )
        if not isinstance(response, Response):
            raise TypeError(f"cache.put needs a Response, not {type(response).__name__}")
        if response.status == 206:
            raise CacheError(f"cannot cache a 206 Partial Content response for {key}")
        vary_names = self._vary_names(response.headers, key)
        if response.content is None and response.body_used:
            raise CacheError(
                f"cannot cache the response for {key}: its streamed body was already read"
            )

        stripped = self._storable(response, authorized="authorization" in request_headers)
        lifetime = None if stripped is None else self._lifetime(response.headers)
        initial_age = age_seconds(response.headers.getlist("age"))
        if stripped is None or lifetime is None or lifetime <= initial_age:
            self._remove(key)
            return

        body = await response.body()
        # Everything below is synchronous: no other task can interleave with the
        # replace-evict-insert sequence, so the byte total stays exact.
        headers: list[tuple[str, str]] = []
        for name, value in response.headers.items():
            if name in stripped:
                continue
            headers.append((name, str(len(body)) if name == "content-length" else value))
        vary = tuple((name, vary_value(request_headers, name)) for name in vary_names)
        size = (
            _byte_len(key)
            + len(body)
            + sum(_byte_len(n) + _byte_len(v) for n, v in headers)
            + sum(_byte_len(n) + _byte_len(v or "") for n, v in vary)
        )
        entry = Entry(
            status=response.status,
            headers=tuple(headers),
            body=body,
            vary=vary,
            # Wall-clock: a shared store is read by other processes, and after restarts.
            stored_at=self._clock.time(),
            initial_age=initial_age,
            lifetime=lifetime,
            size=size,
            etag=response.headers.get("etag"),
            last_modified=parse_http_date(response.headers.get("last-modified")),
        )
        if size > self._max_bytes:
            self._remove(key)
            return
        self._evictions += self._store.put(self.name, key, entry, self._max_bytes)

    async def match(
        self, request: Request | str, *, ignore_method: bool = False
    ) -> Response | None:
        """A fresh copy of the stored response for ``request``, or None.

        None when nothing is stored, the entry has expired (it is dropped), the request
        headers named by the stored ``Vary`` differ from those seen at ``put``, or the
        request is not a GET (unless ``ignore_method``). The copy is the caller's own:
        changing its headers or reading its body never touches the cache. It carries
        ``Age`` (whole seconds since storing plus the origin's ``Age``).

        For a stored 2xx: ``If-None-Match`` matching the ETag (weak comparison, a list
        or ``*``), or else ``If-Modified-Since`` not older than ``Last-Modified``,
        gives a 304 with no body and the validator and caching headers. For a stored
        200, one ``Range: bytes=a-b`` (``a-`` and ``-n`` too; honouring ``If-Range``)
        gives a 206 with ``Content-Range``, or 416 when it starts past the end; a
        multi-range or malformed ``Range`` is ignored (full 200), as RFC 9110 allows.
        Raises ``CacheError`` for a URL that is not absolute http(s).
        """
        key, method, headers = _cache_key(request)
        entry = None if method != "GET" and not ignore_method else self._store.get(self.name, key)
        if entry is None:
            self._misses += 1
            return None
        age = entry.age(self._clock.time())
        if age >= entry.lifetime:
            self._remove(key)
            self._misses += 1
            return None
        if any(vary_value(headers, name) != value for name, value in entry.vary):
            self._misses += 1
            return None
        self._hits += 1
        return respond(entry, headers, int(age))

    async def delete(self, request: Request | str, *, ignore_method: bool = False) -> bool:
        """Remove the entry for ``request``'s URL; True if a live entry was removed.

        An expired entry is removed too but gives False (``match`` would not have
        returned it). A non-GET request removes nothing unless ``ignore_method``.
        Raises ``CacheError`` for a URL that is not absolute http(s).
        """
        key, method, _ = _cache_key(request)
        if method != "GET" and not ignore_method:
            return False
        entry = self._remove(key)
        return entry is not None and entry.age(self._clock.time()) < entry.lifetime

    async def close(self) -> None:
        """Done with the cache (idempotent); it stays usable and keeps its counters.

        A private in-memory store drops every entry; a shared store keeps them for the
        other processes using it.
        """
        self._store.release(self.name)

    # --- internals ---

    def _remove(self, key: str) -> Entry | None:
        return self._store.remove(self.name, key)

    @staticmethod
    def _vary_names(headers: Headers, key: str) -> tuple[str, ...]:
        names: list[str] = []
        for value in headers.getlist("vary"):
            for item in split_list(value, escapes=False):
                name = item.lower()
                if name == "*":
                    raise CacheError(
                        f"cannot cache the response for {key}: it has 'Vary: *' "
                        "(it varies on something no request header can describe)"
                    )
                if name not in names:
                    names.append(name)
        return tuple(names)

    @staticmethod
    def _storable(response: Response, *, authorized: bool) -> frozenset[str] | None:
        """The header names to strip before storing, or None if it must not be stored.

        ``authorized``: the request carried ``Authorization``, so (RFC 9111 §3.5) the
        response is shared only when it says so with public, s-maxage or must-revalidate.
        """
        if response.status == 304:
            return None
        directives = cache_directives(response.headers)
        if "no-store" in directives:
            return None
        if authorized and not {"public", "s-maxage", "must-revalidate"} & directives.keys():
            return None
        private = field_names(directives.get("private")) if "private" in directives else None
        no_cache = field_names(directives.get("no-cache")) if "no-cache" in directives else None
        # An unqualified private/no-cache covers the whole response.
        if private == set() or no_cache == set():
            return None
        stripped = set(_NOT_STORED) | (private or set()) | (no_cache or set())
        for value in response.headers.getlist("connection"):
            stripped |= field_names(value)
        if "set-cookie" in response.headers and "set-cookie" not in stripped:
            return None
        return frozenset(stripped)

    def _lifetime(self, headers: Headers) -> float | None:
        """Freshness lifetime in seconds, or None when the response gives none."""
        directives = cache_directives(headers)
        if "s-maxage" in directives:
            return delta_seconds(directives["s-maxage"])
        if "max-age" in directives:
            return delta_seconds(directives["max-age"])
        expires_value = headers.get("expires")
        if expires_value is None:
            return None
        expires = parse_http_date(expires_value)
        if expires is None:
            return 0  # RFC 9111 §5.3: an invalid Expires means already expired
        date = parse_http_date(headers.get("date"))
        return max(0.0, expires - (date if date is not None else self._clock.time()))


class CacheStorage:
    """The ``caches`` object: ``caches.default`` and ``await caches.open(name)``.

    Every cache gets its own ``max_bytes`` bound and shares the injected clock and
    ``store`` (default: one private in-memory store).
    ``open`` returns the same ``Cache`` for the same name. As in Workers, the name
    ``"default"`` is reserved for ``caches.default``; names are non-empty strings of at
    most ``MAX_CACHE_NAME_LENGTH`` characters, else ``CacheError``.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
        store: CacheStore | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._store: CacheStore = store if store is not None else MemoryCacheStore()
        self._default = Cache("default", max_bytes=max_bytes, clock=self._clock, store=self._store)
        self._named: dict[str, Cache] = {}

    def use_store(self, store: CacheStore) -> None:
        """Keep every cache of this storage (open ones too) in ``store`` from now on.

        For a process that learns where its shared store is after user code may have
        taken ``caches.default`` (a worker forked from a zygote that imported it);
        entries stored before are left behind.
        """
        self._store = store
        for cache in (self._default, *self._named.values()):
            cache._store = store

    @property
    def default(self) -> Cache:
        """The default cache (Workers' ``caches.default``)."""
        return self._default

    async def open(self, name: str) -> Cache:
        """The cache called ``name``, created on first use; raises ``CacheError`` on a bad name."""
        if not isinstance(name, str) or not name:
            raise CacheError(f"a cache name must be a non-empty string, got {name!r}")
        if name == "default":
            raise CacheError('"default" is a reserved cache name: use caches.default')
        if len(name) > MAX_CACHE_NAME_LENGTH:
            raise CacheError(
                f"cache name is {len(name)} characters long; the limit is {MAX_CACHE_NAME_LENGTH}"
            )
        cache = self._named.get(name)
        if cache is None:
            cache = self._named[name] = Cache(
                name, max_bytes=self._max_bytes, clock=self._clock, store=self._store
            )
        return cache

    async def close(self) -> None:
        """Empty every cache (idempotent); the storage and its caches stay usable."""
        await self._default.close()
        for cache in self._named.values():
            await cache.close()
