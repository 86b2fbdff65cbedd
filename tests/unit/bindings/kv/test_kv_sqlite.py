"""SqliteKVBackend specifics: file layout, sweeps, locking and other processes."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgerun.bindings.kv import KVNamespace, open_kv
from edgerun.bindings.kv.keys import encode_key
from edgerun.bindings.kv.sqlite import SCHEMA_VERSION, SqliteKVBackend
from edgerun.clock import FakeClock
from edgerun.errors import KVError, KVUnavailable


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kv.sqlite3"


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


async def test_one_file_many_namespaces_keys_as_blobs(db: Path) -> None:
    users = open_kv("users", path=db)
    sessions = open_kv("sessions", path=db)
    await users.put(("u", 1), "ada")
    await sessions.put("s", "x", metadata={"m": 1}, expiration_ttl=60)
    conn = raw(db)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    rows = conn.execute(
        "SELECT namespace, typeof(key), key, typeof(value), typeof(expiration), metadata "
        "FROM kv ORDER BY namespace"
    ).fetchall()
    assert rows == [
        ("sessions", "blob", encode_key("s"), "blob", "real", '{"m":1}'),
        ("users", "blob", encode_key(("u", 1)), "blob", "null", None),
    ]
    conn.close()
    await users.close()
    await sessions.close()


async def test_sweep_deletes_expired_rows_in_batches(db: Path) -> None:
    clock = FakeClock()
    backend = SqliteKVBackend(db, "n", clock)
    other = SqliteKVBackend(db, "other", clock)
    kv = KVNamespace(backend, clock=clock)
    for i in range(10):
        await kv.put(f"gone{i}", "v", expiration_ttl=10)
        await kv.put(f"kept{i}", "v")
    await other.put(encode_key("other"), b"v", clock.time() + 10, None)
    clock.advance(10)
    assert await asyncio.to_thread(backend.sweep, 3) == 10
    assert backend.sweep() == 0
    conn = raw(db)
    assert conn.execute("SELECT count(*) FROM kv WHERE namespace = 'n'").fetchone() == (10,)
    # A sweep touches only its own namespace.
    assert conn.execute("SELECT count(*) FROM kv WHERE namespace = 'other'").fetchone() == (1,)
    conn.close()
    await kv.close()
    await other.close()


async def test_expired_rows_are_hidden_before_any_sweep(db: Path) -> None:
    clock = FakeClock()
    kv = open_kv("n", path=db, clock=clock)
    await kv.put("k", "v", expiration_ttl=1)
    clock.advance(1)
    assert await kv.get("k") is None
    conn = raw(db)
    assert conn.execute("SELECT count(*) FROM kv").fetchone() == (1,)  # still stored
    conn.close()
    await kv.close()


async def test_a_held_write_lock_gives_kv_unavailable_and_reads_go_on(db: Path) -> None:
    kv = KVNamespace(SqliteKVBackend(db, "n", busy_timeout=0.0))
    await kv.put("k", "before")
    blocker = raw(db)
    blocker.execute("BEGIN IMMEDIATE")
    blocker.execute("UPDATE kv SET value = x'00' WHERE 0")
    with pytest.raises(KVUnavailable, match="retry later"):
        await kv.put("k", "during")
    assert await kv.get("k") == "before"  # WAL: readers are not blocked by a writer
    blocker.execute("COMMIT")
    # The inverted twin: once the other writer is done, the same write succeeds.
    await kv.put("k", "during")
    assert await kv.get("k") == "during"
    blocker.close()
    await kv.close()


def test_a_newer_schema_is_refused(db: Path) -> None:
    SqliteKVBackend(db, "n")
    conn = raw(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(KVError, match="upgrade edgerun"):
        SqliteKVBackend(db, "n")


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KVError, match="not a database"):
        SqliteKVBackend(db, "n")


async def test_close_is_idempotent(db: Path) -> None:
    backend = SqliteKVBackend(db, "n")
    await backend.close()
    await backend.close()
    with pytest.raises(KVError, match="closed"):
        await backend.get(b"\x01k")


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from edgerun.bindings.kv import open_kv

    async def main(path, name, count):
        kv = open_kv("shared", path=path)
        if name == "reader":
            assert await kv.get("from-parent") == "hello", "parent's write not visible"
            await kv.put("from-child", "hi")
        else:
            for i in range(count):
                await kv.put((name, i), str(i))
        await kv.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def run_child(db: Path, name: str, count: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), name, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_ok(child: subprocess.Popen[bytes]) -> None:
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr.decode()


async def test_another_process_shares_the_file(db: Path) -> None:
    kv = open_kv("shared", path=db)
    await kv.put("from-parent", "hello")
    wait_ok(run_child(db, "reader"))
    assert await kv.get("from-child") == "hi"
    await kv.close()


def test_processes_creating_and_writing_one_file_at_once(db: Path) -> None:
    children = [run_child(db, f"writer{n}", 50) for n in range(4)]
    for child in children:
        wait_ok(child)
    conn = raw(db)
    assert conn.execute("SELECT count(*) FROM kv WHERE namespace = 'shared'").fetchone() == (200,)
    conn.close()


async def test_a_version_1_file_is_migrated_and_keeps_its_data(db: Path) -> None:
    conn = raw(db)
    conn.executescript(
        """
        CREATE TABLE kv (namespace TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
            expiration REAL, metadata TEXT, PRIMARY KEY (namespace, key)) WITHOUT ROWID;
        PRAGMA user_version = 1;
        """
    )
    conn.execute("INSERT INTO kv VALUES ('n', ?, ?, NULL, NULL)", (encode_key("k"), b"old"))
    conn.close()
    kv = KVNamespace(SqliteKVBackend(db, "n"))
    entry = await kv.get_entry("k")
    assert entry.value == "old"
    await kv.put("k", "new", if_revision=entry.revision)
    assert await kv.get("k") == "new"
    await kv.close()
    assert raw(db).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_atomic_commit_is_one_transaction_seen_by_another_process(db: Path) -> None:
    kv = open_kv("n", path=db)
    result = await kv.atomic().check("a", None).set("a", "1").set("b", "2").commit()
    assert result.ok
    rows = raw(db).execute("SELECT key, value, version FROM kv ORDER BY key").fetchall()
    assert [(bytes(k), bytes(v)) for k, v, _ in rows] == [
        (encode_key("a"), b"1"),
        (encode_key("b"), b"2"),
    ]
    assert {str(version) for _, _, version in rows} == set(result.revisions.values())
    await kv.close()
