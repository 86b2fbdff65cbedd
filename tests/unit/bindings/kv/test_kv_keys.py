"""The key codec: order-preserving, prefix-preserving, round-tripping, collision-free."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.bindings.kv.keys import (
    STR_KEY,
    TUPLE_KEY,
    decode_cursor,
    decode_key,
    decode_tuple,
    encode_cursor,
    encode_key,
    encode_tuple,
    prefix_range,
    successor,
)

# The widest ints the codec accepts: magnitudes of up to 255 bytes.
MAX_INT = 2 ** (8 * 255) - 1

parts = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=12),
    st.integers(),
    st.integers(min_value=-MAX_INT, max_value=MAX_INT),
    st.sampled_from([0, 1, -1, 255, 256, -255, -256, 2**64 - 1, 2**64, -(2**64)]),
    st.floats(allow_nan=False),
    st.booleans(),
)
tuples = st.lists(parts, max_size=5).map(tuple)

# The documented order across part types.
_RANK = {bytes: 0, str: 1, int: 2, float: 3}


def reference(key: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    """What the encoding must sort like: (type rank, value) per part, element-wise."""
    out = []
    for part in key:
        if isinstance(part, bool):
            out.append((4 + int(part), 0))
        else:
            out.append((_RANK[type(part)], part))
    return tuple(out)


def cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


@given(tuples, tuples)
def test_tuple_encoding_preserves_order(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert cmp(encode_tuple(a), encode_tuple(b)) == cmp(reference(a), reference(b))


@given(tuples)
def test_tuple_encoding_round_trips_with_types(key: tuple[Any, ...]) -> None:
    decoded = decode_tuple(encode_tuple(key))
    assert decoded == key
    assert [type(p) for p in decoded] == [type(p) for p in key]
    assert decode_key(encode_key(key)) == key


@given(tuples, tuples)
def test_a_tuple_prefix_is_a_byte_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    whole = encode_key(a + b)
    start, end = prefix_range(encode_key(a))
    assert whole.startswith(encode_key(a))
    assert start <= whole
    assert end is not None and whole < end


@given(tuples, tuples)
def test_byte_prefix_implies_tuple_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    # The converse, which makes prefix listing exact: parts are self-delimiting.
    if encode_tuple(b).startswith(encode_tuple(a)):
        assert reference(b)[: len(a)] == reference(a)


@given(st.text(min_size=1), st.text(min_size=1))
def test_str_keys_order_by_code_point_and_round_trip(a: str, b: str) -> None:
    assert cmp(encode_key(a), encode_key(b)) == cmp(a, b)
    assert decode_key(encode_key(a)) == a


@given(st.text(min_size=1), tuples)
def test_str_and_tuple_keys_never_collide(s: str, t: tuple[Any, ...]) -> None:
    assert encode_key(s) != encode_key(t)
    assert encode_key(s) < encode_key(t)  # all str keys first
    assert encode_key(s).startswith(STR_KEY)
    assert encode_key(t).startswith(TUPLE_KEY)


def test_negative_zero_is_zero() -> None:
    assert encode_tuple((-0.0,)) == encode_tuple((0.0,))
    assert math.copysign(1, decode_tuple(encode_tuple((-0.0,)))[0]) == 1  # type: ignore[arg-type]


def test_int_boundaries_in_order() -> None:
    ints = sorted({0, 1, -1, 255, 256, -255, -256, 2**64 - 1, 2**64, -(2**64), 2**64 + 1})
    ints += [MAX_INT]
    ints.insert(0, -MAX_INT)
    encoded = [encode_tuple((n,)) for n in ints]
    assert encoded == sorted(encoded)
    assert [decode_tuple(e)[0] for e in encoded] == ints


@pytest.mark.parametrize(
    ("key", "error", "match"),
    [
        ((float("nan"),), ValueError, "NaN"),
        ((1j,), TypeError, "complex"),
        ((None,), TypeError, "NoneType"),
        ((MAX_INT + 1,), ValueError, "255 bytes"),
        ((-MAX_INT - 1,), ValueError, "255 bytes"),
        (("\ud800",), ValueError, "Unicode"),
    ],
)
def test_unencodable_parts(key: tuple[Any, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        encode_tuple(key)


def test_bytes_like_parts_decode_as_bytes() -> None:
    assert decode_tuple(encode_tuple((bytearray(b"a\x00"), memoryview(b"b")))) == (b"a\x00", b"b")


@pytest.mark.parametrize(
    "data", [b"\x02abc", b"\x15", b"\x1d\x09\x01", b"\x21\x00", b"\x99", b"\x0b"]
)
def test_malformed_encodings_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_tuple(data)


def test_decode_key_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        decode_key(b"\x07abc")


def test_successor() -> None:
    assert successor(b"") is None
    assert successor(b"\xff\xff") is None
    assert successor(b"ab") == b"ac"
    assert successor(b"a\xff") == b"b"
    assert prefix_range(b"\x01") == (b"\x01", b"\x02")


@given(st.binary(min_size=1).map(lambda b: STR_KEY + b))
def test_cursor_round_trip(key: bytes) -> None:
    cursor = encode_cursor(key)
    assert cursor.isascii()
    assert decode_cursor(cursor) == key


@pytest.mark.parametrize("cursor", ["", "!!!", "AA=A", encode_cursor(b"\x09abc")])
def test_bad_cursors(cursor: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(cursor)
