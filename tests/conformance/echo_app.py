"""A tiny node for the HTTP conformance suite: an echo dispatcher served by ``serve()``.

Run as ``python tests/conformance/echo_app.py --server uvicorn|granian --port 0
[--small]``; it prints ``edgerun: ready on http://HOST:PORT`` once it accepts
connections and exits 0 after a graceful shutdown (SIGTERM/SIGINT).

Routes (everything else echoes the request as JSON after reading the whole body):
``/stream?n=N`` streams N chunks ``chunk-<i>;``; ``/stream-error`` streams one chunk
then raises; ``/boom`` makes the dispatcher raise; ``/after`` returns an ``after``
callback that counts into ``/stats``; ``/slow?ms=N`` prints ``edgerun: slow request
started`` and answers after N ms (for the graceful-shutdown test).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

from edgerun.errors import EdgerunError, to_http
from edgerun.http import Request, Response
from edgerun.node.server import run
from edgerun.security.limits import HttpLimits

# The limits the conformance suite runs with: small, so cap and deadline cases are fast.
SMALL_LIMITS = HttpLimits(
    max_url_bytes=1024,
    max_header_bytes=2048,
    max_headers=20,
    max_body_bytes=64 * 1024,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
)

_stats = {"after_calls": 0}

After = Callable[[], Awaitable[None]]


async def _count_after() -> None:
    _stats["after_calls"] += 1


async def _chunks(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield f"chunk-{i};".encode()
        # Give the server a chance to put each chunk on the wire on its own.
        await asyncio.sleep(0.01)


async def _failing_stream() -> AsyncIterator[bytes]:
    yield b"first;"
    await asyncio.sleep(0.01)
    raise RuntimeError("the stream failed half-way")


async def dispatch(request: Request) -> tuple[Response, After | None]:
    """Echo ``request`` as JSON, or run one of the special routes (module docstring)."""
    path = request.path
    if path == "/boom":
        raise RuntimeError("the dispatcher failed")
    if path == "/stream":
        return Response(_chunks(int(request.query.get("n", "3")))), None
    if path == "/stream-error":
        return Response(_failing_stream()), None
    if path == "/after":
        return Response("ok"), _count_after
    if path == "/stats":
        return Response.json(_stats), None
    if path == "/slow":
        print("edgerun: slow request started", flush=True)
        await asyncio.sleep(int(request.query.get("ms", "300")) / 1000)
    try:
        body = await request.body()
    except EdgerunError as exc:
        # What the real dispatcher does with a failed body read: the typed error's JSON.
        status, payload = to_http(exc)
        return Response.json(payload, status=status), None
    return Response.json(
        {
            "method": request.method,
            "url": request.url,
            "ip": request.ip,
            "headers": request.headers.items(),
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
    ), None


def main() -> None:
    """Parse the command line and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="use the suite's small limits")
    args = parser.parse_args()

    def ready(host: str, port: int) -> None:
        print(f"edgerun: ready on http://{host}:{port}", flush=True)

    run(
        dispatch,
        host=args.host,
        port=args.port,
        server=args.server,
        limits=SMALL_LIMITS if args.small else HttpLimits(),
        on_ready=ready,
        graceful_timeout_s=10.0,
    )


if __name__ == "__main__":
    main()
