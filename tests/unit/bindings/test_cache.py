"""bindings/cache.py: the Workers-style Cache API with HTTP caching semantics."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from edgerun.bindings.base import Binding
from edgerun.bindings.cache import (
    Cache,
    CacheStats,
    CacheStorage,
    MemoryCacheStore,
    SqliteCacheStore,
    parse_cache_control,
)
from edgerun.clock import FakeClock
from edgerun.errors import CacheError
from edgerun.http import Request, Response

URL = "https://example.com/users/1"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    """Every store runs the same battery: the private one and the shared SQLite file."""
    if request.param == "memory":
        yield MemoryCacheStore()
        return
    shared = SqliteCacheStore(tmp_path / "cache.sqlite3")
    yield shared
    shared.close()


@pytest.fixture
def cache(clock, store):
    return Cache(clock=clock, store=store)


def cached(body="hello", *, cc="max-age=60", status=200, **headers):
    h = {k.replace("_", "-"): v for k, v in headers.items()}
    if cc is not None:
        h["cache-control"] = cc
    return Response(body, status=status, headers=h)


def http_date(epoch):
    return formatdate(epoch, usegmt=True)


# --- put / match round trip ---


async def test_round_trip_keeps_status_body_and_headers(cache):
    resp = Response(
        b'{"id": 1}',
        status=201,
        headers=[
            ("content-type", "application/json"),
            ("cache-control", "max-age=60"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ],
    )
    await cache.put(URL, resp)
    hit = await cache.match(URL)
    assert hit is not None
    assert hit.status == 201
    assert await hit.body() == b'{"id": 1}'
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers.getlist("x-multi") == ["a", "b"]
    assert hit.headers["age"] == "0"
    # The caller's response stays usable after put (its body was read and kept).
    assert await resp.body() == b'{"id": 1}'


async def test_request_object_and_url_string_share_the_key(cache):
    await cache.put(Request("GET", URL), cached())
    assert await cache.match(URL) is not None
    assert await cache.match(Request("GET", URL + "#frag")) is not None
    assert await cache.match("HTTPS://EXAMPLE.COM/users/1") is not None
    assert await cache.match(URL + "?page=2") is None


async def test_empty_path_is_the_root(cache):
    await cache.put("https://example.com", cached())
    assert await cache.match("https://example.com/") is not None


async def test_miss_returns_none_and_counts(cache):
    assert await cache.match(URL) is None
    await cache.put(URL, cached())
    await cache.match(URL)
    assert cache.stats == CacheStats(
        hits=1, misses=1, entries=1, bytes=cache.stats.bytes, evictions=0
    )
    assert cache.stats.bytes > len("hello")


async def test_streamed_body_is_cached(cache):
    async def chunks():
        yield b"hel"
        yield "lo "
        yield b"world"

    resp = Response(chunks(), headers={"cache-control": "max-age=60"})
    await cache.put(URL, resp)
    hit = await cache.match(URL)
    assert hit is not None and await hit.body() == b"hello world"
    # The streamed response was read into memory, so the caller can still send it.
    assert await resp.body() == b"hello world"


async def test_consumed_stream_cannot_be_cached(cache):
    async def chunks():
        yield b"x"

    resp = Response(chunks(), headers={"cache-control": "max-age=60"})
    async for _ in resp.stream():
        pass
    with pytest.raises(CacheError, match="already read"):
        await cache.put(URL, resp)


async def test_put_replaces_the_previous_response(cache):
    await cache.put(URL, cached("one"))
    await cache.put(URL, cached("two"))
    hit = await cache.match(URL)
    assert hit is not None and await hit.text() == "two"
    assert cache.stats.entries == 1


async def test_wrong_content_length_is_corrected(cache):
    await cache.put(URL, cached(b"abc", content_length="99"))
    hit = await cache.match(URL)
    assert hit is not None and hit.headers["content-length"] == "3"


async def test_connection_scoped_headers_are_not_stored(cache):
    await cache.put(URL, cached(connection="x-hop", x_hop="1", keep_alive="timeout=5", x_kept="1"))
    hit = await cache.match(URL)
    assert hit is not None
    assert "x-hop" not in hit.headers and "keep-alive" not in hit.headers
    assert "connection" not in hit.headers and hit.headers["x-kept"] == "1"


# --- the returned copy is the caller's own ---


async def test_mutating_a_match_result_does_not_change_the_cache(cache):
    await cache.put(URL, cached(x_a="1"))
    first = await cache.match(URL)
    assert first is not None
    first.headers["x-a"] = "changed"
    first.headers.add("set-cookie", "s=1")
    del first.headers["cache-control"]
    first.status = 500
    assert await first.body() == b"hello"
    second = await cache.match(URL)
    assert second is not None
    assert second.status == 200
    assert second.headers["x-a"] == "1"
    assert "set-cookie" not in second.headers
    assert second.headers["cache-control"] == "max-age=60"
    assert await second.body() == b"hello"


async def test_mutating_the_put_response_afterwards_does_not_change_the_cache(cache):
    resp = cached(x_a="1")
    await cache.put(URL, resp)
    resp.headers["x-a"] = "changed"
    hit = await cache.match(URL)
    assert hit is not None and hit.headers["x-a"] == "1"


# --- freshness and Age ---


async def test_max_age_expiry_and_age_growth(cache, clock):
    await cache.put(URL, cached(cc="max-age=60"))
    clock.advance(10.7)
    hit = await cache.match(URL)
    assert hit is not None and hit.headers["age"] == "10"
    clock.advance(49.2)  # 59.9 s old: still fresh
    assert await cache.match(URL) is not None
    clock.advance(0.1)  # 60 s old: stale
    assert await cache.match(URL) is None
    assert cache.stats.entries == 0 and cache.stats.bytes == 0


async def test_s_maxage_wins_over_max_age(cache, clock):
    await cache.put(URL, cached(cc="max-age=10, s-maxage=100"))
    clock.advance(50)
    assert await cache.match(URL) is not None
    clock.advance(50)
    assert await cache.match(URL) is None


async def test_s_maxage_can_be_shorter_than_max_age(cache, clock):
    await cache.put(URL, cached(cc="s-maxage=5, max-age=100"))
    clock.advance(5)
    assert await cache.match(URL) is None


async def test_origin_age_is_added_and_shortens_freshness(cache, clock):
    await cache.put(URL, cached(cc="max-age=60", age="50"))
    hit = await cache.match(URL)
    assert hit is not None and hit.headers.getlist("age") == ["50"]
    clock.advance(10)
    assert await cache.match(URL) is None


async def test_response_already_older_than_its_lifetime_is_not_stored(cache):
    await cache.put(URL, cached(cc="max-age=60", age="60"))
    assert cache.stats.entries == 0


async def test_expires_minus_date(cache, clock):
    now = clock.time()
    await cache.put(
        URL, cached(cc=None, date=http_date(now - 100), expires=http_date(now - 100 + 30))
    )
    clock.advance(29)
    assert await cache.match(URL) is not None
    clock.advance(1)
    assert await cache.match(URL) is None


async def test_expires_without_date_uses_the_clock(cache, clock):
    await cache.put(URL, cached(cc=None, expires=http_date(clock.time() + 20)))
    clock.advance(19)
    assert await cache.match(URL) is not None
    clock.advance(1)
    assert await cache.match(URL) is None


async def test_max_age_wins_over_expires(cache, clock):
    await cache.put(URL, cached(cc="max-age=5", expires=http_date(clock.time() + 1000)))
    clock.advance(5)
    assert await cache.match(URL) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"cc": None},  # no freshness information at all
        {"cc": "public"},
        {"cc": "max-age=0"},
        {"cc": "max-age=abc"},  # invalid counts as stale, not as absent
        {"cc": None, "expires": "0"},  # RFC 9111: invalid Expires means expired
        {"cc": "no-store, max-age=60"},
        {"cc": "no-cache, max-age=60"},
        {"cc": "private, max-age=60"},
        {"cc": "max-age=60", "set_cookie": "sid=1"},
    ],
    ids=[
        "no-ttl",
        "public-no-ttl",
        "max-age-0",
        "invalid-max-age",
        "invalid-expires",
        "no-store",
        "no-cache",
        "private",
        "set-cookie",
    ],
)
async def test_not_stored(cache, headers):
    await cache.put(URL, cached(**headers))
    assert await cache.match(URL) is None
    assert cache.stats.entries == 0 and cache.stats.bytes == 0


async def test_not_storable_put_drops_the_previous_entry(cache):
    await cache.put(URL, cached("old"))
    await cache.put(URL, cached("new", cc="no-store"))
    assert await cache.match(URL) is None
    assert cache.stats.bytes == 0


async def test_cacheable_inverted_twins(cache):
    # The same shapes as test_not_stored, made cacheable: proves the rules, not the fixture.
    await cache.put(URL + "/a", cached(cc="public, max-age=60"))
    await cache.put(URL + "/b", cached(cc="max-age=60", x_cookie_like="sid=1"))
    for suffix in ("/a", "/b"):
        assert await cache.match(URL + suffix) is not None


async def test_private_set_cookie_stores_without_the_cookie(cache):
    await cache.put(URL, cached(cc="max-age=60, private=Set-Cookie", set_cookie="sid=1"))
    hit = await cache.match(URL)
    assert hit is not None and "set-cookie" not in hit.headers
    assert await hit.text() == "hello"


async def test_qualified_private_and_no_cache_strip_named_fields(cache):
    await cache.put(
        URL,
        cached(
            cc='max-age=60, private="x-user, set-cookie", no-cache="x-debug"',
            x_user="bob",
            x_debug="1",
            x_public="ok",
            set_cookie="a=1",
        ),
    )
    hit = await cache.match(URL)
    assert hit is not None
    assert "x-user" not in hit.headers and "x-debug" not in hit.headers
    assert "set-cookie" not in hit.headers and hit.headers["x-public"] == "ok"


async def test_error_statuses_with_a_ttl_are_cached(cache):
    await cache.put(URL, cached("gone", status=404))
    hit = await cache.match(URL)
    assert hit is not None and hit.status == 404


# --- put errors ---


async def test_put_rejects_non_get(cache):
    with pytest.raises(CacheError, match="only GET"):
        await cache.put(Request("POST", URL), cached())
    await cache.put(Request("GET", URL), cached())  # inverted twin
    assert cache.stats.entries == 1


async def test_put_rejects_206(cache):
    with pytest.raises(CacheError, match="206"):
        await cache.put(URL, cached(status=206))


async def test_put_rejects_vary_star(cache):
    with pytest.raises(CacheError, match=r"Vary: \*"):
        await cache.put(URL, cached(vary="accept, *"))


async def test_put_error_keeps_the_previous_entry(cache):
    await cache.put(URL, cached("old"))
    with pytest.raises(CacheError):
        await cache.put(URL, cached(status=206))
    assert await cache.match(URL) is not None


@pytest.mark.parametrize("url", ["/relative", "ftp://example.com/x", "not a url", "http://[::1/"])
async def test_keys_must_be_absolute_http_urls(cache, url):
    with pytest.raises(CacheError, match="cache key"):
        await cache.put(url, cached())
    with pytest.raises(CacheError, match="cache key"):
        await cache.match(url)


async def test_key_type_is_checked(cache):
    with pytest.raises(TypeError, match="Request or a URL string"):
        await cache.match(42)


# --- methods on match and delete ---


async def test_match_non_get_misses_unless_ignore_method(cache):
    await cache.put(URL, cached())
    assert await cache.match(Request("POST", URL)) is None
    assert await cache.match(Request("HEAD", URL)) is None
    hit = await cache.match(Request("POST", URL), ignore_method=True)
    assert hit is not None and await hit.text() == "hello"


async def test_delete(cache):
    await cache.put(URL, cached())
    assert await cache.delete(Request("POST", URL)) is False
    assert cache.stats.entries == 1
    assert await cache.delete(URL) is True
    assert await cache.match(URL) is None
    assert await cache.delete(URL) is False
    assert cache.stats.bytes == 0


async def test_delete_ignore_method(cache):
    await cache.put(URL, cached())
    assert await cache.delete(Request("DELETE", URL), ignore_method=True) is True


async def test_delete_of_an_expired_entry_removes_it_but_returns_false(cache, clock):
    await cache.put(URL, cached(cc="max-age=1"))
    clock.advance(2)
    assert await cache.delete(URL) is False
    assert cache.stats.entries == 0


# --- Vary ---


async def test_vary_accept_encoding(cache):
    gz = Request("GET", URL, headers={"accept-encoding": "gzip, br"})
    await cache.put(gz, cached(vary="Accept-Encoding"))
    assert await cache.match(Request("GET", URL, headers={"Accept-Encoding": "gzip,br"}))
    assert await cache.match(Request("GET", URL, headers={"accept-encoding": "identity"})) is None
    assert await cache.match(URL) is None  # header absent vs present
    assert cache.stats.entries == 1  # a variant miss keeps the entry


async def test_vary_absent_header_matches_absent(cache):
    await cache.put(URL, cached(vary="accept-language"))
    assert await cache.match(URL) is not None
    assert await cache.match(Request("GET", URL, headers={"accept-language": "fr"})) is None


async def test_vary_on_several_headers(cache):
    req = Request("GET", URL, headers={"accept": "text/html", "x-tenant": "a"})
    await cache.put(req, cached(vary="Accept", **{"Vary": "X-Tenant"}))
    same = Request("GET", URL, headers={"accept": "text/html", "x-tenant": "a"})
    other = Request("GET", URL, headers={"accept": "text/html", "x-tenant": "b"})
    assert await cache.match(same) is not None
    assert await cache.match(other) is None


# --- conditional requests ---


def conditional(**headers):
    return Request("GET", URL, headers={k.replace("_", "-"): v for k, v in headers.items()})


@pytest.mark.parametrize(
    ("stored", "sent", "not_modified"),
    [
        ('"v1"', '"v1"', True),
        ('"v1"', '"v2"', False),
        ('W/"v1"', '"v1"', True),  # weak comparison for If-None-Match
        ('"v1"', 'W/"v1"', True),
        ('W/"v1"', 'W/"v1"', True),
        ('"v1"', '"v0", "v1"', True),
        ('"v1"', '"a,b", W/"v1"', True),
        ('"v1"', '"v0", "v2"', False),
        ('"v1"', "*", True),
        (None, "*", True),
        (None, '"v1"', False),
    ],
)
async def test_if_none_match(cache, stored, sent, not_modified):
    extra = {"etag": stored} if stored else {}
    await cache.put(URL, cached(x_other="1", **extra))
    resp = await cache.match(conditional(if_none_match=sent))
    assert resp is not None
    if not_modified:
        assert resp.status == 304
        assert await resp.body() == b""
        assert resp.headers["cache-control"] == "max-age=60"
        assert "age" in resp.headers and "x-other" not in resp.headers
        if stored:
            assert resp.headers["etag"] == stored
    else:
        assert resp.status == 200 and await resp.body() == b"hello"
    assert cache.stats.hits == 1


async def test_if_modified_since(cache, clock):
    modified = clock.time() - 3600
    await cache.put(URL, cached(last_modified=http_date(modified)))
    same = await cache.match(conditional(if_modified_since=http_date(modified)))
    later = await cache.match(conditional(if_modified_since=http_date(modified + 60)))
    earlier = await cache.match(conditional(if_modified_since=http_date(modified - 60)))
    garbage = await cache.match(conditional(if_modified_since="yesterday"))
    assert same is not None and same.status == 304
    assert same.headers["last-modified"] == http_date(modified)
    assert later is not None and later.status == 304
    assert earlier is not None and earlier.status == 200
    assert garbage is not None and garbage.status == 200


async def test_if_none_match_takes_precedence_over_if_modified_since(cache, clock):
    modified = clock.time() - 3600
    await cache.put(URL, cached(etag='"v1"', last_modified=http_date(modified)))
    resp = await cache.match(
        conditional(if_none_match='"v2"', if_modified_since=http_date(modified))
    )
    assert resp is not None and resp.status == 200


async def test_if_modified_since_without_last_modified_is_ignored(cache, clock):
    await cache.put(URL, cached())
    resp = await cache.match(conditional(if_modified_since=http_date(clock.time())))
    assert resp is not None and resp.status == 200


async def test_conditionals_do_not_apply_to_error_statuses(cache):
    await cache.put(URL, cached(status=404, etag='"v1"'))
    resp = await cache.match(conditional(if_none_match='"v1"'))
    assert resp is not None and resp.status == 404


# --- Range ---


@pytest.mark.parametrize(
    ("range_value", "status", "body", "content_range"),
    [
        ("bytes=0-3", 206, b"0123", "bytes 0-3/10"),
        ("bytes=4-", 206, b"456789", "bytes 4-9/10"),
        ("bytes=-3", 206, b"789", "bytes 7-9/10"),
        ("bytes=8-100", 206, b"89", "bytes 8-9/10"),
        ("bytes=-100", 206, b"0123456789", "bytes 0-9/10"),
        ("bytes=10-", 416, b"", "bytes */10"),
        ("bytes=-0", 416, b"", "bytes */10"),
        ("bytes=0-1,4-5", 200, b"0123456789", None),  # multi-range: served whole
        ("bytes=5-2", 200, b"0123456789", None),  # invalid: ignored
        ("items=0-1", 200, b"0123456789", None),
        ("bytes=x-y", 200, b"0123456789", None),
    ],
)
async def test_range(cache, range_value, status, body, content_range):
    await cache.put(URL, cached(b"0123456789"))
    resp = await cache.match(conditional(range=range_value))
    assert resp is not None
    assert resp.status == status
    assert await resp.body() == body
    assert resp.headers.get("content-range") == content_range
    if status == 206:
        assert resp.headers["content-length"] == str(len(body))


async def test_if_range(cache):
    await cache.put(URL, cached(b"0123456789", etag='"v1"'))
    matching = await cache.match(conditional(range="bytes=0-1", if_range='"v1"'))
    stale = await cache.match(conditional(range="bytes=0-1", if_range='"v0"'))
    weak = await cache.match(conditional(range="bytes=0-1", if_range='W/"v1"'))
    assert matching is not None and matching.status == 206
    assert stale is not None and stale.status == 200
    assert weak is not None and weak.status == 200  # If-Range needs a strong match


# --- LRU eviction by bytes ---


async def entry_size(clock, url, body):
    probe = Cache(clock=clock)
    await probe.put(url, cached(body))
    return probe.stats.bytes


async def test_lru_eviction_by_bytes(clock, store):
    urls = [f"https://example.com/{i}" for i in range(4)]
    size = await entry_size(clock, urls[0], b"x" * 100)
    cache = Cache(max_bytes=3 * size, clock=clock, store=store)
    for url in urls[:3]:
        await cache.put(url, cached(b"x" * 100))
    assert cache.stats.entries == 3 and cache.stats.bytes == 3 * size
    assert await cache.match(urls[0]) is not None  # touch: 1 is now the LRU
    await cache.put(urls[3], cached(b"x" * 100))
    assert await cache.match(urls[1]) is None
    for url in (urls[0], urls[2], urls[3]):
        assert await cache.match(url) is not None
    assert cache.stats.evictions == 1
    assert cache.stats.bytes <= cache.max_bytes


async def test_lru_inverted_twin_with_room_keeps_everything(clock, store):
    urls = [f"https://example.com/{i}" for i in range(4)]
    size = await entry_size(clock, urls[0], b"x" * 100)
    cache = Cache(max_bytes=4 * size, clock=clock, store=store)
    for url in urls:
        await cache.put(url, cached(b"x" * 100))
    for url in urls:
        assert await cache.match(url) is not None
    assert cache.stats.evictions == 0


async def test_large_entry_evicts_several(clock, store):
    small = await entry_size(clock, "https://example.com/0", b"x" * 10)
    cache = Cache(max_bytes=small * 10, clock=clock, store=store)
    for i in range(10):
        await cache.put(f"https://example.com/{i}", cached(b"x" * 10))
    await cache.put("https://example.com/big", cached(b"y" * (small * 5)))
    assert await cache.match("https://example.com/big") is not None
    assert cache.stats.bytes <= cache.max_bytes
    assert await cache.match("https://example.com/0") is None
    assert await cache.match("https://example.com/9") is not None


async def test_oversized_entry_is_not_stored(clock, store):
    cache = Cache(max_bytes=1000, clock=clock, store=store)
    await cache.put("https://example.com/small", cached(b"s"))
    await cache.put(URL, cached(b"x" * 1000))
    assert await cache.match(URL) is None
    # It did not flush the cache to make room for something that cannot fit.
    assert await cache.match("https://example.com/small") is not None
    # Inverted twin: with room, the same response is stored.
    roomy = Cache(max_bytes=2000, clock=clock)
    await roomy.put(URL, cached(b"x" * 1000))
    assert await roomy.match(URL) is not None


async def test_max_bytes_must_be_positive():
    with pytest.raises(ValueError, match="positive int"):
        Cache(max_bytes=0)
    with pytest.raises(ValueError, match="positive int"):
        Cache(max_bytes=True)


async def test_close_clears_and_is_idempotent(clock):
    cache = Cache(clock=clock)  # a private store: a shared one keeps its entries
    await cache.put(URL, cached())
    await cache.close()
    await cache.close()
    assert cache.stats.entries == 0 and cache.stats.bytes == 0
    assert await cache.match(URL) is None


# --- CacheStorage ---


def test_cache_and_storage_are_bindings():
    assert isinstance(Cache(), Binding)
    assert isinstance(CacheStorage(), Binding)


async def test_cache_storage_default_and_open(clock):
    caches = CacheStorage(max_bytes=10_000, clock=clock)
    assert caches.default is caches.default
    a = await caches.open("a")
    assert await caches.open("a") is a
    assert a is not caches.default and a.name == "a"
    await a.put(URL, cached("in a"))
    assert await caches.default.match(URL) is None
    assert (await caches.open("b")).max_bytes == 10_000
    await caches.close()
    assert a.stats.entries == 0


async def test_caches_are_bounded_separately(clock):
    size = await entry_size(clock, URL, b"x" * 100)
    caches = CacheStorage(max_bytes=size, clock=clock)
    a, b = await caches.open("a"), await caches.open("b")
    await a.put(URL, cached(b"x" * 100))
    await b.put(URL, cached(b"x" * 100))
    await caches.default.put(URL, cached(b"x" * 100))
    for c in (a, b, caches.default):
        assert await c.match(URL) is not None


@pytest.mark.parametrize("name", ["", "default", "x" * 1025])
async def test_cache_storage_rejects_bad_names(name):
    with pytest.raises(CacheError):
        await CacheStorage().open(name)


async def test_cache_storage_longest_name_is_accepted():
    assert (await CacheStorage().open("x" * 1024)).name == "x" * 1024


# --- Cache-Control parsing ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=60", {"max-age": "60"}),
        ("Public, MAX-AGE=60", {"public": None, "max-age": "60"}),
        ('private="set-cookie, x-a", no-cache', {"private": "set-cookie, x-a", "no-cache": None}),
        ("max-age=1, max-age=2", {"max-age": "1"}),
        (" , ,max-age = 5 ,", {"max-age": "5"}),
        ('x="a\\"b"', {"x": 'a"b'}),
        ('x="unterminated, y=1', {"x": "unterminated, y=1"}),
        ("", {}),
    ],
)
def test_parse_cache_control(value, expected):
    assert parse_cache_control(value) == expected
