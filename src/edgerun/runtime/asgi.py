"""Run an ASGI 3 application (FastAPI, Starlette, Litestar...) as an edgerun handler.

``AsgiHandler(app)`` is a normalised handler: ``await handler(request, env, ctx)``
returns an edgerun ``Response``. It returns as soon as the app sends
``http.response.start``; the body keeps streaming from the app while the node writes
it (a streamed ASGI response is never buffered). ``AsgiLifespan`` runs the app's
lifespan protocol once per worker, and its ``state`` is copied into every request scope.

Besides the standard keys, each request scope carries ``scope["env"]`` (the
deployment's ``Env``, where Cloudflare's Python Workers put it), ``scope["ctx"]`` (the
request ``Context``) and ``scope["edgerun.request"]`` (the edgerun ``Request``, for
``geo`` and ``ip``). The scope advertises ASGI spec 2.4, so ``send()`` raises
``OSError`` once the client is gone instead of the app having to poll ``receive()``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any
from urllib.parse import unquote

from edgerun.errors import EntrypointError, HandlerError
from edgerun.http import Headers, Request, Response
from edgerun.types import ASGIApp, Message, Scope

__all__ = ["AsgiHandler", "AsgiLifespan"]

_log = logging.getLogger("edgerun.runtime")

# Shared, never mutated: one dict for every request instead of one per request.
_ASGI_HTTP = {"version": "3.0", "spec_version": "2.4"}
_ASGI_LIFESPAN = {"version": "3.0", "spec_version": "2.0"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SERVER_CACHE_SIZE = 256

# Tasks of apps still running after their handler returned but with no Context to hand
# them to (the handler was called directly, not by an invoker); the event loop keeps
# only weak references to tasks, so without this they could be collected mid-flight.
_orphans: set[asyncio.Task[None]] = set()


if sys.version_info >= (3, 12):

    def _start(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        # Eager start: an app that answers without waiting (the usual case) runs to
        # completion right here, with no event-loop round trip.
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _start(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        return loop.create_task(coro)


def _server_of(netloc: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` for the ASGI ``server`` key, from the URL's host part."""
    if not netloc:
        return None
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # [IPv6]:port
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    if port.isdigit():
        return (name, int(port))
    return (name, _DEFAULT_PORTS.get(scheme, 80))


class _Exchange:
    """One request/response between edgerun and an ASGI app.

    The app runs in its own task; ``send`` hands body chunks to the response's
    iterator through single-slot futures (cheaper than a queue, and it gives
    backpressure: an app that streams waits until the node has taken what it sent).
    """

    __slots__ = (
        "app",
        "chunks",
        "complete",
        "ctx",
        "disconnected",
        "done",
        "drained",
        "error",
        "finished",
        "loop",
        "raw_headers",
        "receivers",
        "request",
        "request_body",
        "request_body_done",
        "started",
        "status",
        "waiter",
    )

    def __init__(
        self, app: ASGIApp, request: Request, ctx: Any, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.app = app
        self.request = request
        self.ctx = ctx
        self.loop = loop
        self.started: asyncio.Future[None] = loop.create_future()
        self.status: int | None = None
        self.raw_headers: Iterable[tuple[bytes, bytes]] = ()
        self.chunks: list[bytes] = []
        self.complete = False  # the app sent its last body message
        self.finished = False  # the app's coroutine returned or raised
        self.done = False  # the response was delivered or abandoned by the node
        self.disconnected = False  # abandoned before it was complete
        self.error: BaseException | None = None  # raised after the response started
        self.waiter: asyncio.Future[None] | None = None  # the body iterator waits here
        self.drained: asyncio.Future[None] | None = None  # send() waits here
        self.receivers: list[asyncio.Future[None]] | None = None
        self.request_body: AsyncIterator[bytes] | None = None
        self.request_body_done = False

    # -- the app's side ---------------------------------------------------------------

    async def receive(self) -> Message:
        """Request body chunks, then ``http.disconnect`` once the response is over."""
        if not self.request_body_done:
            body = self.request_body
            if body is None:
                body = self.request_body = self.request.stream()
            try:
                chunk = await anext(body)
            except StopAsyncIteration:
                self.request_body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}
        if not (self.complete or self.done):
            # Like uvicorn: a receive() after the body blocks until the response is
            # complete or the client left; apps use it to watch for disconnects.
            waiter = self.loop.create_future()
            if self.receivers is None:
                self.receivers = []
            self.receivers.append(waiter)
            await waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Take ``http.response.start`` / ``http.response.body`` from the app."""
        if self.disconnected:
            raise OSError("the client disconnected before the response was complete")
        kind = message["type"]
        if kind == "http.response.body":
            if self.status is None:
                raise RuntimeError("ASGI app sent http.response.body before http.response.start")
            if self.complete:
                raise RuntimeError("ASGI app sent http.response.body after its last body message")
            body = message.get("body", b"")
            if body:
                self.chunks.append(body)
            if not message.get("more_body", False):
                self.complete = True
                self._wake_consumer()
                self._wake_receivers()
                return
            self._wake_consumer()
            if self.chunks:
                # Backpressure: do not let the app run ahead of the client.
                drained = self.drained = self.loop.create_future()
                await drained
                if self.disconnected:
                    raise OSError("the client disconnected before the response was complete")
            return
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("ASGI app sent http.response.start twice")
            self.status = int(message["status"])
            self.raw_headers = message.get("headers", ())
            if not self.started.done():
                self.started.set_result(None)
            return
        raise RuntimeError(f"ASGI app sent {kind!r}, which edgerun does not support on HTTP")

    async def run(self, scope: Scope) -> None:
        """The app task: run the app, route its failure to the right place."""
        try:
            await self.app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.started.done():
                self.started.cancel()
            elif self.status is not None and not self.complete and self.error is None:
                # Stopped mid-body (wall budget spent, node stopping): the stream must
                # end in an error, not look complete.
                self.error = HandlerError("the ASGI app was cancelled while streaming")
            raise
        except BaseException as exc:
            if self.status is None:
                # Before the response started: the handler raises it (-> HTTP 500),
                # unless the handler is gone already (cancelled).
                if not self.started.done():
                    self.started.set_exception(exc)
                else:
                    _log.debug("ASGI app raised after its handler was cancelled: %r", exc)
                return
            if self.disconnected:
                # Our OSError from send() (or the app's reaction to it): not a bug.
                _log.debug("ASGI app stopped after its client disconnected: %r", exc)
                return
            self.error = exc
            if self.complete:
                what = "after sending its response"
            else:
                what = "while streaming its response; the response body is cut short"
            _log.error(
                "request %s: the ASGI app raised %s",
                getattr(self.ctx, "request_id", None),
                what,
                exc_info=exc,
            )
        else:
            if self.status is None:
                if self.started.done():
                    return  # the handler was cancelled; nobody is waiting
                self.started.set_exception(
                    HandlerError(
                        "the ASGI app returned without sending a response "
                        "(no http.response.start message)"
                    )
                )
            elif not self.complete:
                self.error = HandlerError(
                    "the ASGI app returned before its last body message (more_body=False)"
                )
                _log.error(
                    "request %s: %s; the response body is cut short",
                    getattr(self.ctx, "request_id", None),
                    self.error,
                )
        finally:
            self.finished = True
            self._wake_consumer()

    # -- the node's side --------------------------------------------------------------

    async def body(self) -> AsyncIterator[bytes]:
        """The response body as the app sends it.

        Raises ``HandlerError`` if the app failed mid-body, so the server aborts the
        response instead of ending it cleanly: a client must not take a cut-short
        body for a complete one.
        """
        try:
            while True:
                if self.chunks:
                    chunks, self.chunks = self.chunks, []
                    self._wake_producer()
                    for chunk in chunks:
                        yield chunk
                    continue
                if self.complete:
                    return
                if self.error is not None:
                    failure = HandlerError("the ASGI app failed while streaming its response")
                    raise failure from self.error
                if self.finished:
                    return
                waiter = self.waiter = self.loop.create_future()
                await waiter
        finally:
            self.response_done()

    def response_done(self) -> None:
        """The node is done with the response (fully sent, or the client left).

        An app still streaming then gets ``OSError`` from ``send()`` and
        ``http.disconnect`` from ``receive()``, so it stops instead of waiting forever.
        """
        if self.done:
            return
        self.done = True
        if not self.complete:
            self.disconnected = True
            self._wake_producer()
        self._wake_receivers()

    # -- wake-ups: each future is single use, and may have been cancelled ---------------

    def _wake_consumer(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_producer(self) -> None:
        drained = self.drained
        if drained is not None:
            self.drained = None
            if not drained.done():
                drained.set_result(None)

    def _wake_receivers(self) -> None:
        receivers = self.receivers
        if receivers:
            self.receivers = None
            for waiter in receivers:
                if not waiter.done():
                    waiter.set_result(None)


class AsgiHandler:
    """An ASGI 3 app adapted to the handler shape ``await handler(request, env, ctx)``.

    Returns the ``Response`` as soon as the app sends ``http.response.start``: if the
    app has already sent its whole body by then (the usual case) the response has a
    fixed body, otherwise it streams as the app sends. An exception before the
    response starts propagates (the invoker answers 500); one after it is logged on
    ``edgerun.runtime`` and ends the stream with an error. Work the app does after its
    response (Starlette background tasks, the rest of a stream) is handed to
    ``ctx.wait_until`` so it is bounded by the request's wall budget and drained by
    ``Invocation.finish()``.

    ``state`` is the lifespan state (filled by ``lifespan().startup()``); each request
    gets a shallow copy in ``scope["state"]``, as the ASGI lifespan-state extension says.
    """

    __slots__ = ("_servers", "app", "state")

    def __init__(self, app: ASGIApp, *, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.state: dict[str, Any] = {} if state is None else state
        self._servers: dict[str, tuple[str, int] | None] = {}

    def lifespan(self) -> AsgiLifespan:
        """A lifespan runner for this app whose state is the one requests see."""
        return AsgiLifespan(self.app, state=self.state)

    def _server(self, netloc: str, scheme: str) -> tuple[str, int] | None:
        key = scheme + netloc
        try:
            return self._servers[key]
        except KeyError:
            if len(self._servers) >= _SERVER_CACHE_SIZE:
                self._servers.clear()
            server = self._servers[key] = _server_of(netloc, scheme)
            return server

    async def __call__(self, request: Request, env: Any, ctx: Any) -> Response:
        """Run the app for one request; see the class docstring for the contract."""
        loop = asyncio.get_running_loop()
        exchange = _Exchange(self.app, request, ctx, loop)
        path = request.path
        scheme = request.scheme or "http"
        ip = request.ip
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI_HTTP,
            "http_version": "1.1",
            "method": request.method,
            "scheme": scheme,
            "path": unquote(path) if "%" in path else path,
            "raw_path": path.encode(),
            "query_string": request.query_string.encode(),
            "root_path": "",
            "headers": request.headers.raw(),
            "server": self._server(request.host, scheme),
            "client": (ip, 0) if ip else None,
            "state": self.state.copy(),
            "env": env,
            "ctx": ctx,
            "edgerun.request": request,
        }
        task = _start(loop, exchange.run(scope))
        try:
            await exchange.started
        except BaseException:
            # Failed before the response started, or this handler was cancelled (wall
            # limit, client gone): the app must not keep running unobserved.
            task.cancel()
            raise
        if not task.done():
            _keep_running(task, exchange, ctx)
        elif exchange.error is not None:
            _report_error(ctx, exchange.error)
        status = exchange.status
        assert status is not None  # started resolves only after http.response.start
        if exchange.complete:
            chunks = exchange.chunks
            exchange.chunks = []
            response = Response(chunks[0] if len(chunks) == 1 else b"".join(chunks), status)
        else:
            response = Response(exchange.body(), status)
        # Assigned rather than passed: Response copies a Headers it is given, and
        # this one is already a fresh object of our own. Kept as bytes (decoded only if
        # something reads them), since the node writes them out as bytes again.
        response.headers = Headers._lazy(
            [(k.lower(), v) for k, v in exchange.raw_headers], lowercase=True
        )
        return response


def _keep_running(task: asyncio.Task[None], exchange: _Exchange, ctx: Any) -> None:
    """Hand an app that outlives its handler to the request's Context."""
    wait_until = getattr(ctx, "wait_until", None)
    on_sent = getattr(ctx, "_on_response_sent", None)
    if wait_until is None or on_sent is None:
        _orphans.add(task)
        task.add_done_callback(_orphans.discard)
        return
    # Told first when the node is done with the response, so a stream the client
    # abandoned stops at once instead of holding the app until the wall budget ends.
    on_sent(exchange.response_done)
    wait_until(task)


def _report_error(ctx: Any, exc: BaseException) -> None:
    record = getattr(ctx, "_record_error", None)
    if record is not None:
        record(exc)


class AsgiLifespan:
    """Runs an ASGI app's lifespan protocol: ``await startup()`` once, ``await shutdown()``.

    Call both once per worker (not per request). ``state`` is the dict passed as
    ``scope["state"]`` (the lifespan-state extension); what the app stores there is
    visible to every request of an ``AsgiHandler`` sharing it.

    An app that does not speak lifespan (it raises on, or returns from, the lifespan
    scope before answering) is fine: startup returns and ``supported`` is False. A
    ``lifespan.startup.failed`` raises ``EntrypointError`` with the app's message (for
    Starlette, the traceback of the failed startup). Shutdown failures are logged on
    ``edgerun.runtime``, never raised: stopping must always complete. Neither call has
    its own timeout; bound them with ``asyncio.timeout`` (cancelling cancels the app).
    """

    __slots__ = (
        "_shutdown",
        "_signal",
        "_startup",
        "_startup_sent",
        "_task",
        "app",
        "state",
        "supported",
    )

    def __init__(self, app: ASGIApp, *, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.state: dict[str, Any] = {} if state is None else state
        self.supported = False
        self._task: asyncio.Task[None] | None = None
        self._startup: asyncio.Future[bool] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self._signal: asyncio.Future[None] | None = None
        self._startup_sent = False

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the app's answer.

        Raises ``EntrypointError`` on ``lifespan.startup.failed`` and ``RuntimeError``
        if called twice.
        """
        if self._task is not None:
            raise RuntimeError("AsgiLifespan.startup() was already called")
        loop = asyncio.get_running_loop()
        self._startup = loop.create_future()
        self._shutdown = loop.create_future()
        self._signal = loop.create_future()
        scope: Scope = {"type": "lifespan", "asgi": _ASGI_LIFESPAN, "state": self.state}
        self._task = loop.create_task(self._run(scope))
        try:
            self.supported = await self._startup
        except BaseException:
            await self._stop_task()
            raise

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app to finish (no-op if unsupported)."""
        if self._task is None:
            return
        assert self._signal is not None and self._shutdown is not None
        if self.supported and not self._task.done():
            if not self._signal.done():
                self._signal.set_result(None)
            await self._shutdown
            await asyncio.wait([self._task])
        await self._stop_task()

    async def _stop_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _receive(self) -> Message:
        if not self._startup_sent:
            self._startup_sent = True
            return {"type": "lifespan.startup"}
        assert self._signal is not None
        await self._signal
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        assert self._startup is not None and self._shutdown is not None
        kind = message["type"]
        text = message.get("message", "")
        if kind == "lifespan.startup.complete":
            if not self._startup.done():
                self._startup.set_result(True)
        elif kind == "lifespan.startup.failed":
            if not self._startup.done():
                self._startup.set_exception(
                    EntrypointError(f"the ASGI app's lifespan startup failed: {text}")
                )
        elif kind == "lifespan.shutdown.complete":
            if not self._shutdown.done():
                self._shutdown.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled (shutdown timed out, or the loop is closing): the app
                # reports the CancelledError as a failure; it is not one of its bugs.
                _log.debug("the ASGI app's lifespan was cancelled: %s", text)
            else:
                _log.error("the ASGI app's lifespan shutdown failed: %s", text)
            if not self._shutdown.done():
                self._shutdown.set_result(None)
        else:
            raise RuntimeError(f"ASGI app sent {kind!r} on the lifespan scope")

    async def _run(self, scope: Scope) -> None:
        assert self._startup is not None and self._shutdown is not None
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            startup = self._startup
            if not startup.done():
                # The usual way an app says "no lifespan here" (e.g. an assert on
                # scope["type"]); the app is still usable for HTTP.
                _log.debug("ASGI lifespan unsupported by the app (%r); continuing", exc)
                startup.set_result(False)
            elif startup.cancelled() or startup.exception() is not None:
                pass  # startup was abandoned or failed: startup() already raised
            elif not self._shutdown.done():
                _log.error("the ASGI app's lifespan raised", exc_info=exc)
            # After lifespan.shutdown.failed the app re-raises; already logged in _send.
        finally:
            if not self._startup.done():
                self._startup.set_result(False)
            if not self._shutdown.done():
                self._shutdown.set_result(None)
