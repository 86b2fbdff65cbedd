"""A worker's HTTP server for the connections the node hands over (``handoff``).

``serve_connections(host, conns, slots)`` runs in an isolated worker (injected by
``node.worker_main``). Each ``Adopt`` on ``conns`` brings a client socket and the bytes
the node already read; the worker serves it with the node's own HTTP protocol
(``node.protocol``: same caps, deadlines and error bodies) and ``AsgiFront``, calling
the worker's ``DirectHost.handle`` for each request, until the connection ends
(``Closed``) or a request on it belongs elsewhere -- another route, a node endpoint, a
forced version -- and it goes back to the node with the unserved bytes (``Returned``).
``Give`` asks for connections back (a deploy, a reap); ``Flush`` for the usage
counted so far (``Report``, also sent unasked every second).

Each request's handler runs under its own CPU meter (``DirectHost.handle``), and every
request moves its connection's slot through head in -> responding -> done (marked right
before the write that completes the response), so the node can answer for a worker
that dies mid-request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from email.utils import formatdate
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from edgerun.edge.routes import RouteTable
from edgerun.errors import error_body
from edgerun.http import Geo, Request, Response
from edgerun.node.asgi_front import AsgiFront
from edgerun.node.front import NODE_PATHS, After, host_for_url
from edgerun.node.ids import new_request_id
from edgerun.node.protocol import NodeCycle, NodeHttpToolsProtocol, node_config
from edgerun.node.versions import VERSION_HEADER
from edgerun.runtime.isolate.handoff import DirectHost, Slots, send_packet
from edgerun.runtime.isolate.protocol import (
    MAX_CONTROL_PACKET,
    Adopt,
    Closed,
    Flush,
    FrameError,
    Give,
    Report,
    Retiring,
    Returned,
    decode_conn,
)
from edgerun.security.limits import HttpLimits

__all__ = ["serve_connections"]

_log = logging.getLogger("edgerun.isolate")
_NODE_PATHS_RAW = tuple(p.encode() for p in NODE_PATHS)
_REPORT_EVERY_S = 1.0


async def serve_connections(host: DirectHost, conns: socket.socket, slots: Slots) -> None:
    """Serve handed-over connections until the node closes ``conns`` (see the module)."""
    await _Server(host, conns, slots).run()


class _Conn:
    """What the node said about one adopted connection."""

    __slots__ = ("access_log", "all_mine", "cold", "geo", "headers", "id", "ip", "routes", "slot")

    def __init__(self, message: Adopt, routes: RouteTable[bool]) -> None:
        self.id = message.conn
        self.slot = message.slot
        self.ip = message.ip
        self.geo = Geo(*message.geo) if message.geo is not None else Geo()
        self.headers = message.headers
        self.cold = message.cold
        self.routes = routes
        # Every route on the node is this deployment's (a node serving one project):
        # no request on this connection can belong elsewhere by its route.
        self.all_mine = all(mine for _pattern, mine in message.routes)
        self.access_log = message.access_log


class _Server:
    """The worker's side of the connection channel."""

    def __init__(self, host: DirectHost, conns: socket.socket, slots: Slots) -> None:
        self.host = host
        self.conns = conns
        self.slots = slots
        self.loop = asyncio.get_running_loop()
        self.protocols: dict[int, _WorkerProtocol] = {}
        self.state = ServerState()
        self.config = _CONFIG
        self._classes: dict[tuple[Any, ...], type[_WorkerProtocol]] = {}
        self._routes: dict[tuple[tuple[str, bool], ...], RouteTable[bool]] = {}
        self.giving = False  # retiring: every connection goes back once idle
        self.closed: asyncio.Future[None] = self.loop.create_future()
        host.on_retire = self._on_retire

    async def run(self) -> None:
        self.conns.setblocking(False)
        self.loop.add_reader(self.conns.fileno(), self._readable)
        self._tick()
        try:
            await self.closed
        finally:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.conns.fileno())
            for protocol in list(self.protocols.values()):
                protocol.transport.close()

    def _tick(self) -> None:
        """Once a second: the Date header, and unasked usage reports."""
        if self.closed.done():
            return
        self.state.default_headers = [(b"date", formatdate(usegmt=True).encode())]
        self._report(0, only_if_any=True)
        self.loop.call_later(_REPORT_EVERY_S, self._tick)

    # -- channel ------------------------------------------------------------------------

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        """Send one packet to the node (a full channel means the node is stuck: drop)."""
        try:
            send_packet(self.conns, message, fds)
        except BlockingIOError:
            _log.error("worker %d: the connection channel is full; message dropped", os.getpid())
        except OSError:
            pass  # the node is gone; closed is set by the reader

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.conns, MAX_CONTROL_PACKET, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                if not self.closed.done():
                    self.closed.set_result(None)
                self.loop.remove_reader(self.conns.fileno())
                return
            try:
                message = decode_conn(data)
            except FrameError as exc:
                _log.error("worker %d: %s", os.getpid(), exc)
                for fd in fds:
                    os.close(fd)
                continue
            if isinstance(message, Adopt):
                if not fds:
                    continue
                self._adopt(message, fds[0])
            elif isinstance(message, Give):
                self._give(message)
            elif isinstance(message, Flush):
                self._report(message.seq)
            for fd in fds[1:]:
                os.close(fd)

    def _report(self, seq: int, *, only_if_any: bool = False) -> None:
        rows = self.host.usage_rows()
        if rows or not only_if_any:
            self.send(Report(seq, rows))

    def _on_retire(self, why: str) -> None:
        self.send(Retiring(why))
        self.giving = True
        for protocol in list(self.protocols.values()):
            protocol.give_back(close=False)

    # -- connections --------------------------------------------------------------------

    def _adopt(self, message: Adopt, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        key = tuple(message.routes)
        routes = self._routes.get(key)
        if routes is None:
            if len(self._routes) > 64:
                self._routes.clear()
            routes = self._routes[key] = RouteTable(message.routes)
        conn = _Conn(message, routes)
        cls = self._protocol_class(tuple(message.http))
        initial = message.data

        def factory() -> _WorkerProtocol:
            return cls(self.config, self.state, {}, self, conn, initial)

        task = self.loop.create_task(self.loop.connect_accepted_socket(factory, sock=sock))
        task.add_done_callback(lambda t: self._adopted(t, conn, sock))

    def _adopted(self, task: asyncio.Task[Any], conn: _Conn, sock: socket.socket) -> None:
        if task.cancelled() or task.exception() is not None:
            _log.error("worker %d: could not adopt a connection: %r", os.getpid(), task)
            sock.close()
            self.send(Closed(conn.id))

    def _protocol_class(self, http: tuple[Any, ...]) -> type[_WorkerProtocol]:
        cls = self._classes.get(http)
        if cls is None:

            class Bound(_WorkerProtocol):
                pass

            Bound.limits = HttpLimits(*http)
            cls = self._classes[http] = Bound
        return cls

    def _give(self, message: Give) -> None:
        if message.conn == -1:
            targets = list(self.protocols.values())
        else:
            one = self.protocols.get(message.conn)
            targets = [one] if one is not None else []
        for protocol in targets:
            protocol.give_back(close=message.close)


async def _unused_app(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's Config needs an app; each connection gets its own ``AsgiFront``."""
    raise RuntimeError("not used")


def _config() -> uvicorn.Config:
    config = node_config(_unused_app)
    config.load()
    return config


# Made at import, that is once in the zygote: every worker inherits it ready (loading
# it costs about half a millisecond of a cold start otherwise).
_CONFIG = _config()


class _WorkerCycle(NodeCycle):
    """A request/response cycle that tells its connection when a streamed response
    starts and right before the write that completes it (``NodeCycle.respond`` does
    the same for fixed responses)."""

    async def send(self, message: Any) -> None:
        """See uvicorn's ``send``; the slot follows the response's start and end."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.on_start is not None:
                self.on_start()
        elif kind == "http.response.body" and not message.get("more_body", False):
            final, self.on_final = self.on_final, None
            if final is not None:
                final()
        await super().send(message)


class _WorkerProtocol(NodeHttpToolsProtocol):
    """The node's HTTP protocol on an adopted connection, inside a worker."""

    cycle_class = _WorkerCycle

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        server: _Server,
        conn: _Conn,
        initial: bytes,
    ) -> None:
        super().__init__(config, server_state, app_state)
        self.owner = server
        self.conn = conn
        self.initial = initial
        self.app = AsgiFront(self._dispatch, self.limits)
        self.diverter = self  # type: ignore[misc]
        self.returned = False
        self.giving = server.giving
        self.closing_on_give = False
        self.unanswered = 0
        self.checked = False
        self.task: asyncio.Task[None] | None = None

    # The protocol is its own diverter (set per instance in __init__): a head that is
    # not this deployment's goes back.
    active = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start serving, beginning with the bytes the node read."""
        super().connection_made(transport)
        self.owner.protocols[self.conn.id] = self
        if self.initial:
            data, self.initial = self.initial, b""
            self.data_received(data)
        # Whatever the passed bytes led to (a request begun, a 400, a give-back) has
        # happened by now: the node must no longer replay them if this worker dies.
        self.owner.slots.settled(self.conn.slot)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the node the connection ended (unless it went back to the node)."""
        self._end_request()
        super().connection_lost(exc)
        if self.owner.protocols.get(self.conn.id) is self:
            del self.owner.protocols[self.conn.id]
            if not self.returned:
                self.owner.send(Closed(self.conn.id))

    # -- diversion: back to the node ---------------------------------------------------

    def plan(self, protocol: NodeHttpToolsProtocol) -> object | None:
        """Return a reason to give the connection back, or None to serve the request."""
        if self.giving:
            return "give"
        if self.transport.get_write_buffer_size():
            return None  # a response still leaving: serve (or refuse) it here
        if self._belongs():
            self.checked = True  # the dispatcher need not check again
            return None
        return "route"

    def divert(self, protocol: NodeHttpToolsProtocol, plan: object, data: bytes) -> None:
        """Give the connection and its unserved ``data`` back to the node."""
        self._return(data)

    def _belongs(self) -> bool:
        """Whether the request whose head was just read is this deployment's."""
        path = self.raw_path()
        if path.startswith(_NODE_PATHS_RAW) or self.version_header:
            return False
        if self.conn.all_mine:
            return True
        host = host_for_url(self._hosts[0] if self._hosts else None, self.server)
        return bool(self.conn.routes.match(host, path.decode("latin-1")))

    def _serves(self, request: Request) -> bool:
        if request.path.startswith(NODE_PATHS) or VERSION_HEADER in request.headers:
            return False
        return self.conn.all_mine or bool(self.conn.routes.match(request.host, request.path))

    def _return(self, data: bytes) -> None:
        if self.returned:
            return
        self.returned = True
        self.owner.send(Returned(self.conn.id, data))
        del self.owner.protocols[self.conn.id]
        self.diverted = True
        self.transport.close()

    def give_back(self, *, close: bool) -> None:
        """Return the connection now if it is idle, else once its request is done."""
        self.giving = True
        self.closing_on_give = self.closing_on_give or close
        if self.transport.is_closing() or self.returned:
            return
        if self._idle():
            if self.closing_on_give:
                self.transport.close()
            else:
                self._return(bytes(self._raw or b""))

    def _idle(self) -> bool:
        return (
            not self.busy
            and not self._head_started
            and not self.pipeline
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.get_write_buffer_size()
        )

    # -- requests -----------------------------------------------------------------------

    # The connection's slot says "a request is in flight" from a head accepted until
    # right before the write that completes its response (so a worker killed after
    # that write leaves the connection to the node, not half-answered). Pipelined
    # requests keep it busy: the next one takes the slot over with a new sequence.

    @property
    def busy(self) -> bool:
        """Whether a request on this connection has not been answered in full."""
        return self.unanswered > 0

    def on_headers_complete(self) -> None:
        """Mark the slot busy once the head is accepted (after the checks and the plan)."""
        super().on_headers_complete()
        self.unanswered += 1
        if self.unanswered == 1:
            self.owner.slots.begin(self.conn.slot)
        cycle = self.cycle
        if isinstance(cycle, _WorkerCycle):
            cycle.on_start = self._responding
            cycle.on_final = self._answered

    def _responding(self) -> None:
        self.owner.slots.responding(self.conn.slot)

    def _answered(self) -> None:
        """The oldest unanswered request's response is about to be completed."""
        if self.unanswered <= 0:
            return
        self.unanswered -= 1
        slots = self.owner.slots
        slots.end(self.conn.slot)
        if self.unanswered:
            slots.begin(self.conn.slot)

    def on_response_complete(self) -> None:
        """A connection asked for goes back once it is idle."""
        super().on_response_complete()
        if self.giving and not self.returned and self._idle():
            self.give_back(close=self.closing_on_give)

    def _end_request(self) -> None:
        if self.unanswered:
            self.unanswered = 0
            self.owner.slots.end(self.conn.slot)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # A plain task, past the loop's task factory (the worker meters the handler
        # itself, see DirectHost.handle).
        task: asyncio.Task[None] = asyncio.Task(cycle.run_asgi(app), loop=self.loop)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        # The request's own task (pipelined requests start only after the one before
        # them is answered, so this is the one _dispatch runs in).
        self.task = task

    async def _dispatch(self, request: Request) -> tuple[Response, After | None]:
        conn = self.conn
        request.ip = conn.ip
        request.geo = conn.geo
        checked, self.checked = self.checked, False
        if not checked and not self._serves(request):
            # Pipelined behind a response still being written, so it could not go back:
            # RFC 9110 §15.5.20 lets the client retry it on a new connection.
            body = error_body(
                "misdirected", "this connection cannot serve that request; retry it on a new one"
            )
            return Response.json(body, status=421, headers={"connection": "close"}), None
        request_id = new_request_id()
        cold, conn.cold = conn.cold, False
        response, after, _outcome = await self.owner.host.handle(
            request, request_id, cold, conn.access_log, self.task
        )
        headers = response.headers
        headers._put("x-edgerun-request-id", request_id)
        for name, value in conn.headers:
            headers.add(name, value)
        return response, after
