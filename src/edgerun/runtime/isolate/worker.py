"""A worker process: serve one deployment's requests from a socket, under limits.

``run_worker`` is called in the child right after the zygote forks it. It closes
inherited descriptors, applies rlimits, starts a fresh event loop, opens the
deployment's bindings through the injected factory, runs the ASGI lifespan startup
(once per worker) and then serves frames (``protocol``) until the node closes the
socket. It never returns: the process exits with 0 after a clean shutdown.

Per request, CPU is metered and pre-empted (``cpu``), a ``MemoryError`` that passes
through the request's code fails it with ``exceeded_memory``, and either makes the
worker ask to be retired (``Done.retire``). Wall time is the node's to enforce; here it
only bounds ``wait_until`` work, which runs after the response while other requests
are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, cast

from edgerun.bindings.base import Binding, close_all
from edgerun.errors import HandlerError, LimitExceeded, NotFound, RequestError, to_http
from edgerun.http import Geo, Headers, Request, Response
from edgerun.runtime.asgi import AsgiHandler, AsgiLifespan
from edgerun.runtime.env import Env
from edgerun.runtime.invoke import REQUEST_ID_HEADER, Context
from edgerun.runtime.isolate import cpu, harden
from edgerun.runtime.isolate.handoff import After, ServeConnections, Slots
from edgerun.runtime.isolate.protocol import (
    BindingSpec,
    Body,
    Cancel,
    Chunk,
    DataMessage,
    Done,
    FrameError,
    FrameReader,
    Head,
    Spec,
    Start,
    encode_frame,
    encode_frames,
)
from edgerun.runtime.loader import Entry
from edgerun.runtime.outcome import Outcome

__all__ = ["OpenBindings", "run_worker"]

OpenBindings = Callable[[list[BindingSpec]], Awaitable[Mapping[str, Binding]]]
"""The injected binding factory: binding specs -> opened bindings, by env name."""

_log = logging.getLogger("edgerun.isolate")
_access = logging.getLogger("edgerun.access")

# Imported here, that is in the zygote: importing uvloop takes about 8 ms, which every
# cold start would pay again in the forked worker.
_uvloop: Any
try:
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    _uvloop = None
_monotonic = time.monotonic
# A worker whose address space is above this share of its limit after a request is
# retired: the next allocation is likely to fail inside some other request.
_MEMORY_HIGH_WATER = 0.9
_MEMORY_CHECK_S = 0.05
_BODY_END = object()


def run_worker(
    sock: Any,
    entry: Entry,
    spec: Spec,
    open_bindings: OpenBindings,
    conns: Any = None,
    slots_fd: int | None = None,
    serve_connections: ServeConnections | None = None,
) -> NoReturn:
    """Serve on ``sock`` (the worker's end of its socketpair) until the node closes it.

    With ``conns`` (the worker's end of its connection channel), ``slots_fd`` (its
    slot table) and ``serve_connections`` (the injected HTTP server), the worker also
    serves client connections the node hands over (``handoff``).
    """
    code = 0
    try:
        keep = {sock.fileno()}
        if conns is not None and slots_fd is not None:
            keep |= {conns.fileno(), slots_fd}
        harden.close_inherited_fds(keep)
        limit = harden.apply_worker_rlimits(spec.memory_mb, spec.nofile)
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        server = _Server(entry, spec, open_bindings, limit)
        if conns is not None and slots_fd is not None and serve_connections is not None:
            server.direct = (conns, Slots(slots_fd), serve_connections)
        loop.run_until_complete(server.run(sock))
    except BaseException:
        _log.exception("worker %d of %s failed", os.getpid(), spec.name)
        code = 70
    finally:
        logging.shutdown()
        os._exit(code)


def _new_loop() -> asyncio.AbstractEventLoop:
    if _uvloop is None:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = _uvloop.new_event_loop()
    return loop


def cpu_exceeded_message(spec: Spec, budget_s: float) -> str:
    """What an ``exceeded_cpu`` error says: the budget that applied and the setting
    that raises it (a worker's first request has its own, ``first_request_cpu_ms``)."""
    if budget_s * 1000 > spec.cpu_ms:
        setting = "first_request_cpu_ms"
        used = f"the first request of a worker used more than its CPU time limit ({setting} = "
        used += f"{round(budget_s * 1000)})"
    else:
        setting = "cpu_ms"
        used = f"the request used more than its CPU time limit (cpu_ms = {spec.cpu_ms})"
    return f"{used}; make it faster or raise [limits] {setting} in edgerun.toml"


class _Call:
    """One request in this worker."""

    __slots__ = ("body", "id", "meter", "started", "task")

    def __init__(self, id: int, budget_s: float) -> None:
        self.id = id
        self.meter = cpu.Meter(budget_s)
        self.started = _monotonic()
        self.task: asyncio.Task[None] | None = None
        self.body: asyncio.Queue[Any] | None = None


class _Server(asyncio.Protocol):
    """The worker side of the data channel."""

    def __init__(self, entry: Entry, spec: Spec, open_bindings: OpenBindings, limit: int) -> None:
        self.entry = entry
        self.spec = spec
        self.open_bindings = open_bindings
        self.handler = entry.handler
        self.budget_s = spec.cpu_ms / 1000
        # The first request this worker starts pays its first-use costs (lazy imports,
        # TLS contexts) and gets the larger budget; every later one gets cpu_ms.
        self.first_budget_s: float | None = max(spec.cpu_ms, spec.first_cpu_ms) / 1000
        self.wall_s = spec.wall_ms / 1000
        self.as_limit = limit
        self.env: Env | None = None
        self.calls: dict[int, _Call] = {}
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] | None = None
        self.pending: set[asyncio.Future[Any]] = set()  # wait_until work of every request
        self.drained: asyncio.Future[None] | None = None
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self.memory_checked = -_MEMORY_CHECK_S
        self.loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, None)
        self.name = spec.name
        # Connection handoff: (channel, slot table, HTTP server), and the usage of
        # directly served requests not yet reported, by (outcome, error code).
        self.direct: tuple[Any, Slots, ServeConnections] | None = None
        self.usage: dict[tuple[str, str], list[Any]] = {}
        self.retired: str | None = None
        self.on_retire: Callable[[str], None] | None = None
        # Wall-time deadlines of directly served requests, checked by one sweeper every
        # sweep_s (a tenth of the limit, 10 ms to 1 s): a request ends within wall_ms
        # plus one sweep.
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.sweeper: asyncio.TimerHandle | None = None
        self.sweep_s = min(1.0, max(0.01, self.wall_s / 10))

    async def run(self, sock: Any) -> None:
        loop = self.loop = asyncio.get_running_loop()
        cpu.install(loop, self.budget_s)
        self.closed = loop.create_future()
        bindings = await self.open_bindings(self.spec.bindings)
        lifespan: AsgiLifespan | None = None
        try:
            self.env = Env(bindings, self.spec.vars, self.spec.secrets)
            if isinstance(self.handler, AsgiHandler):
                lifespan = self.handler.lifespan()
                await lifespan.startup()
            await loop.connect_accepted_socket(lambda: self, sock=sock)
            direct: asyncio.Task[None] | None = None
            if self.direct is not None:
                conns, slots, serve = self.direct
                direct = loop.create_task(serve(self, conns, slots))
            await self.closed
            if direct is not None:
                # The node closed the data socket: it closes the connection channel too
                # (after taking its connections back); wait for the server to finish.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(direct, self.wall_s)
            for call in list(self.calls.values()):
                if call.task is not None:
                    call.task.cancel()
            if self.pending:
                _, late = await asyncio.wait(set(self.pending), timeout=self.wall_s)
                for task in late:
                    task.cancel()
        finally:
            if lifespan is not None:
                try:
                    async with asyncio.timeout(self.wall_s):
                        await lifespan.shutdown()
                except TimeoutError:
                    _log.error("the ASGI app's lifespan shutdown timed out; cancelled")
            await close_all(bindings)

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except FrameError:
            _log.error("worker %d: corrupt frame from the node; closing", os.getpid())
            assert self.transport is not None
            self.transport.close()
            return
        for message in messages:
            self._on_message(message)

    def _on_message(self, message: DataMessage) -> None:
        if isinstance(message, Start):
            call = _Call(message.id, self._next_budget())
            if message.more:
                call.body = asyncio.Queue()
                if message.body:
                    call.body.put_nowait(message.body)
            self.calls[message.id] = call
            ctx = contextvars.copy_context()
            ctx.run(cpu.current_meter.set, call.meter)
            call.task = asyncio.get_running_loop().create_task(
                self._serve(call, message), context=ctx
            )
        elif isinstance(message, Body):
            body_call = self.calls.get(message.id)
            if body_call is not None and body_call.body is not None:
                if message.data:
                    body_call.body.put_nowait(message.data)
                if not message.more:
                    body_call.body.put_nowait(_BODY_END)
        elif isinstance(message, Cancel):
            cancel_call = self.calls.get(message.id)
            if cancel_call is not None and cancel_call.task is not None:
                cancel_call.task.cancel()

    # -- one request --------------------------------------------------------------------

    def _request(self, call: _Call, start: Start) -> Request:
        headers = Headers.__new__(Headers)
        headers._items = start.headers  # validated by the node's HTTP layer
        body: Any = start.body
        if call.body is not None:
            body = _stream(call.body)
        geo = Geo(*start.geo) if start.geo is not None else None
        return Request(start.method, start.url, headers=headers, body=body, ip=start.ip, geo=geo)

    async def _serve(self, call: _Call, start: Start) -> None:
        rid = start.request_id
        ctx = Context(rid)
        ctx._registry = self.pending
        try:
            response, error = await self._run(self._request(call, start), ctx, call.meter, rid)
            try:
                head = await self._respond(call, response)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # A streamed body failed part-way. The error response's head, sent
                # after the first one, makes the node abort the client's response.
                response, error = self._failure(exc, call.meter, rid)
                head = Head(
                    call.id,
                    response.status,
                    response.headers._items,
                    response.content or b"",
                    False,
                )
        except asyncio.CancelledError:
            # The node gave up on this request (wall limit, client gone) and answered
            # the client itself; nothing more is sent for it.
            self.calls.pop(call.id, None)
            self._after(ctx, call.started)
            return
        self._done(call, error, head)
        self._after(ctx, call.started)

    async def _run(
        self, request: Request, ctx: Context, meter: cpu.Meter, rid: str
    ) -> tuple[Response, BaseException | None]:
        """Call the handler; return its response (or the error response) and its error.

        ``CancelledError`` propagates; any other failure, limits included, becomes a
        JSON error response here.
        """
        assert self.env is not None
        try:
            response = self._checked(await self.handler(request, self.env, ctx), meter)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return self._failure(exc, meter, rid)
        return response, ctx._error

    @staticmethod
    def _checked(response: object, meter: cpu.Meter) -> Response:
        """The handler's return value, if it is a response and the budget held."""
        if not isinstance(response, Response):
            got = "None" if response is None else type(response).__name__
            raise HandlerError(f"fetch returned {got}; return an edgerun.Response")
        if meter.over():
            # Over budget by the end of the handler, even if no tick came in time:
            # the outcome never depends on when the signal is delivered.
            raise cpu.CpuExceeded()
        return response

    def _next_budget(self) -> float:
        """The CPU budget (seconds) of the request starting now; see ``first_budget_s``."""
        first, self.first_budget_s = self.first_budget_s, None
        return self.budget_s if first is None else first

    def _failure(
        self, exc: BaseException, meter: cpu.Meter, rid: str
    ) -> tuple[Response, BaseException]:
        """The error response and error for ``exc``, raised by a request's code."""
        error: BaseException = exc
        if isinstance(exc, cpu.CpuExceeded) or meter.exceeded:
            cpu.disarm()
            meter.exceeded = True  # the step has not returned yet to record it
            error = LimitExceeded("cpu", cpu_exceeded_message(self.spec, meter.budget_s))
        elif isinstance(exc, MemoryError) or meter.memory:
            meter.memory = True
            error = LimitExceeded(
                "memory",
                f"the worker ran out of memory (memory_mb = {self.spec.memory_mb}); "
                "use less or raise [limits] memory_mb in edgerun.toml",
            )
        elif not isinstance(exc, Exception | SystemExit | LimitExceeded):
            raise exc
        self._log_failure(rid, error)
        status, body = to_http(error, request_id=rid, debug=self.spec.debug)
        return Response.json(body, status=status, headers={REQUEST_ID_HEADER: rid}), error

    async def _respond(self, call: _Call, response: Response) -> Head | None:
        """Send a streamed response now; return a fixed one's ``Head`` to send with Done."""
        transport = self.transport
        assert transport is not None
        content = response.content
        headers = response.headers._items
        if content is not None:
            # The usual case: head, body and done go out in one write (see _done).
            return Head(call.id, response.status, headers, content, False)
        transport.write(encode_frame(Head(call.id, response.status, headers, b"", True)))
        async for chunk in response.stream():
            transport.write(encode_frame(Chunk(call.id, chunk, True)))
            if self.drained is not None and not self.drained.done():
                await self.drained
        return None

    def _done(self, call: _Call, error: BaseException | None, head: Head | None) -> None:
        self.calls.pop(call.id, None)
        meter = call.meter
        retire = meter.exceeded or meter.memory or self._memory_high()
        if error is None:
            outcome, code, message = Outcome.OK, "", ""
        else:
            outcome = Outcome.of(error)
            code = getattr(error, "code", "internal")
            message = getattr(error, "message", "") or type(error).__name__
        done = Done(
            call.id,
            outcome.value,
            meter.used_s() * 1000,
            (_monotonic() - call.started) * 1000,
            code,
            message,
            retire,
        )
        # A fixed response goes out with its Done; a streamed one ends with an empty chunk.
        end: DataMessage = head if head is not None else Chunk(call.id, b"", False)
        frames: list[DataMessage] = [end, done]
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frames(frames))

    # -- directly served requests (handoff.DirectHost) ---------------------------------

    async def handle(
        self,
        request: Request,
        request_id: str,
        cold: bool = False,
        log: bool = False,
        task: asyncio.Task[Any] | None = None,
    ) -> tuple[Response, After | None, str]:
        """Run one request the worker's HTTP server parsed; see ``DirectHost``.

        The wall limit is the worker's to enforce here (the node is not in the path).
        """
        # Only the handler's own steps are metered here (the HTTP work around it is the
        # node's protocol); tasks it starts inherit the meter through the context.
        meter = cpu.Meter(self._next_budget())
        cpu.current_meter.set(meter)
        started = _monotonic()
        ctx = Context(request_id)
        ctx._registry = self.pending
        # The wall limit: the sweeper cancels this task past its deadline (a timer per
        # request, or asyncio.timeout, would cost more on this path).
        if task is None:
            task = asyncio.current_task(self.loop)
        deadlines = self.deadlines
        if task is not None:
            deadlines[task] = started + self.wall_s
            if self.sweeper is None:
                self._sweep_soon()
        assert self.env is not None
        try:
            try:
                response = self._checked(
                    await cpu.Metered.wrap(self.handler(request, self.env, ctx), meter), meter
                )
                error = ctx._error
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                response, error = self._failure(exc, meter, request_id)
        except asyncio.CancelledError:
            if task is None or task not in self.expired:
                raise
            task.uncancel()
            error = LimitExceeded(
                "wall",
                "the request ran longer than its wall time limit (wall_ms = "
                f"{self.spec.wall_ms}); make it faster or raise [limits] wall_ms in edgerun.toml",
            )
            self._log_failure(request_id, error)
            status, body = to_http(error, request_id=request_id, debug=self.spec.debug)
            response = Response.json(body, status=status, headers={REQUEST_ID_HEADER: request_id})
        finally:
            if task is not None:
                deadlines.pop(task, None)
                self.expired.discard(task)
        if meter.exceeded or meter.memory or self._memory_high():
            self.retire(f"its request {request_id} hit a limit")
        if response.content is None:
            # A streamed body is the handler's code too: meter producing it.
            response = _with_body(response, _metered_chunks(response.stream(), meter, self))
        outcome = Outcome.OK if error is None else Outcome.of(error)
        if response.content is not None and ctx._tasks is None and ctx._sent_callbacks is None:
            # The usual case -- a fixed body, nothing deferred: account now, no after.
            ctx._finished = True
            self._count(request, request_id, response, outcome, error, meter, started, cold, log)
            return response, None, outcome.value

        async def after() -> None:
            self._count(request, request_id, response, outcome, error, meter, started, cold, log)
            self._after(ctx, started)

        return response, after, outcome.value

    def _sweep_soon(self) -> None:
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    def _sweep(self) -> None:
        """Cancel the directly served requests past their wall-time deadline."""
        self.sweeper = None
        if not self.deadlines:
            return
        now = _monotonic()
        for task, deadline in list(self.deadlines.items()):
            if now >= deadline and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        self._sweep_soon()

    def _count(
        self,
        request: Request,
        request_id: str,
        response: Response,
        outcome: Outcome,
        error: BaseException | None,
        meter: cpu.Meter,
        started: float,
        cold: bool,
        log: bool,
    ) -> None:
        code = "" if error is None else str(getattr(error, "code", "internal"))
        key = (outcome.value, code)
        row = self.usage.get(key)
        if row is None:
            row = self.usage[key] = [0, 0.0, 0.0, 0, 0, 0]
        body = request._body
        bytes_in = body.size
        if body.fixed is None:
            # A stream the handler may not have read to the end: count what was sent.
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit():
                bytes_in = max(bytes_in, int(declared))
        wall_ms = (_monotonic() - started) * 1000
        row[0] += 1
        # The handler's steps are over, so its meter is final (what the HTTP layer does
        # around it is not the handler's CPU).
        row[1] += meter.cpu_s * 1000
        row[2] += wall_ms
        row[3] += bytes_in
        row[4] += response._body.size
        row[5] += cold
        if log:
            _access.info(
                "%s %s %s %s%s %d %s wall=%.1fms cpu=%.1fms%s",
                request_id,
                self.name,
                request.method,
                request.host,
                request.path,
                response.status,
                outcome,
                wall_ms,
                meter.used_s() * 1000,  # so far: the response is still being written
                " cold_start" if cold else "",
            )

    def usage_rows(self) -> list[tuple[str, int, float, float, int, int, int, str]]:
        """The usage counted since the last call, as ``Report`` rows (then reset)."""
        rows = [(outcome, *row, code) for (outcome, code), row in self.usage.items()]
        self.usage = {}
        return rows  # type: ignore[return-value]

    def retire(self, why: str) -> None:
        """Ask for no more work (a limit left this worker unfit); see ``DirectHost``."""
        if self.retired is None:
            self.retired = why
            if self.on_retire is not None:
                self.on_retire(why)

    def _after(self, ctx: Context, started: float) -> None:
        if ctx._tasks is None and ctx._sent_callbacks is None:
            ctx._finished = True
            return
        deadline = started + self.wall_s

        def remaining() -> float:
            return max(0.0, deadline - _monotonic())

        task = asyncio.ensure_future(ctx._finish(remaining, self.spec.wall_ms))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def _memory_high(self) -> bool:
        # At most every _MEMORY_CHECK_S: reading /proc is a system call, and a request
        # that really runs out of memory fails with MemoryError anyway.
        now = _monotonic()
        if now < self.memory_checked + _MEMORY_CHECK_S:
            return False
        self.memory_checked = now
        used = int(os.pread(self.statm, 64, 0).split()[0]) * self.page
        return used > self.as_limit * _MEMORY_HIGH_WATER

    def _log_failure(self, rid: str, exc: BaseException) -> None:
        if isinstance(exc, RequestError | NotFound):
            _log.info("request %s: %s (%s)", rid, exc.message, exc.code)
        elif isinstance(exc, LimitExceeded):
            _log.warning("request %s: %s", rid, exc.message)
        elif isinstance(exc, HandlerError):
            _log.error("request %s: %s", rid, exc.message)
        else:
            _log.error("request %s: the handler raised", rid, exc_info=exc)


def _with_body(response: Response, body: AsyncIterator[bytes]) -> Response:
    """``response`` with another body (same status, the same headers object)."""
    out = Response(body, status=response.status)
    out.headers = response.headers
    return out


async def _metered_chunks(
    chunks: AsyncIterator[bytes], meter: cpu.Meter, server: _Server
) -> AsyncIterator[bytes]:
    """``chunks``, each produced under ``meter``; over budget, the stream fails."""
    iterator = chunks.__aiter__()
    while True:
        try:
            chunk = await cpu.Metered.wrap(iterator.__anext__(), meter)
        except StopAsyncIteration:
            return
        except cpu.CpuExceeded:
            cpu.disarm()
            server.retire("a streamed response went over its CPU time limit")
            raise LimitExceeded(
                "cpu",
                f"the response stream used more than its CPU time limit (cpu_ms = "
                f"{server.spec.cpu_ms}); make it faster or raise [limits] cpu_ms in edgerun.toml",
            ) from None
        yield chunk


async def _stream(queue: asyncio.Queue[Any]) -> AsyncIterator[bytes]:
    while True:
        chunk = await queue.get()
        if chunk is _BODY_END:
            return
        yield chunk
