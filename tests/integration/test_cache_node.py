"""The Cache API and HTTP framing against a real node: shared store, one Date, 100-continue."""

from __future__ import annotations

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
