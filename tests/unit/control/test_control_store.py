"""The control store and API: tokens, versions, rollback, splits, secrets, durability.

A conformance battery: every test taking ``open_store`` runs against both
``ControlState`` implementations, SQLite and NATS JetStream (a real ``nats-server``;
each test gets its own buckets).
"""

from __future__ import annotations

import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgerun.control.api import ControlApi, merge_usage
from edgerun.control.pack import pack_project
from edgerun.control.store import ControlError, ControlState, ControlStore
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


OpenStore = Callable[[Path], ControlState]


@pytest.fixture(params=["sqlite", "jetstream"])
def open_store(request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    """Opens a store of the parametrised kind; reopening sees the same state."""
    opened: list[ControlState] = []
    if request.param == "sqlite":

        def open_sqlite(path: Path) -> ControlState:
            opened.append(ControlStore(path))
            return opened[-1]

        yield open_sqlite
    else:
        from edgerun.control.jetstream import JetStreamControlStore

        nats = request.getfixturevalue("nats_server")
        prefix = f"t{uuid.uuid4().hex[:10]}"

        def open_jetstream(path: Path) -> ControlState:
            opened.append(JetStreamControlStore(nats.url, path, prefix=prefix))
            return opened[-1]

        yield open_jetstream
    for store in opened:
        store.close()


def test_tokens_are_hashed_scoped_and_verified(tmp_path, open_store):
    store = open_store(tmp_path / "c")
    token, owner = store.create_token("deploy", "ci")
    assert owner.name == "ci" and owner.scope == "deploy"
    assert store.verify_token(token) == owner
    assert store.verify_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify_token("nonsense") is None
    with pytest.raises(ControlError, match="scope"):
        store.create_token("root")
    assert allows("admin", "deploy") and allows("deploy", "read") and allows("node", "read")
    assert not allows("read", "deploy") and not allows("deploy", "node")


def test_sqlite_keeps_only_token_hashes_in_a_private_file(tmp_path):
    store = ControlStore(tmp_path / "c")
    token, _ = store.create_token("deploy", "ci")
    raw = sqlite3.connect(tmp_path / "c" / "control.sqlite3").execute("SELECT * FROM tokens")
    assert token not in repr(raw.fetchall())
    assert stat.S_IMODE((tmp_path / "c" / "control.sqlite3").stat().st_mode) == 0o600


async def test_jetstream_keeps_only_token_hashes(tmp_path, nats_server):
    import nats

    from edgerun.control.jetstream import JetStreamControlStore

    prefix = f"t{uuid.uuid4().hex[:10]}"
    store = JetStreamControlStore(nats_server.url, tmp_path / "c", prefix=prefix)
    try:
        token, _ = store.create_token("deploy", "ci")
    finally:
        store.close()
    nc = await nats.connect(nats_server.url)
    try:
        kv = await nc.jetstream().key_value(f"{prefix}_control_tokens")
        values = [(await kv.get(key)).value for key in await kv.keys()]
    finally:
        await nc.close()
    assert len(values) == 1 and token.encode() not in values[0]
    assert token.split("_")[2].encode() not in values[0]


def test_versions_rollback_and_splits(tmp_path, open_store):
    store = open_store(tmp_path / "c")
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
    reopened = open_store(tmp_path / "c")
    assert reopened.project("demo").active == v2.id
    assert reopened.bundle_dir(v1.id).joinpath("app.py").is_file()


def test_rollback_without_history_is_an_error(tmp_path, open_store):
    store = open_store(tmp_path / "c")
    store.add_version(bundle(tmp_path, "one"), author="a")
    with pytest.raises(ControlError, match="no earlier version"):
        store.rollback("demo", None, author="a")


def test_secrets_are_never_listed_with_values(tmp_path, open_store):
    store = open_store(tmp_path / "c")
    store.put_secret("demo", "API_KEY", "hunter2")
    rev = store.project("demo").secrets_rev
    assert store.secret_names("demo") == ["API_KEY"]
    assert "hunter2" not in repr(store.projects())
    assert store.secret_values("demo") == {"API_KEY": "hunter2"}
    assert store.delete_secret("demo", "API_KEY") and not store.delete_secret("demo", "API_KEY")
    assert store.project("demo").secrets_rev > rev


async def test_api_auth_and_long_poll(tmp_path, open_store):
    import asyncio

    store = open_store(tmp_path / "c")
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


def test_jetstream_bundles_come_from_the_object_store(tmp_path, nats_server):
    """A store with an empty cache fetches (several chunks), validates and extracts."""
    import os

    from edgerun.control.jetstream import JetStreamControlStore

    project = tmp_path / "big"
    project.mkdir()
    (project / "edgerun.toml").write_text('name = "big"\nmain = "app.py"\n')
    (project / "app.py").write_text("async def fetch(r): ...\n")
    # Incompressible, so the archive spans several 128 KiB object chunks.
    (project / "blob.bin").write_bytes(os.urandom(400_000))
    data = pack_project(project).data
    prefix = f"t{uuid.uuid4().hex[:10]}"
    writer = JetStreamControlStore(nats_server.url, tmp_path / "a", prefix=prefix)
    reader = JetStreamControlStore(nats_server.url, tmp_path / "b", prefix=prefix)
    try:
        record, created = writer.add_version(data, author="a")
        assert created
        assert reader.bundle_archive(record.id).read_bytes() == data
        extracted = reader.bundle_dir(record.id)
        assert extracted.is_relative_to(tmp_path / "b")
        assert (extracted / "blob.bin").read_bytes() == (project / "blob.bin").read_bytes()
        with pytest.raises(NotFound):
            reader.bundle_dir("v" + "0" * 12)
    finally:
        writer.close()
        reader.close()
