"""Usage metering through a real node: /__edgerun/usage and `edgerun usage`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

APP = """
from edgerun import Response
async def fetch(request):
    if request.path == "/boom":
        raise RuntimeError("boom")
    body = await request.body()
    return Response(b"x" * 100 + body)
"""


def test_usage_counts_requests_bytes_and_errors(tmp_path, edgerun_node):
    project = tmp_path / "metered"
    project.mkdir()
    (project / "edgerun.toml").write_text('name = "metered"\n')
    (project / "app.py").write_text(textwrap.dedent(APP))
    node = edgerun_node(project, command="node")
    assert node.client.post("/", content=b"y" * 50).status_code == 200
    assert node.client.get("/").status_code == 200
    assert node.client.get("/boom").status_code == 500

    usage = node.client.get("/__edgerun/usage").json()["deployments"]["metered"]
    assert usage["requests"] == 3
    assert usage["bytes_in"] == 50
    assert usage["bytes_out"] >= 150 + 100  # two bodies plus the JSON error
    assert usage["outcomes"] == {"exception": 1, "ok": 2}
    assert usage["errors"] == {"internal": 1}
    assert usage["cpu_ms"] > 0 and usage["wall_ms"] > 0

    cli = subprocess.run(
        [sys.executable, "-m", "edgerun", "usage", "--url", node.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["metered"]["requests"] == 3
    table = subprocess.run(
        [sys.executable, "-m", "edgerun", "usage", "--url", node.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "metered" in table.stdout


def test_usage_endpoint_is_local_only(tmp_path, edgerun_node):
    project = tmp_path / "p"
    project.mkdir()
    (project / "edgerun.toml").write_text('name = "p"\n')
    (project / "app.py").write_text(
        "from edgerun import Response\nasync def fetch(r):\n    return Response('ok')\n"
    )
    node = edgerun_node(project, command="node")
    relayed = node.client.get("/__edgerun/usage", headers={"x-forwarded-for": "203.0.113.9"})
    assert relayed.status_code == 403
    assert relayed.json()["error"]["code"] == "forbidden"
    assert node.client.get("/__edgerun/nope").status_code == 404


def test_usage_cli_reports_unreachable_node():
    r = subprocess.run(
        [sys.executable, "-m", "edgerun", "usage", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "cannot reach the node" in r.stderr and "Traceback" not in r.stderr
