"""Several regions on NATS JetStream: every node serves, KV crosses regions.

Two loopback topologies (docs/scale-out.md): a hub nats-server with one leaf server
per region, each in its own JetStream domain (nodes read KV from their leaf's mirror
and write through the hub), and one three-member JetStream cluster shared by all
regions (each node on a different member). Three edgerun nodes, one per region. A KV
write through one region is read through the others once it has propagated (polled
with a deadline: the propagation is the event under test, not a delay).
"""

from __future__ import annotations

import time

import pytest

from edgerun.testing.nats import (
    require_nats_server,
    start_nats_cluster,
    start_nats_hub_and_leaves,
)
from edgerun.testing.process import NodeStartError

pytestmark = pytest.mark.integration

REGIONS = ("eu-west", "us-east", "ap-south")


def wait_for_value(client, key: str, expected: str, deadline_s: float = 15.0) -> None:
    """Poll GET /kv/<key> on ``client`` until it returns ``expected`` or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    seen = None
    while time.monotonic() < deadline:
        seen = client.get(f"/kv/{key}").json().get("value")
        if seen == expected:
            return
    raise AssertionError(f"{key!r} still {seen!r} (want {expected!r}) after {deadline_s} s")


@pytest.mark.parametrize("topology", ["hub-and-leaves", "cluster"])
def test_a_kv_write_in_one_region_is_read_in_the_others(
    tmp_path, edgerun_node, kv_project, topology
):
    require_nats_server()
    if topology == "cluster":
        nats = start_nats_cluster(tmp_path / "nats")
        urls = nats.urls
    else:
        nats = start_nats_hub_and_leaves(tmp_path / "nats", REGIONS)
        urls = [nats.kv_url(region) for region in REGIONS]
    try:
        project = kv_project()
        nodes = [
            edgerun_node(project, command="node", args=["--region", region, "--nats", urls[i]])
            for i, region in enumerate(REGIONS)
        ]
        for node, region in zip(nodes, REGIONS, strict=True):
            ping = node.client.get("/ping")
            assert ping.status_code == 200
            assert ping.json() == {"pop": region}

        written = nodes[0].client.put("/kv/greeting", content="hello from eu-west")
        assert written.status_code == 200, written.text
        for node in nodes[1:]:
            wait_for_value(node.client, "greeting", "hello from eu-west")

        # And back the other way: the last region's write reaches the first.
        assert nodes[2].client.put("/kv/greeting", content="namaste").status_code == 200
        wait_for_value(nodes[0].client, "greeting", "namaste")
    finally:
        nats.stop()


def test_backend_nats_without_a_nats_url_is_a_config_error(tmp_path, edgerun_node, kv_project):
    project = kv_project(kv_toml='[[kv]]\nbinding = "KV"\nbackend = "nats"\n')
    with pytest.raises(NodeStartError, match="--nats URL"):
        edgerun_node(project, command="node")
