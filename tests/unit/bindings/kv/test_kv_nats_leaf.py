"""NatsKVBackend with regions as leaf servers: mirror reads, writes through the hub."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgerun.bindings.kv import open_kv
from edgerun.bindings.kv.nats import NatsKVBackend
from edgerun.errors import KVUnavailable
from edgerun.testing.nats import NatsHubAndLeaves, require_nats_server, start_nats_hub_and_leaves


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsHubAndLeaves]:
    require_nats_server()
    servers = start_nats_hub_and_leaves(tmp_path_factory.mktemp("leaves"), ["eu", "us"])
    yield servers
    servers.stop()


async def test_a_write_in_one_region_reaches_the_other_and_cas_goes_to_the_hub(hub):
    eu = open_kv("leafy", backend="nats", url=hub.kv_url("eu"))
    us = open_kv("leafy", backend="nats", url=hub.kv_url("us"))
    try:
        assert isinstance(eu.backend, NatsKVBackend)
        await eu.put("k", "v1")
        assert await eu.get("k") == "v1"  # read-your-writes, whatever the mirror's lag
        while await us.get("k") != "v1":  # us's mirror catches up (bounded by the test timeout)
            pass
        entry = await us.get_entry("k")
        assert entry.value == "v1"
        assert await us.put("k", "v2", if_revision=entry.revision) is None
        assert (await eu.get_entry("k")).value == "v2"  # leader read at the hub
        result = (
            await eu.atomic()
            .check("k", (await eu.get_entry("k")).revision)
            .set("k", "v3")
            .set(("t", 1), "x")
            .commit()
        )
        assert result.ok
        assert [key.name for key in (await us.list()).keys] == ["k", ("t", 1)]
    finally:
        await eu.close()
        await us.close()


@pytest.mark.parametrize("url", ["nats://h:4222?hub=", "nats://h:4222?x=1", "nats://h?hub=a&hub=b"])
def test_only_a_single_hub_parameter_is_accepted(url):
    with pytest.raises(ValueError, match="hub=DOMAIN"):
        open_kv("n", backend="nats", url=url)


async def test_mirror_reads_survive_the_hub_going_down(tmp_path):
    require_nats_server()
    servers = start_nats_hub_and_leaves(tmp_path, ["eu", "us"])
    eu = open_kv("cut", backend="nats", url=servers.kv_url("eu"))
    us = open_kv("cut", backend="nats", url=servers.kv_url("us"))
    try:
        await eu.put("k", "v1")
        while await us.get("k") != "v1":
            pass
        servers.hub.kill()
        assert await us.get("k") == "v1"  # served by us's own mirror
        with pytest.raises(KVUnavailable):
            await us.put("k", "v2")
        with pytest.raises(KVUnavailable):
            await us.get_entry("k")  # revisions come from the hub
    finally:
        await eu.close()
        await us.close()
        servers.stop()
