"""The HTTP header grammar the cache needs, as total functions.

Internal to ``edgerun.bindings.cache``: ``Cache-Control`` directives, delta-seconds,
HTTP-dates, entity tags, ``Vary`` values and byte ranges. Every function accepts any
string a client or handler can put in a header and never raises on it; what cannot be
parsed is reported as absent (None) or handled the conservative way its docstring names.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Literal

from edgerun.http import Headers

__all__ = [
    "age_seconds",
    "cache_directives",
    "delta_seconds",
    "field_names",
    "opaque_tag",
    "parse_cache_control",
    "parse_http_date",
    "parse_range",
    "split_list",
    "to_int",
    "unquote",
    "vary_value",
]

# RFC 9111 §1.2.2: a delta-seconds value too large to represent is treated as 2^31.
_DELTA_SECONDS_MAX = 2**31


def split_list(value: str, *, escapes: bool = True) -> list[str]:
    """Split a comma-separated header list, keeping commas inside quoted strings.

    ``escapes`` honours ``\\"`` inside quotes (quoted-string syntax); entity tags have
    no escapes, so ETag lists pass ``False``. Empty items are dropped.
    """
    items: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if quoted:
            buf.append(ch)
            if escaped:
                escaped = False
            elif escapes and ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == ",":
            items.append("".join(buf).strip())
            buf = []
        else:
            if ch == '"':
                quoted = True
            buf.append(ch)
    items.append("".join(buf).strip())
    return [item for item in items if item]


def unquote(value: str) -> str:
    """The content of a quoted-string (escapes resolved); other values unchanged."""
    if not value.startswith('"'):
        return value
    out: list[str] = []
    escaped = False
    for ch in value[1:]:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            break
        else:
            out.append(ch)
    return "".join(out)


def parse_cache_control(value: str) -> dict[str, str | None]:
    """Parse a ``Cache-Control`` value into ``{directive: argument or None}``.

    Directive names are lowercased; quoted arguments are unquoted (``private="a, b"``
    gives ``"a, b"``). When a directive repeats, the first occurrence wins (RFC 9111
    §4.2.1). Join several header lines with ``", "`` before calling. Never raises:
    anything unparseable is skipped.
    """
    directives: dict[str, str | None] = {}
    for item in split_list(value):
        name, sep, arg = item.partition("=")
        name = name.strip().lower()
        if not name or name in directives:
            continue
        directives[name] = unquote(arg.strip()) if sep else None
    return directives


def to_int(text: str) -> int | None:
    """Non-negative ASCII digits as an int (huge values capped), else None."""
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    # int() refuses very long digit strings; anything this long is "huge" anyway.
    if len(text.lstrip("0")) > 18:
        return 10**18
    return int(text)


def delta_seconds(value: str | None) -> int:
    """A delta-seconds argument; missing or invalid counts as 0 (stale, conservative)."""
    number = None if value is None else to_int(value)
    return 0 if number is None else min(number, _DELTA_SECONDS_MAX)


def age_seconds(values: list[str]) -> int:
    """The ``Age`` of a response from its header lines: the first list member counts.

    RFC 9111 §5.1: a cache that receives ``Age: 7200, 0`` (or two lines) uses the first
    value; an invalid first value counts as 0.
    """
    items = split_list(", ".join(values))
    return delta_seconds(items[0]) if items else 0


# RFC 9213: targeted fields, most specific first. When one is present, this cache obeys it
# and ignores Cache-Control (which stays for caches downstream).
_TARGETED_FIELDS = ("cloudflare-cdn-cache-control", "cdn-cache-control")


# An RFC 8941 dictionary member as a targeted field uses it: a key, optionally "=" and
# a bare item, with no whitespace around "=". Parameters are allowed (and ignored).
_SF_MEMBER = re.compile(
    r'[a-z*][a-z0-9_.*-]*(=(-?[0-9]+(\.[0-9]+)?|"([^"\\]|\\.)*"|[A-Za-z*][^\s,;"]*|\?[01]))?'
    r"(;[^,]*)?"
)


def _structured(value: str) -> bool:
    """Whether a targeted field's value parses as a dictionary (RFC 9213 §2.1)."""
    return all(_SF_MEMBER.fullmatch(item) for item in split_list(value))


def cache_directives(headers: Headers) -> dict[str, str | None]:
    """The caching directives this cache obeys for a response.

    The first present of ``Cloudflare-CDN-Cache-Control`` and ``CDN-Cache-Control``
    (RFC 9213) wins over ``Cache-Control``; several lines of one field are joined. A
    targeted field that is not a valid structured dictionary is ignored as a whole.
    """
    for name in _TARGETED_FIELDS:
        values = headers.getlist(name)
        if values and _structured(", ".join(values)):
            return parse_cache_control(", ".join(values))
    return parse_cache_control(", ".join(headers.getlist("cache-control")))


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date as epoch seconds, or None when absent or invalid."""
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def field_names(value: str | None) -> set[str]:
    """The header names listed in a qualified directive (``private="set-cookie, x"``)."""
    if not value:
        return set()
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def opaque_tag(tag: str) -> str:
    """An entity tag without its weakness prefix, for weak comparison (RFC 9110 §8.8.3.2)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def vary_value(headers: Headers, name: str) -> str | None:
    """A request header's value for Vary matching, whitespace-normalised; None if absent."""
    values = headers.getlist(name)
    if not values:
        return None
    return ",".join(part.strip() for value in values for part in value.split(","))


def parse_range(value: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """One ``bytes=`` range as inclusive ``(start, end)``, "unsatisfiable", or None to ignore."""
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    if not first.strip():
        suffix = to_int(last)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = to_int(first)
    end = to_int(last) if last.strip() else None
    if start is None or (last.strip() and (end is None or end < start)):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if end is None else min(end, size - 1)
