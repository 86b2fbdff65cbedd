"""Per-request CPU metering and pre-emption inside a worker process.

Several requests share one worker's event loop, so process CPU time cannot be split
between them after the fact. Instead every task a request creates (its handler, an
ASGI app's task, its ``wait_until`` work) runs wrapped in ``Metered``: each step of the
task (one ``send``/``throw`` into its coroutine, i.e. the code between two awaits) is
timed with ``time.thread_time()`` and charged to the request's ``Meter``.

A step that never yields cannot be stopped from the loop. ``ITIMER_PROF`` (user +
system CPU of this process) ticks every ``tick_s`` of CPU the worker burns, a fraction
of the budget; its ``SIGPROF`` handler checks the running step's meter and raises
``CpuExceeded`` (a ``BaseException``, so ordinary ``except Exception`` blocks do not
swallow it) in the step once the request is over budget -- and again at every later
tick, so code that catches it once is interrupted again. The timer is armed once, not
per step: a system call is dear here, and an idle worker burns no CPU, so gets no
ticks. Code that swallows ``BaseException`` or loops inside C (where Python signal
handlers never run) is caught by the node's watchdog, which kills the whole worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["CpuExceeded", "Meter", "Metered", "current_meter", "disarm", "install", "tick_for"]

T = TypeVar("T")

_thread_time = time.thread_time
_perf_counter = time.perf_counter
_CoroutineType = types.CoroutineType
# The tick is a fifth of the budget, between 1 and 10 ms of CPU: a request is stopped
# within budget + one tick.
_TICK_MIN_S = 0.001
_TICK_MAX_S = 0.01

current_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar(
    "edgerun_meter", default=None
)
"""The meter of the request whose code is running (tasks inherit it from their creator)."""

# True only while a metered step runs: a signal arriving between steps (event-loop
# code, another deployment's bookkeeping) must not raise anywhere.
_armed = False
# The meter whose step is running and when that step started (for ``Meter.used_s``).
_running: Meter | None = None
_step_started = 0.0
_step_wall = 0.0  # perf_counter() at the start of the running step


class CpuExceeded(BaseException):
    """Raised inside a request's code when it has used up its CPU budget."""


class Meter:
    """One request's CPU account: ``cpu_s`` used of ``budget_s``.

    ``exceeded`` is set once the budget is spent (the request must fail with
    ``exceeded_cpu``); ``memory`` once a ``MemoryError`` passed through one of its steps.
    """

    __slots__ = ("budget_s", "cpu_s", "exceeded", "memory")

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.cpu_s = 0.0
        self.exceeded = False
        self.memory = False

    def over(self) -> bool:
        """Whether the request is over budget now, the running step included.

        Cheap in the usual case: a step's CPU time is at most its wall time, so the
        thread's CPU clock (a system call) is read only when the wall time says the
        budget may be spent.
        """
        if self.exceeded:
            return True
        if _running is not self:
            return self.cpu_s > self.budget_s
        if self.cpu_s + (_perf_counter() - _step_wall) <= self.budget_s:
            return False
        if self.cpu_s + _thread_time() - _step_started > self.budget_s:
            self.exceeded = True
            return True
        return False

    def used_s(self) -> float:
        """CPU seconds used so far, including the step running now (if it is ours)."""
        if _running is self:
            return self.cpu_s + _thread_time() - _step_started
        return self.cpu_s


class Metered(Coroutine[Any, Any, T]):
    """A coroutine whose every step is charged to ``meter`` (see the module docstring).

    Once the meter is exceeded, the next step throws ``CpuExceeded`` into the
    coroutine instead of resuming it, so sibling tasks of a failed request stop too.
    """

    __slots__ = ("_coro", "_meter")

    def __init__(self, coro: Coroutine[Any, Any, T], meter: Meter) -> None:
        self._coro = coro
        self._meter = meter

    @classmethod
    def wrap(cls, awaitable: Awaitable[T], meter: Meter) -> Metered[T]:
        """Meter any awaitable (a coroutine as is, anything else through one)."""
        if type(awaitable) is _CoroutineType or isinstance(awaitable, Coroutine):
            return cls(awaitable, meter)  # type: ignore[arg-type]
        return cls(_await(awaitable), meter)

    def _step(self, fn: Callable[..., Any], arg: Any) -> Any:
        global _armed, _running, _step_started, _step_wall
        meter = self._meter
        if meter.exceeded:
            fn, arg = self._coro.throw, CpuExceeded()
        outer, outer_started, outer_wall = _running, _step_started, _step_wall
        _running = meter
        _step_wall = _perf_counter()
        start = _step_started = _thread_time()
        end = 0.0
        _armed = True
        try:
            return fn(arg)
        except StopIteration:
            # The task is over (its answer is out): an overrun in this last step is
            # recorded below, raising it would only leave a failed task behind.
            end = _thread_time()
            raise
        except CpuExceeded:
            meter.exceeded = True
            raise
        except MemoryError:
            meter.memory = True
            raise
        finally:
            _armed = False
            _running, _step_started, _step_wall = outer, outer_started, outer_wall
            meter.cpu_s += (end or _thread_time()) - start
            if meter.cpu_s > meter.budget_s:
                meter.exceeded = True

    def send(self, value: Any) -> Any:
        """Resume the coroutine with ``value``, metered."""
        return self._step(self._coro.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:  # type: ignore[override]
        """Throw an exception into the coroutine, metered."""
        exc = typ if val is None else val
        return self._step(self._coro.throw, exc)

    def close(self) -> None:
        """Close the wrapped coroutine."""
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self  # type: ignore[return-value]

    def __iter__(self) -> Metered[T]:
        return self

    def __next__(self) -> Any:
        # What the event loop's task calls for each step (one frame less than send).
        return self._step(self._coro.send, None)

    @property
    def cr_frame(self) -> Any:
        """The wrapped coroutine's frame (asyncio's task repr and debugging read it)."""
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_code(self) -> Any:
        """The wrapped coroutine's code object (for ``Task.get_coro`` users and reprs)."""
        return getattr(self._coro, "cr_code", None)

    def __repr__(self) -> str:
        return f"<Metered {self._coro!r}>"


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def disarm() -> None:
    """Stop checking the running step (its request already failed).

    The error response is built inside the step that was interrupted; a later tick
    must not interrupt that too.
    """
    global _armed
    _armed = False


def _on_signal(signum: int, frame: Any) -> None:
    meter = _running
    if (
        _armed
        and meter is not None
        and (meter.exceeded or meter.cpu_s + _thread_time() - _step_started > meter.budget_s)
    ):
        raise CpuExceeded()


def _task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    meter = current_meter.get() if context is None else context.get(current_meter)
    if meter is not None:
        coro = Metered(coro, meter)
    return asyncio.Task(coro, loop=loop, context=context)


def tick_for(budget_s: float) -> float:
    """The CPU tick for requests with ``budget_s`` of CPU each."""
    return min(_TICK_MAX_S, max(_TICK_MIN_S, budget_s / 5))


def install(loop: asyncio.AbstractEventLoop, budget_s: float) -> None:
    """Meter every task created under a ``current_meter`` on ``loop``; start the tick
    for requests of ``budget_s`` CPU seconds."""
    signal.signal(signal.SIGPROF, _on_signal)
    tick = tick_for(budget_s)
    signal.setitimer(signal.ITIMER_PROF, tick, tick)
    loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
