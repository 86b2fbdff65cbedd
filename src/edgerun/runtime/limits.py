"""Per-request limits: the ``RuntimeLimits`` values and the ``LimitEnforcer`` interface.

A ``LimitEnforcer`` runs one request's work under a deployment's limits, measures what
it used (``Usage``) and raises ``edgerun.errors.LimitExceeded(kind)`` when the request
goes over. ``InProcessLimits`` is the implementation for ``mode = "inprocess"``: it can
stop a request that waits too long, but it cannot stop one that computes too long (see
its docstring); the isolated mode enforces all three limits from outside the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from edgerun.clock import Clock, SystemClock
from edgerun.errors import LimitExceeded

__all__ = ["InProcessLimits", "LimitEnforcer", "RuntimeLimits", "Usage"]

T = TypeVar("T")

# Looked up once: these run twice per request.
_thread_time = time.thread_time
_current_task = asyncio.current_task


@dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """A deployment's per-request limits (``[limits]`` in edgerun.toml).

    ``cpu_ms``: CPU time one request may use; ``wall_ms``: time from the request's
    start until its response is produced, and also the budget for its ``wait_until``
    work; ``memory_mb``: memory of the worker running it. All must be positive integers
    (``ValueError`` quoting the bad value otherwise).
    """

    cpu_ms: int = 50
    wall_ms: int = 30_000
    memory_mb: int = 128

    def __post_init__(self) -> None:
        for name in ("cpu_ms", "wall_ms", "memory_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"limits.{name} must be a positive integer, got {value!r}")

    @property
    def wall_s(self) -> float:
        """``wall_ms`` in seconds."""
        return self.wall_ms / 1000


@dataclass(slots=True)
class Usage:
    """What one request used: filled in by ``LimitEnforcer.run``.

    ``started`` is the enforcer's monotonic clock reading at the request's start (the
    origin of the wall budget); ``wall_ms`` and ``cpu_ms`` are measured, not limits.
    """

    started: float
    wall_ms: float = 0.0
    cpu_ms: float = 0.0


class LimitEnforcer(Protocol):
    """Runs a request's work under its limits; one implementation per isolation mode."""

    @property
    def limits(self) -> RuntimeLimits:
        """The limits being enforced."""
        ...

    def begin(self) -> Usage:
        """Start metering a request (call once, when it arrives)."""
        ...

    async def run(self, usage: Usage, work: Awaitable[T]) -> T:
        """Await ``work`` within the limits, adding what it used to ``usage``.

        Raises ``LimitExceeded(kind)`` when the request goes over a limit (the work
        is cancelled first); any exception of ``work`` itself propagates unchanged.
        """
        ...

    def remaining(self, usage: Usage) -> float:
        """Seconds of the wall budget left for this request (0 when spent)."""
        ...


class InProcessLimits:
    """``LimitEnforcer`` for handlers running on the node's own event loop.

    Wall time is enforced: the handler is cancelled at ``wall_ms`` after the request
    started and ``LimitExceeded("wall")`` is raised (HTTP 503 ``exceeded_wall``).

    CPU time is measured, not enforced: a coroutine that computes without awaiting
    cannot be interrupted from the same thread, so ``usage.cpu_ms`` is reported and
    nothing is stopped. The figure is the thread CPU time between the handler's start
    and its return, so it also counts other requests' work interleaved on the loop
    while this one awaited; treat it as an upper bound. Memory is not per-request
    measurable in a shared process and is not enforced either. Untrusted code belongs
    in the isolated mode, which enforces all three from outside the worker.
    """

    __slots__ = (
        "_clock",
        "_expired",
        "_inflight",
        "_limits",
        "_loop",
        "_monotonic",
        "_timer",
        "_timer_at",
        "_wall_s",
    )

    def __init__(self, limits: RuntimeLimits, *, clock: Clock | None = None) -> None:
        self._limits = limits
        self._clock: Clock = clock or SystemClock()
        # Read three times per request: skip SystemClock's Python-level wrapper.
        self._monotonic: Callable[[], float] = (
            time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic
        )
        self._wall_s = limits.wall_s
        # Requests being timed, in arrival order. Every request of a deployment has the
        # same budget, so arrival order is deadline order: one loop timer for the
        # earliest deadline serves them all, instead of a timer per request (the
        # per-request asyncio.timeout() cost several microseconds on the hot path).
        self._inflight: dict[asyncio.Task[Any], float] = {}  # task -> loop-time deadline
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled by us, not yet handled
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def limits(self) -> RuntimeLimits:
        """The limits being enforced."""
        return self._limits

    def begin(self) -> Usage:
        """Start metering a request now."""
        return Usage(self._monotonic())

    def remaining(self, usage: Usage) -> float:
        """Seconds of the wall budget left, measured on the injected clock."""
        return max(0.0, usage.started + self._wall_s - self._monotonic())

    async def run(self, usage: Usage, work: Awaitable[T]) -> T:
        """Await ``work``; cancel it and raise ``LimitExceeded("wall")`` past ``wall_ms``.

        The work runs in the calling task (no extra task), which is the one cancelled
        at the deadline. A ``TimeoutError`` raised by the handler itself (its own
        timeouts) propagates unchanged, and so does a cancellation from elsewhere.
        """
        cpu_start = _thread_time()
        task = _current_task()
        if task is None:  # not inside an asyncio task: nothing could be cancelled
            raise RuntimeError("InProcessLimits.run() must be awaited inside an asyncio task")
        loop = task.get_loop()
        at = loop.time() + self._wall_s - (self._monotonic() - usage.started)
        self._inflight[task] = at
        if self._timer is None or at < self._timer_at or self._loop is not loop:
            self._schedule(loop, at)
        already_cancelling = task.cancelling()
        try:
            return await work
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() > already_cancelling:
                    raise  # cancelled from elsewhere as well: that wins
                raise LimitExceeded(
                    "wall",
                    f"the request ran longer than its wall time limit "
                    f"(wall_ms = {self._limits.wall_ms}); make it faster or raise "
                    "[limits] wall_ms in edgerun.toml",
                ) from None
            raise
        finally:
            self._inflight.pop(task, None)
            if self._expired and task in self._expired:
                # The handler swallowed our cancellation: undo it, or the task would
                # stay marked as cancelling for the rest of its life.
                self._expired.discard(task)
                task.uncancel()
            usage.cpu_ms += (_thread_time() - cpu_start) * 1000
            usage.wall_ms = (self._monotonic() - usage.started) * 1000

    def _schedule(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._timer_at = at
        self._timer = loop.call_at(at, self._expire)

    def _expire(self) -> None:
        """Timer callback: cancel every request past its deadline, re-arm for the next."""
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for task, at in list(self._inflight.items()):
            if at > now:
                self._schedule(loop, at)
                return
            del self._inflight[task]
            if not task.done():
                self._expired.add(task)
                task.cancel()
