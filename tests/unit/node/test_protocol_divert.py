"""Diversion in the node's HTTP protocol (``NodeHttpToolsProtocol`` + ``Diverter``).

The protocol runs on a real event loop with a fake transport (no socket): bytes are
fed with ``data_received`` exactly as a transport would deliver them, the loop is
run until the application's tasks are done, and a recording ``Diverter`` shows which
heads were offered (``plan``) and which bytes went with a diverted connection
(``divert``). The contract under test: a connection is offered for diversion only at
a request that starts a received chunk with nothing pending before it, and the bytes
given away are exactly the stream from that request's first byte to the end of what
was received.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from edgerun.errors import WorkerCrashed
from edgerun.node.protocol import NodeHttpToolsProtocol, protocol_class
from edgerun.security.limits import HttpLimits

AWAY = "away.test"  # requests for this host are diverted (when offered)
LOCAL = "local.test"


class FakeTransport(asyncio.Transport):
    """Records what the protocol does to its connection."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()
        self.closed = False
        self.read_paused = False
        self.eof_written = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "sockname": ("127.0.0.1", 8000),
            "peername": ("203.0.113.7", 50000),
        }.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def is_reading(self) -> bool:
        return not self.read_paused

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


@dataclass
class Seen:
    """One request as the application received it."""

    method: str
    path: str
    host: str | None
    body: bytes


@dataclass
class Recorder:
    """A ``Diverter`` that diverts requests whose Host is ``AWAY`` (or every request
    when ``divert_all``), and an ASGI application that records what it serves."""

    divert_all: bool = False
    active: bool = True
    plans: list[tuple[str, str | None]] = field(default_factory=list)
    diverts: list[bytes] = field(default_factory=list)
    served: list[Seen] = field(default_factory=list)
    heads: list[tuple[bytes, bool]] = field(default_factory=list)  # (raw_path, version)
    receiving: Any = None  # the cycle whose body the application is waiting for

    # -- Diverter ------------------------------------------------------------------

    def plan(self, protocol: NodeHttpToolsProtocol) -> object | None:
        host = protocol._hosts[0] if protocol._hosts else None
        path = protocol.url.decode("latin-1")
        self.plans.append((path, host))
        self.heads.append((protocol.raw_path(), protocol.version_header))
        if self.divert_all or host == AWAY:
            return ("plan", path)
        return None

    def divert(self, protocol: NodeHttpToolsProtocol, plan: object, data: bytes) -> None:
        assert protocol.diverted
        self.diverts.append(data)

    # -- ASGI application -------------------------------------------------------------

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            # uvicorn's receive is its cycle's bound method: what settle() looks at.
            self.receiving = receive.__self__
            try:
                message = await receive()
            finally:
                self.receiving = None
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        host = dict(scope["headers"]).get(b"host")
        self.served.append(
            Seen(scope["method"], scope["path"], host.decode() if host else None, body)
        )
        payload = f"served {scope['path']}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class Harness:
    """A protocol on a fake connection, driven from a coroutine."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.state = ServerState()
        config = Config(
            app=recorder.app,
            log_config=None,
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            access_log=False,
        )
        cls = protocol_class(HttpLimits(), recorder)
        self.protocol = cls(config, self.state, {}, asyncio.get_running_loop())
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)

    async def feed(self, data: bytes) -> None:
        """Deliver ``data`` as one chunk, then let the application finish everything."""
        assert not self.transport.read_paused or self.protocol.diverted, (
            "a real transport delivers nothing while reading is paused"
        )
        self.protocol.data_received(data)
        await self.settle()

    async def settle(self) -> None:
        """Run the loop until the application is done, or waits for body bytes that
        have not arrived yet (then only more input can move it)."""
        while self.state.tasks:
            cycle = self.recorder.receiving
            if cycle is not None and not cycle.message_event.is_set():
                return
            await asyncio.sleep(0)  # one loop iteration, not a wait for time

    def finish(self) -> None:
        self.protocol.connection_lost(None)

    def responses(self) -> list[bytes]:
        """The bodies of the responses written so far (they are all ``served ...``)."""
        out = []
        for part in bytes(self.transport.buffer).split(b"HTTP/1.1 ")[1:]:
            head, _, body = part.partition(b"\r\n\r\n")
            assert head.startswith(b"200 "), part
            out.append(body)
        return out


def request(path: str, host: str = AWAY, body: bytes | None = None, extra: str = "") -> bytes:
    """One HTTP/1.1 request; a POST with Content-Length when ``body`` is given."""
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}"
    if body is not None:
        head += f"content-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- (a) a head in one chunk -------------------------------------------------------------


def test_a_head_in_one_chunk_is_diverted_with_exactly_that_chunk():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        chunk = request("/first", extra="x-one: 1\r\n")
        await h.feed(chunk)
        assert recorder.plans == [("/first", AWAY)]
        assert recorder.diverts == [chunk]
        assert recorder.served == []
        assert h.transport.buffer == b""  # nothing answered here
        assert not h.transport.closed  # the connection lives on elsewhere
        assert h.transport.read_paused  # and this protocol reads no more of it
        # Whatever still arrives is not this protocol's business any more.
        h.protocol.data_received(request("/second"))
        await h.settle()
        assert recorder.diverts == [chunk]
        assert recorder.plans == [("/first", AWAY)]
        assert recorder.served == []
        h.finish()

    run(scenario())


def test_a_chunk_with_pipelined_requests_goes_whole():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        chunk = request("/one") + request("/two", body=b"hello") + request("/three")
        await h.feed(chunk)
        assert recorder.diverts == [chunk]
        assert recorder.plans == [("/one", AWAY)]  # only the head that starts the chunk
        assert recorder.served == []
        h.finish()

    run(scenario())


# -- (b) a head split across chunks --------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn, hosts: st.SearchStrategy[str]) -> tuple[list[bytes], list[bytes]]:
    """(requests, chunks): 1..3 pipelined requests, some with bodies, cut anywhere."""
    count = draw(st.integers(1, 3))
    requests = []
    for i in range(count):
        body = draw(st.none() | st.binary(max_size=24))
        requests.append(request(f"/r{i}", host=draw(hosts), body=body))
    stream = b"".join(requests)
    cuts = draw(st.sets(st.integers(1, len(stream) - 1), max_size=8))
    bounds = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    return requests, chunks


def _head_end(req: bytes) -> int:
    return req.index(b"\r\n\r\n") + 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams(st.just(AWAY)))
def test_a_split_head_is_diverted_with_everything_received_since_its_start(data):
    requests, chunks = data
    head_end = _head_end(requests[0])

    async def scenario() -> None:
        recorder = Recorder(divert_all=True)
        h = Harness(recorder)
        fed = 0
        first: int | None = None
        for i, chunk in enumerate(chunks):
            await h.feed(chunk)
            fed += len(chunk)
            if fed < head_end:
                assert recorder.diverts == [], "diverted before the head was complete"
                assert recorder.plans == []
            else:
                # Diverted at the chunk that completed the head, with every byte fed
                # up to then; later chunks change nothing.
                if first is None:
                    first = i
                assert recorder.diverts == [b"".join(chunks[: first + 1])]
        assert first is not None
        assert recorder.plans == [("/r0", AWAY)]
        assert recorder.served == []
        assert h.transport.buffer == b""
        h.finish()

    run(scenario())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams(st.sampled_from([AWAY, LOCAL])))
def test_only_requests_starting_a_chunk_are_offered_and_the_rest_is_served(data):
    """The model: a request is offered iff it starts a chunk (everything before it has
    arrived and been answered, since the loop settles between chunks); the first
    offered ``AWAY`` request is diverted with the stream from its start to the end of
    the chunk that completed its head; every request before it is served here."""
    requests, chunks = data
    starts = []
    offset = 0
    for req in requests:
        starts.append(offset)
        offset += len(req)
    stream = b"".join(requests)
    chunk_ends = []
    offset = 0
    for chunk in chunks:
        offset += len(chunk)
        chunk_ends.append(offset)
    chunk_starts = {0, *chunk_ends}

    offered: list[int] = []
    diverted: int | None = None
    for i, host in enumerate(_hosts(requests)):
        if starts[i] in chunk_starts:
            offered.append(i)
            if host == AWAY:
                diverted = i
                break
    served = list(range(diverted if diverted is not None else len(requests)))

    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        for chunk in chunks:
            await h.feed(chunk)
        assert [path for path, _host in recorder.plans] == [f"/r{i}" for i in offered]
        assert [s.path for s in recorder.served] == [f"/r{i}" for i in served]
        for seen in recorder.served:
            i = int(seen.path[2:])
            assert seen.body == _body(requests[i])
        assert h.responses() == [f"served /r{i}".encode() for i in served]
        if diverted is None:
            assert recorder.diverts == []
        else:
            head_done = starts[diverted] + _head_end(requests[diverted])
            until = next(end for end in chunk_ends if end >= head_done)
            assert recorder.diverts == [stream[starts[diverted] : until]]
        h.finish()

    run(scenario())


def _hosts(requests: list[bytes]) -> list[str]:
    return [req.split(b"host: ", 1)[1].split(b"\r\n", 1)[0].decode() for req in requests]


def _body(req: bytes) -> bytes:
    return req[_head_end(req) :]


# -- (c) no plan: served here -------------------------------------------------------------


def test_a_request_without_a_plan_is_served_here():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/here", host=LOCAL, body=b"abc"))
        assert recorder.plans == [("/here", LOCAL)]
        assert recorder.diverts == []
        assert recorder.served == [Seen("POST", "/here", LOCAL, b"abc")]
        assert h.responses() == [b"served /here"]
        assert not h.transport.closed
        # The next request starts a chunk with nothing pending: offered again.
        await h.feed(request("/next"))
        assert recorder.plans == [("/here", LOCAL), ("/next", AWAY)]
        assert recorder.diverts == [request("/next")]
        h.finish()

    run(scenario())


# -- (d) resume --------------------------------------------------------------------------


def test_resume_without_divert_serves_the_next_request_here_then_offers_again():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        first = request("/first", body=b"xyz")
        await h.feed(first)
        assert recorder.diverts == [first]
        # The hand-over failed: the node serves the request itself after all.
        h.protocol.resume(first, divert=False)
        await h.settle()
        assert not h.protocol.diverted
        assert recorder.plans == [("/first", AWAY)]  # not asked a second time
        assert recorder.served == [Seen("POST", "/first", AWAY, b"xyz")]
        assert h.responses() == [b"served /first"]
        assert not h.transport.read_paused
        # divert=False concerned one request only: the next one is offered again.
        await h.feed(request("/second"))
        assert recorder.plans == [("/first", AWAY), ("/second", AWAY)]
        assert recorder.diverts == [first, request("/second")]
        assert [s.path for s in recorder.served] == ["/first"]
        h.finish()

    run(scenario())


def test_resume_with_divert_offers_the_returned_request_again():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/x", host=AWAY))
        returned = request("/y", host=LOCAL) + request("/z", host=AWAY)
        # A worker gives the connection back with two unserved requests.
        h.protocol.resume(returned)
        await h.settle()
        # /y starts the returned bytes: offered, served here; /z began mid-chunk.
        assert recorder.plans == [("/x", AWAY), ("/y", LOCAL)]
        assert [s.path for s in recorder.served] == ["/y", "/z"]
        assert h.responses() == [b"served /y", b"served /z"]
        assert recorder.diverts == [request("/x", host=AWAY)]
        h.finish()

    run(scenario())


def test_resume_with_nothing_then_a_request_in_pieces():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/x"))
        h.protocol.resume(b"")  # a worker died with the connection idle
        assert not h.transport.read_paused
        whole = request("/again", host=LOCAL, body=b"12345")
        for piece in (whole[:7], whole[7:30], whole[30:]):
            await h.feed(piece)
        assert recorder.plans == [("/x", AWAY), ("/again", LOCAL)]
        assert recorder.served == [Seen("POST", "/again", LOCAL, b"12345")]
        h.finish()

    run(scenario())


def test_resume_is_ignored_unless_diverted():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/a", host=LOCAL))
        h.protocol.resume(request("/b", host=LOCAL))
        await h.settle()
        assert [s.path for s in recorder.served] == ["/a"]
        h.finish()

    run(scenario())


def test_abort_answers_the_error_as_json_and_closes():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/x"))
        h.protocol.abort(WorkerCrashed("the worker died"))
        raw = bytes(h.transport.buffer)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"connection: close" in head
        assert json.loads(body)["error"]["code"] == "worker_crashed"
        assert h.transport.closed
        h.protocol.abort(WorkerCrashed("again"))  # closing: nothing more written
        assert bytes(h.transport.buffer) == raw
        h.finish()

    run(scenario())


def test_abort_without_an_error_just_closes():
    async def scenario() -> None:
        h = Harness(Recorder())
        await h.feed(request("/x"))
        h.protocol.abort(None)
        assert h.transport.closed and h.transport.buffer == b""
        h.finish()

    run(scenario())


# -- (e) a request beginning mid-chunk -----------------------------------------------------


@pytest.mark.parametrize("second_body", [None, b"", b"payload"], ids=["get", "empty-post", "post"])
def test_a_request_beginning_mid_chunk_is_not_offered(second_body):
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/local", host=LOCAL) + request("/away", body=second_body))
        assert recorder.plans == [("/local", LOCAL)]
        assert recorder.diverts == []
        assert [s.path for s in recorder.served] == ["/local", "/away"]
        assert h.responses() == [b"served /local", b"served /away"]
        # The twin: the same request in a chunk of its own is offered and diverted.
        await h.feed(request("/away", body=second_body))
        assert recorder.plans == [("/local", LOCAL), ("/away", AWAY)]
        assert recorder.diverts == [request("/away", body=second_body)]
        h.finish()

    run(scenario())


def test_a_request_beginning_mid_chunk_stays_unoffered_when_its_head_ends_later():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        second = request("/away")
        await h.feed(request("/local", host=LOCAL, body=b"ab") + second[:9])
        await h.feed(second[9:])
        assert recorder.plans == [("/local", LOCAL)]
        assert recorder.diverts == []
        assert [s.path for s in recorder.served] == ["/local", "/away"]
        h.finish()

    run(scenario())


def test_a_request_after_the_rest_of_a_body_in_one_chunk_is_not_offered():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        first = request("/local", host=LOCAL, body=b"0123456789")
        await h.feed(first[:-4])  # the head and part of the body
        await h.feed(first[-4:] + request("/away"))
        assert recorder.plans == [("/local", LOCAL)]
        assert recorder.diverts == []
        assert recorder.served == [
            Seen("POST", "/local", LOCAL, b"0123456789"),
            Seen("GET", "/away", AWAY, b""),
        ]
        h.finish()

    run(scenario())


def test_a_request_arriving_while_the_previous_response_is_pending_is_not_offered():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        h.protocol.data_received(request("/local", host=LOCAL))
        # The application has not run yet: its response is still to come.
        assert recorder.served == []
        h.protocol.data_received(request("/away"))
        await h.settle()
        assert recorder.plans == [("/local", LOCAL)]
        assert recorder.diverts == []
        assert [s.path for s in recorder.served] == ["/local", "/away"]
        h.finish()

    run(scenario())


def test_an_inactive_diverter_is_not_asked():
    async def scenario() -> None:
        recorder = Recorder(active=False)
        h = Harness(recorder)
        await h.feed(request("/away"))
        assert recorder.plans == [] and recorder.diverts == []
        assert [s.path for s in recorder.served] == ["/away"]
        # Its twin: once active, the next request is offered and diverted.
        recorder.active = True
        await h.feed(request("/later"))
        assert recorder.plans == [("/later", AWAY)]
        assert recorder.diverts == [request("/later")]
        h.finish()

    run(scenario())


def test_the_plan_sees_the_raw_path_and_a_per_request_version_header():
    async def scenario() -> None:
        recorder = Recorder()
        h = Harness(recorder)
        await h.feed(request("/a%2Fb?q=1", host=LOCAL, extra="X-Edgerun-Version: v2\r\n"))
        await h.feed(request("/plain?x", host=LOCAL))
        await h.feed(request("http://other.test/abs?y", host=LOCAL))
        assert recorder.heads == [(b"/a%2Fb", True), (b"/plain", False), (b"/abs", False)]
        h.finish()

    run(scenario())


def test_without_a_diverter_nothing_is_offered():
    async def scenario() -> None:
        recorder = Recorder()
        state = ServerState()
        config = Config(app=recorder.app, log_config=None, lifespan="off", interface="asgi3")
        cls = protocol_class(HttpLimits())
        protocol = cls(config, state, {}, asyncio.get_running_loop())
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(request("/away"))
        while state.tasks:
            await asyncio.wait(set(state.tasks))
        assert recorder.plans == [] and recorder.diverts == []
        assert [s.path for s in recorder.served] == ["/away"]
        protocol.connection_lost(None)

    run(scenario())
