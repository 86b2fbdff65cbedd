"""Connection handoff against a real node: isolated workers serve client connections.

Every request here goes over a raw socket, so the test decides which TCP connection
carries it: a keep-alive connection is handed to a worker of the deployment its first
request is routed to, comes back to the node when a request on it belongs elsewhere,
and survives (or is answered for) when its worker dies. ``/__edgerun/pools`` and
``/__edgerun/usage`` are read over the node's httpx client (another connection) as
observables: ``connections`` is how many client connections a worker holds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

FAILSAFE_S = 20.0  # socket timeout: only reached when something hangs

APP = """
import asyncio, json, os
from edgerun import Response

NAME = {name!r}

async def fetch(request, env, ctx):
    path = request.path
    if path == "/exit":
        os._exit(1)
    if path == "/sleep":
        await asyncio.sleep(float(request.query.get("s", "10")))
    if path == "/spin":
        while True:
            pass
    if path == "/spin-c":
        return Response(str(sum(range(10**12))))
    body = await request.text()
    return Response.json({{
        "project": NAME,
        "pid": os.getpid(),
        "path": path,
        "body": body,
        "version": request.headers.get("x-edgerun-version"),
    }})
"""


def project(root: Path, name: str, toml: str = "") -> Path:
    p = root / name
    p.mkdir(parents=True)
    (p / "edgerun.toml").write_text(
        f'name = "{name}"\nmain = "app.py"\nroutes = ["{name}.test/*"]\n{textwrap.dedent(toml)}'
    )
    (p / "app.py").write_text(APP.format(name=name))
    return p


# -- a raw HTTP/1.1 client -----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def project(self) -> str | None:
        try:
            return self.json().get("project")
        except ValueError:
            return None


def req(
    path: str, host: str = "a.test", headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{'POST' if body else 'GET'} {path} HTTP/1.1", f"host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Conn:
    """One client TCP connection, read response by response."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=FAILSAFE_S)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def reply(self) -> Reply:
        """The next response; fails if the connection ends first."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a response head ({self.buf!r})"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    assert self._fill(), "connection closed inside a chunked body"
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    assert self._fill(), "connection closed inside a chunk"
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                assert self._fill(), "connection closed inside a body"
            body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(status, headers, body)

    def request(self, data: bytes) -> Reply:
        self.send(data)
        return self.reply()

    def closed_by_server(self) -> bool:
        """True once the server closes (EOF or reset) with nothing more sent."""
        try:
            more = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        assert not more, f"unexpected bytes instead of a close: {more!r}"
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[..., Conn]]:
    opened: list[Conn] = []

    def make(node) -> Conn:
        parts = urlsplit(node.url)
        conn = Conn((parts.hostname, parts.port))
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


def pools(node) -> dict:
    return node.client.get("/__edgerun/pools").json()["deployments"]


def connections(node, name: str) -> int:
    """Client connections the workers of ``name`` hold."""
    return sum(w["connections"] for w in pools(node).get(name, {}).get("workers", []))


def poll(check: Callable[[], bool], what: str, timeout: float = FAILSAFE_S) -> None:
    """Wait for an observable (the node's answers), never for time alone."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


@pytest.fixture
def two(tmp_path, edgerun_node):
    """A node serving isolated projects ``a`` (a.test) and ``b`` (b.test)."""

    def make(a_toml: str = "", b_toml: str = ""):
        return edgerun_node(
            [project(tmp_path, "a", a_toml), project(tmp_path, "b", b_toml)], command="node"
        )

    return make


# -- tests -----------------------------------------------------------------------------------


def test_a_keep_alive_connection_is_held_by_a_worker(two, connect):
    node = two()
    conn = connect(node)
    r = conn.request(req("/"))
    assert r.status == 200 and r.project == "a"
    assert r.headers.get("x-edgerun-request-id")
    workers = pools(node)["a"]["workers"]
    assert [w["connections"] for w in workers if w["pid"] == r.json()["pid"]] == [1]
    assert connections(node, "a") == 1
    assert connections(node, "b") == 0
    # A second request on the connection is served by the same worker.
    again = conn.request(req("/again"))
    assert again.json()["pid"] == r.json()["pid"]
    assert again.headers.get("x-edgerun-request-id") not in (
        None,
        r.headers["x-edgerun-request-id"],
    )
    # The client closes: the worker reports it and the node counts it gone.
    conn.close()
    poll(lambda: connections(node, "a") == 0, "the closed connection to be released")


def test_one_connection_moves_between_projects_and_the_node(two, connect):
    node = two()
    conn = connect(node)
    steps = [
        ("a.test", "/one", "a"),
        ("b.test", "/two", "b"),
        ("a.test", "/three", "a"),
        ("a.test", "/healthz", None),
        ("a.test", "/four", "a"),
        ("b.test", "/healthz", None),
        ("b.test", "/five", "b"),
        ("a.test", "/__edgerun/pools", None),
        ("a.test", "/six", "a"),
        ("nobody.test", "/seven", None),
        ("a.test", "/eight", "a"),
    ]
    for host, path, owner in steps:
        r = conn.request(req(path, host=host))
        if host == "nobody.test":
            assert r.status == 404 and r.json()["error"]["code"] == "not_found"
        else:
            assert r.status == 200, (host, path, r)
        if owner is None:
            assert r.project is None  # the node's own answer
            if path == "/__edgerun/pools":
                # Served by the node on this very connection, which it holds right now.
                assert sum(w["connections"] for w in r.json()["deployments"]["a"]["workers"]) == 0
        else:
            assert (r.project, r.json()["path"]) == (owner, path)
        # Who holds the connection now: the project that answered, or nobody.
        held = {name: connections(node, name) for name in ("a", "b")}
        assert held == {"a": int(owner == "a"), "b": int(owner == "b")}, (host, path)
    assert conn.request(req("/last", host="a.test")).project == "a"


def test_a_forced_version_goes_back_to_the_node(two, connect):
    node = two()
    conn = connect(node)
    first = conn.request(req("/"))
    assert first.project == "a" and connections(node, "a") == 1
    forced = conn.request(req("/v", headers={"x-edgerun-version": "something"}))
    # No control plane: the node has no versions and serves a, through its own path.
    assert forced.status == 200
    assert forced.project == "a" and forced.json()["version"] == "something"
    assert forced.headers.get("x-edgerun-request-id")
    assert connections(node, "a") == 0  # the node holds the connection now
    # The next plain request hands it over again.
    assert conn.request(req("/plain")).project == "a"
    assert connections(node, "a") == 1


def test_a_request_with_a_body_is_handed_over_whole(two, connect):
    node = two()
    conn = connect(node)
    r = conn.request(req("/post", body=b"x" * 5000))
    assert r.status == 200 and r.json()["body"] == "x" * 5000
    assert connections(node, "a") == 1
    # And on the held connection, a body split over two sends.
    data = req("/split", body=b"0123456789" * 300)
    conn.send(data[:40])
    conn.send(data[40:])
    assert conn.reply().json()["body"] == "0123456789" * 300


def test_an_idle_connection_outlives_its_killed_worker(two, connect):
    node = two()
    conn = connect(node)
    first = conn.request(req("/"))
    pid = first.json()["pid"]
    assert connections(node, "a") == 1
    # Idle as the node sees it: the worker has closed the request's slot (inflight
    # counts the busy slots). See the next test for a kill before that.
    poll(
        lambda: all(w["inflight"] == 0 for w in pools(node)["a"]["workers"]),
        "the worker to finish the request",
    )
    os.kill(pid, signal.SIGKILL)
    # The very next request on the same socket: the node took the idle connection
    # back and a new worker serves it.
    r = conn.request(req("/after"))
    assert r.status == 200 and r.project == "a"
    assert r.json()["pid"] != pid
    poll(lambda: pid not in [w["pid"] for w in pools(node)["a"]["workers"]], "the dead worker gone")
    assert connections(node, "a") == 1


def test_a_kill_right_after_a_complete_response_does_not_drop_the_connection(
    tmp_path, edgerun_node, connect
):
    # Regression: the worker marked its slot free only after writing the whole
    # response, so a kill in between made the node close a connection whose answer was
    # complete. The slot is now freed right before that final write.
    node = edgerun_node([project(tmp_path, "a", "[scaling]\nmax_workers = 1\n")], command="node")
    failures = []
    for attempt in range(40):
        conn = connect(node)
        pid = conn.request(req("/")).json()["pid"]
        os.kill(pid, signal.SIGKILL)  # the client has the complete response: idle
        try:
            r = conn.request(req("/after"))
            if r.status != 200:
                failures.append((attempt, r.status))
        except (ConnectionResetError, AssertionError) as exc:
            failures.append((attempt, repr(exc)))
        conn.close()
    assert failures == []


def test_a_crash_on_a_held_connection_is_502_then_closed(two, connect):
    node = two()
    conn = connect(node)
    pid = conn.request(req("/")).json()["pid"]
    r = conn.request(req("/exit"))
    assert r.status == 502
    assert r.json()["error"]["code"] == "worker_crashed"
    assert r.headers.get("connection") == "close"
    assert conn.closed_by_server()
    fresh = connect(node)
    again = fresh.request(req("/"))
    assert again.status == 200 and again.project == "a" and again.json()["pid"] != pid
    assert fresh.request(req("/", host="b.test")).project == "b"


def test_a_crash_as_the_first_request_of_a_connection_is_502(two, connect):
    node = two()
    conn = connect(node)
    r = conn.request(req("/exit"))
    assert r.status == 502 and r.json()["error"]["code"] == "worker_crashed"
    assert conn.closed_by_server()
    assert connect(node).request(req("/")).status == 200


def test_a_killed_worker_answers_the_request_in_flight_with_502(two, connect):
    node = two()
    conn = connect(node)
    pid = conn.request(req("/")).json()["pid"]
    conn.send(req("/sleep?s=30"))
    poll(
        lambda: any(w["inflight"] for w in pools(node)["a"]["workers"]),
        "the request to be in flight",
    )
    os.kill(pid, signal.SIGKILL)
    r = conn.reply()
    assert r.status == 502 and r.json()["error"]["code"] == "worker_crashed"
    assert conn.closed_by_server()


def test_pipelined_requests_for_two_projects(two, connect):
    node = two()
    conn = connect(node)
    conn.send(req("/first", host="a.test") + req("/second", host="b.test"))
    first = conn.reply()
    assert first.status == 200 and first.project == "a" and first.json()["path"] == "/first"
    second = conn.reply()
    if second.status == 421:
        # The worker could not give the connection back with a response pending: the
        # client is told to retry on a new connection, and this one ends.
        assert second.json()["error"]["code"] == "misdirected"
        assert second.headers.get("connection") == "close"
        assert conn.closed_by_server()
        retried = connect(node).request(req("/second", host="b.test"))
        assert retried.project == "b"
    else:
        assert second.status == 200 and second.project == "b"
        assert second.json()["path"] == "/second"


def test_pipelined_requests_for_one_project_are_all_served(two, connect):
    node = two()
    conn = connect(node)
    conn.send(b"".join(req(f"/p{i}") for i in range(5)))
    replies = [conn.reply() for _ in range(5)]
    assert [(r.status, r.json()["path"]) for r in replies] == [(200, f"/p{i}") for i in range(5)]
    assert len({r.json()["pid"] for r in replies}) == 1


def test_a_crash_of_a_pipelined_request_is_502(two, connect):
    # Regression: a pipelined request ran with its connection's slot marked idle, so a
    # crash under it gave no 502. The next request now takes the slot over.
    node = two()
    conn = connect(node)
    assert conn.request(req("/")).project == "a"
    conn.send(req("/sleep?s=0.3") + req("/exit"))
    first = conn.reply()
    assert first.status == 200 and first.json()["path"] == "/sleep"
    second = conn.reply()
    assert second.status == 502 and second.json()["error"]["code"] == "worker_crashed"


def test_a_cpu_loop_in_c_on_a_held_connection_is_503_exceeded_cpu(two, connect):
    node = two(a_toml="[limits]\ncpu_ms = 50\n")
    conn = connect(node)
    assert conn.request(req("/")).project == "a"
    r = conn.request(req("/spin-c"))
    assert r.status == 503 and r.json()["error"]["code"] == "exceeded_cpu"
    assert conn.closed_by_server()
    assert connect(node).request(req("/")).status == 200


def test_handoff_off_keeps_connections_on_the_node(two, connect):
    node = two(a_toml="[scaling]\nhandoff = false\n")
    conn = connect(node)
    for i in range(3):
        r = conn.request(req(f"/{i}"))
        assert r.status == 200 and r.project == "a" and r.headers.get("x-edgerun-request-id")
    workers = pools(node)["a"]["workers"]
    assert workers and all(w["connections"] == 0 for w in workers)
    # The twin: b has handoff on, and its worker holds a connection the same way opened.
    other = connect(node)
    assert other.request(req("/", host="b.test")).project == "b"
    assert connections(node, "b") == 1
    # The same connection still serves a afterwards, still through the node.
    assert conn.request(req("/again")).project == "a"
    assert connections(node, "a") == 0


def test_usage_of_a_held_connection_is_reported_at_once(two, connect):
    node = two()
    conn = connect(node)
    count = 7
    for i in range(count):
        assert conn.request(req(f"/{i}")).status == 200
    assert connections(node, "a") == 1
    usage = node.client.get("/__edgerun/usage").json()["deployments"]
    assert usage["a"]["requests"] == count
    assert usage["a"]["outcomes"] == {"ok": count}
    assert "b" not in usage or usage["b"]["requests"] == 0


def test_a_body_that_arrives_after_the_hand_over_reaches_the_worker(two, connect):
    node = two()
    conn = connect(node)
    data = req("/late", body=b"abcdefghij" * 100)
    head_end = data.index(b"\r\n\r\n") + 4
    conn.send(data[: head_end + 10])
    # The head alone is enough to hand the connection over; the rest of the body is
    # sent only once a worker holds it, so the worker reads it from the socket.
    poll(lambda: connections(node, "a") == 1, "the connection to be handed over")
    conn.send(data[head_end + 10 :])
    r = conn.reply()
    assert r.status == 200 and r.json()["body"] == "abcdefghij" * 100


def test_expect_100_continue_on_a_handed_over_connection(two, connect):
    node = two()
    conn = connect(node)
    body = b"z" * 300
    conn.send(req("/expect", headers={"expect": "100-continue"}, body=body)[: -len(body)])
    interim = conn.reply()
    assert interim.status == 100
    conn.send(body)
    r = conn.reply()
    assert r.status == 200 and r.json()["body"] == "z" * 300
    assert connections(node, "a") == 1


def test_connection_close_on_a_held_connection_ends_it(two, connect):
    node = two()
    conn = connect(node)
    assert conn.request(req("/")).project == "a"
    r = conn.request(req("/bye", headers={"connection": "close"}))
    assert r.status == 200 and r.project == "a"
    assert r.headers.get("connection") == "close"
    assert conn.closed_by_server()
    poll(lambda: connections(node, "a") == 0, "the worker to report the closed connection")


def test_an_http11_request_without_host_on_a_held_connection_is_400(two, connect):
    # RFC 9112 section 3.2, on the worker's side of a handed-over connection.
    node = two()
    conn = connect(node)
    assert conn.request(req("/")).project == "a"
    assert connections(node, "a") == 1
    r = conn.request(b"GET /nohost HTTP/1.1\r\n\r\n")
    assert r.status == 400 and r.json()["error"]["code"] == "bad_request"
    assert "Host" in r.json()["error"]["message"]
    assert conn.closed_by_server()


def test_a_cpu_limit_on_a_held_connection_is_503_and_the_connection_lives_on(two, connect):
    node = two(a_toml="[limits]\ncpu_ms = 50\n")
    conn = connect(node)
    pid = conn.request(req("/")).json()["pid"]
    r = conn.request(req("/spin"))
    assert r.status == 503 and r.json()["error"]["code"] == "exceeded_cpu"
    # The worker retires itself (a limit left it unfit); the connection is given back
    # to the node and the next request on it goes to a fresh worker.
    after = conn.request(req("/after"))
    assert after.status == 200 and after.project == "a"
    assert after.json()["pid"] != pid
    node.wait_for_line(rf"worker {pid} of a ended")


def _retire_with_a_held_connection(two, connect):
    """A worker that hit its CPU limit retires and gives its connection back; returns
    the node once the worker has exited (everything it and the node logged about it is
    in ``node.output`` then)."""
    node = two(a_toml="[limits]\ncpu_ms = 50\n")
    conn = connect(node)
    pid = conn.request(req("/")).json()["pid"]
    assert conn.request(req("/spin")).status == 503
    node.wait_for_line(rf"worker {pid} of a ended")
    assert conn.request(req("/after")).status == 200
    return node


def test_giving_back_the_last_connection_of_a_retired_worker_logs_no_error(two, connect):
    # Regression: the node read the connection channel of a worker it had just closed
    # ("ValueError: Invalid file descriptor: -1" in the log).
    node = _retire_with_a_held_connection(two, connect)
    output = "".join(node.output)
    assert "Exception in callback" not in output, output[-3000:]


@pytest.mark.parametrize("handoff", ["true", "false"], ids=["direct", "proxied"])
def test_a_request_that_hit_its_cpu_limit_leaves_no_failed_task_in_the_worker(
    two, connect, handoff
):
    # Regression: a request over its CPU budget left a failed task behind ("Task
    # exception was never retrieved ... CpuExceeded") on both paths.
    node = two(a_toml=f"[limits]\ncpu_ms = 50\n[scaling]\nhandoff = {handoff}\n")
    conn = connect(node)
    pid = conn.request(req("/")).json()["pid"]
    r = conn.request(req("/spin"))
    assert r.status == 503 and r.json()["error"]["code"] == "exceeded_cpu"
    node.wait_for_line(rf"worker {pid} of a ended")  # all it logged is in the output now
    output = "".join(node.output)
    assert "Task exception was never retrieved" not in output, output[-3000:]


def test_an_idle_held_connection_survives_its_worker_being_reaped(tmp_path, edgerun_node, connect):
    a = project(tmp_path, "a", "[scaling]\nidle_s = 0.3\n")
    node = edgerun_node([a], command="node")
    conn = connect(node)
    pid = conn.request(req("/")).json()["pid"]
    assert connections(node, "a") == 1
    node.wait_for_line(rf"worker {pid} of a reaped")
    node.wait_for_line(rf"worker {pid} of a ended")
    assert pools(node)["a"]["workers"] == []
    # The connection went back to the node before the worker left: still usable.
    r = conn.request(req("/again"))
    assert r.status == 200 and r.project == "a" and r.json()["pid"] != pid
