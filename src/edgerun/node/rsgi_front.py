"""The RSGI front end: granian -> the node's dispatcher -> RSGI.

``RsgiFront(dispatch, limits)`` is an RSGI application (granian calls ``__rsgi__``).
It enforces what the node can see at the RSGI level, because granian's parser lets
through requests the node refuses (DESIGN §7):

- the head checks of ``security.limits.check_head`` on the headers granian reports
  (duplicate Host, duplicate Transfer-Encoding, caps on URL and header sizes ...);
- the body cap and deadline while reading the body (``front.GuardedBody``);
- a body granian could not decode: granian's body iterator reports a framing error
  (invalid chunk size, bare-LF chunk lines, a connection cut mid-body) as an empty
  chunk and then ends, exactly like a normal end except for the extra empty chunk.
  The node detects that and answers 400. Chunked trailers look the same and are also
  refused.

What granian hides cannot be checked here and is listed in the conformance suite
(``GRANIAN_KNOWN_GAPS``): granian drops a Content-Length sent with Transfer-Encoding
and merges equal duplicate Content-Lengths before the application sees the headers,
and it accepts bare-LF line endings in the head. RSGI hands over the path already
percent-decoded, so the URL is re-encoded (``%2F`` arrives as ``/``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from granian._granian import RSGIProtocolClosed, RSGIProtocolError

from edgerun.errors import RequestError, RequestTimeout
from edgerun.http import Headers, Request, Response
from edgerun.node.front import (
    FRAMING_HEADERS,
    NO_BODY_STATUSES,
    ChunkSource,
    Dispatch,
    GuardedBody,
    call_dispatch,
    error_response,
    host_for_url,
    logger,
    run_after,
)
from edgerun.security.limits import HttpLimits, check_head

__all__ = ["RsgiFront"]

# How long a cancelled granian body read gets to be dropped before the node answers
# (see RsgiFront._http); only on the body-timeout path.
_CANCELLED_READ_SETTLE_S = 0.02

# Characters RFC 3986 allows unencoded in a path; everything else is re-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# A path made only of those (and letters and digits) is left as it is, without quote().
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;=\-._~]")


class RsgiFront:
    """An RSGI application serving ``dispatch`` under ``limits``.

    ``http`` scopes become ``Request`` objects (``url`` = scheme://Host + path +
    query; ``ip`` = the peer address); websocket scopes are refused. Requests that
    break the node's caps get a JSON error and ``connection: close`` without reaching
    the dispatcher. ``drain()`` waits for in-flight requests (and their ``after``
    callbacks) during a graceful shutdown, since granian does not wait for them.
    """

    def __init__(self, dispatch: Dispatch, limits: HttpLimits) -> None:
        self._dispatch = dispatch
        self._limits = limits
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        """Serve one RSGI request (granian's entry point)."""
        if scope.proto != "http":
            proto.close(403)
            return
        self._inflight += 1
        self._idle.clear()
        try:
            await self._http(scope, proto)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _http(self, scope: Any, proto: Any) -> None:
        method: str = scope.method
        raw_headers: list[tuple[str, str]] = scope.headers.items()
        path: str = scope.path
        if _NEEDS_QUOTING.search(path) is not None:
            path = quote(path, safe=_PATH_SAFE)
        query: str = scope.query_string
        target_bytes = len(path) + (len(query) + 1 if query else 0)
        try:
            framing = check_head(
                method,
                target_bytes,
                raw_headers,
                self._limits,
                require_host=scope.http_version == "1.1",
            )
        except RequestError as exc:
            _send_fixed(proto, error_response(exc, close=True), close=False)
            return

        # granian's header names are lower case (hyper's HeaderName); values are taken
        # as they are unless one is not ASCII (then mapped to latin-1, '?' for the rest,
        # so they can always be encoded back to bytes).
        for _, value in raw_headers:
            if not value.isascii():
                headers = Headers.from_raw(
                    (k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
                    for k, v in raw_headers
                )
                break
        else:
            headers = Headers._trusted(raw_headers)
        host = headers.get("host") or host_for_url(None, _split_address(scope.server))
        body = GuardedBody(_body_source(proto), self._limits) if framing.has_body else None
        request = Request._from_server(
            method.upper(),
            scope.scheme,
            host,
            path,
            query,
            headers,
            body,
            _split_address(scope.client)[0],
        )
        response, after = await call_dispatch(self._dispatch, request)
        close = body is not None and body.error is not None
        if body is not None and isinstance(body.error, RequestTimeout):
            # The body read that timed out was cancelled, but granian drops its pending
            # read on its own thread a moment later; answering before that lands makes
            # hyper keep the connection open waiting for body bytes, despite the
            # ``connection: close`` (seen on a loaded machine in 3 of 10 slow bodies).
            await asyncio.sleep(_CANCELLED_READ_SETTLE_S)
        if response.content is not None or response.status in NO_BODY_STATUSES:
            _send_fixed(proto, response, close=close)
        else:
            await _send_stream(proto, response, close=close, head=method == "HEAD")
        await run_after(after)


def _headers(response: Response, close: bool) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for name, value in response.headers.items():
        if name in FRAMING_HEADERS:
            # The handler may ask to close; any other framing value is the server's.
            close = close or (name == "connection" and value.lower() == "close")
            continue
        headers.append((name, value))
    if close:
        headers.append(("connection", "close"))
    return headers


def _send_fixed(proto: Any, response: Response, *, close: bool) -> None:
    # granian adds content-length itself and hands the bytes to its I/O thread; the
    # call returns at once, so ``after`` runs while the response is on its way.
    headers = _headers(response, close)
    if response.status in NO_BODY_STATUSES:
        proto.response_empty(response.status, headers)
    else:
        proto.response_bytes(response.status, headers, response.content or b"")


async def _send_stream(proto: Any, response: Response, *, close: bool, head: bool) -> None:
    transport = proto.response_stream(response.status, _headers(response, close))
    chunks: AsyncIterator[bytes] = response.stream()
    try:
        if not head:
            async for chunk in chunks:
                await transport.send_bytes(chunk)
    except (RSGIProtocolClosed, RSGIProtocolError):
        pass  # the client went away; stop producing
    except Exception:
        # RSGI has no way to abort a response: granian ends the body cleanly when the
        # transport is dropped, so the client sees a short but complete-looking body.
        logger.exception("a streamed response body raised; the response ends early")
    finally:
        # granian ends the chunked body when the transport object is released.
        del transport
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _body_source(proto: Any) -> ChunkSource:
    chunks = proto.__aiter__()
    done = False

    async def next_chunk() -> bytes | None:
        nonlocal done
        if done:
            return None
        try:
            chunk: bytes = await chunks.__anext__()
        except StopAsyncIteration:
            done = True
            return None
        if chunk:
            return chunk
        # An empty chunk is either the end of the body (then the iterator stops) or
        # granian's stand-in for a body error (then one more empty chunk follows).
        try:
            await chunks.__anext__()
        except StopAsyncIteration:
            done = True
            return None
        done = True
        raise RequestError(
            "the request body is malformed (invalid chunked framing, trailers or an "
            "incomplete body)"
        )

    return next_chunk


def _split_address(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, None
    host = host.removeprefix("[").removesuffix("]")
    return host, int(port) if port.isdigit() else None
