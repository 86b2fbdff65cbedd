"""One deploy reaches every region: control state, code and KV all on one NATS cluster.

Three edgerun nodes, each in its own region and connected to a different member of a
three-member JetStream cluster, follow the control state in NATS (no project dirs, no
HTTP link to the control plane). One `edgerun deploy` makes every node serve the new
version; a KV write through one region is then read through the others.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_multiregion import REGIONS, wait_for_value

from edgerun.testing.nats import require_nats_server, start_nats_cluster
from edgerun.testing.process import start_node

pytestmark = pytest.mark.integration


def cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "edgerun", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"edgerun {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_one_deploy_serves_in_every_region_and_kv_crosses_regions(
    tmp_path, edgerun_node, kv_project
):
    require_nats_server()
    nats = start_nats_cluster(tmp_path / "nats")
    control = None
    try:
        ctl_state = tmp_path / "control"
        token = cli(
            "token", "create", "--scope", "admin", "--nats", nats.urls[0],
            "--state-dir", str(ctl_state),
        ).strip()  # fmt: skip
        control = start_node(
            [], state_dir=ctl_state, command="control", args=["--nats", nats.urls[0]]
        )
        nodes = [
            edgerun_node([], command="node", args=["--nats", nats.urls[i], "--region", region])
            for i, region in enumerate(REGIONS)
        ]
        version = cli("deploy", str(kv_project()), "--to", control.url, "--token", token)
        version = version.split()[-1]
        for node, region in zip(nodes, REGIONS, strict=True):
            node.wait_for_line(f"edgerun: serving regional {version}")
            assert node.client.get("/ping").json() == {"pop": region}

        assert nodes[1].client.put("/kv/hello", content="from us-east").status_code == 200
        wait_for_value(nodes[0].client, "hello", "from us-east")
        wait_for_value(nodes[2].client, "hello", "from us-east")
    finally:
        if control is not None:
            control.stop()
        nats.stop()
