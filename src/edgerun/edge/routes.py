"""Route patterns: which project serves a request's host and path.

A pattern is ``host/path`` in the style of Cloudflare Workers routes:

* host ``*`` matches any host; ``api.example.com`` matches exactly that host;
  ``*.example.com`` matches subdomains of ``example.com`` only; ``*example.com`` matches
  ``example.com`` and its subdomains (but not ``myexample.com``).
* the path starts with ``/``; a trailing ``*`` matches any suffix (``/users/*`` matches
  ``/users/`` and ``/users/42`` but not ``/users``, write ``/users*`` for all three);
  without it the path must match exactly. ``*/*`` matches everything.

Hosts compare case-insensitively and without a port or a trailing dot; paths compare
case-sensitively, and a query string on the request path is ignored.

When several patterns match, :class:`RouteTable` picks the most specific one: an exact
host beats a wildcard host (a longer wildcard suffix beats a shorter one, and
``*.example.com`` beats ``*example.com``), then the longer literal path wins, then an
exact path beats a wildcard with the same literal, then the pattern added first wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeVar

__all__ = ["HostKind", "RoutePattern", "RouteTable", "normalize_host"]

T = TypeVar("T")

# Letters, digits, '-' and '_' per label (underscores appear in real internal hostnames),
# or an IPv6 literal in brackets. Patterns are compared after lowercasing.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IPV6_LITERAL_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
# Characters a path pattern may not contain: '?'/'#' would never be part of a request
# path, and whitespace/control characters are always typos.
_BAD_PATH_CHARS_RE = re.compile(r"[?#\s\x00-\x1f\x7f]")


class HostKind(IntEnum):
    """How a pattern's host part matches; larger values are more specific."""

    ANY = 0
    """``*``: every host, including a request without a Host header."""
    HOST_AND_SUBDOMAINS = 1
    """``*example.com``: the host itself and any subdomain of it."""
    SUBDOMAINS = 2
    """``*.example.com``: subdomains only, not the apex."""
    EXACT = 3
    """``api.example.com``: exactly this host."""


def normalize_host(host: str | None) -> str:
    """Return a request Host header as routes compare it: lowercase, no port, no final dot.

    ``None`` or an empty header gives ``""``, which only host ``*`` matches. An IPv6
    literal keeps its brackets (``[::1]:8080`` -> ``[::1]``); a bare IPv6 address (several
    colons, no brackets) is left whole rather than mistaking its last group for a port.
    """
    if not host:
        return ""
    h = _normalized.get(host)
    if h is not None:
        return h
    h = _normalize_host(host)
    if len(host) <= _HOST_CACHE_KEY_MAX:
        if len(_normalized) >= _HOST_CACHE_SIZE:
            _normalized.clear()  # Host is client-chosen: keep the cache bounded
        _normalized[host] = h
    return h


# normalize_host runs on every request, almost always for the same few Host values.
_normalized: dict[str, str] = {}
_HOST_CACHE_SIZE = 1024
_HOST_CACHE_KEY_MAX = 256


def _normalize_host(host: str) -> str:
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end != -1:
            h = h[: end + 1]
    elif h.count(":") == 1:
        h = h.partition(":")[0]
    return h.rstrip(".")


@dataclass(frozen=True, slots=True)
class RoutePattern:
    """One parsed ``host/path`` pattern; build it with :meth:`parse`.

    ``host`` is the literal host part (lowercased, without the wildcard: ``example.com``
    for ``*.example.com``; ``""`` for ``*``); ``path`` is the literal path part without a
    trailing ``*``; ``prefix`` tells whether that ``*`` was present.
    """

    pattern: str
    host_kind: HostKind
    host: str
    path: str
    prefix: bool

    @classmethod
    def parse(cls, pattern: str) -> RoutePattern:
        """Parse ``pattern``, raising ``ValueError`` whose message says what to change.

        Rejected: no ``/`` (a bare host), a scheme (``https://``), a port, a ``*`` anywhere
        but at the start of the host or the end of the path, a query or fragment, empty
        host labels and characters that cannot occur in a hostname.
        """
        if not isinstance(pattern, str):
            raise ValueError(f"a route must be a string like 'example.com/*' (got {pattern!r})")
        s = pattern.strip()
        if not s:
            raise ValueError("a route must not be empty; use '*/*' to match everything")
        if "://" in s:
            rest = s.split("://", 1)[1]
            raise ValueError(f"route {pattern!r} must not include a scheme; write {rest!r} instead")
        slash = s.find("/")
        if slash == -1:
            raise ValueError(
                f"route {pattern!r} has no path; write {s + '/*'!r} to match every path on it"
            )
        host_part, path_part = s[:slash], s[slash:]
        kind, host = _parse_host(pattern, host_part)
        path, prefix = _parse_path(pattern, path_part)
        return cls(pattern=s, host_kind=kind, host=host, path=path, prefix=prefix)

    def matches(self, host: str | None, path: str) -> bool:
        """Tell whether a request for ``host`` (Host header, port allowed) and ``path`` matches.

        Never raises; ``host`` may be ``None`` when the request had no Host header.
        """
        return self._matches_host(normalize_host(host)) and self._matches_path(_strip_query(path))

    def specificity(self) -> tuple[int, int, int, int, int]:
        """A sort key: a pattern with a larger key wins over one with a smaller key.

        Host first (exact, then the length of a wildcard's suffix, then ``*.`` over
        ``*``), then the length of the literal path, then exact path over prefix.
        """
        exact_host = 1 if self.host_kind is HostKind.EXACT else 0
        suffix_len = len(self.host) if self.host_kind is not HostKind.ANY else -1
        return (
            exact_host,
            suffix_len,
            int(self.host_kind),
            len(self.path),
            0 if self.prefix else 1,
        )

    def _matches_host(self, host: str) -> bool:
        kind = self.host_kind
        if kind is HostKind.ANY:
            return True
        if kind is HostKind.EXACT:
            return host == self.host
        # Require the dot boundary so that *example.com never matches myexample.com.
        if host.endswith("." + self.host):
            return True
        return kind is HostKind.HOST_AND_SUBDOMAINS and host == self.host

    def _matches_path(self, path: str) -> bool:
        if self.prefix:
            # "/*" takes every request target, even odd ones like "*" (OPTIONS) or "".
            return self.path == "/" or path.startswith(self.path)
        return path == self.path

    def __str__(self) -> str:
        return self.pattern


def _parse_host(pattern: str, host_part: str) -> tuple[HostKind, str]:
    h = host_part.lower()
    if h == "*":
        return HostKind.ANY, ""
    if not h:
        raise ValueError(
            f"route {pattern!r} has an empty host; write '*{pattern.strip()}' to match any host"
        )
    kind = HostKind.EXACT
    if h.startswith("*."):
        kind, h = HostKind.SUBDOMAINS, h[2:]
    elif h.startswith("*"):
        kind, h = HostKind.HOST_AND_SUBDOMAINS, h[1:]
    if "*" in h:
        raise ValueError(
            f"route {pattern!r}: '*' is only allowed at the start of the host "
            "('*.example.com' or '*example.com')"
        )
    if _IPV6_LITERAL_RE.match(h):
        if kind is not HostKind.EXACT:
            raise ValueError(f"route {pattern!r}: an IPv6 address cannot take a wildcard")
        return kind, h
    if ":" in h:
        raise ValueError(
            f"route {pattern!r} must not include a port; ports are ignored when matching, "
            f"write {h.partition(':')[0]!r} as the host"
        )
    h = h.rstrip(".")
    if not _HOSTNAME_RE.match(h):
        raise ValueError(
            f"route {pattern!r}: {host_part!r} is not a valid host; use letters, digits, "
            "'-' and '.' (e.g. 'api.example.com', '*.example.com' or '*')"
        )
    return kind, h


def _parse_path(pattern: str, path_part: str) -> tuple[str, bool]:
    prefix = path_part.endswith("*")
    literal = path_part[:-1] if prefix else path_part
    if "*" in literal:
        raise ValueError(
            f"route {pattern!r}: '*' is only allowed at the end of the path "
            "(e.g. '/users/*'); patterns cannot contain wildcards in the middle"
        )
    if _BAD_PATH_CHARS_RE.search(literal):
        raise ValueError(
            f"route {pattern!r}: the path must not contain a query, a fragment or spaces; "
            "routes match the path only"
        )
    return literal, prefix


def _strip_query(path: str) -> str:
    q = path.find("?")
    return path if q == -1 else path[:q]


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    pattern: RoutePattern
    target: T
    # (specificity, -insertion index): sorting descending puts the winner first.
    key: tuple[tuple[int, int, int, int, int], int]


class RouteTable(Generic[T]):
    """Map requests to targets by the most specific matching :class:`RoutePattern`.

    Build it from ``(pattern, target)`` pairs (a pattern is a ``RoutePattern`` or a string
    given to :meth:`RoutePattern.parse`, whose ``ValueError`` propagates). :meth:`match`
    returns the target of the most specific matching pattern (see the module docstring),
    or ``None``. A lookup costs one dict access for the request's exact host plus a scan
    of the wildcard-host patterns. Adding routes while another thread matches is unsafe:
    build a new table and swap it in instead.
    """

    __slots__ = ("_count", "_exact", "_wild")

    def __init__(self, entries: Iterable[tuple[RoutePattern | str, T]] = ()) -> None:
        self._exact: dict[str, list[_Entry[T]]] = {}
        self._wild: list[_Entry[T]] = []
        self._count = 0
        for pattern, target in entries:
            self.add(pattern, target)

    def add(self, pattern: RoutePattern | str, target: T) -> RoutePattern:
        """Add one route and return its parsed pattern; on a specificity tie, earlier wins."""
        p = pattern if isinstance(pattern, RoutePattern) else RoutePattern.parse(pattern)
        entry = _Entry(p, target, (p.specificity(), -self._count))
        self._count += 1
        exact = p.host_kind is HostKind.EXACT
        bucket = self._exact.setdefault(p.host, []) if exact else self._wild
        bucket.append(entry)
        bucket.sort(key=_entry_key, reverse=True)
        return p

    def match(self, host: str | None, path: str) -> T | None:
        """Return the target of the most specific route matching ``host`` and ``path``."""
        found = self.match_route(host, path)
        return None if found is None else found[1]

    def match_route(self, host: str | None, path: str) -> tuple[RoutePattern, T] | None:
        """Like :meth:`match`, but return ``(pattern, target)`` so callers can log the route."""
        h = normalize_host(host)
        p = _strip_query(path)
        # Any exact-host route outranks every wildcard-host route, so look there first.
        for entry in self._exact.get(h, ()):
            if entry.pattern._matches_path(p):
                return entry.pattern, entry.target
        for entry in self._wild:
            if entry.pattern._matches_host(h) and entry.pattern._matches_path(p):
                return entry.pattern, entry.target
        return None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[RoutePattern, T]]:
        """Iterate ``(pattern, target)`` pairs in the order they were added."""
        entries = [e for bucket in self._exact.values() for e in bucket] + self._wild
        entries.sort(key=lambda e: -e.key[1])
        return iter([(e.pattern, e.target) for e in entries])


def _entry_key(entry: _Entry[T]) -> tuple[tuple[int, int, int, int, int], int]:
    return entry.key
