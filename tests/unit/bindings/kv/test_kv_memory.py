"""MemoryKVBackend specifics: lazy and bulk removal of expired entries."""

from __future__ import annotations

from edgerun.bindings.kv.memory import MemoryKVBackend
from edgerun.clock import FakeClock


async def test_sweep_drops_expired_entries_only() -> None:
    clock = FakeClock()
    backend = MemoryKVBackend(clock)
    now = clock.time()
    for i in range(10):
        await backend.put(bytes([1, i]), b"v", now + 5 if i % 2 else None, None)
    clock.advance(5)
    assert backend.sweep() == 5
    assert backend.sweep() == 0
    keys = [entry[0] for entry in await backend.scan(b"", None, 100)]
    assert keys == [bytes([1, i]) for i in range(0, 10, 2)]
    # The sorted index stays consistent for later writes and deletes.
    await backend.put(bytes([1, 1]), b"again", None, None)
    await backend.delete(bytes([1, 0]))
    keys = [entry[0] for entry in await backend.scan(b"", None, 100)]
    assert keys == [bytes([1, 1]), bytes([1, 2]), bytes([1, 4]), bytes([1, 6]), bytes([1, 8])]


async def test_an_expired_entry_read_is_dropped() -> None:
    clock = FakeClock()
    backend = MemoryKVBackend(clock)
    await backend.put(b"\x01k", b"v", clock.time() + 1, None)
    clock.advance(1)
    assert await backend.get(b"\x01k") is None
    assert backend.sweep() == 0  # already gone


async def test_scan_honours_range_and_limit() -> None:
    backend = MemoryKVBackend(FakeClock())
    for i in range(10):
        await backend.put(bytes([i]), b"v", None, None)
    keys = [entry[0] for entry in await backend.scan(bytes([2]), bytes([7]), 3)]
    assert keys == [bytes([2]), bytes([3]), bytes([4])]
    assert await backend.scan(bytes([7]), bytes([7]), 3) == []
