"""Pure validators for KV arguments: each returns the normalised value or raises.

Every failure is a ``KVValidationError`` whose message quotes the bad value
(truncated when long) and the limit it broke, so the user can fix the call without
reading the docs. These run on every KV call: they allocate nothing on success
beyond the normalised value they return.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from edgerun.bindings.kv.keys import (
    STR_KEY,
    TUPLE_KEY,
    decode_cursor,
    encode_tuple,
    prefix_range,
)
from edgerun.bindings.kv.limits import KVLimits
from edgerun.errors import KVValidationError

__all__ = [
    "GET_TYPES",
    "check_cursor",
    "check_expiration",
    "check_get_type",
    "check_key",
    "check_list_limit",
    "check_metadata",
    "check_prefix",
    "check_value",
    "quote",
]

GET_TYPES: Final = frozenset({"text", "json", "bytes"})
"""The accepted values of ``get(key, type=...)``."""

_QUOTE_CHARS = 32


def quote(value: object, max_chars: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` cut to about ``max_chars`` characters, marking the cut with ``…``.

    Strings and bytes are cut before ``repr`` and keep their closing quote
    (``'aaaa…'``), so the message still reads as a quoted value.
    """
    if isinstance(value, str | bytes | bytearray):
        if len(value) <= max_chars:
            return repr(value)
        head = repr(value[:max_chars] if isinstance(value, str) else bytes(value[:max_chars]))
        return head[:-1] + "…" + head[-1]
    text = repr(value)
    return text if len(text) <= max_chars else text[:max_chars] + "…"


def _seconds(n: float) -> str:
    text = str(int(n)) if n == int(n) else repr(n)
    return f"{text} second" if n == 1 else f"{text} seconds"


def _key_size_error(what: str, key: object, size: int, limits: KVLimits) -> KVValidationError:
    if size == 0:
        return KVValidationError(
            f"{what} is empty; a {what} must be 1 to {limits.max_key_bytes} bytes"
        )
    return KVValidationError(
        f"{what} is {size} bytes; the limit is {limits.max_key_bytes} bytes "
        f"({what} starts {quote(key)})"
    )


def _encode_tuple_or_raise(what: str, key: tuple[object, ...]) -> bytes:
    try:
        return encode_tuple(key)
    except (TypeError, ValueError) as exc:
        raise KVValidationError(f"{what} {quote(key)} is invalid: {exc}") from None


def _encode_str_or_raise(what: str, key: str) -> bytes:
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        raise KVValidationError(
            f"{what} {quote(key)} is not valid Unicode (it contains a lone surrogate)"
        ) from None


def check_key(key: object, limits: KVLimits) -> bytes:
    """Validate a key and return its encoding (see ``keys.encode_key``).

    A key is a non-empty ``str`` of at most ``limits.max_key_bytes`` UTF-8 bytes, or a
    non-empty tuple of ``str | int | float | bytes | bool`` parts whose encoding is at
    most that many bytes. Raises ``KVValidationError`` otherwise.
    """
    if type(key) is str:  # the hot path: a plain str key
        raw = _encode_str_or_raise("key", key)
        if 0 < len(raw) <= limits.max_key_bytes:
            return STR_KEY + raw
        raise _key_size_error("key", key, len(raw), limits)
    if isinstance(key, str):
        return check_key(str(key), limits)
    if isinstance(key, tuple):
        raw = _encode_tuple_or_raise("key", key)
        if 0 < len(raw) <= limits.max_key_bytes:
            return TUPLE_KEY + raw
        raise _key_size_error("key", key, len(raw), limits)
    raise KVValidationError(
        f"key must be a str or a tuple of str/int/float/bytes/bool parts, "
        f"got {type(key).__name__} {quote(key)}"
    )


def check_prefix(prefix: object, limits: KVLimits) -> tuple[bytes, bytes | None]:
    """Validate a ``list()`` prefix and return the ``(start, end)`` byte range it covers.

    ``None`` covers every key; a ``str`` covers the ``str`` keys starting with it (``""``
    covers all ``str`` keys); a tuple covers the tuple keys whose first parts equal it
    (``()`` covers all tuple keys), including the key equal to the prefix. A prefix
    follows the key size limit. Raises ``KVValidationError``.
    """
    if prefix is None:
        return b"", None
    if isinstance(prefix, str):
        raw = _encode_str_or_raise("prefix", prefix)
        encoded = STR_KEY + raw
    elif isinstance(prefix, tuple):
        raw = _encode_tuple_or_raise("prefix", prefix)
        encoded = TUPLE_KEY + raw
    else:
        raise KVValidationError(
            f"prefix must be None, a str or a tuple, got {type(prefix).__name__} {quote(prefix)}"
        )
    if len(raw) > limits.max_key_bytes:
        raise _key_size_error("prefix", prefix, len(raw), limits)
    return prefix_range(encoded)


def check_value(value: object, limits: KVLimits) -> bytes:
    """Validate a value for ``put`` and return it as bytes.

    A value is ``str`` (stored as UTF-8) or bytes-like (``bytes``, ``bytearray``,
    ``memoryview``, copied), at most ``limits.max_value_bytes`` bytes. Anything else
    raises ``KVValidationError`` telling the user to ``json.dumps`` it.
    """
    if isinstance(value, str):
        data = _encode_str_or_raise("value", value)
    elif isinstance(value, bytes):
        data = value
    elif isinstance(value, bytearray | memoryview):
        data = bytes(value)
    else:
        raise KVValidationError(
            f"value must be str or bytes, got {type(value).__name__} {quote(value)}; "
            f"to store other objects, put json.dumps(value) and read it back with "
            f"get(key, type='json')"
        )
    if len(data) > limits.max_value_bytes:
        raise KVValidationError(
            f"value is {len(data)} bytes; the limit is {limits.max_value_bytes} bytes "
            f"(value starts {quote(value if isinstance(value, str) else data)})"
        )
    return data


def check_metadata(metadata: Any, limits: KVLimits) -> str | None:
    """Validate metadata and return it serialised as compact JSON (``None`` stays ``None``).

    Metadata is any JSON-serialisable object (no NaN/Infinity) whose compact JSON is
    at most ``limits.max_metadata_bytes`` UTF-8 bytes. Raises ``KVValidationError``.
    """
    if metadata is None:
        return None
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise KVValidationError(
            f"metadata must be JSON-serialisable, got {quote(metadata)}: {exc}"
        ) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise KVValidationError(
            f"metadata {quote(metadata)} is not valid Unicode (it contains a lone surrogate)"
        ) from None
    if size > limits.max_metadata_bytes:
        raise KVValidationError(
            f"metadata is {size} bytes as JSON; the limit is {limits.max_metadata_bytes} "
            f"bytes (metadata starts {quote(text)})"
        )
    return text


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KVValidationError(
            f"{name} must be a number of seconds, got {type(value).__name__} {quote(value)}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise KVValidationError(f"{name} must be finite, got {quote(value)}")
    return number


def check_expiration(
    now: float,
    expiration: object,
    expiration_ttl: object,
    limits: KVLimits,
) -> float | None:
    """Turn ``put``'s ``expiration``/``expiration_ttl`` into an absolute epoch time.

    ``expiration_ttl`` is seconds from ``now``, at least ``limits.min_ttl_seconds``;
    ``expiration`` is epoch seconds at least that far after ``now``. Returns ``None``
    when both are ``None`` (the key never expires). Raises ``KVValidationError`` when
    both are given, or either is not a finite number or is too short.
    """
    minimum = limits.min_ttl_seconds
    if expiration_ttl is not None:
        if expiration is not None:
            raise KVValidationError(
                "pass either expiration (epoch seconds) or expiration_ttl (seconds from "
                f"now), not both (got expiration={quote(expiration)}, "
                f"expiration_ttl={quote(expiration_ttl)})"
            )
        ttl = _check_number("expiration_ttl", expiration_ttl)
        if ttl < minimum:
            raise KVValidationError(
                f"expiration_ttl is {_seconds(ttl)}; the minimum is {_seconds(minimum)}"
            )
        return now + ttl
    if expiration is not None:
        at = _check_number("expiration", expiration)
        if at - now < minimum:
            when = "in the past" if at <= now else f"only {_seconds(at - now)} in the future"
            raise KVValidationError(
                f"expiration {quote(expiration)} is {when} (now is {now:.3f}); it must be "
                f"epoch seconds at least {_seconds(minimum)} in the future"
            )
        return at
    return None


def check_list_limit(limit: object, limits: KVLimits) -> int:
    """Validate ``list(limit=...)``: an int from 1 to ``limits.max_list_limit``."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise KVValidationError(f"limit must be an int, got {type(limit).__name__} {quote(limit)}")
    if not 1 <= limit <= limits.max_list_limit:
        raise KVValidationError(
            f"limit is {limit}; it must be between 1 and {limits.max_list_limit}"
        )
    return limit


def check_cursor(cursor: object) -> bytes | None:
    """Validate a ``list()`` cursor and return the encoded key it continues after."""
    if cursor is None:
        return None
    if not isinstance(cursor, str):
        raise KVValidationError(
            f"cursor must be a str returned by list(), got {type(cursor).__name__} {quote(cursor)}"
        )
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise KVValidationError(
            f"cursor {quote(cursor)} was not returned by list(); pass the cursor of "
            f"the previous page unchanged, or None to start over"
        ) from None


def check_get_type(type_: object) -> str:
    """Validate ``get(key, type=...)``: one of ``'text'``, ``'json'`` or ``'bytes'``."""
    if isinstance(type_, str) and type_ in GET_TYPES:
        return type_
    raise KVValidationError(f"type must be 'text', 'json' or 'bytes', got {quote(type_)}")
