"""bindings/cache: RFC 9111 / RFC 9213 cases found by the http-tests cache-tests suite."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.bindings.cache import Cache
from edgerun.bindings.cache.headers import age_seconds, cache_directives
from edgerun.clock import FakeClock
from edgerun.http import Headers, Request, Response

URL = "https://example.com/r"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> Cache:
    return Cache(clock=clock)


async def test_an_invalid_expires_is_already_expired(cache: Cache, clock: FakeClock) -> None:
    for bad in ("0", "-1", "yesterday", "Thu, 99 Foo 2100 00:00:00 GMT"):
        date = formatdate(clock.time(), usegmt=True)
        await cache.put(URL, Response("x", headers={"expires": bad, "date": date}))
        assert await cache.match(URL) is None, bad


async def test_age_with_two_values_counts_the_first(cache: Cache) -> None:
    await cache.put(
        URL, Response("x", headers={"cache-control": "max-age=10000", "age": "7200, 0"})
    )
    hit = await cache.match(URL)
    assert hit is not None
    assert hit.headers["age"] == "7200"
    # Past the lifetime by the first value: not stored at all.
    await cache.put(URL, Response("x", headers={"cache-control": "max-age=3600", "age": "7200, 0"}))
    assert await cache.match(URL) is None


@given(first=st.integers(0, 10**6), rest=st.lists(st.text(max_size=8), max_size=3))
def test_age_seconds_is_the_first_list_member(first: int, rest: list[str]) -> None:
    assert age_seconds([", ".join([str(first), *rest])]) == first
    assert age_seconds([str(first), *rest]) == first


@given(st.lists(st.text(max_size=30), max_size=4))
def test_age_seconds_is_total(values: list[str]) -> None:
    assert age_seconds(values) >= 0


@pytest.mark.parametrize(
    ("cc", "stored"),
    [
        ("max-age=60", False),
        ("max-age=60, public", True),
        ("s-maxage=60", True),
        ("max-age=60, must-revalidate", True),
    ],
)
async def test_authorized_requests_are_stored_only_when_the_response_allows(
    cache: Cache, cc: str, stored: bool
) -> None:
    request = Request("GET", URL, headers={"authorization": "Bearer t"})
    await cache.put(request, Response("secret", headers={"cache-control": cc}))
    assert (await cache.match(URL) is not None) is stored


@pytest.mark.parametrize("field", ["cdn-cache-control", "cloudflare-cdn-cache-control"])
async def test_targeted_cache_control_wins(cache: Cache, clock: FakeClock, field: str) -> None:
    # The targeted field stores what Cache-Control forbids...
    await cache.put(URL, Response("x", headers={"cache-control": "no-store", field: "max-age=30"}))
    assert await cache.match(URL) is not None
    clock.advance(31)
    assert await cache.match(URL) is None
    # ...and forbids what Cache-Control allows.
    await cache.put(URL, Response("x", headers={"cache-control": "max-age=60", field: "no-store"}))
    assert await cache.match(URL) is None


def test_the_cloudflare_field_is_more_specific_than_cdn_cache_control() -> None:
    headers = Headers(
        [
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=2"),
            ("cloudflare-cdn-cache-control", "max-age=3"),
        ]
    )
    assert cache_directives(headers) == {"max-age": "3"}
    assert cache_directives(Headers([("cache-control", "max-age=1")])) == {"max-age": "1"}
    assert cache_directives(Headers()) == {}


@given(st.dictionaries(st.sampled_from(["cache-control", "cdn-cache-control", "x"]), st.text()))
def test_cache_directives_is_total(fields: dict[str, str]) -> None:
    safe = {k: v.replace("\r", "").replace("\n", "").replace("\x00", "") for k, v in fields.items()}
    assert isinstance(cache_directives(Headers(list(safe.items()))), dict)


@pytest.mark.parametrize("bad", ["max-age = 30", "max-age =30", "max-age= 30", "max age=30"])
def test_an_unparseable_targeted_field_is_ignored(bad: str) -> None:
    headers = Headers([("cache-control", "no-store"), ("cdn-cache-control", bad)])
    assert cache_directives(headers) == {"no-store": None}


@pytest.mark.parametrize("good", ["max-age=30", "max-age=30, no-transform", 'private="a"'])
def test_a_structured_targeted_field_is_obeyed(good: str) -> None:
    headers = Headers([("cache-control", "no-store"), ("cdn-cache-control", good)])
    assert "no-store" not in cache_directives(headers)
