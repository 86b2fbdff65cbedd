"""bindings/cache.py properties: byte bound, stats consistency, total header parsing."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgerun.bindings.cache import Cache, parse_cache_control
from edgerun.clock import FakeClock
from edgerun.http import Request, Response

MAX_BYTES = 2_000
URLS = [f"https://example.com/item/{i}" for i in range(6)]
ENCODINGS = [None, "gzip", "br"]

# Header values the Headers class accepts: no CR, LF or NUL.
header_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=60,
)


def request(url: str, encoding: str | None) -> Request:
    headers = {} if encoding is None else {"accept-encoding": encoding}
    return Request("GET", url, headers=headers)


class CacheMachine(RuleBasedStateMachine):
    """Random put/match/delete/advance sequences against a model of the last put per URL.

    The model records, per URL, the body last offered, its expiry and the
    Accept-Encoding it varied on. The cache may forget entries (eviction), but whatever
    it returns must be that last body, fresh, for the right variant.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.cache = Cache(max_bytes=MAX_BYTES, clock=self.clock)
        # url -> (body, expires_at monotonic, accept-encoding at put or None if no Vary)
        self.model: dict[str, tuple[bytes, float, str | None, bool]] = {}
        self.matches = 0

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @rule(
        url=st.sampled_from(URLS),
        size=st.integers(0, MAX_BYTES + 200),
        max_age=st.integers(0, 100),
        encoding=st.sampled_from(ENCODINGS),
        vary=st.booleans(),
        storable=st.booleans(),
    )
    def put(self, url, size, max_age, encoding, vary, storable):
        body = bytes([len(self.model) % 251]) * size
        headers = {"cache-control": f"max-age={max_age}" if storable else "no-store"}
        if vary:
            headers["vary"] = "Accept-Encoding"
        self.run(self.cache.put(request(url, encoding), Response(body, headers=headers)))
        if storable and max_age > 0:
            self.model[url] = (body, self.clock.monotonic() + max_age, encoding, vary)
            # Key and headers take well under 200 bytes, so such a response fits and
            # must be retrievable right after put, whatever it had to evict.
            if size + 200 <= MAX_BYTES:
                hit = self.run(self.cache.match(request(url, encoding)))
                self.matches += 1
                assert hit is not None
                assert self.run(hit.body()) == body
        else:
            self.model.pop(url, None)

    @rule(url=st.sampled_from(URLS), encoding=st.sampled_from(ENCODINGS))
    def match(self, url, encoding):
        hit = self.run(self.cache.match(request(url, encoding)))
        self.matches += 1
        if hit is None:
            return
        assert url in self.model, "the cache returned something never stored (or deleted)"
        body, expires_at, stored_encoding, vary = self.model[url]
        assert self.clock.monotonic() < expires_at, "the cache returned an expired entry"
        if vary:
            assert encoding == stored_encoding, "the cache ignored Vary"
        assert self.run(hit.body()) == body
        assert int(hit.headers["age"]) >= 0

    @rule(url=st.sampled_from(URLS))
    def delete(self, url):
        removed = self.run(self.cache.delete(url))
        entry = self.model.pop(url, None)
        if removed:
            assert entry is not None and self.clock.monotonic() < entry[1]
        assert self.run(self.cache.match(url)) is None
        self.matches += 1

    @rule(seconds=st.sampled_from([0.5, 1, 10, 60]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: self.cache.stats.entries > 0)
    @rule()
    def drain(self):
        # Deleting every URL must bring the byte count back to exactly zero: the
        # accounting neither leaks nor double-frees across evictions and expiries.
        for url in URLS:
            self.run(self.cache.delete(url))
        self.model.clear()
        assert self.cache.stats.entries == 0
        assert self.cache.stats.bytes == 0

    @invariant()
    def bounded_and_consistent(self):
        stats = self.cache.stats
        assert 0 <= stats.bytes <= MAX_BYTES
        assert 0 <= stats.entries <= len(URLS)
        assert (stats.entries == 0) == (stats.bytes == 0)
        assert stats.hits + stats.misses == self.matches
        assert stats.evictions >= 0


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@given(header_text)
def test_parse_cache_control_never_raises(value):
    directives = parse_cache_control(value)
    for name, arg in directives.items():
        assert name == name.lower() and name.strip() == name and name
        assert arg is None or isinstance(arg, str)


@given(
    st.lists(
        st.sampled_from(
            [
                "max-age",
                "s-maxage",
                "private",
                "no-cache",
                "=",
                ",",
                '"',
                "\\",
                " ",
                "60",
                "set-cookie",
                "-1",
                "99999999999999999999999",
            ]
        )
    )
)
def test_parse_cache_control_never_raises_on_near_misses(parts):
    parse_cache_control("".join(parts))


@settings(deadline=None)
@given(
    cache_control=header_text,
    expires=header_text,
    date=header_text,
    age=header_text,
    vary=header_text.filter(lambda v: "*" not in v),
    last_modified=header_text,
    etag=header_text,
)
def test_put_never_raises_on_odd_response_headers(
    cache_control, expires, date, age, vary, last_modified, etag
):
    cache = Cache(max_bytes=MAX_BYTES, clock=FakeClock())
    headers = {
        "cache-control": cache_control,
        "expires": expires,
        "date": date,
        "age": age,
        "vary": vary,
        "last-modified": last_modified,
        "etag": etag,
    }
    asyncio.run(cache.put(URLS[0], Response(b"body", headers=headers)))
    assert 0 <= cache.stats.bytes <= MAX_BYTES


@settings(deadline=None)
@given(
    if_none_match=header_text,
    if_modified_since=header_text,
    range_value=header_text,
    if_range=header_text,
)
def test_match_never_raises_on_odd_request_headers(
    if_none_match, if_modified_since, range_value, if_range
):
    async def scenario() -> None:
        cache = Cache(clock=FakeClock())
        await cache.put(
            URLS[0],
            Response(
                b"0123456789",
                headers={
                    "cache-control": "max-age=60",
                    "etag": '"v1"',
                    "last-modified": "Mon, 13 Nov 2023 00:00:00 GMT",
                },
            ),
        )
        for name, value in (
            ("if-none-match", if_none_match),
            ("if-modified-since", if_modified_since),
            ("range", range_value),
            ("if-range", if_range),
        ):
            resp = await cache.match(Request("GET", URLS[0], headers={name: value}))
            assert resp is not None and resp.status in (200, 206, 304, 416)
            body = await resp.body()
            if resp.status == 206:
                assert body and b"0123456789".find(body) >= 0

    asyncio.run(scenario())
