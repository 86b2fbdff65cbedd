"""Connection handoff: a worker serves a client's HTTP connection itself.

Proxying every request node -> worker -> node costs two process hops and four
message copies per request. Instead, once the node has read a request head and
routed it to an isolated deployment, it can hand the whole client connection to one
of the deployment's workers (``Adopt``, the socket attached via ``SCM_RIGHTS``, with
the bytes the node already read): the worker parses and answers this request and the
following ones on that connection with the node's own HTTP protocol, and the node is
out of the data path. The worker gives the connection back (``Returned``, with any
unserved bytes) when a request on it belongs elsewhere (another route, a node
endpoint, a forced version) or when the node asks (``Give``: a deploy, a reap, a
drain), and reports ``Closed`` when the connection ends.

The node keeps its own descriptor of every handed-off socket, reading nothing from
it, so that it can still answer for the worker: each connection has a **slot** in a
small table shared with the worker (a memfd both map). The worker writes a slot at
three moments of a request -- head in, response started, response complete -- so
when a worker dies, the node knows for each of its connections whether a request was
in flight without a response (-> 502 ``worker_crashed``, or 503 ``exceeded_cpu`` for
the request its watchdog killed), half-answered (-> closed) or idle (-> the node
serves it again). The table also carries the worker's progress counter and busy count
that the watchdog and the idle reaper read.

This module holds what both sides share: the slot table, packet I/O with file
descriptors, and ``DirectHost``, what the worker's HTTP server needs from the worker.
"""

from __future__ import annotations

import array
import asyncio
import mmap
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol

from edgerun.http import Request, Response
from edgerun.runtime.isolate.protocol import ConnMessage, encode_conn

__all__ = [
    "MAX_CONNS",
    "SLOTS_BYTES",
    "After",
    "Client",
    "DirectHost",
    "ServeConnections",
    "Slots",
    "send_packet",
]

MAX_CONNS: Final = 4096
"""Connections one worker can hold at once (slots in its table)."""

_HEADER_WORDS: Final = 4  # progress, busy, (reserved) x2
SLOTS_BYTES: Final = (_HEADER_WORDS + MAX_CONNS) * 4
"""Size of a worker's slot table (a memfd created by the zygote at fork)."""

_PROGRESS = 0
_BUSY = 1
_RESPONDING = 1  # low bit of a slot: response bytes have been written
# A slot the node gave to a connection whose passed bytes the worker has not parsed
# yet (seq 0 with the responding bit: no request can be in that state).
_UNTOUCHED = 1
_WRAP = 0x7FFFFFFF

After = Callable[[], Awaitable[None]]
"""Deferred work of one request (``wait_until``, accounting), run after the response."""


class Slots:
    """A worker's shared slot table: one 32-bit word per connection plus a header.

    A slot is 0 while its connection is between requests, 1 from the node passing
    the connection until the worker has parsed the bytes passed with it; otherwise it
    holds
    ``seq << 1 | responding``, where ``seq`` numbers the worker's requests (so the
    oldest in-flight request is the one with the smallest ``seq``). Single writer (the
    worker), single reader (the node); a torn read is impossible for aligned words.
    """

    __slots__ = ("_map", "_seq", "_words")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SLOTS_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._words = memoryview(self._map).cast("I")
        self._seq = 0

    # -- worker side ----------------------------------------------------------------

    def begin(self, slot: int) -> None:
        """A request's head arrived on ``slot``."""
        seq = self._seq = (self._seq % _WRAP) + 1
        words = self._words
        if words[_HEADER_WORDS + slot] <= _UNTOUCHED:
            words[_BUSY] += 1
        words[_HEADER_WORDS + slot] = seq << 1

    def responding(self, slot: int) -> None:
        """The first response bytes of ``slot``'s request are about to be written."""
        words = self._words
        index = _HEADER_WORDS + slot
        if words[index] > _UNTOUCHED:
            words[index] |= _RESPONDING

    def end(self, slot: int) -> None:
        """``slot``'s request is over (answered or abandoned)."""
        words = self._words
        index = _HEADER_WORDS + slot
        if words[index] > _UNTOUCHED:
            words[index] = 0
            words[_BUSY] -= 1
            words[_PROGRESS] = (words[_PROGRESS] + 1) & 0xFFFFFFFF

    # -- node side ------------------------------------------------------------------

    def state(self, slot: int) -> tuple[int, bool]:
        """``(seq, responding)`` of ``slot``; ``seq`` 0 means between requests."""
        word = self._words[_HEADER_WORDS + slot]
        return word >> 1, bool(word & _RESPONDING)

    def clear(self, slot: int) -> None:
        """Reset ``slot`` before giving it to a new connection (node side)."""
        self._words[_HEADER_WORDS + slot] = 0

    def untouched(self, slot: int) -> None:
        """Mark ``slot`` as given to a connection the worker has not begun on yet.

        Node side, before the connection is passed; the worker's first ``begin`` (or
        ``settled``) overwrites it."""
        self._words[_HEADER_WORDS + slot] = _UNTOUCHED

    def is_untouched(self, slot: int) -> bool:
        """Whether the worker never marked ``slot`` since ``untouched``."""
        return self._words[_HEADER_WORDS + slot] == _UNTOUCHED

    def settled(self, slot: int) -> None:
        """Worker side: the passed bytes were dealt with without a request begun."""
        index = _HEADER_WORDS + slot
        if self._words[index] == _UNTOUCHED:
            self._words[index] = 0

    @property
    def busy(self) -> int:
        """Requests in flight on the worker's connections."""
        return int(self._words[_BUSY])

    @property
    def progress(self) -> int:
        """Requests finished on the worker's connections (wraps at 2**32)."""
        return int(self._words[_PROGRESS])

    def close(self) -> None:
        """Unmap the table."""
        self._words.release()
        self._map.close()


def send_packet(sock: socket.socket, message: ConnMessage, fds: list[int] | None = None) -> None:
    """Send one connection-channel packet (optionally with descriptors) on a
    non-blocking ``SOCK_SEQPACKET`` socket; raises ``BlockingIOError`` when full."""
    payload = encode_conn(message)
    if fds:
        sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(payload)


class Client(Protocol):
    """The node's side of a connection it hands to a worker."""

    def fileno(self) -> int:
        """The connection's socket descriptor (sent to the worker)."""
        ...

    def resume(self, data: bytes) -> None:
        """The node serves the connection again, starting with ``data``."""
        ...

    def abort(self, error: BaseException | None) -> None:
        """Answer ``error`` (a JSON error response) if given, then close."""
        ...


class DirectHost(Protocol):
    """What a worker's HTTP server needs from the worker it runs in."""

    name: str
    """The deployment's name (access log, usage)."""

    on_retire: Callable[[str], None] | None
    """Set by the HTTP server: called once when the worker retires itself."""

    def handle(
        self,
        request: Request,
        request_id: str,
        cold: bool = False,
        log: bool = False,
        task: asyncio.Task[Any] | None = None,
    ) -> Awaitable[tuple[Response, After | None, str]]:
        """Run one request under the worker's limits; return the response, its
        deferred work (usage, access log if ``log``, ``wait_until``) and its
        ``Outcome`` value. ``cold`` marks a cold start; ``task`` is the task running
        the request (found if not given). Never raises for handler failures."""
        ...

    def usage_rows(self) -> list[tuple[str, int, float, float, int, int, int, str]]:
        """The usage counted since the last call, as ``Report`` rows."""
        ...

    def retire(self, why: str) -> None:
        """The worker should get no more work (it hit a limit)."""
        ...


ServeConnections = Callable[[DirectHost, socket.socket, Slots], Coroutine[Any, Any, None]]
"""The injected HTTP server of a worker: serves the connections the node hands over on
the given connection socket until the node closes it (``node.direct``)."""
