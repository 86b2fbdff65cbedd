"""What the node's two HTTP front ends (ASGI for uvicorn, RSGI for granian) share.

The node's core is a server-neutral dispatcher (``Dispatch``): it takes an
``edgerun.http.Request`` and returns the ``Response`` plus an optional ``after``
callback that runs the request's deferred ``wait_until`` work. A front end turns its
server's protocol into that call and back, and owns everything the dispatcher must not
have to think about: the node's caps on the request body (``GuardedBody``), error
responses for requests refused before dispatch, a dispatcher that raises, and running
``after`` once the response is out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeAlias

import msgspec

from edgerun.errors import PayloadTooLarge, RequestError, RequestTimeout, to_http
from edgerun.http import Request, Response
from edgerun.security.limits import BodyMeter, HttpLimits

__all__ = [
    "FRAMING_HEADERS",
    "FRAMING_SCOPE_KEY",
    "NODE_PATHS",
    "NO_BODY_STATUSES",
    "After",
    "ChunkSource",
    "Dispatch",
    "GuardedBody",
    "call_dispatch",
    "error_response",
    "host_for_url",
    "logger",
    "run_after",
]

logger = logging.getLogger("edgerun.node.http")

After: TypeAlias = Callable[[], Awaitable[None]]
"""Deferred work of one request; the front end awaits it after the body is fully sent."""

ChunkSource: TypeAlias = Callable[[], Awaitable[bytes | None]]
"""Returns the next body chunk (possibly empty), None at the end of the body, or raises
``RequestError`` when the body cannot be completed (client gone, broken framing)."""

# Headers the front end owns: the server frames the body and manages the connection,
# so a handler's values for these would contradict what is actually sent.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

# ASGI scope key under which node.protocol hands the checked head's BodyFraming to
# node.asgi_front (servers may add keys to a scope; other servers simply lack it).
FRAMING_SCOPE_KEY = "edgerun.framing"

# Path prefixes the node answers itself (its endpoints, the embedded control API under
# /__edgerun): a connection whose request starts with one is never handed to a worker.
NODE_PATHS = ("/__edgerun", "/healthz")

# Statuses that never carry a body (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})


class Dispatch(Protocol):
    """The node's server-neutral request handler.

    ``await dispatch(request)`` returns ``(response, after)``: ``after`` is None or a
    coroutine function the front end awaits once the response body has been fully
    sent (it runs the request's ``wait_until`` work). It should not raise; if it does,
    the front end answers 500 with a JSON error body and logs the exception.
    """

    def __call__(self, request: Request, /) -> Awaitable[tuple[Response, After | None]]:
        """Handle one request."""
        ...


def error_response(exc: BaseException, *, close: bool) -> Response:
    """A JSON error response for ``exc`` (``errors.to_http``), optionally closing the connection.

    ``close=True`` adds ``connection: close``: used when the rest of the request cannot
    be trusted (a refused head, a body over its cap or deadline).
    """
    status, body = to_http(exc)
    headers = [("content-type", "application/json")]
    if close:
        headers.append(("connection", "close"))
    return Response(msgspec.json.encode(body), status=status, headers=headers)


async def call_dispatch(dispatch: Dispatch, request: Request) -> tuple[Response, After | None]:
    """Run ``dispatch(request)``; a dispatcher that raises yields a logged 500, never a crash.

    ``CancelledError`` (the server is aborting the request) propagates.
    """
    try:
        response, after = await dispatch(request)
        if not isinstance(response, Response):
            raise TypeError(f"the dispatcher returned {type(response).__name__}, not a Response")
    except Exception as exc:
        logger.exception("dispatcher raised for %s %s; answering 500", request.method, request.url)
        return error_response(exc, close=False), None
    return response, after


async def run_after(after: After | None) -> None:
    """Await a request's ``after`` callback; its exceptions are logged, never raised."""
    if after is None:
        return
    try:
        await after()
    except Exception:
        logger.exception("a request's after-response callback raised")


class GuardedBody:
    """A request body as an async iterator, under the node's body cap and deadline.

    Iterating yields the non-empty chunks from ``source`` and raises, as soon as it
    knows: ``PayloadTooLarge`` once more than ``limits.max_body_bytes`` have arrived,
    ``RequestTimeout`` once the node has spent ``limits.body_timeout_s`` in total
    waiting for the client's bytes (time the handler spends on a chunk does not count,
    so a slow handler is not blamed on the client), or the ``RequestError`` of the
    source. After a failure ``error`` holds the exception and the front end must close
    the connection once it has answered; ``complete`` is true once the end was seen.
    It can be iterated once. ``deadline_enforced=True`` says the server already enforces
    the body deadline (``node.protocol`` does, and then fails the source): no timer per
    chunk here.
    """

    __slots__ = ("_deadline_enforced", "_limits", "_source", "complete", "error")

    def __init__(
        self, source: ChunkSource, limits: HttpLimits, *, deadline_enforced: bool = False
    ) -> None:
        self._source = source
        self._limits = limits
        self._deadline_enforced = deadline_enforced
        self.complete = False
        self.error: RequestError | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    def _fail(self, exc: RequestError) -> RequestError:
        self.error = exc
        return exc

    async def _iterate(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        meter = BodyMeter(self._limits)
        remaining = self._limits.body_timeout_s
        while True:
            started = loop.time()
            try:
                if self._deadline_enforced:
                    chunk = await self._source()
                else:
                    async with asyncio.timeout(remaining):
                        chunk = await self._source()
            except TimeoutError:
                raise self._fail(
                    RequestTimeout(
                        "the request body did not arrive within "
                        f"{self._limits.body_timeout_s:g} s; send it faster"
                    )
                ) from None
            except RequestError as exc:
                raise self._fail(exc) from None
            remaining -= loop.time() - started
            if chunk is None:
                self.complete = True
                return
            if not chunk:
                continue
            try:
                meter.feed(len(chunk))
            except PayloadTooLarge as exc:
                raise self._fail(exc) from None
            yield chunk


def host_for_url(host_header: str | None, server: tuple[str, int | None] | None) -> str:
    """The authority for the request URL: the Host header, else the server's address."""
    if host_header:
        return host_header
    if server is None:
        return "localhost"
    address, port = server
    if ":" in address:  # IPv6 literal
        address = f"[{address}]"
    return address if port is None else f"{address}:{port}"
