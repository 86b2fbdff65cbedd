"""Control state in NATS JetStream: a real `nats-server`, `edgerun control --nats` and two
`edgerun node` processes that follow NATS only (no HTTP access to the control plane)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from edgerun_cli import run_cli

from edgerun.testing.nats import RunningNats, require_nats_server, start_nats_server
from edgerun.testing.process import RunningNode, start_node

pytestmark = pytest.mark.integration

CONTROL = "/__edgerun/control/v1"

APP = """
from edgerun import Response
MARKER = {marker!r}
async def fetch(request, env, ctx):
    secret = getattr(env, "API_KEY", None)
    return Response.json({{"marker": MARKER, "has_secret": secret == "n4ts-secret"}})
"""


def write_demo(root: Path, marker: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "edgerun.toml").write_text('name = "demo"\nmain = "app.py"\nmode = "inprocess"\n')
    (root / "app.py").write_text(APP.format(marker=marker))
    return root


def deploy(project: Path, url: str, token: str) -> str:
    return run_cli("deploy", str(project), "--to", url, "--token", token).stdout.split()[-1]


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[RunningNats]:
    """A server of this test's own: the default bucket names stay unshared."""
    require_nats_server()
    server = start_nats_server(tmp_path / "nats")
    yield server
    server.stop()


def test_nodes_follow_control_state_in_nats(nats, edgerun_node, tmp_path):
    ctl_state = tmp_path / "control"
    admin = run_cli(
        "token", "create", "--scope", "admin", "--nats", nats.url, "--state-dir", str(ctl_state)
    ).stdout.strip()
    controls: list[RunningNode] = []

    def start_control() -> RunningNode:
        controls.append(
            start_node([], state_dir=ctl_state, command="control", args=["--nats", nats.url])
        )
        return controls[-1]

    try:
        ctl = start_control()
        # One node with the explicit flag, one with --nats alone (which implies it).
        nodes = [
            edgerun_node([], command="node", args=["--control-nats", nats.url]),
            edgerun_node([], command="node", args=["--nats", nats.url]),
        ]

        def all_serve(version: str, marker: str, *, secret: bool = False) -> None:
            for node in nodes:
                node.wait_for_line(f"edgerun: serving demo {version}")
                body = node.client.get("/").json()
                assert body == {"marker": marker, "has_secret": secret}

        project = tmp_path / "demo"
        v1 = deploy(write_demo(project, "one"), ctl.url, admin)
        all_serve(v1, "one")
        v2 = deploy(write_demo(project, "two"), ctl.url, admin)
        all_serve(v2, "two")
        rolled = run_cli("rollback", "-p", "demo", "--to", ctl.url, "--token", admin)
        assert rolled.stdout.split()[-1] == v1
        all_serve(v1, "one")

        # A secret set remotely reaches env on both nodes; the API never returns it.
        put = run_cli(
            "secret", "put", "API_KEY", str(project), "--remote", ctl.url, "--token", admin,
            stdin="n4ts-secret\n",
        )  # fmt: skip
        all_serve(v1, "one", secret=True)
        auth = {"authorization": f"Bearer {admin}"}
        answers = [
            ctl.client.get(f"{CONTROL}/projects/demo/secrets", headers=auth),
            ctl.client.get(f"{CONTROL}/projects", headers=auth),
            ctl.client.get(f"{CONTROL}/projects/demo/versions", headers=auth),
        ]
        assert answers[0].json() == {"secrets": ["API_KEY"]}
        assert all(r.status_code == 200 and "n4ts-secret" not in r.text for r in answers)
        logs = "".join(ctl.output) + put.stdout + put.stderr
        assert "n4ts-secret" not in logs + "".join("".join(n.output) for n in nodes)

        # The control process goes away: nodes keep serving; a new one picks up the
        # state from NATS and the nodes follow its next deploy.
        ctl.stop()
        for node in nodes:
            assert node.client.get("/").json()["marker"] == "one"
        ctl = start_control()
        v3 = deploy(write_demo(project, "three"), ctl.url, admin)
        all_serve(v3, "three", secret=True)
        listed = run_cli("versions", "-p", "demo", "--to", ctl.url, "--token", admin).stdout
        assert all(v in listed for v in (v1, v2, v3))
    finally:
        for proc in controls:
            proc.stop()
