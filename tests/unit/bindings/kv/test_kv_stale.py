"""``stale_if_error``: the last value seen is served while the store is unreachable."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from edgerun.bindings.kv import KVNamespace, MemoryKVBackend, StaleIfErrorBackend
from edgerun.bindings.kv.backend import KVCheck, KVEntry, KVMutation, KVRecord, KVVersionedRecord
from edgerun.clock import FakeClock
from edgerun.errors import KVUnavailable


class Switchable:
    """A memory store that can be taken down: every call then raises KVUnavailable."""

    def __init__(self, clock: FakeClock) -> None:
        self.store = MemoryKVBackend(clock)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise KVUnavailable("store is down")

    async def get(self, key: bytes) -> KVRecord | None:
        self._check()
        return await self.store.get(key)

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        self._check()
        return await self.store.get_entry(key)

    async def put(self, key: bytes, value: bytes, exp: float | None, meta: str | None) -> None:
        self._check()
        await self.store.put(key, value, exp, meta)

    async def delete(self, key: bytes) -> None:
        self._check()
        await self.store.delete(key)

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        self._check()
        return await self.store.commit(checks, mutations)

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        self._check()
        return await self.store.scan(start, end, limit)

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture
def setup(fake_clock):
    inner = Switchable(fake_clock)
    kv = KVNamespace(StaleIfErrorBackend(inner, fake_clock, max_entries=3), clock=fake_clock)
    return inner, kv


async def test_serves_what_it_saw_and_fails_for_what_it_did_not(setup, fake_clock):
    inner, kv = setup
    await kv.put("written", "w")
    other_node = KVNamespace(inner.store, clock=fake_clock)
    await other_node.put("read", "r")
    assert await kv.get("read") == "r"
    await kv.put("gone", "x")
    await kv.delete("gone")
    inner.down = True
    assert await kv.get("written") == "w"
    assert await kv.get("read") == "r"
    assert await kv.get("gone") is None
    with pytest.raises(KVUnavailable):
        await kv.get("never-seen")
    with pytest.raises(KVUnavailable):
        await kv.put("written", "new")
    with pytest.raises(KVUnavailable):
        await kv.list()


async def test_expired_values_stay_expired_and_the_cache_is_bounded(setup, fake_clock):
    inner, kv = setup
    await kv.put("short", "s", expiration_ttl=60)
    for name in ("a", "b", "c"):
        await kv.put(name, name)
    fake_clock.advance(61)
    await kv.put("short", "s2", expiration_ttl=60)
    fake_clock.advance(61)
    inner.down = True
    assert await kv.get("short") is None
    assert await kv.get("c") == "c"
    with pytest.raises(KVUnavailable):
        await kv.get("a")  # evicted: only three keys are kept
