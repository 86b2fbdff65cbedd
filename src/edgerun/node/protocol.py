"""uvicorn's httptools protocol with the node's caps and deadlines enforced as bytes arrive.

uvicorn has no deadline for receiving a request head (it held 500 slowloris
connections for 30 s, DESIGN §7) and httptools buffers a header line of any length
until it ends. ``NodeHttpToolsProtocol`` subclasses uvicorn's ``HttpToolsProtocol``
and adds, per connection:

- a head deadline (``limits.header_timeout_s``), armed when the connection opens and
  whenever the connection is ready for the next request; a partial head that misses
  it gets 408 and the connection is closed, an idle connection is just closed;
- a body deadline (``limits.body_timeout_s``) from the end of the head to the end of
  the body -> 408 (or a plain close if the response was already sent);
- the URL cap as the target arrives (414), the header count and size caps per header
  (431) plus a raw-bytes backstop so one endless header line is cut off early (431);
- ``security.limits.check_head`` on the complete head (400/413) before the request
  reaches the application;
- the body cap as body bytes arrive (413 the moment it is crossed);
- JSON error bodies for these and for httptools' own parse errors (400), written with
  ``connection: close`` and a lingering close (half-close, drain what the client still
  sends for a moment) so the client can read the error before the connection ends.

Use ``protocol_class(limits)`` to get a class bound to a limits object and pass it as
uvicorn's ``Config(http=...)``.

A ``Diverter`` (``protocol_class(limits, diverter)``) may take a connection away at
a request head: the protocol keeps the raw bytes of the request being read (while it
started at the beginning of a received chunk, so they are exactly the stream from
that request on), asks ``diverter.plan(protocol)`` once the head is checked, and on a
plan stops parsing and gives the bytes to ``diverter.divert``. The node uses it to hand
connections to isolated workers; a worker uses it to give them back
(``runtime.isolate.handoff``). ``resume(data)`` makes a diverted connection served
here again, starting with ``data``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote

import httptools
import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from edgerun.errors import HeadersTooLarge, RequestError, RequestTimeout, to_http
from edgerun.node.front import FRAMING_SCOPE_KEY, logger
from edgerun.security.limits import (
    BodyMeter,
    HttpLimits,
    check_framing,
    check_header_size,
    check_url,
)

__all__ = [
    "Diverter",
    "NodeCycle",
    "NodeHttpToolsProtocol",
    "node_config",
    "protocol_class",
    "render_error",
]

# Lingering close after an error response: how long, and how many bytes, the node keeps
# reading (and dropping) what the client is still sending. Closing a socket with unread
# input makes the kernel send a reset, which can destroy the response before the client
# reads it.
_LINGER_S = 2.0
_LINGER_MAX_BYTES = 1024 * 1024

# Header names already checked (handlers send the same few names again and again).
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_MAX = 1024
# One ASGI "asgi" scope entry for every request (uvicorn builds a new dict per request;
# nothing downstream mutates it).
_ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class Diverter(Protocol):
    """Decides, per request head, whether a connection is served somewhere else."""

    @property
    def active(self) -> bool:
        """False while no connection can be diverted (then no bytes are kept for it)."""
        ...

    def plan(self, protocol: NodeHttpToolsProtocol) -> object | None:
        """Look at the checked head (``protocol.url``, ``.headers``, ``.client``...);
        return a plan to divert the connection, or None to serve it here."""
        ...

    def divert(self, protocol: NodeHttpToolsProtocol, plan: object, data: bytes) -> None:
        """Take the connection over: ``data`` is everything read from the request whose
        head was planned on. The protocol has stopped reading and serving it."""
        ...


class _Divert(Exception):
    """Raised out of a parser callback to stop parsing at a diverted head."""


def render_error(exc: BaseException, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 JSON error response for ``exc`` that closes the connection."""
    status, body = to_http(exc)
    payload = msgspec.json.encode(body)
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    parts = [f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % len(payload)
    )
    parts.append(payload)
    return b"".join(parts)


class NodeCycle(RequestResponseCycle):
    """uvicorn's request/response cycle plus a single-write path for fixed responses.

    ``respond(status, headers, body, close)`` sends a whole response whose body is known
    (status line, the server's default headers, ``headers``, Content-Length, body) with
    one ``transport.write`` -- uvicorn's ``send`` writes head and body separately (two
    socket sends) and goes through two ASGI message dicts. Everything else (streaming,
    ``receive``, disconnects) is uvicorn's.
    """

    # Called as the response starts and right before the write that completes it
    # (isolated workers keep their shared slot table current with them; node.direct).
    on_start: Any = None
    on_final: Any = None

    async def send(self, message: Any) -> None:
        """uvicorn's ``send``, minus the server's Date when the response has its own."""
        if message["type"] == "http.response.start" and any(
            name.lower() == b"date" for name, _ in message.get("headers", ())
        ):
            defaults = self.default_headers
            self.default_headers = [(n, v) for n, v in defaults if n != b"date"]
            try:
                await super().send(message)
            finally:
                self.default_headers = defaults
            return
        await super().send(message)

    async def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        close: bool,
    ) -> None:
        """Send a complete response with a fixed ``body`` (none for 204/304 and HEAD).

        ``headers`` must not contain framing headers (Content-Length, Transfer-Encoding,
        Connection); ``close`` ends the connection after the response. Raises
        ``RuntimeError`` for an invalid header name or value, or if a response was
        already started (as uvicorn's ``send`` does).
        """
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("a response was already started for this request")
        if self.on_start is not None:
            self.on_start()
        self.response_started = True
        self.waiting_for_100_continue = False
        parts = [STATUS_LINE[status]]
        dated = any(name == b"date" for name, _ in headers)
        for name, value in self.default_headers:
            # A response that brings its own Date (one served from a cache) keeps it:
            # RFC 9110 §6.6.1 allows one Date, and the stored one is what Age counts from.
            if not (dated and name == b"date"):
                parts += (name, b": ", value, b"\r\n")
        good = _GOOD_NAMES
        for name, value in headers:
            if name not in good:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if len(good) < _GOOD_NAMES_MAX:
                    good.add(name)
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            parts += (name, b": ", value, b"\r\n")
        if close:
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        if status == 204 or status == 304:
            parts.append(b"\r\n")
        else:
            parts.append(b"content-length: %d\r\n\r\n" % len(body))
            if self.scope["method"] != "HEAD":
                parts.append(body)
        if self.on_final is not None:
            self.on_final()
        self.transport.write(b"".join(parts))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


class NodeHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the node's head/body deadlines and size caps.

    The caps come from the class attribute ``limits``; ``protocol_class(limits)``
    makes a subclass bound to other limits. Everything else (ASGI cycle, pipelining,
    keep-alive, graceful shutdown) is uvicorn's.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    diverter: ClassVar[Diverter | None] = None
    cycle_class: ClassVar[type[NodeCycle]] = NodeCycle

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The head deadline is a number, re-armed per request without touching the event
        # loop; one timer per connection fires at it (or re-schedules itself if the
        # deadline moved) -- cheaper than a call_later/cancel pair per request.
        self._head_deadline: float | None = None
        # uvicorn's keep-alive timeout (close a connection idle after a response), kept
        # as a number checked by the same timer instead of uvicorn's call_later per
        # response and cancel per request.
        self._idle_deadline: float | None = None
        # The timer never sleeps longer than this, so a deadline set later (always
        # "now + one of these") is never earlier than the timer.
        self._timer_step = min(self.limits.header_timeout_s, float(self.timeout_keep_alive))
        self._root_path_bytes = self.root_path.encode("ascii")
        self._max_head_bytes = self.limits.max_head_bytes  # a computed property
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # Between requests and while a head arrives (not while a body arrives).
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        # Values of the headers check_framing needs, collected as they arrive.
        self._hosts: list[str] = []
        self._lengths: list[str] = []
        self._encodings: list[str] = []
        self._meter = BodyMeter(self.limits)
        # Set by a parser callback that refuses the request, read once feed_data raises:
        # the error and whether it concerns a body (True) or a head (False).
        self._failure: tuple[RequestError, bool] | None = None
        self._rejected = False
        self._ignore_input = False
        self._drained = 0
        # Diversion: the raw bytes from the start of the request being read (None when
        # that start is not known: no diverter, or the request began mid-chunk), whether
        # a request already began in the chunk being parsed, the pending plan, and
        # whether the connection is served elsewhere now.
        self._raw: bytearray | None = None
        self._begun_in_chunk = False
        self._plan: object | None = None
        self._skip_plan = False
        self.diverted = False
        self.version_header = False

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start serving a connection; the first head's deadline starts now."""
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop this connection's timers, then let uvicorn end the request cycle."""
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting head bytes; refuse the request on a cap or parse error."""
        if self._rejected:
            # Lingering close: drop what the client still sends (see _LINGER_S).
            self._drained += len(data)
            if self._drained > _LINGER_MAX_BYTES:
                self.transport.close()
            return
        if self._ignore_input or self.diverted:
            return
        if self._in_head:
            self._head_bytes += len(data)
        self._idle_deadline = None
        diverter = self.diverter
        if diverter is not None and diverter.active:
            if self._at_boundary():
                self._raw = bytearray(data)
            elif self._raw is not None:
                self._raw += data
            self._begun_in_chunk = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The node serves no protocol upgrades: the head went to the application as
            # plain HTTP, but what follows it is not HTTP, so the connection ends with
            # this response.
            self._ignore_input = True
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as exc:
            if self._plan is not None:
                self._hand_off()
                return
            failure = self._failure
            self._failure = None
            if failure is None:
                logger.debug("malformed HTTP request from %s: %s", self.client, exc)
                failure = (RequestError(f"malformed HTTP request: {exc}"), not self._in_head)
            self._reject(*failure)
            return
        if self._in_head and self._head_bytes > self._max_head_bytes:
            self._reject(
                HeadersTooLarge(
                    f"the request head is more than {self.limits.max_head_bytes} bytes; "
                    "send a shorter URL or fewer and smaller headers"
                ),
                False,
            )

    def on_response_complete(self) -> None:
        """A response is out: start the next queued request, or the idle and head deadlines."""
        # uvicorn's own version, except that the keep-alive timeout is a deadline for the
        # connection's one timer instead of a new loop timer per response.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = self.loop.time() + self.timeout_keep_alive
        self._maybe_arm_head_timer()

    # -- httptools parser callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        """A new request starts: a fresh scope, and reset the per-request counters."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": _ASGI_VERSION,  # type: ignore[typeddict-item]
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        self._in_head = True
        self._head_started = True
        self.version_header = False
        self._url_bytes = self._header_bytes = self._header_count = 0
        if self._begun_in_chunk:
            # A second request in one chunk: its bytes do not start the buffer.
            self._raw = None
        self._begun_in_chunk = True
        if self._hosts:
            self._hosts = []
        if self._lengths:
            self._lengths = []
        if self._encodings:
            self._encodings = []
        if self._head_deadline is None:
            # A pipelined request started while the previous one is still being served.
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        """Count target bytes as they arrive (414 past the cap)."""
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_url_bytes:
            try:
                check_url(self._url_bytes, self.limits)
            except RequestError as exc:
                raise self._fail(exc, in_body=False) from None
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count headers and their bytes (431 past either cap)."""
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        limits = self.limits
        if self._header_count > limits.max_headers or self._header_bytes > limits.max_header_bytes:
            try:
                check_header_size(self._header_bytes, self._header_count, limits)
            except RequestError as exc:
                raise self._fail(exc, in_body=False) from None
        if not self._in_head:
            # A chunked trailer field. uvicorn would append it to the request's headers,
            # which the application may read later: that would let a client add headers
            # (a second Host, ...) after the head was checked. Trailers are dropped.
            return
        # uvicorn's on_header, inlined (lowercased names, Expect: 100-continue), plus the
        # values check_framing needs, recognised by length first.
        name = name.lower()
        size = len(name)
        if size == 4:
            if name == b"host":
                self._hosts.append(value.decode("latin-1"))
        elif size == 14:
            if name == b"content-length":
                self._lengths.append(value.decode("latin-1"))
        elif size == 17:
            if name == b"transfer-encoding":
                self._encodings.append(value.decode("latin-1"))
            elif name == b"x-edgerun-version":
                self.version_header = True  # for the diverter: a per-request choice
        elif size == 6 and name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Check the complete head (400/413) before uvicorn starts the application."""
        self._cancel_head_timer()
        self._in_head = False
        try:
            # URL and header caps were enforced as the head arrived (on_url, on_header).
            framing = check_framing(
                self._hosts,
                self._lengths,
                self._encodings,
                self.limits,
                require_host=self.parser.get_http_version() == "1.1",
            )
        except RequestError as exc:
            raise self._fail(exc, in_body=False) from None
        self._meter.received = 0
        if self._raw is not None:
            diverter = self.diverter
            plan = diverter.plan(self) if diverter is not None and not self._skip_plan else None
            self._skip_plan = False
            if plan is not None:
                self._plan = plan
                raise _Divert()
            self._raw = None  # the body is not needed: this request is served here
        # Handed to node.asgi_front, which then skips its own (identical) head check.
        self.scope[FRAMING_SCOPE_KEY] = framing  # type: ignore[literal-required]
        self._start_cycle()
        if framing.has_body:
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._on_body_timeout
            )

    def on_body(self, body: bytes) -> None:
        """Count body bytes as they arrive (413 the moment the cap is crossed)."""
        try:
            self._meter.feed(len(body))
        except RequestError as exc:
            raise self._fail(exc, in_body=True) from None
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The body is in: stop its deadline; the connection is between requests again."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        super().on_message_complete()
        # The handler may have answered before the body was in (then no response
        # completion is left to arm the next head's deadline).
        self._maybe_arm_head_timer()

    def _start_cycle(self) -> None:
        """uvicorn's on_headers_complete, creating a ``NodeCycle`` (single-write responses)."""
        parser = self.parser
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        http_version = parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self._root_path_bytes + raw_path
        scope["query_string"] = parsed_url.query or b""
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        existing_cycle = self.cycle
        self.cycle = self.cycle_class(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:
            # Pipelined requests wait for the previous response.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    # -- diversion --------------------------------------------------------------------

    def _at_boundary(self) -> bool:
        """Between requests, with nothing of the next one parsed or queued."""
        cycle = self.cycle
        return (
            self._in_head
            and not self._head_started
            and (cycle is None or cycle.response_complete)
            and not self.pipeline
        )

    def _hand_off(self) -> None:
        """Stop serving this connection and give it, with its unparsed bytes, away."""
        plan, self._plan = self._plan, None
        data = bytes(self._raw or b"")
        self._raw = None
        self.diverted = True
        self._head_deadline = self._idle_deadline = None
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self.flow.pause_reading()
        assert self.diverter is not None and plan is not None
        self.diverter.divert(self, plan, data)

    def raw_path(self) -> bytes:
        """The request target's path, percent-encoding kept (what routes compare)."""
        url = self.url
        if url[:1] == b"/":  # origin-form, the usual case: no parsing needed
            end = url.find(b"?")
            return url if end < 0 else url[:end]
        return httptools.parse_url(url).path or b"/"

    def fileno(self) -> int:
        """The connection's socket descriptor."""
        return int(self.transport.get_extra_info("socket").fileno())

    def abort(self, error: BaseException | None) -> None:
        """End a diverted connection: answer ``error`` (JSON) first if given."""
        if self.transport.is_closing():
            return
        if error is not None:
            self.transport.write(render_error(error, self.server_state.default_headers))
        self.transport.close()

    def resume(self, data: bytes, *, divert: bool = True) -> None:
        """Serve this diverted connection here again, starting with ``data``;
        ``divert=False``: serve its next request here whatever the diverter says."""
        if not self.diverted:
            return
        if self.transport.is_closing():
            return
        self._skip_plan = not divert
        self.diverted = False
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.cycle = None  # type: ignore[assignment]
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        self._idle_deadline = self.loop.time() + self.timeout_keep_alive
        self._arm_head_timer()
        self.flow.resume_reading()
        if data:
            self.data_received(data)

    # -- deadlines and refusals ------------------------------------------------------

    def _arm_head_timer(self) -> None:
        now = self.loop.time()
        self._head_deadline = now + self.limits.header_timeout_s
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._next_wake(now), self._on_head_timer)

    def _next_wake(self, now: float) -> float:
        """When the connection's timer should fire next (see ``_timer_step``)."""
        at = now + self._timer_step
        for deadline in (self._head_deadline, self._idle_deadline):
            if deadline is not None and deadline < at:
                at = deadline
        return at

    def _cancel_head_timer(self) -> None:
        self._head_deadline = None

    def _maybe_arm_head_timer(self) -> None:
        if (
            self._head_deadline is None
            and self._in_head
            and not self._rejected
            and not self.transport.is_closing()
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self._arm_head_timer()

    def _on_head_timer(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.diverted:
            return
        now = self.loop.time()
        idle = self._idle_deadline
        if idle is not None and now >= idle:
            self._idle_deadline = None
            self.transport.close()  # nothing arrived since the last response
            return
        deadline = self._head_deadline
        if deadline is None or now < deadline:
            if deadline is not None or idle is not None:
                self._head_timer = self.loop.call_at(self._next_wake(now), self._on_head_timer)
            return
        self._head_deadline = None
        if self._head_started or self._head_bytes:
            self._reject(
                RequestTimeout(
                    "the request head did not arrive within "
                    f"{self.limits.header_timeout_s:g} s; send it faster"
                ),
                False,
            )
        else:
            self.transport.close()  # an idle keep-alive connection

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The application has not consumed what already arrived: the node, not the
            # client, is behind, so the client gets another period.
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._on_body_timeout
            )
            return
        self._reject(
            RequestTimeout(
                "the request body did not arrive within "
                f"{self.limits.body_timeout_s:g} s; send it faster"
            ),
            True,
        )

    def _fail(self, exc: RequestError, *, in_body: bool) -> RequestError:
        # Raised out of a parser callback; httptools turns it into an
        # HttpParserCallbackError out of feed_data, which data_received handles.
        self._failure = (exc, in_body)
        return exc

    def _reject(self, exc: RequestError, in_body: bool) -> None:
        """Answer ``exc`` if this request has not been answered yet, then close."""
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        self._cancel_head_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if in_body:
            # The failing request is the current cycle: answer unless it already is.
            answer = cycle is not None and not cycle.response_started
        else:
            # A new request: answer unless an earlier response is still being written.
            answer = cycle is None or cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            # The handler's body read now fails and its response is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if not answer:
            self.transport.close()
            return
        self.transport.write(render_error(exc, self.server_state.default_headers))
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(_LINGER_S, self.transport.close)


def node_config(app: Any, **options: Any) -> Config:
    """A uvicorn ``Config`` as the node serves with it: no websockets, no lifespan (edgerun
    runs application lifespans itself), no logging or proxy-header handling of its own,
    a Date header and no Server header; ``options`` add to or override these."""
    settings: dict[str, Any] = {
        "ws": "none",
        "lifespan": "off",
        "interface": "asgi3",
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "date_header": True,
    }
    settings.update(options)
    return Config(app, **settings)


def protocol_class(
    limits: HttpLimits, diverter: Diverter | None = None
) -> type[NodeHttpToolsProtocol]:
    """A ``NodeHttpToolsProtocol`` subclass enforcing ``limits`` (for ``Config(http=...)``),
    with ``diverter`` deciding which connections are served elsewhere."""

    class BoundNodeHttpToolsProtocol(NodeHttpToolsProtocol):
        pass

    BoundNodeHttpToolsProtocol.limits = limits
    BoundNodeHttpToolsProtocol.diverter = diverter
    return BoundNodeHttpToolsProtocol
