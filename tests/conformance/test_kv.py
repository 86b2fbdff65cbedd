"""The KV contract, run against every backend through the public ``KVNamespace`` API.

A new backend joins by adding its name to ``BACKENDS`` (and to ``SHARED_BACKENDS`` if
separate ``KVNamespace`` objects on it share one store) plus a branch in
``KVFactory.__call__``. Time is a ``FakeClock``: TTL tests advance it, never sleep.
The nats backend runs against the session's real ``nats-server`` (``nats_server``
fixture), with bucket names unique to each test.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.bindings.kv import KVConflict, KVKey, KVLimits, KVNamespace, open_kv
from edgerun.clock import FakeClock
from edgerun.errors import KVError, KVValidationError

BACKENDS = ["memory", "sqlite", "nats"]
# Backends where two KVNamespace objects can reach the same data (a file, a server).
SHARED_BACKENDS = ["sqlite", "nats"]

MIB = 1024 * 1024


class KVFactory:
    """Opens ``KVNamespace`` objects on one store of the backend under test.

    Every namespace it opens is closed at teardown. On a shared backend, calls with
    the same ``namespace`` reach the same data.
    """

    def __init__(self, backend: str, directory: Path, nats_url: str | None = None) -> None:
        self.backend = backend
        self.path = directory / "kv.sqlite3"
        self.nats_url = nats_url
        # One NATS server serves the whole session: namespaces get a per-test suffix.
        self._suffix = uuid.uuid4().hex[:12]
        self._opened: list[KVNamespace] = []

    def __call__(
        self,
        clock: FakeClock | None = None,
        limits: KVLimits | None = None,
        namespace: str = "conformance",
    ) -> KVNamespace:
        clock = clock if clock is not None else FakeClock()
        if self.backend == "memory":
            kv = open_kv(namespace, backend="memory", clock=clock, limits=limits)
        elif self.backend == "sqlite":
            kv = open_kv(namespace, backend="sqlite", path=self.path, clock=clock, limits=limits)
        elif self.backend == "nats":
            kv = open_kv(
                f"{namespace}-{self._suffix}",
                backend="nats",
                url=self.nats_url,
                clock=clock,
                limits=limits,
            )
        else:  # pragma: no cover - a backend listed without a branch here
            raise AssertionError(f"no factory for backend {self.backend!r}")
        self._opened.append(kv)
        return kv

    async def close_all(self) -> None:
        for kv in self._opened:
            await kv.close()


def _factory(request: pytest.FixtureRequest, tmp_path: Path) -> KVFactory:
    url = None
    if request.param == "nats":  # only nats tests start (or reuse) the server
        url = request.getfixturevalue("nats_server").url
    return KVFactory(request.param, tmp_path, url)


@pytest.fixture(params=BACKENDS)
async def make_kv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KVFactory]:
    factory = _factory(request, tmp_path)
    yield factory
    await factory.close_all()


@pytest.fixture(params=SHARED_BACKENDS)
async def make_shared_kv(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[KVFactory]:
    factory = _factory(request, tmp_path)
    yield factory
    await factory.close_all()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kv(make_kv: KVFactory, clock: FakeClock) -> KVNamespace:
    return make_kv(clock)


async def all_keys(kv: KVNamespace, **kwargs: Any) -> list[Any]:
    """Every key name, following cursors."""
    names: list[Any] = []
    cursor = None
    while True:
        page = await kv.list(cursor=cursor, **kwargs)
        names.extend(info.name for info in page.keys)
        if page.list_complete:
            return names
        cursor = page.cursor


# --- get / put / delete ---------------------------------------------------------------


async def test_missing_key_is_none(kv: KVNamespace) -> None:
    assert await kv.get("nope") is None
    assert await kv.get("nope", type="json") is None
    assert await kv.get("nope", type="bytes") is None
    missing = await kv.get_with_metadata("nope")
    assert (missing.value, missing.metadata) == (None, None)


async def test_put_get_overwrite_delete(kv: KVNamespace) -> None:
    await kv.put("k", "one")
    assert await kv.get("k") == "one"
    await kv.put("k", "two")
    assert await kv.get("k") == "two"
    await kv.delete("k")
    assert await kv.get("k") is None
    await kv.delete("k")  # deleting a missing key is fine


async def test_overwrite_replaces_metadata_and_expiration(
    kv: KVNamespace, clock: FakeClock
) -> None:
    await kv.put("k", "v1", metadata={"a": 1}, expiration_ttl=10)
    await kv.put("k", "v2")
    result = await kv.get_with_metadata("k")
    assert (result.value, result.metadata) == ("v2", None)
    clock.advance(60)
    assert await kv.get("k") == "v2"


async def test_the_three_get_types(kv: KVNamespace) -> None:
    await kv.put("doc", json.dumps({"name": "Ada", "tags": [1, 2]}))
    assert await kv.get("doc") == '{"name": "Ada", "tags": [1, 2]}'
    assert await kv.get("doc", type="json") == {"name": "Ada", "tags": [1, 2]}
    assert await kv.get("doc", type="bytes") == b'{"name": "Ada", "tags": [1, 2]}'


async def test_json_get_on_non_json_raises_clearly(kv: KVNamespace) -> None:
    await kv.put("plain", "not json {")
    with pytest.raises(KVError, match=r"not JSON.*type='text'"):
        await kv.get("plain", type="json")
    assert await kv.get("plain") == "not json {"


async def test_text_get_on_binary_raises_clearly(kv: KVNamespace) -> None:
    await kv.put("bin", b"\xff\xfe\x00")
    with pytest.raises(KVError, match=r"not UTF-8 text.*type='bytes'"):
        await kv.get("bin")
    assert await kv.get("bin", type="bytes") == b"\xff\xfe\x00"


async def test_unknown_get_type_is_rejected(kv: KVNamespace) -> None:
    with pytest.raises(KVValidationError, match="'arrayBuffer'"):
        await kv.get("k", type="arrayBuffer")


async def test_bytes_values_with_nul_bytes(kv: KVNamespace) -> None:
    payload = bytes(range(256)) * 4 + b"\x00\x00"
    await kv.put("bin", payload)
    assert await kv.get("bin", type="bytes") == payload
    await kv.put("ba", bytearray(b"\x00a\x00"))
    await kv.put("mv", memoryview(b"\x00b\x00"))
    assert await kv.get("ba", type="bytes") == b"\x00a\x00"
    assert await kv.get("mv", type="bytes") == b"\x00b\x00"


async def test_text_value_round_trips_unicode(kv: KVNamespace) -> None:
    await kv.put("u", "héllo wörld 🌍 中文 \x00 end")
    assert await kv.get("u") == "héllo wörld 🌍 中文 \x00 end"


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], 42, 1.5, None, True])
async def test_non_str_values_are_rejected_with_a_hint(kv: KVNamespace, value: Any) -> None:
    with pytest.raises(KVValidationError, match=r"json\.dumps"):
        await kv.put("k", value)
    assert await kv.get("k") is None


async def test_metadata_round_trip(kv: KVNamespace) -> None:
    meta = {"user": "ada", "n": 3, "nested": {"ok": True, "list": [1, "x", None]}, "é": "ü"}
    await kv.put("k", "v", metadata=meta)
    result = await kv.get_with_metadata("k")
    assert result.value == "v"
    assert result.metadata == meta
    as_json = await kv.get_with_metadata("k", type="bytes")
    assert as_json.value == b"v"
    (info,) = (await kv.list()).keys
    assert info.metadata == meta


async def test_metadata_can_be_any_json_value(kv: KVNamespace) -> None:
    for i, meta in enumerate(["text", 7, [1, 2], False]):
        await kv.put(f"k{i}", "v", metadata=meta)
        assert (await kv.get_with_metadata(f"k{i}")).metadata == meta


async def test_unicode_keys(kv: KVNamespace) -> None:
    keys = ["ключ", "🔑", "鍵", "clé", "a\x00b", " space"]
    for key in keys:
        await kv.put(key, f"value of {key}")
    for key in keys:
        assert await kv.get(key) == f"value of {key}"
    # str keys list in code point order (UTF-8 byte order is the same order).
    assert await all_keys(kv) == sorted(keys)


# --- expiration -----------------------------------------------------------------------


async def test_ttl_expires_for_get_and_list_without_a_sweep(
    kv: KVNamespace, clock: FakeClock
) -> None:
    await kv.put("short", "v", expiration_ttl=60, metadata={"m": 1})
    await kv.put("forever", "v")
    clock.advance(59.5)
    assert await kv.get("short") == "v"
    assert await all_keys(kv) == ["forever", "short"]
    clock.advance(0.5)  # exactly at the expiration instant: gone
    assert await kv.get("short") is None
    assert await kv.get("short", type="bytes") is None
    assert (await kv.get_with_metadata("short")).metadata is None
    assert await all_keys(kv) == ["forever"]
    assert await all_keys(kv, prefix="sh") == []


async def test_absolute_expiration(kv: KVNamespace, clock: FakeClock) -> None:
    at = int(clock.time()) + 3600
    await kv.put("k", "v", expiration=at)
    (info,) = (await kv.list()).keys
    assert info.expiration == at
    assert isinstance(info.expiration, int)
    clock.set(at - 1)
    assert await kv.get("k") == "v"
    clock.set(at)
    assert await kv.get("k") is None
    assert (await kv.list()).keys == []


async def test_expiration_is_reported_as_whole_epoch_seconds(
    kv: KVNamespace, clock: FakeClock
) -> None:
    clock.set(1_700_000_000.25)
    await kv.put("k", "v", expiration_ttl=10.5)
    (info,) = (await kv.list()).keys
    assert info.expiration == 1_700_000_011  # 1_700_000_010.75 rounded up


async def test_keys_without_expiration_report_none(kv: KVNamespace) -> None:
    await kv.put("k", "v")
    assert (await kv.list()).keys[0].expiration is None


async def test_expiration_and_ttl_together_are_rejected(kv: KVNamespace, clock: FakeClock) -> None:
    with pytest.raises(KVValidationError, match="not both"):
        await kv.put("k", "v", expiration=clock.time() + 100, expiration_ttl=100)


async def test_minimum_ttl_and_its_inverted_twin(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock)
    await kv.put("at-limit", "v", expiration_ttl=1)
    assert await kv.get("at-limit") == "v"
    with pytest.raises(KVValidationError, match="the minimum is 1 second"):
        await kv.put("under", "v", expiration_ttl=0.999)
    with pytest.raises(KVValidationError, match="expiration_ttl"):
        await kv.put("negative", "v", expiration_ttl=-5)
    relaxed = make_kv(clock, KVLimits(min_ttl_seconds=0.5))
    await relaxed.put("under", "v", expiration_ttl=0.999)
    assert await relaxed.get("under") == "v"


async def test_minimum_absolute_expiration_and_its_inverted_twin(
    make_kv: KVFactory, clock: FakeClock
) -> None:
    kv = make_kv(clock)
    now = clock.time()
    await kv.put("at-limit", "v", expiration=now + 1)
    assert await kv.get("at-limit") == "v"
    with pytest.raises(KVValidationError, match="at least 1 second in the future"):
        await kv.put("soon", "v", expiration=now + 0.5)
    with pytest.raises(KVValidationError, match="in the past"):
        await kv.put("past", "v", expiration=now - 10)
    relaxed = make_kv(clock, KVLimits(min_ttl_seconds=0.25))
    await relaxed.put("soon", "v", expiration=now + 0.5)
    assert await relaxed.get("soon") == "v"


@pytest.mark.parametrize("bad", ["60", float("inf"), float("nan"), True])
async def test_ttl_must_be_a_finite_number(kv: KVNamespace, bad: Any) -> None:
    with pytest.raises(KVValidationError, match="expiration_ttl"):
        await kv.put("k", "v", expiration_ttl=bad)


# --- list -----------------------------------------------------------------------------


async def test_list_is_ordered_by_key(kv: KVNamespace) -> None:
    keys = [f"key-{i:03d}" for i in range(30)] + ["a", "B", "zz", "key-"]
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    for key in shuffled:
        await kv.put(key, "v")
    page = await kv.list()
    assert [info.name for info in page.keys] == sorted(keys)
    assert page.list_complete is True
    assert page.cursor is None


async def test_list_by_string_prefix(kv: KVNamespace) -> None:
    for key in ["user:1", "user:2", "user:10", "usr:1", "user", "admin:1"]:
        await kv.put(key, "v")
    assert await all_keys(kv, prefix="user:") == ["user:1", "user:10", "user:2"]
    assert await all_keys(kv, prefix="user") == ["user", "user:1", "user:10", "user:2"]
    assert await all_keys(kv, prefix="nobody") == []
    assert await all_keys(kv, prefix="") == sorted(
        ["user:1", "user:2", "user:10", "usr:1", "user", "admin:1"]
    )


async def test_cursor_pagination_over_25_keys(kv: KVNamespace) -> None:
    keys = [f"k{i:02d}" for i in range(25)]
    for key in reversed(keys):
        await kv.put(key, "v")
    first = await kv.list(limit=10)
    assert [i.name for i in first.keys] == keys[:10]
    assert first.list_complete is False
    assert isinstance(first.cursor, str)
    second = await kv.list(limit=10, cursor=first.cursor)
    assert [i.name for i in second.keys] == keys[10:20]
    assert second.list_complete is False
    third = await kv.list(limit=10, cursor=second.cursor)
    assert [i.name for i in third.keys] == keys[20:]
    assert third.list_complete is True
    assert third.cursor is None


async def test_page_exactly_full_then_complete(kv: KVNamespace) -> None:
    for i in range(10):
        await kv.put(f"k{i}", "v")
    page = await kv.list(limit=10)
    assert len(page.keys) == 10
    assert page.list_complete is True
    assert page.cursor is None


async def test_pagination_with_prefix_and_concurrent_writes(kv: KVNamespace) -> None:
    for i in range(12):
        await kv.put(f"p:{i:02d}", "v")
        await kv.put(f"q:{i:02d}", "v")
    first = await kv.list(prefix="p:", limit=5)
    await kv.put("p:00a", "v")  # before the cursor: not seen again
    await kv.put("p:99", "v")  # after the cursor: seen
    rest: list[Any] = []
    cursor = first.cursor
    while cursor is not None:
        page = await kv.list(prefix="p:", limit=5, cursor=cursor)
        rest.extend(i.name for i in page.keys)
        cursor = page.cursor
    assert [i.name for i in first.keys] == [f"p:{i:02d}" for i in range(5)]
    assert rest == [f"p:{i:02d}" for i in range(5, 12)] + ["p:99"]


async def test_list_skips_expired_keys_and_limit_counts_live_ones(
    kv: KVNamespace, clock: FakeClock
) -> None:
    for i in range(10):
        await kv.put(f"k{i}", "v", expiration_ttl=10 if i % 2 else None)
    clock.advance(10)
    page = await kv.list(limit=5)
    assert [i.name for i in page.keys] == ["k0", "k2", "k4", "k6", "k8"]
    assert page.list_complete is True


async def test_list_limit_bounds_and_inverted_twin(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock)
    for i in range(1002):
        await kv.put(f"k{i:04d}", "v")
    assert len((await kv.list(limit=1000)).keys) == 1000
    assert len((await kv.list(limit=1)).keys) == 1
    for bad in (0, 1001, -1):
        with pytest.raises(KVValidationError, match="between 1 and 1000"):
            await kv.list(limit=bad)
    bigger = make_kv(clock, KVLimits(max_list_limit=2000))
    for i in range(1002):
        await bigger.put(f"k{i:04d}", "v")
    assert len((await bigger.list(limit=1001)).keys) == 1001


async def test_a_forged_cursor_is_rejected(kv: KVNamespace) -> None:
    with pytest.raises(KVValidationError, match="cursor"):
        await kv.list(cursor="not a cursor!")


async def test_list_with_metadata_and_expiration(kv: KVNamespace, clock: FakeClock) -> None:
    await kv.put("a", "v", metadata={"x": 1}, expiration=int(clock.time()) + 100)
    await kv.put("b", "v")
    a, b = (await kv.list()).keys
    assert (a.name, a.expiration, a.metadata) == ("a", int(clock.time()) + 100, {"x": 1})
    assert (b.name, b.expiration, b.metadata) == ("b", None, None)


# --- tuple keys -----------------------------------------------------------------------


async def test_tuple_keys_round_trip(kv: KVNamespace) -> None:
    key = ("analytics", 1_700_000_000_123, "3f2a", b"\x00raw", 2.5, True, -7)
    await kv.put(key, "event")
    assert await kv.get(key) == "event"
    (info,) = (await kv.list()).keys
    assert info.name == key
    assert [type(p) for p in info.name] == [type(p) for p in key]
    await kv.delete(key)
    assert await kv.get(key) is None


async def test_tuple_keys_order_ints_numerically(kv: KVNamespace) -> None:
    ints = [-(2**70), -(2**64), -65536, -256, -255, -1, 0, 1, 2, 9, 10, 255, 256, 2**63, 2**80]
    shuffled = ints[:]
    random.Random(3).shuffle(shuffled)
    for n in shuffled:
        await kv.put(("n", n), str(n))
    assert await all_keys(kv) == [("n", n) for n in ints]


async def test_tuple_keys_order_floats_and_strings(kv: KVNamespace) -> None:
    floats = [float("-inf"), -1e300, -2.5, -1e-300, 0.0, 1e-300, 0.5, 1.0, 1e300, float("inf")]
    for f in reversed(floats):
        await kv.put(("f", f), "v")
    strings = ["", "a", "a\x00", "a\x00b", "aa", "b", "é", "🔑"]
    for s in reversed(strings):
        await kv.put(("s", s), "v")
    assert await all_keys(kv, prefix=("f",)) == [("f", f) for f in floats]
    assert await all_keys(kv, prefix=("s",)) == [("s", s) for s in strings]


async def test_tuple_keys_order_mixed_types_and_lengths(kv: KVNamespace) -> None:
    # Across types: bytes < str < int < float < False < True; shorter tuples first.
    expected: list[KVKey] = [
        (b"",),
        (b"\x00",),
        ("a",),
        ("a", b"x"),
        ("a", "x"),
        ("a", -1),
        ("a", 0),
        ("a", 1),
        ("a", 0.5),
        ("a", False),
        ("a", True),
        ("a\x00",),
        ("b",),
        (-5,),
        (5,),
        (5, "x"),
        (1.0,),
        (False,),
        (True,),
    ]
    for key in reversed(expected):
        await kv.put(key, "v")
    assert await all_keys(kv) == expected


async def test_int_and_float_parts_are_distinct_keys(kv: KVNamespace) -> None:
    await kv.put(("n", 1), "int")
    await kv.put(("n", 1.0), "float")
    assert await kv.get(("n", 1)) == "int"
    assert await kv.get(("n", 1.0)) == "float"
    assert await kv.get(("n", True)) is None


async def test_tuple_prefix_listing(kv: KVNamespace) -> None:
    wanted: list[KVKey] = [
        ("analytics",),
        ("analytics", 1_700_000_000_000, "u1"),
        ("analytics", 1_700_000_000_123, "u2"),
        ("analytics", 1_700_000_000_123, "u3"),
    ]
    others: list[KVKey] = [
        ("analyticsX", 1),
        ("analytic",),
        ("other", "analytics"),
        "analytics",
        "analytics:1",
    ]
    for key in others + wanted:
        await kv.put(key, "v")
    assert await all_keys(kv, prefix=("analytics",)) == wanted
    assert await all_keys(kv, prefix=("analytics", 1_700_000_000_123)) == wanted[2:]
    page = await kv.list(prefix=("analytics",), limit=2)
    assert [i.name for i in page.keys] == wanted[:2]
    rest = await kv.list(prefix=("analytics",), limit=2, cursor=page.cursor)
    assert [i.name for i in rest.keys] == wanted[2:]


async def test_str_and_tuple_keys_do_not_collide(kv: KVNamespace) -> None:
    await kv.put("a", "str")
    await kv.put(("a",), "tuple")
    assert await kv.get("a") == "str"
    assert await kv.get(("a",)) == "tuple"
    assert await all_keys(kv, prefix="a") == ["a"]
    assert await all_keys(kv, prefix=("a",)) == [("a",)]
    assert await all_keys(kv, prefix=()) == [("a",)]
    assert await all_keys(kv) == ["a", ("a",)]  # every str key before every tuple key


# --- limits, each with its inverted twin ----------------------------------------------


async def test_key_size_limit_and_inverted_twin(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock)
    await kv.put("k" * 512, "at limit")
    assert await kv.get("k" * 512) == "at limit"
    with pytest.raises(KVValidationError, match="key is 513 bytes; the limit is 512 bytes"):
        await kv.put("k" * 513, "v")
    with pytest.raises(KVValidationError, match="the limit is 512"):
        await kv.get("k" * 513)
    roomy = make_kv(clock, KVLimits(max_key_bytes=1024))
    await roomy.put("k" * 513, "v")
    assert await roomy.get("k" * 513) == "v"


async def test_key_limit_counts_utf8_bytes(kv: KVNamespace) -> None:
    await kv.put("é" * 256, "512 bytes")
    assert await kv.get("é" * 256) == "512 bytes"
    with pytest.raises(KVValidationError, match="key is 514 bytes"):
        await kv.put("é" * 257, "v")


async def test_tuple_key_limit_is_on_the_encoded_size(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock)
    at_limit = ("x" * 510,)  # type code + 510 bytes + terminator = 512
    await kv.put(at_limit, "v")
    assert await kv.get(at_limit) == "v"
    with pytest.raises(KVValidationError, match="key is 513 bytes; the limit is 512"):
        await kv.put(("x" * 511,), "v")
    roomy = make_kv(clock, KVLimits(max_key_bytes=513))
    await roomy.put(("x" * 511,), "v")
    assert await roomy.get(("x" * 511,)) == "v"


@pytest.mark.parametrize("bad", ["", ()])
async def test_empty_keys_are_rejected(kv: KVNamespace, bad: Any) -> None:
    with pytest.raises(KVValidationError, match="empty"):
        await kv.put(bad, "v")


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["list"], ("ok", None), ("ok", 1j)])
async def test_invalid_key_types_are_rejected(kv: KVNamespace, bad: Any) -> None:
    with pytest.raises(KVValidationError, match="key"):
        await kv.put(bad, "v")


async def test_nan_is_not_a_key_part(kv: KVNamespace) -> None:
    with pytest.raises(KVValidationError, match="NaN"):
        await kv.put(("n", float("nan")), "v")


async def test_value_size_limit_and_inverted_twin(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock)
    # Each backend documents its own default (25 MiB; one NATS message on nats).
    limit = kv.limits.max_value_bytes
    assert limit >= MIB - 4096
    at_limit = b"\x00" * limit
    await kv.put("big", at_limit)
    assert await kv.get("big", type="bytes") == at_limit
    with pytest.raises(
        KVValidationError, match=f"value is {limit + 1} bytes; the limit is {limit} bytes"
    ):
        await kv.put("too-big", at_limit + b"\x00")
    assert await kv.get("too-big") is None
    roomy = make_kv(clock, KVLimits(max_value_bytes=limit + 1))
    await roomy.put("too-big", at_limit + b"\x00")
    assert len(await roomy.get("too-big", type="bytes") or b"") == limit + 1


async def test_str_value_limit_counts_utf8_bytes(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock, KVLimits(max_value_bytes=10))
    await kv.put("k", "é" * 5)
    with pytest.raises(KVValidationError, match="value is 12 bytes; the limit is 10 bytes"):
        await kv.put("k", "é" * 6)


async def test_metadata_size_limit_and_inverted_twin(make_kv: KVFactory, clock: FakeClock) -> None:
    kv = make_kv(clock)
    at_limit = "m" * 1022  # JSON adds the two quotes: 1024 bytes
    await kv.put("k", "v", metadata=at_limit)
    assert (await kv.get_with_metadata("k")).metadata == at_limit
    with pytest.raises(
        KVValidationError, match="metadata is 1025 bytes as JSON; the limit is 1024"
    ):
        await kv.put("k2", "v", metadata=at_limit + "m")
    assert await kv.get("k2") is None
    roomy = make_kv(clock, KVLimits(max_metadata_bytes=2048))
    await roomy.put("k2", "v", metadata=at_limit + "m")
    assert (await roomy.get_with_metadata("k2")).metadata == at_limit + "m"


@pytest.mark.parametrize("bad", [{1, 2}, object(), {"x": float("nan")}])
async def test_metadata_must_be_json(kv: KVNamespace, bad: Any) -> None:
    with pytest.raises(KVValidationError, match="JSON-serialisable"):
        await kv.put("k", "v", metadata=bad)


async def test_a_closed_namespace_refuses_calls(make_kv: KVFactory) -> None:
    kv = make_kv()
    await kv.put("k", "v")
    await kv.close()
    await kv.close()  # idempotent
    with pytest.raises(KVError, match="closed"):
        await kv.get("k")
    with pytest.raises(KVError, match="closed"):
        await kv.put("k", "v")
    with pytest.raises(KVError, match="closed"):
        await kv.list()


# --- shared stores (a file, a server) -------------------------------------------------


async def test_data_survives_close_and_reopen(make_shared_kv: KVFactory, clock: FakeClock) -> None:
    first = make_shared_kv(clock)
    await first.put("k", "v", metadata={"m": 1}, expiration_ttl=100)
    await first.put(("t", 1), b"\x00")
    await first.close()
    again = make_shared_kv(clock)
    result = await again.get_with_metadata("k")
    assert (result.value, result.metadata) == ("v", {"m": 1})
    assert await again.get(("t", 1), type="bytes") == b"\x00"
    clock.advance(100)
    assert await again.get("k") is None


async def test_two_namespace_objects_see_each_others_writes(
    make_shared_kv: KVFactory, clock: FakeClock
) -> None:
    a = make_shared_kv(clock)
    b = make_shared_kv(clock)
    await a.put("k", "from a")
    assert await b.get("k") == "from a"
    await b.put("k", "from b")
    assert await a.get("k") == "from b"
    await b.delete("k")
    assert await a.get("k") is None


async def test_namespaces_in_one_store_are_isolated(
    make_shared_kv: KVFactory, clock: FakeClock
) -> None:
    users = make_shared_kv(clock, namespace="users")
    sessions = make_shared_kv(clock, namespace="sessions")
    await users.put("k", "user")
    await sessions.put("k", "session")
    assert await users.get("k") == "user"
    assert await sessions.get("k") == "session"
    assert await all_keys(users) == ["k"]
    await users.delete("k")
    assert await sessions.get("k") == "session"


# --- compare-and-set and atomic operations --------------------------------------------


async def test_get_entry_returns_value_metadata_and_revision(kv: KVNamespace) -> None:
    missing = await kv.get_entry("k")
    assert (missing.value, missing.metadata, missing.revision) == (None, None, None)
    await kv.put("k", "v1", metadata={"m": 1})
    first = await kv.get_entry("k")
    assert (first.value, first.metadata) == ("v1", {"m": 1})
    assert isinstance(first.revision, str)
    assert (await kv.get_entry("k")).revision == first.revision  # no write, same revision
    await kv.put("k", "v2")
    second = await kv.get_entry("k", type="bytes")
    assert second.value == b"v2"
    assert second.revision != first.revision


async def test_put_if_revision_succeeds_then_conflicts(kv: KVNamespace) -> None:
    await kv.put("k", "v1")
    seen = await kv.get_entry("k")
    await kv.put("k", "v2", if_revision=seen.revision)
    assert await kv.get("k") == "v2"
    with pytest.raises(KVConflict, match="no longer at revision"):
        await kv.put("k", "v3", if_revision=seen.revision)  # stale revision
    assert await kv.get("k") == "v2"


async def test_put_if_revision_none_means_must_not_exist(kv: KVNamespace) -> None:
    await kv.put("new", "first", if_revision=None)
    with pytest.raises(KVConflict, match="exists"):
        await kv.put("new", "second", if_revision=None)
    assert await kv.get("new") == "first"
    await kv.delete("new")  # deleted counts as missing again
    await kv.put("new", "third", if_revision=None)
    assert await kv.get("new") == "third"


async def test_a_recreated_key_does_not_match_an_old_revision(kv: KVNamespace) -> None:
    await kv.put("k", "v")
    old = (await kv.get_entry("k")).revision
    await kv.delete("k")
    await kv.put("k", "v")
    assert (await kv.get_entry("k")).revision != old
    with pytest.raises(KVConflict):
        await kv.put("k", "w", if_revision=old)


async def test_expired_keys_count_as_missing_for_checks(kv: KVNamespace, clock: FakeClock) -> None:
    await kv.put("k", "v", expiration_ttl=60)
    seen = await kv.get_entry("k")
    clock.advance(60)
    assert (await kv.get_entry("k")).revision is None
    assert not (await kv.atomic().check("k", seen.revision).set("k", "x").commit()).ok
    assert (await kv.atomic().check("k", None).set("k", "fresh").commit()).ok
    assert await kv.get("k") == "fresh"


async def test_atomic_commit_returns_new_revisions(kv: KVNamespace) -> None:
    result = await kv.atomic().check("a", None).set("a", "1", metadata={"x": 1}).commit()
    assert result.ok
    entry = await kv.get_entry("a")
    assert result.revisions == {"a": entry.revision}
    assert (entry.value, entry.metadata) == ("1", {"x": 1})


async def test_atomic_multi_key_all_or_nothing(kv: KVNamespace) -> None:
    await kv.put(("acct", "a"), "100")
    await kv.put(("acct", "b"), "0")
    a = await kv.get_entry(("acct", "a"))
    b = await kv.get_entry(("acct", "b"))
    ok = await (
        kv.atomic()
        .check(("acct", "a"), a.revision)
        .check(("acct", "b"), b.revision)
        .set(("acct", "a"), "70")
        .set(("acct", "b"), "30", expiration_ttl=3600)
        .delete(("acct", "gone"))
        .commit()
    )
    assert ok.ok
    assert await kv.get(("acct", "a")) == "70"
    assert await kv.get(("acct", "b")) == "30"
    assert ok.revisions[("acct", "b")] == (await kv.get_entry(("acct", "b"))).revision
    # Replaying the same stale checks must change nothing at all.
    stale = await (
        kv.atomic()
        .check(("acct", "a"), a.revision)
        .check(("acct", "b"), b.revision)
        .set(("acct", "a"), "0")
        .set(("acct", "b"), "100")
        .commit()
    )
    assert (stale.ok, stale.revisions) == (False, {})
    assert await kv.get(("acct", "a")) == "70"
    assert await kv.get(("acct", "b")) == "30"
    # One stale check among fresh ones is enough to refuse the whole operation.
    fresh_a = await kv.get_entry(("acct", "a"))
    partial = await (
        kv.atomic()
        .check(("acct", "a"), fresh_a.revision)
        .check(("acct", "b"), b.revision)
        .set(("acct", "a"), "1")
        .set(("acct", "b"), "2")
        .commit()
    )
    assert not partial.ok
    assert await kv.get(("acct", "a")) == "70"


async def test_atomic_check_not_exists_and_delete(kv: KVNamespace) -> None:
    await kv.put("taken", "x")
    refused = (
        await kv.atomic()
        .check("taken", None)
        .check("free", None)
        .set("taken", "y")
        .set("free", "y")
        .commit()
    )
    assert not refused.ok
    assert await kv.get("free") is None
    taken = await kv.get_entry("taken")
    done = (
        await kv.atomic().check("taken", taken.revision).delete("taken").set("free", "y").commit()
    )
    assert done.ok
    assert done.revisions.keys() == {"free"}
    assert await kv.get("taken") is None
    assert await kv.get("free") == "y"


async def test_atomic_contradictory_checks_and_empty_commit(kv: KVNamespace) -> None:
    await kv.put("k", "v")
    rev = (await kv.get_entry("k")).revision
    assert not (await kv.atomic().check("k", rev).check("k", None).set("k", "w").commit()).ok
    assert await kv.get("k") == "v"
    assert (await kv.atomic().commit()).ok
    op = kv.atomic().set("k", "w")
    await op.commit()
    with pytest.raises(KVError, match="already committed"):
        await op.commit()


async def test_atomic_validates_like_put(kv: KVNamespace) -> None:
    with pytest.raises(KVValidationError, match=r"json\.dumps"):
        kv.atomic().set("k", {"not": "a str"})  # type: ignore[arg-type]
    with pytest.raises(KVValidationError, match="revision must be a str"):
        kv.atomic().check("k", 7)  # type: ignore[arg-type]
    with pytest.raises(KVValidationError, match="empty"):
        kv.atomic().delete("")


async def test_atomic_mutation_limit_and_inverted_twin(
    make_kv: KVFactory, clock: FakeClock
) -> None:
    kv = make_kv(clock, KVLimits(max_atomic_mutations=3))
    op = kv.atomic().set("a", "1").set("b", "1").set("c", "1").set("a", "2")  # same key: ok
    with pytest.raises(KVValidationError, match="4 writes; the limit is 3"):
        op.set("d", "1")
    assert (await op.commit()).ok
    assert await kv.get("a") == "2"
    roomy = make_kv(clock, KVLimits(max_atomic_mutations=4))
    assert (
        await roomy.atomic().set("a", "1").set("b", "1").set("c", "1").set("d", "1").commit()
    ).ok


async def test_concurrent_increments_lose_no_update(kv: KVNamespace) -> None:
    tasks, increments = 20, 10

    async def worker() -> int:
        conflicts = 0
        for _ in range(increments):
            while True:
                entry = await kv.get_entry("counter")
                n = int(entry.value or 0) + 1
                result = (
                    await kv.atomic()
                    .check("counter", entry.revision)
                    .set("counter", str(n))
                    .commit()
                )
                if result.ok:
                    break
                conflicts += 1
        return conflicts

    await asyncio.gather(*(worker() for _ in range(tasks)))
    assert await kv.get("counter") == str(tasks * increments)


async def test_concurrent_put_if_revision_across_namespace_objects(
    make_shared_kv: KVFactory, clock: FakeClock
) -> None:
    clients = [make_shared_kv(clock) for _ in range(4)]

    async def worker(kv: KVNamespace) -> None:
        for _ in range(10):
            while True:
                entry = await kv.get_entry(("n",))
                try:
                    await kv.put(("n",), str(int(entry.value or 0) + 1), if_revision=entry.revision)
                    break
                except KVConflict:
                    continue

    await asyncio.gather(*(worker(kv) for kv in clients))
    assert await clients[0].get(("n",)) == "40"
