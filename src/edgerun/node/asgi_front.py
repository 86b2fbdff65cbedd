"""The ASGI front end: an ASGI server (uvicorn) -> the node's dispatcher -> ASGI.

``AsgiFront(dispatch, limits)`` is an ASGI 3 application. Per HTTP request it checks
the head with ``security.limits.check_head`` (so the caps hold under any ASGI server,
not only behind ``node.protocol``), builds an ``edgerun.http.Request`` whose body is
read under the node's body cap and deadline, calls the dispatcher and writes the
``Response`` back: fixed bodies in one piece with a Content-Length, streamed bodies
chunk by chunk. Then it awaits the dispatcher's ``after`` callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from edgerun.errors import RequestError
from edgerun.http import Headers, Request, Response
from edgerun.node.front import (
    FRAMING_HEADERS,
    FRAMING_SCOPE_KEY,
    NO_BODY_STATUSES,
    After,
    ChunkSource,
    Dispatch,
    GuardedBody,
    error_response,
    host_for_url,
    logger,
    run_after,
)
from edgerun.security.limits import BodyFraming, HttpLimits, check_head
from edgerun.types import Receive, Scope, Send

__all__ = ["AsgiFront"]

_FRAMING_HEADERS_RAW = frozenset(name.encode() for name in FRAMING_HEADERS)
_CLOSE = (b"connection", b"close")
_ENCODED_NAMES: dict[str, bytes] = {}
_ENCODED_NAMES_MAX = 1024


class ResponseStreamFailed(Exception):
    """A streamed response body raised after its headers were sent.

    Raised out of the ASGI application on purpose: it is the only way ASGI offers to
    make the server abort the connection, so the client sees a truncated response
    instead of a clean (and wrong) end of the body.
    """


class AsgiFront:
    """An ASGI application serving ``dispatch`` under ``limits``.

    ``http`` scopes become ``Request`` objects (``url`` = scheme://Host + raw path +
    query; ``ip`` = the peer address); ``lifespan`` is acknowledged without running
    anything (edgerun runs application lifespans itself); ``websocket`` is refused.
    Requests that break the node's caps get a JSON error and ``connection: close``
    without reaching the dispatcher; a body that breaks them mid-way fails the
    handler's read and the connection is closed after the answer.
    """

    def __init__(self, dispatch: Dispatch, limits: HttpLimits) -> None:
        self._dispatch = dispatch
        self._limits = limits
        # ``after`` callbacks detached from an aborted response (kept referenced so the
        # event loop does not drop them half-way).
        self._detached: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _acknowledge_lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string") or b""
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        framing = scope.get(FRAMING_SCOPE_KEY)
        if isinstance(framing, BodyFraming):
            # node.protocol checked the head and enforces the body deadline itself; its
            # parser lowercases names, so headers are decoded on demand.
            ours = True
            headers = Headers._lazy(raw_headers, lowercase=True)
        else:
            ours = False
            target_bytes = len(raw_path) + (len(query) + 1 if query else 0)
            try:
                framing = check_head(
                    method,
                    target_bytes,
                    raw_headers,
                    self._limits,
                    require_host=scope.get("http_version") == "1.1",
                )
            except RequestError as exc:
                await self._send(send, receive, error_response(exc, close=True), method, None)
                return
            headers = Headers.from_raw(raw_headers)
        host = host_for_url(headers.get("host"), scope.get("server"))
        client = scope.get("client")
        body = (
            GuardedBody(_receive_source(receive), self._limits, deadline_enforced=ours)
            if framing.has_body
            else None
        )
        request = Request._from_server(
            method.upper(),
            scope.get("scheme", "http"),
            host,
            raw_path.decode("latin-1"),
            query.decode("latin-1"),
            headers,
            body,
            client[0] if client else None,
        )
        # call_dispatch, inlined: one coroutine less per request on the hot path.
        try:
            response, after = await self._dispatch(request)
            if not isinstance(response, Response):
                raise TypeError(
                    f"the dispatcher returned {type(response).__name__}, not a Response"
                )
        except Exception as exc:
            logger.exception(
                "dispatcher raised for %s %s; answering 500", request.method, request.url
            )
            response, after = error_response(exc, close=False), None
        content = response.content
        if content is not None or response.status in NO_BODY_STATUSES:
            # node.protocol's cycle writes a fixed response in one piece (one socket send
            # instead of two, no ASGI message dicts); other servers get ASGI messages.
            respond = getattr(getattr(send, "__self__", None), "respond", None)
            if respond is not None:
                out_headers, close = _response_headers(response, body)
                await respond(response.status, out_headers, content or b"", close)
                if after is not None:
                    await run_after(after)
                return
        try:
            await self._send(send, receive, response, method, body)
        except ResponseStreamFailed:
            self._detach(after)
            raise
        await run_after(after)

    async def _send(
        self,
        send: Send,
        receive: Receive,
        response: Response,
        method: str,
        body: GuardedBody | None,
    ) -> None:
        headers, close = _response_headers(response, body)
        if close:
            headers.append(_CLOSE)
        status = response.status
        content = response.content
        if status in NO_BODY_STATUSES:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if content is not None:
            headers.append((b"content-length", str(len(content)).encode("ascii")))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        # No content-length: the server sends the body chunked.
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(send, receive, response.stream(), body)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        chunks: AsyncIterator[bytes],
        body: GuardedBody | None,
    ) -> None:
        # Once the request body is fully read, the only ASGI event still to come is the
        # client going away: watch for it so an endless stream stops with its client.
        watcher = None
        if body is None or body.complete:
            watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            try:
                async for chunk in chunks:
                    if watcher is not None and watcher.done():
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except Exception as exc:
                logger.exception("a streamed response body raised; aborting the connection")
                raise ResponseStreamFailed(str(exc) or type(exc).__name__) from None
            await send({"type": "http.response.body", "body": b""})
        finally:
            if watcher is not None:
                if watcher.done():
                    # Retrieve the outcome so a failed receive() is not reported as
                    # "exception never retrieved"; the client is gone either way.
                    if not watcher.cancelled():
                        watcher.exception()
                else:
                    watcher.cancel()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _detach(self, after: After | None) -> None:
        if after is None:
            return
        task = asyncio.ensure_future(run_after(after))
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)


def _response_headers(
    response: Response, body: GuardedBody | None
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The response's headers without framing ones, and whether to close the connection."""
    close = body is not None and body.error is not None
    headers: list[tuple[bytes, bytes]] = []
    source = response.headers
    if source._raw is None:
        # Decoded headers (a handler's): encode them here, names through a small cache
        # since handlers send the same few names on every response.
        names = _ENCODED_NAMES
        for name, value in source._store:
            if name in FRAMING_HEADERS:
                close = close or (name == "connection" and value.lower() == "close")
                continue
            raw_name = names.get(name)
            if raw_name is None:
                raw_name = name.encode("latin-1")
                if len(names) < _ENCODED_NAMES_MAX:
                    names[name] = raw_name
            headers.append((raw_name, value.encode("latin-1")))
        return headers, close
    for raw_name, raw_value in source.raw():
        if raw_name in _FRAMING_HEADERS_RAW:
            # The handler may ask to close; any other framing value is the server's.
            close = close or (raw_name == b"connection" and raw_value.lower() == b"close")
            continue
        headers.append((raw_name, raw_value))
    return headers, close


async def _disconnected(receive: Receive) -> None:
    # Skips the (empty) request event of a body nobody read.
    while (await receive())["type"] != "http.disconnect":
        pass


def _receive_source(receive: Receive) -> ChunkSource:
    done = False

    async def next_chunk() -> bytes | None:
        nonlocal done
        if done:
            return None
        message = await receive()
        if message["type"] != "http.request":
            raise RequestError(
                "the client closed the connection before sending the whole request body"
            )
        if not message.get("more_body", False):
            done = True
        chunk: bytes = message.get("body", b"")
        return chunk

    return next_chunk


async def _acknowledge_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
