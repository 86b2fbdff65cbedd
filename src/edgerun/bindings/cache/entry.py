"""A stored response and what it answers to a request: 200, 304, 206 or 416.

Internal to ``edgerun.bindings.cache``. An ``Entry`` is immutable (bytes body, header
tuples), so every response built from it is an independent copy the caller may change.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgerun.bindings.cache.headers import (
    opaque_tag,
    parse_http_date,
    parse_range,
    split_list,
)
from edgerun.http import Headers, Response

__all__ = ["Entry", "if_range_holds", "not_modified", "respond"]

# RFC 9110 §15.4.5: the fields a 304 repeats from the 200 it stands for.
_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary"}
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored response. Immutable, so handing out copies can never change it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    vary: tuple[tuple[str, str | None], ...]  # request header -> value at put time
    stored_at: float  # clock.time() when stored
    initial_age: int  # the Age the origin sent
    lifetime: float  # freshness lifetime, seconds
    size: int  # bytes charged against max_bytes
    etag: str | None
    last_modified: float | None

    def age(self, now: float) -> float:
        """Seconds since the origin produced it, given ``now`` on the wall clock."""
        return self.initial_age + max(0.0, now - self.stored_at)


def respond(entry: Entry, request_headers: Headers, age: int) -> Response:
    """Build the caller's copy of ``entry`` for a request (200, 304, 206 or 416)."""
    age_header = ("age", str(age))
    if 200 <= entry.status < 300 and not_modified(entry, request_headers):
        kept = {*_NOT_MODIFIED_FIELDS, *(() if entry.etag else ("last-modified",))}
        headers = [(n, v) for n, v in entry.headers if n in kept]
        return Response(None, status=304, headers=[*headers, age_header])
    range_value = request_headers.get("range")
    if range_value is not None and entry.status == 200 and if_range_holds(entry, request_headers):
        size = len(entry.body)
        span = parse_range(range_value, size)
        if span == "unsatisfiable":
            return Response(
                None, status=416, headers=[("content-range", f"bytes */{size}"), age_header]
            )
        if isinstance(span, tuple):
            start, end = span
            headers = [
                (n, v) for n, v in entry.headers if n not in ("content-length", "content-range")
            ]
            headers += [
                ("content-range", f"bytes {start}-{end}/{size}"),
                ("content-length", str(end - start + 1)),
                age_header,
            ]
            return Response(entry.body[start : end + 1], status=206, headers=headers)
    return Response(entry.body, status=entry.status, headers=[*entry.headers, age_header])


def not_modified(entry: Entry, request_headers: Headers) -> bool:
    """Whether the request's validators say the client's copy is current (RFC 9110 §13.2.2)."""
    if_none_match = request_headers.getlist("if-none-match")
    if if_none_match:
        # If-Modified-Since is ignored whenever If-None-Match is present.
        tags = split_list(", ".join(if_none_match), escapes=False)
        if "*" in tags:
            return True
        if entry.etag is None:
            return False
        stored = opaque_tag(entry.etag)
        return any(opaque_tag(tag) == stored for tag in tags)
    since = parse_http_date(request_headers.get("if-modified-since"))
    return since is not None and entry.last_modified is not None and entry.last_modified <= since


def if_range_holds(entry: Entry, request_headers: Headers) -> bool:
    """True when there is no ``If-Range`` or it matches (strong comparison only)."""
    value = request_headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = (entry.etag or "").strip()
        return not value.startswith("W/") and not etag.startswith("W/") and value == etag
    date = parse_http_date(value)
    return date is not None and date == entry.last_modified
