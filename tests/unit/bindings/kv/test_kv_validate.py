"""Validators: valid inputs pass, invalid ones fail quoting the value and the limit."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.bindings.kv.keys import STR_KEY, TUPLE_KEY, encode_tuple
from edgerun.bindings.kv.limits import DEFAULT_LIMITS, KVLimits
from edgerun.bindings.kv.validate import (
    check_cursor,
    check_expiration,
    check_get_type,
    check_key,
    check_list_limit,
    check_metadata,
    check_prefix,
    check_value,
    quote,
)
from edgerun.errors import KVValidationError

limits_st = st.builds(
    KVLimits,
    max_key_bytes=st.integers(1, 600),
    max_value_bytes=st.integers(1, 4096),
    max_metadata_bytes=st.integers(2, 2048),
    min_ttl_seconds=st.floats(0.001, 1e6),
    max_list_limit=st.integers(1, 5000),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
NOW = 1_700_000_000.0


def seconds(n: float) -> str:
    return str(int(n)) if n == int(n) else repr(n)


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


# --- keys -----------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=700), limits_st)
def test_str_keys_accepted_iff_within_the_limit(key: str, limits: KVLimits) -> None:
    size = utf8_len(key)
    if size <= limits.max_key_bytes:
        assert check_key(key, limits) == STR_KEY + key.encode("utf-8")
    else:
        with pytest.raises(KVValidationError) as info:
            check_key(key, limits)
        message = str(info.value)
        assert f"key is {size} bytes" in message
        assert f"the limit is {limits.max_key_bytes} bytes" in message
        assert "key starts " in message


@given(
    st.lists(
        st.text(max_size=40) | st.integers() | st.binary(max_size=40), min_size=1, max_size=20
    ).map(tuple),
    limits_st,
)
def test_tuple_keys_accepted_iff_encoding_within_the_limit(
    key: tuple[Any, ...], limits: KVLimits
) -> None:
    size = len(encode_tuple(key))
    if size <= limits.max_key_bytes:
        assert check_key(key, limits) == TUPLE_KEY + encode_tuple(key)
    else:
        with pytest.raises(KVValidationError, match=f"the limit is {limits.max_key_bytes} bytes"):
            check_key(key, limits)


def test_key_message_matches_the_documented_shape() -> None:
    with pytest.raises(KVValidationError) as info:
        check_key("a" * 600, DEFAULT_LIMITS)
    assert str(info.value) == (
        "key is 600 bytes; the limit is 512 bytes (key starts '" + "a" * 32 + "…')"
    )


def test_str_subclass_keys_are_plain_str_keys() -> None:
    class Name(str):
        pass

    assert check_key(Name("k"), DEFAULT_LIMITS) == STR_KEY + b"k"


@pytest.mark.parametrize("bad", ["\ud800", ("ok", "\udfff")])
def test_lone_surrogates_are_rejected(bad: Any) -> None:
    with pytest.raises(KVValidationError, match="Unicode"):
        check_key(bad, DEFAULT_LIMITS)


@pytest.mark.parametrize("bad", [None, 1, 1.5, b"k", bytearray(b"k"), ["k"], {"k": 1}])
def test_non_key_types_are_rejected_naming_the_type(bad: Any) -> None:
    with pytest.raises(KVValidationError, match=type(bad).__name__):
        check_key(bad, DEFAULT_LIMITS)


# --- prefixes -------------------------------------------------------------------------


def test_prefix_ranges() -> None:
    assert check_prefix(None, DEFAULT_LIMITS) == (b"", None)
    assert check_prefix("", DEFAULT_LIMITS) == (STR_KEY, TUPLE_KEY)
    assert check_prefix("ab", DEFAULT_LIMITS) == (STR_KEY + b"ab", STR_KEY + b"ac")
    start, end = check_prefix(("a",), DEFAULT_LIMITS)
    assert start == TUPLE_KEY + encode_tuple(("a",))
    assert end is not None and start < end


def test_prefix_size_limit_and_inverted_twin() -> None:
    check_prefix("p" * 512, DEFAULT_LIMITS)
    with pytest.raises(KVValidationError, match="prefix is 513 bytes; the limit is 512"):
        check_prefix("p" * 513, DEFAULT_LIMITS)
    check_prefix("p" * 513, KVLimits(max_key_bytes=513))


@pytest.mark.parametrize("bad", [1, b"p", ["p"], ("p", object())])
def test_bad_prefixes(bad: Any) -> None:
    with pytest.raises(KVValidationError, match="prefix"):
        check_prefix(bad, DEFAULT_LIMITS)


# --- values ---------------------------------------------------------------------------


@given(st.binary(max_size=300), st.integers(1, 256))
def test_byte_values_accepted_iff_within_the_limit(value: bytes, limit: int) -> None:
    limits = KVLimits(max_value_bytes=limit)
    if len(value) <= limit:
        assert check_value(value, limits) == value
        assert check_value(bytearray(value), limits) == value
        assert check_value(memoryview(value), limits) == value
    else:
        with pytest.raises(KVValidationError) as info:
            check_value(value, limits)
        assert f"value is {len(value)} bytes; the limit is {limit} bytes" in str(info.value)


@given(st.text(max_size=200), st.integers(1, 256))
def test_str_values_measured_in_utf8(value: str, limit: int) -> None:
    limits = KVLimits(max_value_bytes=limit)
    if utf8_len(value) <= limit:
        assert check_value(value, limits) == value.encode("utf-8")
    else:
        with pytest.raises(KVValidationError, match=f"the limit is {limit} bytes"):
            check_value(value, limits)


@pytest.mark.parametrize("bad", [{"a": 1}, [1], 1, 1.0, None, True, object()])
def test_non_str_values_point_to_json_dumps(bad: Any) -> None:
    with pytest.raises(KVValidationError) as info:
        check_value(bad, DEFAULT_LIMITS)
    assert "json.dumps" in str(info.value)
    assert type(bad).__name__ in str(info.value)


def test_value_message_quotes_a_truncated_value() -> None:
    with pytest.raises(KVValidationError) as info:
        check_value("x" * 5000, KVLimits(max_value_bytes=10))
    message = str(info.value)
    assert "(value starts '" + "x" * 32 + "…')" in message
    assert len(message) < 200


# --- metadata -------------------------------------------------------------------------


@given(json_values, st.integers(2, 512))
def test_metadata_accepted_iff_json_fits(metadata: Any, limit: int) -> None:
    limits = KVLimits(max_metadata_bytes=limit)
    if metadata is None:
        assert check_metadata(metadata, limits) is None
        return
    compact = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
    if utf8_len(compact) <= limit:
        text = check_metadata(metadata, limits)
        assert text is not None and json.loads(text) == metadata
    else:
        with pytest.raises(KVValidationError, match=f"the limit is {limit} bytes"):
            check_metadata(metadata, limits)


@pytest.mark.parametrize("bad", [{1, 2}, b"x", {"f": float("inf")}, [object()]])
def test_non_json_metadata(bad: Any) -> None:
    with pytest.raises(KVValidationError, match="JSON-serialisable"):
        check_metadata(bad, DEFAULT_LIMITS)


# --- expiration -----------------------------------------------------------------------


@given(st.floats(0.001, 1e9), st.floats(0.001, 1e6))
def test_ttl_accepted_iff_at_least_the_minimum(ttl: float, minimum: float) -> None:
    limits = KVLimits(min_ttl_seconds=minimum)
    if ttl >= minimum:
        assert check_expiration(NOW, None, ttl, limits) == NOW + ttl
    else:
        with pytest.raises(
            KVValidationError, match=re.escape(f"the minimum is {seconds(minimum)}")
        ):
            check_expiration(NOW, None, ttl, limits)


@given(st.floats(-1e6, 1e6))
def test_absolute_expiration_accepted_iff_far_enough_ahead(offset: float) -> None:
    at = NOW + offset
    if at - NOW >= 1:
        assert check_expiration(NOW, at, None, DEFAULT_LIMITS) == at
    else:
        with pytest.raises(KVValidationError, match="at least 1 second in the future"):
            check_expiration(NOW, at, None, DEFAULT_LIMITS)


def test_no_expiration_and_both_expirations() -> None:
    assert check_expiration(NOW, None, None, DEFAULT_LIMITS) is None
    with pytest.raises(KVValidationError, match="not both"):
        check_expiration(NOW, NOW + 100, 100, DEFAULT_LIMITS)


@pytest.mark.parametrize("bad", ["10", None, True, float("nan"), float("-inf"), [1]])
def test_ttl_must_be_a_finite_number(bad: Any) -> None:
    if bad is None:
        bad = {"not": "a number"}
    with pytest.raises(KVValidationError, match="expiration_ttl"):
        check_expiration(NOW, None, bad, DEFAULT_LIMITS)
    with pytest.raises(KVValidationError, match="expiration"):
        check_expiration(NOW, bad, None, DEFAULT_LIMITS)


# --- list limit, cursor, get type -----------------------------------------------------


@given(st.integers(-10, 6000), st.integers(1, 5000))
def test_list_limit_accepted_iff_in_range(limit: int, maximum: int) -> None:
    limits = KVLimits(max_list_limit=maximum)
    if 1 <= limit <= maximum:
        assert check_list_limit(limit, limits) == limit
    else:
        with pytest.raises(KVValidationError, match=f"between 1 and {maximum}"):
            check_list_limit(limit, limits)


@pytest.mark.parametrize("bad", [1.0, "10", True, None])
def test_list_limit_must_be_an_int(bad: Any) -> None:
    with pytest.raises(KVValidationError, match="limit must be an int"):
        check_list_limit(bad, DEFAULT_LIMITS)


def test_cursor_checks() -> None:
    assert check_cursor(None) is None
    with pytest.raises(KVValidationError, match="was not returned by list"):
        check_cursor("%%%")
    with pytest.raises(KVValidationError, match="must be a str"):
        check_cursor(123)


def test_get_type_checks() -> None:
    for ok in ("text", "json", "bytes"):
        assert check_get_type(ok) == ok
    for bad in ("arrayBuffer", "stream", None, ["text"]):
        with pytest.raises(KVValidationError, match="type must be 'text', 'json' or 'bytes'"):
            check_get_type(bad)


# --- quoting --------------------------------------------------------------------------


@given(st.text(max_size=200))
def test_quote_is_short_and_marks_truncation(value: str) -> None:
    quoted = quote(value)
    assert len(quoted) <= len(repr(value[:32])) + 1
    if len(value) > 32:
        assert quoted[:-2] == repr(value[:32])[:-1]
        assert quoted.endswith("…'") or quoted.endswith('…"')
    else:
        assert quoted == repr(value)


def test_quote_other_types() -> None:
    assert quote(b"\x00" * 100).endswith("…'")
    assert quote(list(range(100))).endswith("…")
    assert quote(42) == "42"
