"""The Cache API and HTTP framing against a real node: shared store, one Date, 100-continue."""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

APP = """
import os
from edgerun import Response, caches

async def fetch(request, env, ctx):
    if request.path == "/put":
        response = Response(
            "stored by " + str(os.getpid()),
            headers={"cache-control": "max-age=600", "date": "Mon, 07 Dec 2026 10:00:00 GMT"},
        )
        await caches.default.put("https://c.test/item", response)
        return Response(str(os.getpid()))
    if request.path == "/match":
        hit = await caches.default.match("https://c.test/item")
        return hit if hit is not None else Response("miss", status=404)
    if request.path == "/pid":
        return Response(str(os.getpid()))
    if request.path == "/exit":
        os._exit(1)
    if request.path == "/held-match":
        # Occupies this worker until the client sends the body, then reads the cache.
        await request.body()
        hit = await caches.default.match("https://c.test/item")
        text = "miss" if hit is None else await hit.text()
        return Response.json({"pid": os.getpid(), "cached": text})
    if request.path == "/echo":
        return Response(await request.body())
    return Response("ok")
"""


def project(root: Path, toml: str = "") -> Path:
    p = root / "c"
    p.mkdir()
    (p / "edgerun.toml").write_text(f'name = "c"\nmain = "app.py"\n{textwrap.dedent(toml)}')
    (p / "app.py").write_text(APP)
    return p


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to and including the first blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_cached_response_keeps_its_own_single_date(tmp_path, edgerun_node):
    node = edgerun_node(project(tmp_path), command="node")
    assert node.client.get("/put").status_code == 200
    with connect(node.url) as sock:
        sock.sendall(b"GET /match HTTP/1.1\r\nhost: c.test\r\n\r\n")
        head = read_head(sock).decode("latin-1").lower()
    dates = [line for line in head.split("\r\n") if line.startswith("date:")]
    assert dates == ["date: mon, 07 dec 2026 10:00:00 gmt"], head
    # A response without a Date gets the server's.
    with connect(node.url) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\nhost: c.test\r\n\r\n")
        head = read_head(sock).decode("latin-1").lower()
    assert len([line for line in head.split("\r\n") if line.startswith("date:")]) == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_expect_100_continue_gets_an_interim_response(tmp_path, edgerun_node, workers):
    toml = f"[scaling]\nmax_workers = {workers}\n"
    node = edgerun_node(project(tmp_path, toml), command="node")
    with connect(node.url) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: c.test\r\ncontent-length: 5\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        # The client holds the body back until the server asks for it.
        interim = read_head(sock)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(b"hello")
        rest = interim.split(b"\r\n\r\n", 1)[1]
        while not rest.endswith(b"hello"):
            chunk = sock.recv(4096)
            assert chunk, rest
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200"), rest


def test_a_put_in_one_worker_is_a_hit_in_its_replacement(tmp_path, edgerun_node):
    node = edgerun_node(project(tmp_path, "[scaling]\nmax_workers = 1\n"), command="node")
    r = node.client.get("/put", headers={"host": "c.test"})
    putter = r.text
    assert node.client.get("/exit").status_code == 502  # the only worker dies
    hit = node.client.get("/match")
    assert hit.status_code == 200
    assert hit.text == f"stored by {putter}"
    assert node.client.get("/pid").text != putter  # served by the replacement


def test_a_put_in_one_worker_is_a_hit_in_another(tmp_path, edgerun_node):
    toml = (
        "[limits]\nmax_concurrency = 1\n"
        "[scaling]\ntarget_concurrency = 1\nmin_workers = 2\nmax_workers = 2\n"
    )
    node = edgerun_node(project(tmp_path, toml), command="node")
    with connect(node.url) as held:
        # This request occupies one worker (it waits for its body)...
        held.sendall(b"POST /held-match HTTP/1.1\r\nhost: c.test\r\ncontent-length: 1\r\n\r\n")
        # ...so the put, at one request per worker, is served by the other one.
        putter = node.client.get("/put").text
        held.sendall(b"x")
        data = b""
        while b"}" not in data:
            chunk = held.recv(4096)
            assert chunk, data
            data += chunk
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["pid"] != int(putter)
    assert body["cached"] == f"stored by {putter}"
