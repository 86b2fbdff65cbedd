"""One deployment's worker pool on the node: connections, scheduling, autoscaling.

``Pool.acquire()`` picks the least-loaded worker below ``max_concurrency``; while the
in-flight requests per worker exceed ``target_concurrency`` it forks another, up to
``max_workers``. With no free worker a request waits in a bounded queue (over the
bound: ``Overloaded``, 503). A worker idle for ``idle_s`` is retired; at zero workers
the zygote stays (``keep_zygote``) or is stopped and restarted on demand. A request
that finds the pool at zero waits for a fork: a cold start.

``WorkerConn`` is the node's side of one worker's data socket: it multiplexes calls
by id, turns a lost connection into ``worker_crashed`` for every call still on it,
and a watchdog kills a worker that burns CPU without making progress (a handler
stuck in C code or swallowing the CPU-limit exception).

``Pool.adopt`` hands a client connection to a worker (``handoff``): each connection
it holds counts as one unit of load, like a request in flight, so a worker takes at
most ``max_concurrency`` of them and the pool scales on them as on requests. When the
worker dies, the node answers for its connections from the shared slot table.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from edgerun.errors import LimitExceeded, Overloaded, WorkerCrashed
from edgerun.runtime.isolate.handoff import MAX_CONNS, Client, Slots, send_packet
from edgerun.runtime.isolate.memcg import MemoryCgroups, WorkerCgroup
from edgerun.runtime.isolate.pidcg import PidsCgroups
from edgerun.runtime.isolate.protocol import (
    MAX_CONTROL_PACKET,
    Adopt,
    Cancel,
    Chunk,
    Closed,
    ConnMessage,
    DataMessage,
    Done,
    Flush,
    FrameError,
    FrameReader,
    Give,
    Head,
    Report,
    Retiring,
    Returned,
    Spec,
    decode_conn,
    encode_frame,
)
from edgerun.runtime.isolate.zygote_client import ForkedWorker, ZygoteClient

__all__ = ["Call", "Pool", "PoolSettings", "UsageSink", "WorkerConn"]

UsageSink = Callable[[list[tuple[str, int, float, float, int, int, int, str]]], None]
"""Receives the usage rows (``protocol.Report``) of requests a worker served directly."""

_log = logging.getLogger("edgerun.isolate")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_END = object()
# Backpressure on streamed response bodies: the node stops reading a worker's socket
# while more than _HIGH_WATER bytes of its chunks wait for slow clients, and reads
# again below _LOW_WATER (the worker's writes then block its handlers in between).
_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024


@functools.cache
def memory_cgroups() -> MemoryCgroups | None:
    """This node's memory cgroup manager, if the host offers one (detected once)."""
    cgroups = MemoryCgroups.detect()
    if cgroups is not None:
        atexit.register(cgroups.close)
        _log.info("memory cgroups (v%d) guard each worker", cgroups.version)
    return cgroups


@functools.cache
def pids_cgroups() -> PidsCgroups | None:
    """This node's pids cgroup manager, if the host offers one (detected once)."""
    pids = PidsCgroups.detect() if os.geteuid() == 0 else None
    if pids is not None:
        atexit.register(pids.close)
    return pids


def cgroup_limit_bytes(memory_mb: int, max_workers: int) -> int:
    """A deployment's memory cgroup limit: per worker ``memory_mb`` plus room for the
    pages it copies from the zygote, times ``max_workers``. It bounds the workers with
    everything they start (the address-space rlimit bounds each process on its own)."""
    return (memory_mb + max(32, memory_mb // 4)) * max_workers * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Autoscaling knobs (``[scaling]`` plus ``limits.max_concurrency``)."""

    target_concurrency: int = 4
    min_workers: int = 0
    max_workers: int = 4
    idle_s: float = 60.0
    keep_zygote: bool = True
    max_concurrency: int = 16
    handoff: bool = True

    @property
    def queue_limit(self) -> int:
        """How many requests may wait for a free worker before ``Overloaded``."""
        return self.max_workers * self.max_concurrency * 4


class Call:
    """One request on a worker, as the node sees it."""

    __slots__ = (
        "chunks",
        "done",
        "finished",
        "head",
        "id",
        "queued",
        "request_id",
        "started",
        "streaming",
        "timer",
        "worker",
    )

    def __init__(self, worker: WorkerConn, id: int, request_id: str, started: float) -> None:
        loop = worker.loop
        self.worker = worker
        self.id = id
        self.request_id = request_id
        self.started = started
        self.head: asyncio.Future[Head] = loop.create_future()
        self.finished: asyncio.Future[BaseException | None] = loop.create_future()
        self.done: Done | None = None
        self.chunks: asyncio.Queue[Any] | None = None
        self.streaming = False
        self.timer: asyncio.TimerHandle | None = None
        self.queued = 0  # bytes of chunks received and not yet taken by the client

    def fail(self, exc: BaseException) -> None:
        """End the call with ``exc`` (limit, crash), wherever it is."""
        if self.finished.done():
            return
        if not self.head.done():
            self.head.set_exception(exc)
        elif self.chunks is not None:
            self.chunks.put_nowait(exc)
        self.finished.set_result(exc)
        if self.timer is not None:
            self.timer.cancel()

    async def body(self) -> Any:
        """The streamed response body: chunks until the end frame; raises on failure."""
        queue = self.chunks
        assert queue is not None
        complete = False
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    complete = True
                    return
                if isinstance(item, BaseException):
                    complete = True
                    raise item
                self.worker.unqueue(self, len(item))
                yield item
        finally:
            self.worker.unqueue(self, self.queued)
            if not complete and not self.finished.done():
                # The client went away mid-stream: stop the handler in the worker.
                self.worker.cancel(self)


class WorkerConn(asyncio.Protocol):
    """The node's end of one worker's data socket."""

    def __init__(
        self, pool: Pool, pid: int, conns: socket.socket | None = None, slots: Slots | None = None
    ) -> None:
        self.pool = pool
        self.pid = pid
        self.loop = asyncio.get_running_loop()
        # Handoff: the connection channel, the shared slot table, the connections the
        # worker holds (by id: client and slot), free slots, and flushes waiting.
        self.conns = conns
        self.slots = slots
        # conn -> (client, slot, the bytes passed with it: the node serves them itself if
        # the worker dies before it marked anything on the slot).
        self.direct: dict[int, tuple[Client, int, bytes]] = {}
        self.free_slots: list[int] = []
        self.next_slot = 0
        self.flushes: dict[int, asyncio.Future[None]] = {}
        self.idle_progress = -1
        self.queued = 0  # streamed body bytes waiting for clients (backpressure)
        self.reading_paused = False
        self.calls: dict[int, Call] = {}
        self.inflight = 0
        self.retiring = False
        self.closed = False
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.next_id = 0
        self.frames = 0  # frames received: the watchdog's sign of progress
        self.completed = 0  # proxied requests finished: until one is, the first's budget
        self.idle_handle: asyncio.TimerHandle | None = None
        self.exit_status: int | None = None
        self.killed_for_cpu: Call | None = None
        self.watchdog_killed = False
        self.watch_cpu: float | None = None
        self.watch_frames = 0
        self.stuck_cpu = 0.0

    # -- calls ----------------------------------------------------------------------------

    def start(self, messages: list[DataMessage], call: Call) -> None:
        """Register ``call`` and send its first frames in one write."""
        self.calls[call.id] = call
        assert self.transport is not None
        if len(messages) == 1:
            self.transport.write(encode_frame(messages[0]))
        else:
            self.transport.write(b"".join(encode_frame(m) for m in messages))

    def send(self, message: DataMessage) -> None:
        """Send one frame if the connection is still open."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(message))

    def cancel(self, call: Call) -> None:
        """Tell the worker to stop ``call``; the call ends as canceled."""
        self.send(Cancel(call.id))
        self.finish_call(call, asyncio.CancelledError())

    def new_id(self) -> int:
        """A call id unique on this connection."""
        self.next_id += 1
        return self.next_id

    def finish_call(self, call: Call, error: BaseException | None) -> None:
        """End ``call`` (with ``error``, or as completed) and free its slot; idempotent."""
        if self.calls.pop(call.id, None) is None:
            return
        self.completed += 1
        if error is not None:
            call.fail(error)
        elif not call.finished.done():
            call.finished.set_result(None)
            if call.timer is not None:
                call.timer.cancel()
        self.pool.released(self)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except FrameError as exc:
            _log.error(
                "worker %d of %s sent a corrupt frame (%s); killing it",
                self.pid,
                self.pool.name,
                exc,
            )
            self.kill()
            return
        self.frames += 1
        for message in messages:
            call = self.calls.get(message.id)
            if call is None:
                continue  # a call the node already gave up on
            if isinstance(message, Head):
                if call.head.done():
                    call.fail(WorkerCrashed("the worker sent a second response head"))
                    continue
                if message.more:
                    call.chunks = asyncio.Queue()
                    if message.body:
                        call.chunks.put_nowait(message.body)
                call.head.set_result(message)
            elif isinstance(message, Chunk):
                if call.chunks is not None:
                    if message.data:
                        call.chunks.put_nowait(message.data)
                        self._queue(call, len(message.data))
                    if not message.more:
                        call.chunks.put_nowait(_END)
            elif isinstance(message, Done):
                call.done = message
                if message.retire and not self.retiring:
                    self.pool.retire(
                        self, f"its request {call.request_id} hit a limit ({message.outcome})"
                    )
                self.finish_call(call, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # Judged once per death: the OOM killer's count moves on at most once for it.
        oom = self.pool.oom_struck()
        self._answer_for_direct(oom)
        self.pool.lost(self)
        culprit = self.killed_for_cpu
        for call in list(self.calls.values()):
            if call is culprit:
                error: BaseException = self.pool.cpu_error()
            else:
                error = self.pool.memory_error() if oom else self.pool.crash_error()
            _log.warning(
                "request %s: %s (worker %d of %s)",
                call.request_id,
                error,
                self.pid,
                self.pool.name,
            )
            self.finish_call(call, error)

    # -- backpressure -----------------------------------------------------------------------

    def _queue(self, call: Call, size: int) -> None:
        call.queued += size
        self.queued += size
        if self.queued > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def unqueue(self, call: Call, size: int) -> None:
        """``size`` bytes of ``call``'s body left the node (or were dropped)."""
        size = min(size, call.queued)
        if size <= 0:
            return
        call.queued -= size
        self.queued -= size
        if self.reading_paused and self.queued < _LOW_WATER and self.transport is not None:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- handed-off connections -----------------------------------------------------------

    @property
    def load(self) -> int:
        """Requests in flight plus connections held: what scheduling compares."""
        return self.inflight + len(self.direct)

    def open_channel(self) -> None:
        """Start reading the connection channel."""
        if self.conns is not None:
            self.conns.setblocking(False)
            self.loop.add_reader(self.conns.fileno(), self._channel_readable)

    def adopt(self, client: Client, conn: int, message: Adopt) -> bool:
        """Hand ``client`` to the worker; False when it cannot take it (then nothing
        changed and the caller keeps serving the connection)."""
        if self.conns is None or self.slots is None or self.closed:
            return False
        if self.free_slots:
            slot = self.free_slots.pop()
        elif self.next_slot < MAX_CONNS:
            slot = self.next_slot
            self.next_slot += 1
        else:
            return False
        self.slots.untouched(slot)
        message.conn = conn
        message.slot = slot
        try:
            send_packet(self.conns, message, [client.fileno()])
        except OSError:
            self.free_slots.append(slot)
            return False
        self.direct[conn] = (client, slot, message.data)
        return True

    def give(self, conn: int = -1, *, close: bool = False) -> None:
        """Ask for connection ``conn`` (default: all) back once it is idle."""
        self._send(Give(conn, close))

    async def flush(self, seq: int, timeout_s: float) -> None:
        """Have the worker report its usage; wait (bounded) for the report."""
        if self.conns is None or self.closed:
            return
        waiter = self.flushes[seq] = self.loop.create_future()
        self._send(Flush(seq))
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            self.flushes.pop(seq, None)

    def _send(self, message: ConnMessage) -> None:
        if self.conns is None or self.closed:
            return
        with contextlib.suppress(OSError):
            send_packet(self.conns, message)

    def _channel_readable(self) -> None:
        conns = self.conns
        while True:
            if conns is None or conns.fileno() < 0:
                return  # closed by close(), maybe by the message just handled
            try:
                data = conns.recv(MAX_CONTROL_PACKET)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.loop.remove_reader(conns.fileno())
                return
            try:
                message = decode_conn(data)
            except FrameError as exc:
                _log.error("worker %d of %s: %s; killing it", self.pid, self.pool.name, exc)
                self.kill()
                return
            self._on_channel(message)

    def _on_channel(self, message: ConnMessage) -> None:
        if isinstance(message, Returned | Closed):
            entry = self.direct.pop(message.conn, None)
            if entry is None:
                return
            client, slot, _data = entry
            self.free_slots.append(slot)
            if isinstance(message, Returned):
                client.resume(message.data)
            else:
                client.abort(None)
            self.pool.released_conn(self)
        elif isinstance(message, Report):
            sink = self.pool.usage_sink
            if sink is not None and message.rows:
                sink(message.rows)
            waiter = self.flushes.get(message.seq)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(message, Retiring):
            self.pool.retire(self, message.why)

    def _answer_for_direct(self, oom: bool) -> None:
        """The worker is gone: answer, close or take back each connection it held."""
        if self.conns is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.conns.fileno())
        slots = self.slots
        if not self.direct or slots is None:
            return
        states = {conn: slots.state(slot) for conn, (_client, slot, _data) in self.direct.items()}
        culprit = None
        if self.killed_for_cpu is None and self.watchdog_killed:
            waiting = [
                (seq, conn) for conn, (seq, responding) in states.items() if seq and not responding
            ]
            if waiting:
                culprit = min(waiting)[1]
        for conn, (client, slot, data) in list(self.direct.items()):
            seq, responding = states[conn]
            if slots.is_untouched(slot):
                # Died before it parsed the head the node passed: the client sent a
                # whole request and nothing of it was run or answered, so the node
                # serves those bytes itself (resuming with none would leave the client
                # waiting on a request nobody holds, then a close without a response).
                client.resume(data)
            elif not seq:
                client.resume(b"")  # idle: the node serves it again
            elif responding:
                client.abort(None)  # half-answered: only a close is left
            else:
                if conn == culprit:
                    error: BaseException = self.pool.cpu_error()
                elif oom:
                    error = self.pool.memory_error()
                else:
                    error = self.pool.crash_error()
                _log.warning(
                    "a request on a connection of worker %d of %s: %s",
                    self.pid,
                    self.pool.name,
                    error,
                )
                client.abort(error)
        self.direct.clear()
        for waiter in self.flushes.values():
            if not waiter.done():
                waiter.set_result(None)

    # -- control --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sockets: the worker finishes its deferred work and exits."""
        if self.transport is not None:
            self.transport.close()
        if self.conns is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.conns.fileno())
            self.conns.close()

    def kill(self) -> None:
        """SIGKILL the worker process (its connection then reports every call crashed)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)

    def cpu_seconds(self) -> float | None:
        """The worker's total CPU time (user + system) from ``/proc``, or None if gone."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                fields = fh.read().rpartition(b")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class Pool:
    """The workers of one deployment (see the module docstring)."""

    def __init__(self, spec: Spec, settings: PoolSettings, command: Sequence[str]) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.command = list(command)
        self.workers: list[WorkerConn] = []
        self.forking = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.zygote: ZygoteClient | None = None
        self._zygote_starting: asyncio.Future[ZygoteClient] | None = None
        self.cold_starts = 0
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_s = max(2 * spec.cpu_ms, 20) / 1000
        self._on_change: Callable[[], None] | None = None
        self.usage_sink: UsageSink | None = None
        # The deployment's memory cgroup (its zygote, so every worker and what they
        # start), and the OOM kills in it already accounted for.
        self.cgroup: WorkerCgroup | None = None
        self.pids_cgroup: Path | None = None  # the zygote's, bounding its tasks
        self._ooms_seen = 0
        self._next_conn = 0
        self._flush_seq = 0

    def cpu_error(self) -> LimitExceeded:
        """The error of a request whose worker the watchdog killed for CPU."""
        return LimitExceeded(
            "cpu",
            f"the request used more than its CPU time limit (cpu_ms = "
            f"{self.spec.cpu_ms}) and did not stop; its worker was killed. Make "
            "it faster or raise [limits] cpu_ms in edgerun.toml",
        )

    def oom_struck(self) -> bool:
        """Whether the kernel's OOM killer acted in the deployment's cgroup since the
        last call: a worker dying now was its victim (a child killed under a living
        worker is counted too, and may be blamed on the next death: a rare miss)."""
        cgroup = self.cgroup
        if cgroup is None:
            return False
        kills = cgroup.oom_kills()
        if kills <= self._ooms_seen:
            return False
        self._ooms_seen = kills
        return True

    def memory_error(self) -> LimitExceeded:
        """The error of a request whose worker the kernel killed at its memory cgroup
        limit (the worker with what it started went past ``memory_mb``)."""
        return LimitExceeded(
            "memory",
            f"the worker ran out of memory (memory_mb = {self.spec.memory_mb}, counting the "
            "processes it started) and was killed; use less or raise [limits] memory_mb in "
            "edgerun.toml",
        )

    def crash_error(self) -> WorkerCrashed:
        """The error of a request whose worker died under it."""
        return WorkerCrashed(
            "the worker process running this request died; the request was not "
            "completed (it is safe to retry only if it is idempotent)"
        )

    # -- zygote -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote (raises ``EntrypointError`` for bad code) and ``min_workers``."""
        await self._ensure_zygote()
        for _ in range(self.settings.min_workers):
            self._grow()

    async def _ensure_zygote(self) -> ZygoteClient:
        if self.zygote is not None and self.zygote.alive:
            return self.zygote
        if self._zygote_starting is None:
            loop = asyncio.get_running_loop()
            starting = self._zygote_starting = loop.create_future()
            zygote = ZygoteClient(
                self.spec, self.command, on_exit=self._worker_exited, on_lost=self._zygote_lost
            )
            try:
                await zygote.start(timeout_s=max(30.0, self.spec.wall_ms / 1000))
            except BaseException as exc:
                starting.set_exception(exc)
                starting.exception()  # retrieved: other waiters may be none
                raise
            finally:
                self._zygote_starting = None
            self.zygote = zygote
            _log.info("zygote %d of %s ready", zygote.pid, self.name)
            await self._limit(zygote)
            starting.set_result(zygote)
            return zygote
        return await asyncio.shield(self._zygote_starting)

    def _zygote_lost(self) -> None:
        if not self.closing:
            _log.warning("the zygote of %s exited; it is restarted on demand", self.name)
            self._spawn(self._release_cgroup())

    def _worker_exited(self, pid: int, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        for worker in self.workers:
            if worker.pid == pid:
                worker.exit_status = code
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        level = logging.INFO if code == 0 else logging.WARNING
        _log.log(level, "worker %d of %s ended (%s)", pid, self.name, how)

    # -- scheduling -----------------------------------------------------------------------

    def _live(self) -> list[WorkerConn]:
        return [w for w in self.workers if not w.retiring and not w.closed]

    async def acquire(self) -> tuple[WorkerConn, bool]:
        """A worker with a free slot (its ``inflight`` already counted) and whether the
        request is a cold start. Raises ``Overloaded`` when the queue is full and
        ``WorkerCrashed``/``EntrypointError`` when no worker can be started."""
        cold = False
        limit = self.settings.max_concurrency
        while True:
            best: WorkerConn | None = None
            live = 0
            total = 0
            for w in self.workers:
                if w.retiring or w.closed:
                    continue
                live += 1
                load = w.load
                total += load
                if load < limit and (best is None or load < best.load):
                    best = w
            capacity = live + self.forking
            if capacity < self.settings.max_workers and (
                capacity == 0 or (total + 1) > self.settings.target_concurrency * capacity
            ):
                if capacity == 0:
                    cold = True
                self._grow()
            if best is not None:
                best.inflight += 1
                if best.idle_handle is not None:
                    best.idle_handle.cancel()
                    best.idle_handle = None
                if cold:
                    self.cold_starts += 1
                return best, cold
            if live == 0 and self.forking == 0:
                raise WorkerCrashed(f"no worker of {self.name} could be started")
            if len(self.waiters) >= self.settings.queue_limit:
                raise Overloaded(
                    f"every worker of {self.name} is busy and {len(self.waiters)} requests "
                    "are queued; retry later, or raise [scaling] max_workers / "
                    "[limits] max_concurrency"
                )
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)

    def _wake(self, error: BaseException | None = None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                if error is not None:
                    waiter.set_exception(error)
                    continue
                waiter.set_result(None)
                return

    # -- handed-off connections -----------------------------------------------------------

    def can_adopt(self) -> bool:
        """Whether ``adopt`` may succeed now: a worker has room, or none runs yet (a
        cold start), or the pool may grow. False sends the request down the proxy path."""
        if self.closing:
            return False
        live = self._live()
        if not live:
            return True
        limit = self.settings.max_concurrency
        if any(w.load < limit and w.conns is not None for w in live):
            return True
        return len(live) + self.forking < self.settings.max_workers

    async def adopt(self, client: Client, message: Adopt) -> bool:
        """Give connection ``client`` to a worker (``message`` says what the worker needs
        to know of it); returns whether it was taken. Waits only when the pool has no
        worker yet (a cold start); raises what ``acquire`` raises then."""
        worker, cold = await self.acquire()
        worker.inflight -= 1  # the connection, not a request, is what it now holds
        message.cold = message.cold or cold
        self._next_conn += 1
        if worker.adopt(client, self._next_conn, message):
            self.watch()
            self._arm_idle(worker)
            return True
        self.released(worker, count=False)
        return False

    def released_conn(self, worker: WorkerConn) -> None:
        """A connection left ``worker``: like a finished request."""
        self.released(worker, count=False)

    async def flush(self, timeout_s: float = 1.0) -> None:
        """Collect the usage of every worker that serves connections (bounded wait)."""
        self._flush_seq += 1
        seq = self._flush_seq
        workers = [w for w in self.workers if w.conns is not None and not w.closed]
        if workers:
            await asyncio.gather(*(w.flush(seq, timeout_s) for w in workers))

    def give_all(self) -> None:
        """Ask every worker for its connections back (the routes changed)."""
        for worker in self.workers:
            if worker.direct:
                worker.give()

    def _grow(self) -> None:
        self.forking += 1
        task = asyncio.get_running_loop().create_task(self._fork())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fork(self) -> None:
        try:
            zygote = await self._ensure_zygote()
            forked: ForkedWorker = await zygote.fork()
            pid = forked.pid
            try:
                slots = Slots(forked.slots_fd)
            finally:
                os.close(forked.slots_fd)
            worker = WorkerConn(self, pid, forked.conns, slots)
            forked.data.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: worker, sock=forked.data
            )
            worker.open_channel()
        except Exception as exc:
            self.forking -= 1
            _log.error("could not start a worker for %s: %s", self.name, exc)
            if not self._live() and self.forking == 0:
                failure = (
                    exc
                    if isinstance(exc, WorkerCrashed)
                    else WorkerCrashed(f"no worker of {self.name} could be started: {exc}")
                )
                self._wake(failure)
            return
        self.forking -= 1
        if self.closing:
            worker.close()
            return
        self.workers.append(worker)
        _log.info("worker %d of %s started (%d workers)", pid, self.name, len(self._live()))
        self._arm_idle(worker)
        # A new worker can take as many queued requests as it has slots.
        for _ in range(self.settings.max_concurrency):
            if not self.waiters:
                break
            self._wake()

    def released(self, worker: WorkerConn, *, count: bool = True) -> None:
        """A call (``count``) or a connection on ``worker`` ended: free its place, wake
        a waiter, maybe close a retiring worker."""
        if count:
            worker.inflight -= 1
        if worker.retiring:
            if worker.load == 0:
                worker.close()
        elif worker.inflight == 0:
            self._arm_idle(worker)
        if self.waiters:
            self._wake()

    def _arm_idle(self, worker: WorkerConn) -> None:
        if worker.inflight == 0 and worker.idle_handle is None:
            worker.idle_handle = asyncio.get_running_loop().call_later(
                self.settings.idle_s, self._idle_expired, worker
            )

    def _idle_expired(self, worker: WorkerConn) -> None:
        worker.idle_handle = None
        if worker.inflight or worker.retiring or worker.closed:
            return
        slots = worker.slots
        if worker.direct and slots is not None:
            # Connections held: idle only if none served a request for idle_s.
            progress = slots.progress
            if slots.busy or progress != worker.idle_progress:
                worker.idle_progress = progress
                self._arm_idle(worker)
                return
        if len(self._live()) <= self.settings.min_workers:
            return
        worker.retiring = True
        if worker.direct:
            worker.give()  # closed once they are all back (released_conn)
        else:
            worker.close()
        _log.info(
            "worker %d of %s reaped after %gs idle", worker.pid, self.name, self.settings.idle_s
        )
        if not self._live() and self.forking == 0:
            _log.info("pool of %s scaled to zero", self.name)
            if not self.settings.keep_zygote and self.zygote is not None:
                zygote, self.zygote = self.zygote, None
                self._spawn(self._release_cgroup(zygote.stop()))

    def retire(self, worker: WorkerConn, why: str) -> None:
        """Send ``worker`` no new requests; close it once its calls are done."""
        if worker.retiring:
            return
        worker.retiring = True
        if worker.idle_handle is not None:
            worker.idle_handle.cancel()
            worker.idle_handle = None
        _log.warning("worker %d of %s retired: %s", worker.pid, self.name, why)
        if worker.direct:
            worker.give()
        if worker.load == 0:
            worker.close()
        if self.waiters and not self._live() and self.forking == 0:
            self._grow()

    async def _limit(self, zygote: ZygoteClient) -> None:
        """Move a new zygote into the deployment's memory and pids cgroups, where the
        host has them: its workers are born in them (moving a process costs
        milliseconds here, far too much for each cold start)."""
        if zygote.pid is None:
            return
        cgroups = memory_cgroups()
        if cgroups is not None:
            await self._release_cgroup()
            limit = cgroup_limit_bytes(self.spec.memory_mb, self.settings.max_workers)
            self.cgroup = await asyncio.to_thread(cgroups.limit, self.name, zygote.pid, limit)
            self._ooms_seen = 0
        pids = pids_cgroups()
        if pids is not None and self.spec.max_tasks is not None:
            old, self.pids_cgroup = self.pids_cgroup, None
            if old is not None:
                await asyncio.to_thread(PidsCgroups.remove, old)
            self.pids_cgroup = await asyncio.to_thread(
                pids.limit, self.name, zygote.pid, self.spec.max_tasks
            )

    async def _release_cgroup(self, zygote_stopping: Awaitable[None] | None = None) -> None:
        """The zygote is gone (or ``zygote_stopping``): kill what is left in its cgroup
        and remove it. The cgroup is taken at once, so a zygote started meanwhile keeps
        its own."""
        cgroup, self.cgroup = self.cgroup, None
        if zygote_stopping is not None:
            await zygote_stopping
        if cgroup is not None:
            cgroup.kill_all()
            await asyncio.to_thread(cgroup.remove)
        pids, self.pids_cgroup = self.pids_cgroup, None
        if pids is not None:
            await asyncio.to_thread(PidsCgroups.remove, pids)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lost(self, worker: WorkerConn) -> None:
        """``worker``'s connection closed (exit, crash, kill): forget it."""
        if worker.idle_handle is not None:
            worker.idle_handle.cancel()
            worker.idle_handle = None
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)
        if not worker.retiring and not self.closing:
            _log.warning("worker %d of %s died", worker.pid, self.name)
        if self.waiters and not self._live() and self.forking == 0 and not self.closing:
            self._grow()

    # -- watchdog ---------------------------------------------------------------------------

    def watch(self) -> None:
        """Make sure the CPU watchdog runs while requests are in flight."""
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self._watch_s, self._check)

    def _check(self) -> None:
        self._watchdog = None
        busy = False
        limit_s = self.spec.cpu_ms / 1000
        first_s = max(self.spec.cpu_ms, self.spec.first_cpu_ms) / 1000
        for worker in list(self.workers):
            slots = worker.slots
            direct_busy = bool(worker.direct) and slots is not None and slots.busy > 0
            if (not worker.calls and not direct_busy) or worker.closed:
                worker.watch_cpu = None
                worker.stuck_cpu = 0.0
                continue
            busy = True
            now = worker.cpu_seconds()
            if now is None:
                continue
            # Progress: frames from the proxied requests, finished direct requests.
            frames = worker.frames + (slots.progress if slots is not None else 0)
            if worker.watch_cpu is not None and frames == worker.watch_frames:
                # No frame since the last look, yet CPU was burnt: one step is running
                # without yielding. The worker's own timer should have stopped it
                # within cpu_ms; if it has not by twice that, it never will.
                worker.stuck_cpu += now - worker.watch_cpu
            else:
                worker.stuck_cpu = 0.0
            worker.watch_cpu = now
            worker.watch_frames = frames
            # A worker's first request has the larger first-request budget.
            fresh = worker.completed == 0 and (slots is None or slots.progress == 0)
            if (
                worker.stuck_cpu > 2 * (first_s if fresh else limit_s)
                and not worker.watchdog_killed
            ):
                worker.watchdog_killed = True
                culprit = (
                    min(worker.calls.values(), key=lambda c: c.started) if worker.calls else None
                )
                worker.killed_for_cpu = culprit
                worker.retiring = True
                _log.warning(
                    "request %s: worker %d of %s burnt %.0f ms of CPU without yielding; killing it",
                    culprit.request_id if culprit is not None else "(on a connection)",
                    worker.pid,
                    self.name,
                    worker.stuck_cpu * 1000,
                )
                worker.kill()
        if busy or any(w.direct for w in self.workers):
            # A held connection may start a request at any time: keep looking.
            self.watch()

    # -- life cycle -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot: zygote pid, workers, queue length, cold starts."""
        zygote = self.zygote
        return {
            "zygote": zygote.pid if zygote is not None and zygote.alive else None,
            "workers": [
                {
                    "pid": w.pid,
                    "inflight": w.inflight + (w.slots.busy if w.slots is not None else 0),
                    "connections": len(w.direct),
                    "retiring": w.retiring,
                }
                for w in self.workers
                if not w.closed
            ],
            "forking": self.forking,
            "queued": len(self.waiters),
            "cold_starts": self.cold_starts,
        }

    async def stop(self, timeout_s: float) -> None:
        """Close every worker (they finish deferred work), then stop the zygote."""
        self.closing = True
        self._wake(WorkerCrashed(f"{self.name} is shutting down"))
        if self._watchdog is not None:
            self._watchdog.cancel()
        for worker in list(self.workers):
            worker.retiring = True
            if worker.idle_handle is not None:
                worker.idle_handle.cancel()
            if worker.direct:
                worker.give()
        # Connections go back to the node as their requests finish (bounded).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while any(w.direct and not w.closed for w in self.workers):
                    await asyncio.sleep(0.01)
        for worker in list(self.workers):
            worker.close()
        zygote = self.zygote
        if zygote is not None and zygote.pid is not None:
            # Give the workers up to timeout_s to exit on their own (the zygote kills
            # whatever is left when it stops).
            pids = {w.pid for w in self.workers}
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    while pids and zygote.alive:
                        pids = {p for p in pids if _alive(p)}
                        if pids:
                            await asyncio.sleep(0.02)
            await zygote.stop()
        self.zygote = None
        await self._release_cgroup()
        for task in list(self._tasks):
            task.cancel()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rpartition(b")")[2].split()[0]
    except OSError:
        return False
    return state != b"Z"
