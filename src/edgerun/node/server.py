"""The node's HTTP server adapter: serve a ``Dispatch`` with uvicorn or granian.

``serve(dispatch, host=..., port=..., server="uvicorn" | "granian", limits=...)``
binds the listening socket itself (so port 0 works and ``on_ready`` gets the real
port), runs the chosen server in the current event loop, and returns after a
graceful shutdown (SIGINT/SIGTERM or the ``shutdown`` event): the socket stops
accepting, in-flight requests and their ``after`` callbacks finish.

- ``uvicorn`` (default): httptools parser, ASGI (``node.asgi_front.AsgiFront``), with
  the node's protocol layer (``node.protocol``) adding the head/body deadlines and
  caps uvicorn lacks. Access log off, no ``server`` header, ``date`` header on, no
  lifespan (edgerun runs application lifespans itself), no proxy-header rewriting
  (the dispatcher resolves client addresses through trusted proxies), no websockets.
- ``granian`` (fast mode): granian's embedded server speaking RSGI
  (``node.rsgi_front.RsgiFront``), HTTP/1.1 only, with its head-read timeout and read
  buffer set from the limits. granian's parser accepts some requests the node would
  refuse and cannot see; the conformance suite lists them (``GRANIAN_KNOWN_GAPS``).

The event loop is the caller's: ``run()`` is a synchronous wrapper that uses uvloop
when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

# Dispatch and After are defined with the front ends and re-exported here.
from edgerun.node.front import After, Dispatch
from edgerun.security.limits import HttpLimits

if TYPE_CHECKING:
    from edgerun.node.protocol import Diverter

__all__ = ["After", "Dispatch", "ServerKind", "bind_socket", "loop_factory", "run", "serve"]

ServerKind: TypeAlias = Literal["uvicorn", "granian"]
"""The HTTP servers the node can run on."""

OnReady: TypeAlias = Callable[[str, int], None]
"""Called once the server is accepting, with the host as given and the real bound port."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Upper bound for granian's native threads to finish after its server stopped.
_GRANIAN_THREAD_EXIT_S = 2.0


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """Bind and listen on ``host:port`` (port 0 picks a free port); non-blocking.

    Raises ``OSError`` if the address cannot be bound (in use, not local, ...).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Restarting the node must not wait for the old sockets' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    dispatch: Dispatch,
    *,
    host: str,
    port: int,
    server: ServerKind = "uvicorn",
    limits: HttpLimits | None = None,
    on_ready: OnReady | None = None,
    shutdown: asyncio.Event | None = None,
    graceful_timeout_s: float | None = 30.0,
    backlog: int = 2048,
    diverter: Diverter | None = None,
) -> None:
    """Serve ``dispatch`` over HTTP/1.1 on ``host:port`` until shut down.

    ``limits`` (default ``HttpLimits()``) are enforced by both servers. ``on_ready(host,
    port)`` is called once the socket is listening and the server started, with the
    real port (useful with ``port=0``). The server stops gracefully when ``shutdown``
    is set or, when running in the main thread, on SIGINT/SIGTERM: no new
    connections; in-flight requests and their ``after`` callbacks get
    ``graceful_timeout_s`` seconds (None = no limit) to finish. The previous signal
    handlers are restored on return, and a second signal falls through to them (e.g.
    KeyboardInterrupt) to stop waiting. Returns normally after a requested shutdown.
    ``diverter`` (uvicorn only) may take connections elsewhere (``node.handoff``).
    Raises ``OSError`` when the address cannot be bound, ``ValueError`` for an unknown
    ``server``, ``RuntimeError`` if granian's worker dies on its own.
    """
    if server not in ("uvicorn", "granian"):
        raise ValueError(f"server must be 'uvicorn' or 'granian', got {server!r}")
    limits = limits or HttpLimits()
    stop = shutdown or asyncio.Event()
    sock = bind_socket(host, port, backlog)
    bound_port = int(sock.getsockname()[1])

    def ready() -> None:
        if on_ready is not None:
            on_ready(host, bound_port)

    try:
        with _stop_on_signals(stop):
            if server == "uvicorn":
                await _serve_uvicorn(
                    dispatch, sock, limits, ready, stop, graceful_timeout_s, diverter
                )
            else:
                await _serve_granian(
                    dispatch, sock, limits, ready, stop, graceful_timeout_s, backlog
                )
    finally:
        sock.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for the node: uvloop's when installed, else None (asyncio's).

    Pass it to ``asyncio.Runner(loop_factory=...)``.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(dispatch: Dispatch, **options: Any) -> None:
    """Run ``serve(dispatch, **options)`` in a new event loop (uvloop when installed)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(dispatch, **options))


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    # signal.signal (not loop.add_signal_handler) so the caller's handlers come back
    # exactly as they were; only the main thread may install handlers.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # A second signal: stop waiting for in-flight requests, behave as if serve()
            # had never installed a handler (KeyboardInterrupt / terminate).
            _restore(previous)
            signal.raise_signal(signum)
            return
        loop.call_soon_threadsafe(stop.set)

    previous: dict[signal.Signals, Any] = {}
    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        _restore(previous)


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for signum, old in handlers.items():
        signal.signal(signum, old)


def _native_thread_ids() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # not Linux: nothing to wait for
        return set()


async def _native_threads_gone(before: set[int], timeout: float) -> None:
    """Wait (bounded) until threads started since ``before`` by native code have exited.

    granian resolves its worker's stop future from a Rust thread that is still inside
    the interpreter for a moment; if the process then exits, that thread aborts the
    process ("panic in a function that cannot unwind", exit 134, about 1 run in 6).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        python_threads = {t.native_id for t in threading.enumerate()}
        if not (_native_thread_ids() - before - python_threads):
            return
        await asyncio.sleep(0.005)


async def _when_set(event: asyncio.Event, action: Callable[[], None]) -> None:
    await event.wait()
    action()


async def _serve_uvicorn(
    dispatch: Dispatch,
    sock: socket.socket,
    limits: HttpLimits,
    ready: Callable[[], None],
    stop: asyncio.Event,
    graceful_timeout_s: float | None,
    diverter: Diverter | None = None,
) -> None:
    import uvicorn

    from edgerun.node.asgi_front import AsgiFront
    from edgerun.node.protocol import node_config, protocol_class

    class NodeUvicornServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # serve() owns signals; uvicorn would re-raise them after shutting down.
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                ready()

    config = node_config(
        AsgiFront(dispatch, limits),
        http=protocol_class(limits, diverter),
        timeout_graceful_shutdown=(
            None if graceful_timeout_s is None else math.ceil(graceful_timeout_s)
        ),
    )
    uv_server = NodeUvicornServer(config)

    def request_exit() -> None:
        uv_server.should_exit = True

    watcher = asyncio.create_task(_when_set(stop, request_exit))
    try:
        await uv_server.serve(sockets=[sock])
    finally:
        watcher.cancel()


async def _serve_granian(
    dispatch: Dispatch,
    sock: socket.socket,
    limits: HttpLimits,
    ready: Callable[[], None],
    stop: asyncio.Event,
    graceful_timeout_s: float | None,
    backlog: int,
) -> None:
    from granian._granian import SocketHolder
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server.embed import Server as EmbeddedGranian

    from edgerun.node.rsgi_front import RsgiFront

    front = RsgiFront(dispatch, limits)
    # granian takes ownership of the descriptor it is given; the node keeps (and
    # closes) its own socket, so hand over a duplicate.
    listener_fd = os.dup(sock.fileno())

    class NodeGranian(EmbeddedGranian):
        def _init_shared_socket(self) -> None:
            # granian binds its own listener from (address, port) and never reports the
            # port it got; serve the socket the node already bound instead.
            self._ssp = None
            self._shd = SocketHolder(listener_fd, False, backlog)  # type: ignore[call-arg,assignment]

        def startup(self, spawn_target: Any, target_loader: Any) -> None:
            super().startup(spawn_target, target_loader)  # type: ignore[no-untyped-call]
            ready()

    host, port = sock.getsockname()[:2]
    g_server = NodeGranian(
        front,
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        http=HTTPModes.http1,
        websockets=False,
        backlog=backlog,
        http1_settings=HTTP1Settings(
            # hyper closes a connection whose head is not in within this time (and idle
            # keep-alive connections after it), without answering.
            header_read_timeout=max(1, round(limits.header_timeout_s * 1000)),
            keep_alive=True,
            # hyper answers 431 itself to a head larger than its read buffer (and must
            # have at least 8 KiB); sized so every head the node's caps allow fits and
            # the node's own checks give the precise error.
            max_buffer_size=max(8192, limits.max_head_bytes),
        ),
        # Route granian's own log records to the application's logging setup instead
        # of granian's stdout handlers; below ERROR it only narrates start/stop.
        log_level=LogLevels.error,
        log_dictconfig={
            "loggers": {
                "_granian": {"handlers": [], "propagate": True},
                "granian.access": {"handlers": [], "propagate": True},
            }
        },
        log_access=False,
    )
    # Not a constructor argument of the embedded server: how long a stopping worker may
    # take to finish its connections before it is cancelled.
    g_server.workers_kill_timeout = (
        None if graceful_timeout_s is None else max(1, math.ceil(graceful_timeout_s))
    )
    watcher = asyncio.create_task(_when_set(stop, g_server.stop))
    threads_before = _native_thread_ids()
    try:
        await g_server.serve()
    finally:
        watcher.cancel()
        await _native_threads_gone(threads_before, _GRANIAN_THREAD_EXIT_S)
    # granian stops its listener and connections, but not the Python tasks of requests
    # still in flight: let them (and their after callbacks) finish.
    await front.drain(graceful_timeout_s)
    if g_server.interrupt_children and not stop.is_set():
        raise RuntimeError("granian's worker exited unexpectedly; the node stopped serving")
