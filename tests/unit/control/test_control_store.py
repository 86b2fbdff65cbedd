"""The control store and API: tokens, versions, rollback, splits, secrets, durability."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from edgerun.control.api import ControlApi, merge_usage
from edgerun.control.pack import pack_project
from edgerun.control.store import ControlError, ControlStore
from edgerun.control.tokens import allows
from edgerun.edge.split import SplitError
from edgerun.errors import NotFound
from edgerun.http import Request


def bundle(tmp_path, marker: str, name: str = "demo") -> bytes:
    project = tmp_path / f"src-{marker}"
    project.mkdir(exist_ok=True)
    (project / "edgerun.toml").write_text(f'name = "{name}"\nmain = "app.py"\n')
    (project / "app.py").write_text(f"MARKER = {marker!r}\nasync def fetch(r): ...\n")
    return pack_project(project).data


def test_tokens_are_hashed_scoped_and_verified(tmp_path):
    store = ControlStore(tmp_path / "c")
    token, owner = store.create_token("deploy", "ci")
    assert owner.name == "ci" and owner.scope == "deploy"
    assert store.verify_token(token) == owner
    assert store.verify_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify_token("nonsense") is None
    raw = sqlite3.connect(tmp_path / "c" / "control.sqlite3").execute("SELECT * FROM tokens")
    assert token not in repr(raw.fetchall())
    assert stat.S_IMODE((tmp_path / "c" / "control.sqlite3").stat().st_mode) == 0o600
    with pytest.raises(ControlError, match="scope"):
        store.create_token("root")
    assert allows("admin", "deploy") and allows("deploy", "read") and allows("node", "read")
    assert not allows("read", "deploy") and not allows("deploy", "node")


def test_versions_rollback_and_splits(tmp_path):
    store = ControlStore(tmp_path / "c")
    revisions: list[int] = []
    store.add_listener(revisions.append)
    v1, new1 = store.add_version(bundle(tmp_path, "one"), author="alice", message="first")
    v2, _ = store.add_version(bundle(tmp_path, "two"), author="bob")
    assert new1 and v1.id != v2.id and v1.author == "alice"
    again, new = store.add_version(bundle(tmp_path, "one"), author="x")
    assert not new and again.author == "alice"  # immutable: first record kept
    assert store.project("demo").active == v1.id  # re-uploading v1 activated it again
    assert [v.id for v in store.versions("demo")] == [v2.id, v1.id]
    assert store.rollback("demo", None, author="c").active == v2.id
    assert store.rollback("demo", None, author="c").active == v1.id
    state = store.set_split("demo", {v1.id: 90, v2.id: 10})
    assert state.split == {"weights": {v1.id: 90, v2.id: 10}, "key": "cookie"}
    assert store.promote("demo", v2.id, author="c").split is None
    with pytest.raises(SplitError):
        store.set_split("demo", {v1.id: 90, v2.id: 20})
    with pytest.raises(ControlError):
        store.set_split("demo", {v1.id: 50, "v" + "0" * 12: 50})
    with pytest.raises(NotFound):
        store.versions("nope")
    assert revisions == sorted(revisions) and len(revisions) >= 6
    store.close()
    # Durable: a new store on the same directory sees it all.
    reopened = ControlStore(tmp_path / "c")
    assert reopened.project("demo").active == v2.id
    assert reopened.bundle_dir(v1.id).joinpath("app.py").is_file()


def test_rollback_without_history_is_an_error(tmp_path):
    store = ControlStore(tmp_path / "c")
    store.add_version(bundle(tmp_path, "one"), author="a")
    with pytest.raises(ControlError, match="no earlier version"):
        store.rollback("demo", None, author="a")


def test_secrets_are_never_listed_with_values(tmp_path):
    store = ControlStore(tmp_path / "c")
    store.put_secret("demo", "API_KEY", "hunter2")
    rev = store.project("demo").secrets_rev
    assert store.secret_names("demo") == ["API_KEY"]
    assert "hunter2" not in repr(store.projects())
    assert store.secret_values("demo") == {"API_KEY": "hunter2"}
    assert store.delete_secret("demo", "API_KEY") and not store.delete_secret("demo", "API_KEY")
    assert store.project("demo").secrets_rev > rev


async def test_api_auth_and_long_poll(tmp_path):
    import asyncio

    store = ControlStore(tmp_path / "c")
    api = ControlApi(store)
    node_token, _ = store.create_token("node")
    reader, _ = store.create_token("read")

    def req(method: str, path: str, tok: str | None = None, body: bytes = b"") -> Request:
        headers = {"authorization": f"Bearer {tok}"} if tok else {}
        return Request(method, f"http://c{path}", headers=headers, body=body)

    base = "/__edgerun/control/v1"
    assert (await api.handle(req("GET", f"{base}/state"))).status == 401
    assert (await api.handle(req("GET", f"{base}/state", reader))).status == 403
    assert (await api.handle(req("GET", f"{base}/nope", reader))).status == 404
    first = await (await api.handle(req("GET", f"{base}/state", node_token))).json_body()
    waiting = asyncio.ensure_future(
        api.handle(req("GET", f"{base}/state?after={first['revision']}&wait=30", node_token))
    )
    await asyncio.sleep(0)
    assert not waiting.done()
    store.put_secret("demo", "X", "y")
    answer = await (await asyncio.wait_for(waiting, 10)).json_body()
    assert answer["revision"] > first["revision"] and "demo" in answer["projects"]


def test_merge_usage_sums_nodes():
    a = {"demo": {"requests": 2, "cpu_ms": 1.5, "errors": {"x": 1}}}
    b = {"demo": {"requests": 3, "cpu_ms": 1.0, "errors": {"x": 2, "y": 1}}, "o": {"requests": 1}}
    assert merge_usage([a, b]) == {
        "demo": {"requests": 5, "cpu_ms": 2.5, "errors": {"x": 3, "y": 1}},
        "o": {"requests": 1},
    }
