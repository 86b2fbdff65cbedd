"""The control plane as a new user meets it: real `edgerun control` / `edgerun node`
processes, the CLI, deploys, rollbacks, splits, auth, secrets, hot swap under load."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from edgerun_cli import run_cli

from edgerun.testing.process import RunningNode, start_node

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
S1 = ROOT / "examples" / "seed" / "s1-kv-cache"
CONTROL = "/__edgerun/control/v1"

APP = """
from edgerun import Response
MARKER = {marker!r}
async def fetch(request, env, ctx):
    secret = getattr(env, "API_KEY", None)
    return Response.json({{"marker": MARKER, "has_secret": secret == "s3cret-value"}})
"""


def write_project(root: Path, marker: str, name: str = "demo", mode: str = "inprocess") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "edgerun.toml").write_text(f'name = "{name}"\nmain = "app.py"\nmode = "{mode}"\n')
    (root / "app.py").write_text(APP.format(marker=marker))
    return root


def token(state: Path, scope: str) -> str:
    return run_cli("token", "create", "--scope", scope, "--state-dir", str(state)).stdout.strip()


def deploy(project: Path, url: str, tok: str, message: str = "") -> str:
    out = run_cli("deploy", str(project), "--to", url, "--token", tok, "-m", message).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture
def embedded(edgerun_node, tmp_path):
    """A node with --embedded-control and an admin token for it."""
    state = tmp_path / "state"
    admin = token(state / "control", "admin")
    node = edgerun_node([], command="node", args=["--embedded-control"], state_dir=state)
    return node, admin, state


@pytest.fixture
def control(tmp_path):
    started: list[RunningNode] = []

    def start(state: Path) -> RunningNode:
        proc = start_node([], state_dir=state, command="control")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_deploy_the_s1_example_serves_it(embedded):
    node, admin, _ = embedded
    assert node.client.get("/?userId=1").status_code == 404  # nothing deployed yet
    version = deploy(S1, node.url, admin, "first deploy")
    node.wait_for_line(f"edgerun: serving s1-kv-cache {version}")
    r = node.client.get("/?userId=7")
    assert r.status_code == 200
    assert r.json() == {"id": "7", "name": "user-7", "plan": "free"}
    assert r.headers["x-edgerun-version"] == version
    listed = run_cli("versions", "-p", "s1-kv-cache", "--to", node.url, "--token", admin).stdout
    assert version in listed and "first deploy" in listed


def test_rollback_returns_the_previous_version(embedded, tmp_path):
    node, admin, _ = embedded
    project = tmp_path / "demo"
    v1 = deploy(write_project(project, "one"), node.url, admin)
    node.wait_for_line(f"serving demo {v1}")
    v2 = deploy(write_project(project, "two"), node.url, admin)
    node.wait_for_line(f"serving demo {v2}")
    assert node.client.get("/").json()["marker"] == "two"
    out = run_cli("rollback", "-p", "demo", "--to", node.url, "--token", admin).stdout
    assert out.strip().splitlines()[-1] == v1
    node.wait_for_line(f"serving demo {v1}")
    assert node.client.get("/").json()["marker"] == "one"
    # Same content again: same content-addressed id, nothing new stored.
    assert deploy(write_project(project, "two"), node.url, admin) == v2


def test_auth_401_and_403(embedded, tmp_path):
    node, admin, state = embedded
    reader = token(state / "control", "read")
    deployer = token(state / "control", "deploy")
    c = node.client
    assert c.get(f"{CONTROL}/projects").status_code == 401
    bad = {"authorization": "Bearer ert_00000000_" + "x" * 43}
    assert c.get(f"{CONTROL}/projects", headers=bad).json()["error"]["code"] == "unauthorized"
    assert c.get(f"{CONTROL}/projects", headers={"authorization": f"Bearer {reader}"}).is_success
    r = c.post(f"{CONTROL}/versions", content=b"x", headers={"authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = c.post(
        f"{CONTROL}/tokens",
        json={"scope": "admin"},
        headers={"authorization": f"Bearer {deployer}"},
    )
    assert r.status_code == 403
    r = c.post(
        f"{CONTROL}/tokens", json={"scope": "read"}, headers={"authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 201 and r.json()["token"].startswith("ert_")
    # A bad bundle is a 4xx naming the problem, and the CLI prints one line.
    r = c.post(
        f"{CONTROL}/versions", content=b"junk", headers={"authorization": f"Bearer {deployer}"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bundle_corrupt"
    failed = run_cli("versions", "-p", "demo", "--to", node.url, "--token", reader, check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "not_found" in failed.stderr


def test_split_is_sticky_and_forced_versions_need_a_read_token(embedded, tmp_path):
    node, admin, state = embedded
    reader = token(state / "control", "read")
    project = tmp_path / "demo"
    v1 = deploy(write_project(project, "one"), node.url, admin)
    v2 = deploy(write_project(project, "two"), node.url, admin)
    node.wait_for_line(f"serving demo {v2}")
    run_cli("split", "demo", f"{v1}=50", f"{v2}=50", "--to", node.url, "--token", admin)
    node.wait_for_line("serving demo .* split")
    seen: dict[str, int] = {}
    for _ in range(60):
        with httpx.Client(base_url=node.url) as client:
            first = client.get("/")
            version = first.headers["x-edgerun-version"]
            assert "edgerun-version" in first.headers["set-cookie"]
            seen[version] = seen.get(version, 0) + 1
            for _ in range(3):
                again = client.get("/")  # the cookie jar sends edgerun-version back
                assert again.headers["x-edgerun-version"] == version
                assert "set-cookie" not in again.headers
    assert set(seen) == {v1, v2}
    forged = node.client.get("/", headers={"cookie": f"edgerun-version=v0000000000ff.{'a' * 32}"})
    assert forged.status_code == 200 and forged.headers["x-edgerun-version"] in (v1, v2)
    # Forcing: only with a valid token; otherwise the header is ignored.
    for _ in range(5):
        forced = node.client.get(
            "/", headers={"x-edgerun-version": v1, "authorization": f"Bearer {reader}"}
        )
        assert forced.json()["marker"] == "one"
    run_cli("promote", v2, "-p", "demo", "--to", node.url, "--token", admin)
    node.wait_for_line(f"serving demo {v2}$")
    ignored = node.client.get("/", headers={"x-edgerun-version": v1})
    assert ignored.json()["marker"] == "two"
    wrong = node.client.get("/", headers={"x-edgerun-version": v1, "authorization": "Bearer x"})
    assert wrong.json()["marker"] == "two"
    forced = node.client.get(
        "/", headers={"x-edgerun-version": v1, "authorization": f"Bearer {reader}"}
    )
    assert forced.json()["marker"] == "one" and forced.headers["x-edgerun-version"] == v1


def test_secrets_are_write_only(embedded, tmp_path):
    node, admin, _ = embedded
    project = write_project(tmp_path / "demo", "one")
    version = deploy(project, node.url, admin)
    node.wait_for_line(f"serving demo {version}")
    assert node.client.get("/").json()["has_secret"] is False
    proc = run_cli(
        "secret", "put", "API_KEY", str(project), "--remote", node.url, "--token", admin,
        stdin="s3cret-value\n",
    )  # fmt: skip
    node.wait_for_line(f"serving demo {version}")  # reopened with the new env
    assert node.client.get("/").json()["has_secret"] is True
    auth = {"authorization": f"Bearer {admin}"}
    bodies = [
        node.client.get(f"{CONTROL}/projects/demo/secrets", headers=auth),
        node.client.get(f"{CONTROL}/projects", headers=auth),
        node.client.get(f"{CONTROL}/projects/demo/versions", headers=auth),
    ]
    assert bodies[0].json() == {"secrets": ["API_KEY"]}
    for r in bodies:
        assert "s3cret-value" not in r.text
    assert "s3cret-value" not in "".join(node.output) + proc.stdout + proc.stderr
    r = node.client.delete(f"{CONTROL}/projects/demo/secrets/API_KEY", headers=auth)
    assert r.status_code == 200
    node.wait_for_line(f"serving demo {version}")
    assert node.client.get("/").json()["has_secret"] is False


def test_remote_node_follows_a_separate_control_plane(control, edgerun_node, tmp_path):
    state = tmp_path / "control"
    admin = token(state, "admin")
    node_token = token(state, "node")
    ctl = control(state)
    node = edgerun_node([], command="node", args=["--control", ctl.url, "--token", node_token])
    project = tmp_path / "demo"
    v1 = deploy(write_project(project, "one"), ctl.url, admin)
    node.wait_for_line(f"serving demo {v1}")
    assert node.client.get("/").json()["marker"] == "one"
    v2 = deploy(write_project(project, "two"), ctl.url, admin)
    node.wait_for_line(f"serving demo {v2}")
    assert node.client.get("/").json()["marker"] == "two"
    run_cli("rollback", "-p", "demo", "--to", ctl.url, "--token", admin)
    node.wait_for_line(f"serving demo {v1}")
    assert node.client.get("/").json()["marker"] == "one"
    # The node's usage reaches the control plane with its next poll.
    v3 = deploy(write_project(project, "three"), ctl.url, admin)
    node.wait_for_line(f"serving demo {v3}")
    # (the report follows the poll that brought v3; each CLI call is one observation)
    for _ in range(60):
        out = run_cli("usage", "--remote", ctl.url, "--token", admin, "--json").stdout
        if '"demo"' in out:
            break
    assert '"requests": 3' in out


def test_hot_swap_under_load_drops_nothing(embedded, tmp_path):
    node, admin, _ = embedded
    project = tmp_path / "demo"
    markers: dict[str, str] = {}
    v0 = deploy(write_project(project, "m0"), node.url, admin)
    markers[v0] = "m0"
    node.wait_for_line(f"serving demo {v0}")

    stop = threading.Event()
    cond = threading.Condition()
    latest: dict[int, str] = {}
    history: dict[int, list[str]] = {}
    failures: list[str] = []

    def load(i: int) -> None:
        history[i] = []
        with httpx.Client(base_url=node.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.get("/")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                marker = r.json()["marker"]
                if not history[i] or history[i][-1] != marker:
                    history[i].append(marker)
                with cond:
                    latest[i] = marker
                    cond.notify_all()

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    expected = ["m0"]
    ops = ["d", "d", "d", "r", "d", "d", "r", "r", "d", "d"]
    try:
        for step, op in enumerate(ops, start=1):
            if op == "d":
                marker = f"m{step}"
                version = deploy(write_project(project, marker), node.url, admin)
                markers[version] = marker
            else:
                out = run_cli("rollback", "-p", "demo", "--to", node.url, "--token", admin).stdout
                version = out.strip().splitlines()[-1]
            node.wait_for_line(f"serving demo {version}")
            expected.append(markers[version])
            # Wait until every client has observed the new version (a response event).
            with cond:
                assert cond.wait_for(
                    lambda m=markers[version]: all(latest.get(i) == m for i in range(4)),
                    timeout=30,
                ), (latest, expected)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    for i in range(4):
        assert history[i] == expected, (i, history[i], expected)
