"""bindings/cache/store.py: one SQLite store shared by several caches (as by workers)."""

from __future__ import annotations

from pathlib import Path

from edgerun.bindings.cache import Cache, SqliteCacheStore
from edgerun.clock import FakeClock
from edgerun.http import Response

URL = "https://example.com/a"


def cached(body: str = "x") -> Response:
    return Response(body, headers={"cache-control": "max-age=60"})


async def test_a_put_through_one_store_is_a_hit_through_another(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "cache.sqlite3"
    one, two = SqliteCacheStore(path), SqliteCacheStore(path)
    writer = Cache(clock=clock, store=one)
    reader = Cache(clock=clock, store=two)
    await writer.put(URL, cached("shared"))
    clock.advance(5)
    hit = await reader.match(URL)
    assert hit is not None
    assert await hit.text() == "shared"
    assert hit.headers["age"] == "5"
    # Closing one user keeps the entries for the others, and for later processes.
    await writer.close()
    one.close()
    assert await Cache(clock=clock, store=SqliteCacheStore(path)).match(URL) is not None
    assert await Cache("other", clock=clock, store=two).match(URL) is None  # names apart
    two.close()


async def test_lru_and_the_byte_bound_hold_across_stores(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "cache.sqlite3"
    one, two = SqliteCacheStore(path), SqliteCacheStore(path)
    probe = Cache(clock=clock, store=one)
    await probe.put("https://example.com/0", cached())
    size = probe.stats.bytes
    a = Cache(max_bytes=2 * size, clock=clock, store=one)
    b = Cache(max_bytes=2 * size, clock=clock, store=two)
    await b.put("https://example.com/1", cached())
    assert await a.match("https://example.com/0") is not None  # 0 is now the newest use
    await b.put("https://example.com/2", cached())  # evicts 1, the least recently used
    assert await a.match("https://example.com/1") is None
    assert await b.match("https://example.com/0") is not None
    assert a.stats.bytes == b.stats.bytes <= 2 * size
    assert b.stats.evictions == 1
    one.close()
    two.close()
