"""bindings/cache/store.py: one SQLite store shared by several caches (as by workers)."""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

from edgerun.bindings.cache import CACHE_FILENAME, Cache, SqliteCacheStore
from edgerun.bindings.cache.store import _NEXT_USE
from edgerun.clock import FakeClock
from edgerun.http import Response
from edgerun.node.wiring import open_bindings, shared_cache_store
from edgerun.runtime.isolate.protocol import BindingSpec

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


async def test_cache_bindings_live_in_the_state_dir(tmp_path: Path) -> None:
    # The in-process node opens its [[cache]] bindings this way: they must land in the
    # deployment's file, where any other process of the deployment finds them.
    clock = FakeClock()
    spec = BindingSpec("cache", "PAGES", {"max_bytes": 1 << 20})
    bindings = await open_bindings([spec], tmp_path, clock)
    pages = bindings["PAGES"]
    assert isinstance(pages, Cache)
    await pages.put(URL, cached("on disk"))
    await pages.close()
    other = SqliteCacheStore(tmp_path / CACHE_FILENAME)
    hit = await Cache("PAGES", clock=clock, store=other).match(URL)
    assert hit is not None
    assert await hit.text() == "on disk"
    other.close()


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    # A worker is forked from a zygote that may have opened the store: it must not use
    # the inherited SQLite connection, yet must see the same entries.
    parent = shared_cache_store(tmp_path)
    assert shared_cache_store(tmp_path) is parent
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = False
        try:
            child = shared_cache_store(tmp_path)
            ok = child is not parent and child.usage("default") == (0, 0)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_next_use_comes_from_the_index(tmp_path: Path) -> None:
    # Every hit and put computes the next use counter; a table-wide max would scan every
    # row (milliseconds on a full cache), the per-cache one is an index lookup.
    store = SqliteCacheStore(tmp_path / "cache.sqlite3")
    query = _NEXT_USE.strip("()")
    plan = store._conn.execute(f"EXPLAIN QUERY PLAN {query}", ("default",)).fetchall()
    assert any("INDEX cache_lru (name=?)" in str(row[-1]) for row in plan), plan
    store.close()


def test_a_full_disk_stores_nothing_and_keeps_the_file(tmp_path: Path) -> None:
    # An isolated worker writes under RLIMIT_FSIZE ([limits] max_disk_mb): past it a put
    # must decline (as a cache may), not fail, and the file must stay readable.
    path = tmp_path / "cache.sqlite3"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            limit = 512 * 1024
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            cache = Cache(max_bytes=64 << 20, store=SqliteCacheStore(path))
            for i in range(16):
                # Random bytes: SQLite stores them as they are, 128 KiB each.
                response = Response(os.urandom(128 * 1024), headers={"cache-control": "max-age=60"})
                asyncio.run(cache.put(f"{URL}/{i}", response))
            entries, size = cache.stats.entries, cache.stats.bytes
            code = 0 if 0 < entries < 16 and size < limit else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store = SqliteCacheStore(path)
    entries, _ = store.usage("default")
    assert 0 < entries < 16
    assert store._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()
