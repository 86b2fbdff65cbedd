"""http.py: Headers, QueryParams, cookies, Request and Response bodies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.errors import MalformedJSON
from edgerun.http import Headers, QueryParams, Request, Response, Secret, parse_cookie_header


def test_headers_case_insensitive_and_multi_valued():
    h = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-Thing", "x")])
    assert h["x-thing"] == h["X-THING"] == "x"
    assert h.getlist("SET-COOKIE") == ["a=1", "b=2"]
    assert "Set-Cookie" in h and "missing" not in h
    assert h.keys() == ["set-cookie", "x-thing"]
    h.set("set-cookie", "c=3")
    assert h.getlist("set-cookie") == ["c=3"]
    del h["X-Thing"]
    assert h.get("x-thing") is None
    with pytest.raises(KeyError):
        h["x-thing"]


def test_headers_raw_round_trip():
    h = Headers.from_raw([(b"Content-Type", b"text/plain"), (b"x-a", b"1"), (b"x-a", b"2")])
    assert h.raw() == [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"x-a", b"2")]


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\x00b"])
def test_header_injection_is_rejected(value):
    with pytest.raises(ValueError, match="CR, LF and NUL"):
        Headers({"x-a": value})
    with pytest.raises(ValueError):
        Response("ok").headers.add("x-a", value)


def test_header_name_must_be_a_token():
    with pytest.raises(ValueError, match="invalid header name"):
        Headers({"bad name": "v"})


@given(st.text(), st.text())
def test_header_validation_accepts_exactly_the_safe_values(name, value):
    h = Headers()
    token = bool(name) and all(
        c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name
    )
    safe = not any(c in value for c in "\r\n\x00")
    if token and safe:
        h.add(name, value)
        assert h.get(name) == value
    else:
        with pytest.raises(ValueError):
            h.add(name, value)


def test_query_params_multi_dict():
    q = QueryParams("a=1&a=2&b=&c=x%20y")
    assert q["a"] == "1"
    assert q.getlist("a") == ["1", "2"]
    assert q["b"] == ""
    assert q["c"] == "x y"
    assert dict(q) == {"a": "1", "b": "", "c": "x y"}
    with pytest.raises(KeyError):
        q["missing"]


@given(st.text())
def test_cookie_parser_never_raises(header):
    cookies = parse_cookie_header(header)
    assert all(isinstance(k, str) and k for k in cookies)


def test_cookie_parser_is_lenient():
    assert parse_cookie_header('a=1; garbage; b="two"; =x; a=3') == {"a": "1", "b": "two"}


async def test_request_parts_and_cookies():
    r = Request(
        "get",
        "https://api.example.com:8443/users/1?userId=7&tag=a&tag=b",
        headers={"cookie": "session=abc; ab_group=B"},
    )
    assert r.method == "GET"
    assert r.path == "/users/1"
    assert r.host == "api.example.com:8443"
    assert r.scheme == "https"
    assert r.query["userId"] == "7"
    assert r.query.getlist("tag") == ["a", "b"]
    assert r.cookies == {"session": "abc", "ab_group": "B"}
    assert r.cf is r.geo


async def test_request_streamed_body_read_once_then_cached():
    async def chunks():
        yield b'{"a": '
        yield b"1}"

    r = Request("POST", "http://x/", body=chunks())
    assert await r.json() == {"a": 1}
    assert await r.body() == b'{"a": 1}'
    assert [c async for c in r.stream()] == [b'{"a": 1}']


async def test_request_stream_can_only_be_consumed_once():
    async def chunks():
        yield b"a"

    r = Request("POST", "http://x/", body=chunks())
    assert [c async for c in r.stream()] == [b"a"]
    with pytest.raises(RuntimeError, match="already been read"):
        [c async for c in r.stream()]


async def test_malformed_json_raises_typed_error_with_position():
    r = Request("POST", "http://x/", body=b'{"a": }')
    with pytest.raises(MalformedJSON, match="column 7") as info:
        await r.json()
    assert info.value.status == 400
    assert info.value.code == "malformed_json"


async def test_text_uses_declared_charset():
    r = Request(
        "POST",
        "http://x/",
        headers={"content-type": "text/plain; charset=latin-1"},
        body="café".encode("latin-1"),
    )
    assert await r.text() == "café"


async def test_response_kinds():
    assert (await Response("hi").body()) == b"hi"
    assert Response("hi").headers["content-type"] == "text/plain; charset=utf-8"
    j = Response.json({"a": [1, 2]}, status=201)
    assert j.status == 201
    assert j.headers["content-type"] == "application/json"
    assert await j.json_body() == {"a": [1, 2]}
    r = Response.redirect("/next", 307)
    assert r.status == 307 and r.headers["location"] == "/next"
    with pytest.raises(ValueError, match="redirect status"):
        Response.redirect("/x", 200)
    with pytest.raises(ValueError, match="200 to 599"):
        Response("x", status=42)
    with pytest.raises(TypeError, match="body must be"):
        Response(12345)  # type: ignore[arg-type]


async def test_streamed_response_keeps_chunks():
    async def gen():
        yield "a"
        yield b"b"

    r = Response(gen())
    assert r.content is None
    assert [c async for c in r.stream()] == [b"a", b"b"]


def test_set_and_delete_cookie():
    r = Response("ok")
    r.set_cookie("group", "A", max_age=300, httponly=True, secure=True, samesite="strict")
    r.set_cookie("theme", "dark")
    r.delete_cookie("old")
    cookies = r.headers.getlist("set-cookie")
    assert cookies[0] == "group=A; Max-Age=300; Path=/; Secure; HttpOnly; SameSite=Strict"
    assert cookies[1] == "theme=dark; Path=/; SameSite=Lax"
    assert cookies[2].startswith("old=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")


@pytest.mark.parametrize("value", ["a;b", "a b", 'a"', "é"])
def test_cookie_values_that_would_corrupt_the_header_are_rejected(value):
    with pytest.raises(ValueError, match="invalid cookie value"):
        Response("ok").set_cookie("c", value)


def test_samesite_none_requires_secure():
    with pytest.raises(ValueError, match="requires secure"):
        Response("ok").set_cookie("c", "v", samesite="none")
    Response("ok").set_cookie("c", "v", samesite="none", secure=True)


def test_secret_masks_repr_but_is_a_string():
    s = Secret("hunter2")
    assert s == "hunter2"
    assert f"Bearer {s}" == "Bearer hunter2"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in repr({"k": s})
