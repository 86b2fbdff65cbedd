"""open_kv and KVNamespace wiring (behaviour common to backends is in tests/conformance)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgerun.bindings.kv as kv_package
from edgerun.bindings.base import Binding
from edgerun.bindings.kv import (
    KVBackend,
    KVLimits,
    KVNamespace,
    MemoryKVBackend,
    SqliteKVBackend,
    open_kv,
)
from edgerun.clock import FakeClock, SystemClock


def test_public_surface_is_all() -> None:
    for name in kv_package.__all__:
        assert hasattr(kv_package, name), name


def test_open_kv_defaults_to_sqlite(tmp_path: Path) -> None:
    kv = open_kv("users", path=tmp_path / "kv.sqlite3")
    assert isinstance(kv.backend, SqliteKVBackend)
    assert kv.name == "users"
    assert kv.limits == KVLimits()
    assert "users" in repr(kv)


def test_open_kv_memory_ignores_path(tmp_path: Path) -> None:
    kv = open_kv("users", backend="memory", path=tmp_path / "unused")
    assert isinstance(kv.backend, MemoryKVBackend)
    assert not (tmp_path / "unused").exists()


def test_open_kv_creates_the_directory(tmp_path: Path) -> None:
    open_kv("users", path=tmp_path / "deep" / "er" / "kv.sqlite3")
    assert (tmp_path / "deep" / "er" / "kv.sqlite3").is_file()


def test_sqlite_needs_a_path() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        open_kv("users")


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown KV backend 'redis'; valid backends: sqlite, memory"
    ):
        open_kv("users", backend="redis")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_namespace_name_must_be_a_non_empty_str(bad: object) -> None:
    with pytest.raises(ValueError, match="namespace"):
        open_kv(bad, backend="memory")  # type: ignore[arg-type]


def test_custom_limits_are_used(tmp_path: Path) -> None:
    limits = KVLimits(max_key_bytes=8)
    assert open_kv("n", backend="memory", limits=limits).limits is limits


def test_namespaces_and_backends_satisfy_their_protocols(tmp_path: Path) -> None:
    memory = open_kv("n", backend="memory")
    sqlite = open_kv("n", path=tmp_path / "kv.sqlite3")
    assert isinstance(memory, Binding)
    assert isinstance(memory.backend, KVBackend)
    assert isinstance(sqlite.backend, KVBackend)


async def test_the_clock_given_to_open_kv_decides_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    for kv in (
        open_kv("n", backend="memory", clock=clock),
        open_kv("n", path=tmp_path / "kv.sqlite3", clock=clock),
    ):
        await kv.put("k", "v", expiration_ttl=5)
        clock.advance(5)
        assert await kv.get("k") is None
        await kv.close()


async def test_system_clock_is_the_default() -> None:
    kv = open_kv("n", backend="memory")
    await kv.put("k", "v", expiration=SystemClock().time() + 3600)
    assert await kv.get("k") == "v"


async def test_text_and_bytes_gets_do_no_json_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_json(*args: object, **kwargs: object) -> None:
        raise AssertionError("json.loads called on the text/bytes path")

    kv = open_kv("n", backend="memory")
    await kv.put("k", '{"a": 1}')
    monkeypatch.setattr("json.loads", no_json)
    assert await kv.get("k") == '{"a": 1}'
    assert await kv.get("k", type="bytes") == b'{"a": 1}'
    monkeypatch.undo()
    assert await kv.get("k", type="json") == {"a": 1}


async def test_list_asks_the_backend_for_one_extra_entry() -> None:
    # The extra entry is how list() knows another page exists without a second query.
    calls: list[int] = []
    backend = MemoryKVBackend(FakeClock())
    original = backend.scan

    async def scan(
        start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, float | None, str | None]]:
        calls.append(limit)
        return await original(start, end, limit)

    backend.scan = scan  # type: ignore[method-assign]
    kv = KVNamespace(backend, name="n")
    await kv.list(limit=10)
    assert calls == [11]
