"""The node's fast paths build the same objects as the general ones.

Lazily decoded ``Headers``, ``Request._from_server`` (URL parts known, not re-parsed),
``check_framing`` (the head rules on values a parser collected) and the geo answer
cache must be indistinguishable from what they replace.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from edgerun.edge.geo import GeoResolver
from edgerun.edge.routes import normalize_host
from edgerun.errors import PayloadTooLarge, RequestError
from edgerun.http import Headers, Request, Response
from edgerun.security.limits import HttpLimits, check_framing, check_head

RAW = [(b"host", b"example.com"), (b"x-a", b"1"), (b"x-a", b"2"), (b"cookie", b"k=v")]


def _lazy() -> Headers:
    return Headers._lazy(list(RAW), lowercase=True)


def test_lazy_headers_read_like_decoded_ones() -> None:
    lazy, eager = _lazy(), Headers.from_raw(RAW)
    assert lazy.get("X-A") == eager.get("X-A") == "1"
    assert lazy.getlist("x-a") == ["1", "2"]
    assert lazy.get("missing", "d") == "d"
    assert "HOST" in lazy and "nope" not in lazy and 1 not in lazy
    assert lazy.get("é") is None and "é" not in lazy
    assert len(lazy) == 4
    assert lazy.raw() == RAW
    assert lazy == eager
    assert lazy.items() == eager.items()
    assert list(lazy) == ["host", "x-a", "cookie"]


def test_lazy_headers_mutate_after_decoding() -> None:
    lazy = _lazy()
    lazy.set("x-a", "3")
    assert lazy.getlist("x-a") == ["3"]
    lazy.add("x-b", "4")
    del lazy["cookie"]
    assert lazy.raw() == [(b"host", b"example.com"), (b"x-a", b"3"), (b"x-b", b"4")]
    copy = _lazy().copy()
    assert copy.raw() == RAW


def test_raw_is_a_copy() -> None:
    lazy = _lazy()
    lazy.raw().append((b"x-evil", b"1"))
    assert "x-evil" not in lazy


def test_lazy_headers_with_mixed_case_names_lowercase_them() -> None:
    h = Headers._lazy([(b"Content-Type", b"text/plain")], lowercase=False)
    assert h.raw() == [(b"content-type", b"text/plain")]
    assert h.get("content-type") == "text/plain"


def test_put_replaces_or_appends_without_decoding() -> None:
    h = _lazy()
    h._put("x-edgerun-request-id", "abc")
    assert h._raw is not None  # still not decoded
    h._put("x-a", "9")
    assert h.getlist("x-a") == ["9"]
    assert h.get("x-edgerun-request-id") == "abc"
    plain = Headers({"x-edgerun-request-id": "old"})
    plain._put("x-edgerun-request-id", "new")
    assert plain.items() == [("x-edgerun-request-id", "new")]


@pytest.mark.parametrize(
    ("scheme", "host", "path", "query"),
    [
        ("http", "example.com", "/", ""),
        ("https", "Example.COM:8443", "/a%20b/c", "x=1&y=%2F"),
        ("http", "[::1]:8080", "/v6", "q"),
        ("http", "example.com", "*", ""),
        ("http", "example.com", "/frag", "a#b"),
    ],
)
def test_request_from_server_matches_urlsplit(
    scheme: str, host: str, path: str, query: str
) -> None:
    fast = Request._from_server("GET", scheme, host, path, query, Headers(), None, "1.2.3.4")
    target = f"{path}?{query}" if query else path
    slow = Request("GET", f"{scheme}://{host}{target}", ip="1.2.3.4")
    assert fast.url == slow.url
    assert urlsplit(fast.url) == slow._parts()
    assert (fast.path, fast.host, fast.scheme, fast.query_string) == (
        slow.path,
        slow.host,
        slow.scheme,
        slow.query_string,
    )
    assert fast.ip == "1.2.3.4" and fast.geo == slow.geo


def test_response_str_body_gets_text_plain_once() -> None:
    assert Response("hi").headers.items() == [("content-type", "text/plain; charset=utf-8")]
    custom = Response("hi", headers={"content-type": "text/html"})
    assert custom.headers.getlist("content-type") == ["text/html"]


LIMITS = HttpLimits(max_body_bytes=100)


@pytest.mark.parametrize(
    "headers",
    [
        [("host", "a"), ("host", "b")],
        [("host", "a/b")],
        [("content-length", "1"), ("transfer-encoding", "chunked")],
        [("content-length", "1"), ("content-length", "1")],
        [("content-length", "\uff11")],
        [("transfer-encoding", "gzip")],
        [("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
        [("content-length", "101")],
        [("host", "a"), ("content-length", "5")],
        [("transfer-encoding", " Chunked ")],
        [],
    ],
)
def test_check_framing_agrees_with_check_head(headers: list[tuple[str, str]]) -> None:
    def run(fn: object) -> object:
        try:
            return fn()  # type: ignore[operator]
        except (RequestError, PayloadTooLarge) as exc:
            return (type(exc), exc.message)

    hosts = [v for k, v in headers if k == "host"]
    lengths = [v for k, v in headers if k == "content-length"]
    encodings = [v for k, v in headers if k == "transfer-encoding"]
    assert run(lambda: check_framing(hosts, lengths, encodings, LIMITS)) == run(
        lambda: check_head("GET", 1, headers, LIMITS)
    )


def test_geo_answers_are_cached_per_peer_only_when_headers_cannot_matter() -> None:
    plain = GeoResolver()
    first = plain.resolve("::ffff:10.0.0.1")
    assert first == ("10.0.0.1", plain.resolve("10.0.0.1")[1])
    assert plain.resolve("::ffff:10.0.0.1") is first

    proxied = GeoResolver(trusted_proxies=["10.0.0.0/8"])
    headers = {"x-forwarded-for": "8.8.8.8"}
    assert proxied.resolve("10.0.0.1", headers.get)[0] == "8.8.8.8"
    assert proxied.resolve("10.0.0.1")[0] == "10.0.0.1"


def test_normalize_host_cache_returns_the_same_answers() -> None:
    for host in ("Example.COM.", "example.com:80", "[::1]:8080", "::1", " a.b "):
        assert normalize_host(host) == normalize_host(host)
    assert normalize_host("Example.COM.:8080") == "example.com"
    assert normalize_host("[::1]:8080") == "[::1]"
