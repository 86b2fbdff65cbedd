"""security.limits: the node's HTTP caps and framing rules, as pure functions.

Every refusal has an inverted twin: the same input inside the limit (or with the limit
raised) passes, so each test proves the limit rather than a broken input.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.errors import (
    HeadersTooLarge,
    PayloadTooLarge,
    RequestError,
    URITooLong,
)
from edgerun.security.limits import (
    BodyFraming,
    BodyMeter,
    HttpLimits,
    check_head,
    check_header_size,
    check_url,
)

LIMITS = HttpLimits(max_url_bytes=100, max_header_bytes=200, max_headers=5, max_body_bytes=1000)


def _outcome(run: Callable[[], BodyFraming]) -> BodyFraming | RequestError:
    try:
        return run()
    except RequestError as exc:
        return exc


def _check(
    pairs: list[tuple[str, str]], target: int = 1, limits: HttpLimits = LIMITS
) -> BodyFraming:
    """check_head on str pairs (RSGI) and on bytes pairs (ASGI); both must agree."""
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    as_str = _outcome(lambda: check_head("POST", target, pairs, limits))
    as_bytes = _outcome(lambda: check_head("POST", target, raw, limits))
    if isinstance(as_str, RequestError):
        assert type(as_bytes) is type(as_str), "str and bytes headers must give the same error"
        assert str(as_bytes) == str(as_str)
        raise as_str
    assert as_bytes == as_str, "str and bytes headers must give the same framing"
    return as_str


# -- HttpLimits ------------------------------------------------------------------------


def test_defaults_are_the_documented_caps() -> None:
    limits = HttpLimits()
    assert limits.max_url_bytes == 8192
    assert limits.max_header_bytes == 32768
    assert limits.max_headers == 100
    assert limits.max_body_bytes == 16 * 1024 * 1024
    assert limits.header_timeout_s == 10.0
    assert limits.body_timeout_s == 30.0


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_url_bytes", 0),
        ("max_header_bytes", -1),
        ("max_headers", 1.5),
        ("max_body_bytes", True),
        ("header_timeout_s", 0),
        ("body_timeout_s", -2.0),
        ("body_timeout_s", "30"),
    ],
)
def test_invalid_limits_are_refused_with_the_value(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        HttpLimits(**{field: bad})  # type: ignore[arg-type]


def test_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        LIMITS.max_body_bytes = 5  # type: ignore[misc]


def test_max_head_bytes_leaves_room_for_every_allowed_head() -> None:
    assert LIMITS.max_head_bytes > LIMITS.max_url_bytes + LIMITS.max_header_bytes


# -- URL -------------------------------------------------------------------------------


def test_url_at_the_cap_passes() -> None:
    check_url(100, LIMITS)
    assert _check([("Host", "x")], target=100) == BodyFraming(None, False)


def test_url_over_the_cap_is_414_quoting_both_numbers() -> None:
    with pytest.raises(URITooLong, match=r"101.*100") as info:
        check_url(101, LIMITS)
    assert info.value.status == 414 and info.value.code == "uri_too_long"
    with pytest.raises(URITooLong):
        _check([("Host", "x")], target=101)


def test_raising_the_url_cap_admits_the_same_url() -> None:
    check_url(101, HttpLimits(max_url_bytes=101))


# -- header size and count ---------------------------------------------------------------


def _headers_totalling(total: int) -> list[tuple[str, str]]:
    return [("Host", "x"), ("X-Pad", "a" * (total - 5 - 5))]


def test_headers_at_the_byte_cap_pass() -> None:
    _check(_headers_totalling(200))


def test_headers_over_the_byte_cap_are_431() -> None:
    with pytest.raises(HeadersTooLarge):
        _check(_headers_totalling(201))
    with pytest.raises(HeadersTooLarge, match=r"201.*200") as info:
        check_header_size(201, 1, LIMITS)
    assert info.value.status == 431 and info.value.code == "headers_too_large"


def test_raising_the_byte_cap_admits_the_same_headers() -> None:
    _check(_headers_totalling(201), limits=HttpLimits(max_header_bytes=201))


def test_header_count_at_the_cap_passes_and_one_more_is_431() -> None:
    five = [("Host", "x")] + [(f"X-{i}", "1") for i in range(4)]
    _check(five)
    with pytest.raises(HeadersTooLarge, match="6"):
        _check([*five, ("X-9", "1")])
    _check([*five, ("X-9", "1")], limits=HttpLimits(max_headers=6))


# -- framing -----------------------------------------------------------------------------


def test_no_length_and_no_encoding_means_no_body() -> None:
    framing = _check([("Host", "x")])
    assert framing == BodyFraming(None, False) and not framing.has_body


def test_content_length_zero_means_no_body() -> None:
    assert not _check([("Content-Length", "0")]).has_body


def test_a_single_content_length_is_the_declared_length() -> None:
    framing = _check([("Host", "x"), ("Content-Length", "42")])
    assert framing == BodyFraming(42, False) and framing.has_body


def test_content_length_with_transfer_encoding_is_400() -> None:
    with pytest.raises(RequestError, match="both Content-Length and Transfer-Encoding") as info:
        _check([("Content-Length", "5"), ("Transfer-Encoding", "chunked")])
    assert info.value.status == 400 and info.value.code == "bad_request"


def test_duplicate_content_length_is_400_even_with_equal_values() -> None:
    with pytest.raises(RequestError, match="more than one Content-Length"):
        _check([("Content-Length", "5"), ("Content-Length", "5")])
    with pytest.raises(RequestError, match="more than one Content-Length"):
        _check([("content-length", "5"), ("CONTENT-LENGTH", "6")])


@pytest.mark.parametrize(
    "value", ["abc", "-5", "+5", "5x", "", " ", "0x10", "1e3", "\u0665", "\u00b2"]
)
def test_content_length_must_be_plain_decimal_digits(value: str) -> None:
    if not value.isascii():
        # Not representable in latin-1 bytes; a str-only check (RSGI hands str).
        with pytest.raises(RequestError, match="invalid Content-Length"):
            check_head("POST", 1, [("Content-Length", value)], LIMITS)
        return
    with pytest.raises(RequestError, match="invalid Content-Length"):
        _check([("Content-Length", value)])


def test_content_length_surrounding_whitespace_is_tolerated() -> None:
    # Parsers strip optional whitespace around field values; the number is what counts.
    assert _check([("Content-Length", " 7 ")]).content_length == 7


def test_declared_body_at_the_cap_passes_and_over_it_is_413_before_reading() -> None:
    assert _check([("Content-Length", "1000")]).content_length == 1000
    with pytest.raises(PayloadTooLarge, match=r"1001.*1000") as info:
        _check([("Content-Length", "1001")])
    assert info.value.status == 413 and info.value.code == "payload_too_large"
    assert _check([("Content-Length", "1001")], limits=HttpLimits(max_body_bytes=1001))


def test_a_huge_declared_length_is_413_not_an_overflow() -> None:
    with pytest.raises(PayloadTooLarge):
        _check([("Content-Length", "9" * 60)])


def test_chunked_transfer_encoding_is_accepted_in_any_case() -> None:
    assert _check([("Transfer-Encoding", "chunked")]) == BodyFraming(None, True)
    assert _check([("transfer-encoding", " Chunked ")]).chunked


@pytest.mark.parametrize("value", ["gzip", "gzip, chunked", "chunked, gzip", "identity", ""])
def test_transfer_encodings_other_than_chunked_are_400(value: str) -> None:
    with pytest.raises(RequestError, match="Transfer-Encoding"):
        _check([("Transfer-Encoding", value)])


def test_duplicate_transfer_encoding_is_400() -> None:
    with pytest.raises(RequestError, match="more than one Transfer-Encoding"):
        _check([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")])


# -- Host ------------------------------------------------------------------------------


def test_duplicate_host_is_400_and_a_single_host_passes() -> None:
    with pytest.raises(RequestError, match="more than one Host"):
        _check([("Host", "a"), ("host", "b")])
    _check([("Host", "a.example:8080")])
    _check([("Host", "[::1]:8080")])


@pytest.mark.parametrize("host", ["evil.com/path", "a b", "user@host", "h?x", "h#x", "h\\x"])
def test_a_host_that_would_change_the_url_is_400(host: str) -> None:
    with pytest.raises(RequestError, match="invalid Host"):
        _check([("Host", host)])


# -- body meter ------------------------------------------------------------------------


def test_body_meter_allows_exactly_the_cap_and_stops_one_byte_past_it() -> None:
    meter = BodyMeter(LIMITS)
    for _ in range(10):
        meter.feed(100)
    assert meter.received == 1000
    with pytest.raises(PayloadTooLarge, match="1000"):
        meter.feed(1)


def test_body_meter_with_a_raised_cap_admits_the_same_body() -> None:
    meter = BodyMeter(HttpLimits(max_body_bytes=1001))
    meter.feed(1001)


# -- properties ------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name.lower() not in ("host", "content-length", "transfer-encoding")
)
_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(st.lists(st.tuples(_token, _value), max_size=8))
def test_ordinary_headers_within_the_caps_pass_and_over_them_are_431(
    pairs: list[tuple[str, str]],
) -> None:
    total = sum(len(k) + len(v) for k, v in pairs)
    fits = total <= LIMITS.max_header_bytes and len(pairs) <= LIMITS.max_headers
    if fits:
        assert _check(pairs) == BodyFraming(None, False)
    else:
        with pytest.raises(HeadersTooLarge):
            _check(pairs)
    # Inverted twin: caps raised to exactly this input always admit it.
    roomy = HttpLimits(max_header_bytes=max(total, 1), max_headers=max(len(pairs), 1))
    assert _check(pairs, limits=roomy) == BodyFraming(None, False)


@given(st.integers(min_value=0, max_value=10**30))
def test_any_decimal_content_length_is_accepted_exactly_up_to_the_cap(n: int) -> None:
    if n <= LIMITS.max_body_bytes:
        assert _check([("Content-Length", str(n))]).content_length == n
    else:
        with pytest.raises(PayloadTooLarge):
            _check([("Content-Length", str(n))])
