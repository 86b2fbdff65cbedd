"""NatsKVBackend specifics, against a real nats-server: layout, limits, durability
headers, server features, and failing fast when NATS is down."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.bindings.kv import KVLimits, KVNamespace, open_kv
from edgerun.bindings.kv.nats import (
    NATS_LIMITS,
    NatsKVBackend,
    _common_prefix,
    _subject_tokens,
    bucket_name,
)
from edgerun.clock import FakeClock
from edgerun.errors import KVError, KVUnavailable, KVValidationError
from edgerun.testing.nats import RunningNats


@pytest.fixture
def namespace() -> str:
    return f"unit-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def kv(nats_server: RunningNats, namespace: str) -> AsyncIterator[KVNamespace]:
    ns = open_kv(namespace, backend="nats", url=nats_server.url, clock=FakeClock())
    yield ns
    await ns.close()


async def raw_last(url: str, namespace: str, key: bytes) -> nats.js.api.RawStreamMsg:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        subject = f"$KV.{bucket_name(namespace)}.{_subject_tokens(key)}"
        return await js.get_msg(f"KV_{bucket_name(namespace)}", subject=subject)
    finally:
        await nc.close()


@given(st.binary(min_size=1, max_size=20), st.binary(min_size=1, max_size=20))
def test_subject_tokens_preserve_order(a: bytes, b: bytes) -> None:
    ta, tb = _subject_tokens(a).replace(".", ""), _subject_tokens(b).replace(".", "")
    assert (a < b) == (ta < tb)
    assert bytes.fromhex(ta) == a


@given(st.binary(max_size=6), st.binary(max_size=6), st.binary(max_size=6))
def test_common_prefix_covers_the_whole_range(start: bytes, end: bytes, key: bytes) -> None:
    prefix = _common_prefix(start, end)
    if start <= key < end:
        assert key.startswith(prefix)
    assert _common_prefix(start, None) == b""


def test_namespaces_must_make_valid_bucket_names() -> None:
    assert bucket_name("users_v2-eu") == "edgerun_kv_users_v2-eu"
    with pytest.raises(ValueError, match="ASCII letters"):
        bucket_name("users.eu")
    with pytest.raises(ValueError, match="needs a url"):
        open_kv("users", backend="nats")


def test_default_limits_fit_one_default_nats_message(kv: KVNamespace) -> None:
    assert kv.limits == NATS_LIMITS
    assert NATS_LIMITS.max_value_bytes == 1024 * 1024 - 4096


async def test_messages_carry_msg_id_ttl_expiration_and_metadata(
    kv: KVNamespace, nats_server: RunningNats, namespace: str
) -> None:
    await kv.put(("k", 1), "v", expiration_ttl=90.5, metadata={"é": [1]})
    backend = kv.backend
    assert isinstance(backend, NatsKVBackend)
    assert backend.supports_msg_ttl and backend.supports_atomic_batch
    msg = await raw_last(nats_server.url, namespace, b"\x02\x02k\x00\x15\x01")
    headers = msg.headers or {}
    assert headers["Nats-Msg-Id"]
    assert headers["Nats-TTL"] == "91"  # whole seconds, rounded up
    assert float(headers["Edgerun-Expires"]) == 1_700_000_000 + 90.5
    assert json.loads(base64.urlsafe_b64decode(headers["Edgerun-Meta"])) == {"é": [1]}
    assert msg.data == b"v"


async def test_deletes_are_kv_delete_markers(
    kv: KVNamespace, nats_server: RunningNats, namespace: str
) -> None:
    await kv.put("k", "v")
    await kv.delete("k")
    msg = await raw_last(nats_server.url, namespace, b"\x01k")
    assert (msg.headers or {})["KV-Operation"] == "DEL"
    assert await kv.get("k") is None
    assert (await kv.list()).keys == []


async def test_direct_reads_when_consistency_is_not_required(
    nats_server: RunningNats, namespace: str
) -> None:
    clock = FakeClock()
    writer = KVNamespace(NatsKVBackend(nats_server.url, namespace, clock), clock=clock)
    reader = KVNamespace(
        NatsKVBackend(nats_server.url, namespace, clock, consistent_reads=False), clock=clock
    )
    await writer.put("k", "v", metadata=[1], expiration_ttl=10)
    # One server: direct gets are answered by the leader itself.
    assert (await reader.get_with_metadata("k")).metadata == [1]
    clock.advance(10)
    assert await reader.get("k") is None
    assert await reader.get("missing") is None
    await writer.close()
    await reader.close()


async def test_a_value_over_the_server_max_payload_names_both_limits(
    nats_server: RunningNats, namespace: str
) -> None:
    roomy = open_kv(
        namespace,
        backend="nats",
        url=nats_server.url,
        limits=KVLimits(max_value_bytes=2 * 1024 * 1024),
    )
    with pytest.raises(KVValidationError, match=r"max_payload is 1048576 bytes"):
        await roomy.put("big", b"x" * (1024 * 1024))
    await roomy.put("fits", b"x" * NATS_LIMITS.max_value_bytes)  # the inverted twin
    assert len(await roomy.get("fits", type="bytes") or b"") == NATS_LIMITS.max_value_bytes
    await roomy.close()


async def test_checked_keys_must_be_written_on_nats(kv: KVNamespace) -> None:
    await kv.put("a", "1")
    rev = (await kv.get_entry("a")).revision
    with pytest.raises(KVError, match="must write every key it checks"):
        await kv.atomic().check("a", rev).set("b", "2").commit()
    # Checks alone are verified by leader reads.
    assert (await kv.atomic().check("a", rev).check("b", None).commit()).ok
    assert not (await kv.atomic().check("a", None).commit()).ok


async def test_an_unreachable_server_is_kv_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kv = open_kv("down", backend="nats", url=f"nats://127.0.0.1:{port}")
    backend = kv.backend
    assert isinstance(backend, NatsKVBackend)
    with pytest.raises(KVUnavailable, match=r"NATS KV bucket 'edgerun_kv_down'.*retry later"):
        await kv.get("k")
    with pytest.raises(KVUnavailable):
        await kv.put("k", "v")
    await kv.close()


async def test_a_stopped_server_fails_operations_fast(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from edgerun.testing.nats import start_nats_server

    server = start_nats_server(tmp_path_factory.mktemp("nats-down"))
    kv = open_kv("gone", backend="nats", url=server.url)
    await kv.put("k", "v")
    server.kill()
    with pytest.raises(KVUnavailable, match="unavailable"):
        # The first call may still find the socket open and wait out the timeout;
        # after the client notices, calls fail without waiting.
        for _ in range(100):
            await kv.get("k")
    await kv.close()
