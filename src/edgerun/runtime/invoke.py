"""Run one request: the per-request ``Context``, the ``Invoker`` interface, in-process mode.

The node talks to a deployment's code through one small interface, ``Invoker``::

    invoker = InProcessInvoker(entry, env, limits)
    await invoker.start()                        # once: ASGI lifespan startup
    inv = await invoker.invoke(request, request_id=rid)
    try:
        ...write inv.response to the client (streaming its body if it streams)...
    finally:
        await inv.finish()                       # wait_until work, bounded; never raises
    await invoker.stop()                         # once: drain, lifespan shutdown

``invoke`` never raises for a failing handler: exceptions, limit violations and bad
return values become a JSON error response (``edgerun.errors.to_http``) and an
``Outcome``; only cancellation of ``invoke`` itself propagates. The isolated mode
implements the same interface with worker processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, runtime_checkable

from edgerun.clock import Clock
from edgerun.errors import HandlerError, LimitExceeded, NotFound, RequestError, to_http
from edgerun.http import Request, Response
from edgerun.runtime.asgi import AsgiHandler, AsgiLifespan
from edgerun.runtime.env import Env
from edgerun.runtime.limits import InProcessLimits, RuntimeLimits, Usage
from edgerun.runtime.loader import Entry
from edgerun.runtime.outcome import Outcome

__all__ = ["REQUEST_ID_HEADER", "Context", "InProcessInvoker", "Invocation", "Invoker"]

_log = logging.getLogger("edgerun.runtime")

REQUEST_ID_HEADER = "x-edgerun-request-id"

# wait_until work registered after its request was drained: nobody awaits it any more,
# so it is kept alive here (the loop only holds weak references to tasks).
_detached: set[asyncio.Future[Any]] = set()


class Context:
    """Per-request context handed to the handler as ``ctx``.

    ``request_id`` identifies the request in logs and error bodies; ``region`` is the
    serving region's config and ``span`` the request's trace span (None until those
    subsystems are wired in). ``wait_until(awaitable)`` keeps work running after the
    response is sent.
    """

    __slots__ = (
        "_error",
        "_finished",
        "_registry",
        "_sent_callbacks",
        "_tasks",
        "region",
        "request_id",
        "span",
    )

    def __init__(self, request_id: str = "", *, region: Any = None, span: Any = None) -> None:
        self.request_id = request_id
        self.region = region
        self.span = span
        # Allocated on first use: most requests register nothing.
        self._tasks: list[asyncio.Future[Any]] | None = None
        self._sent_callbacks: list[Callable[[], None]] | None = None
        self._registry: set[asyncio.Future[Any]] | None = None
        self._error: BaseException | None = None
        self._finished = False

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Run ``awaitable`` (a coroutine, task or future) beyond the response.

        It is scheduled now and awaited after the response has been sent, within the
        request's wall budget (``wall_ms`` from the request's start); what is still
        running then is cancelled and logged. A failure is logged on
        ``edgerun.runtime`` with the request id, never raised to the client. Raises
        ``TypeError`` for anything that is not awaitable.
        """
        try:
            task = asyncio.ensure_future(awaitable)
        except TypeError:
            raise TypeError(
                "ctx.wait_until() takes a coroutine, task or future, "
                f"not {type(awaitable).__name__} (did you forget to call the function?)"
            ) from None
        task.add_done_callback(self._task_done)
        if self._finished:
            _detached.add(task)
            task.add_done_callback(_detached.discard)
            return
        if self._tasks is None:
            self._tasks = []
        self._tasks.append(task)
        registry = self._registry
        if registry is not None:
            registry.add(task)
            task.add_done_callback(registry.discard)

    def pass_through_on_exception(self) -> None:
        """Accepted for Workers compatibility; does nothing.

        In Cloudflare Workers it sends the request on to the origin server when the
        handler raises. An edgerun deployment has no origin behind it, so a handler
        exception is always answered with edgerun's JSON error response.
        """

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        # Logged as soon as it fails (not at the drain), so a failure is reported even
        # if the node never gets to finish() this request.
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("request %s: a wait_until task failed", self.request_id, exc_info=exc)

    def _on_response_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the node is done sending the response (runtime only)."""
        if self._sent_callbacks is None:
            self._sent_callbacks = []
        self._sent_callbacks.append(callback)

    def _record_error(self, exc: BaseException) -> None:
        """Note a failure that did not stop the response (runtime only: ASGI apps)."""
        if self._error is None:
            self._error = exc

    async def _finish(self, remaining: Callable[[], float], wall_ms: int) -> None:
        """After the response: run sent-callbacks, await wait_until work until the deadline."""
        callbacks, self._sent_callbacks = self._sent_callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                _log.exception("request %s: a response-sent callback failed", self.request_id)
        # Work registered while draining (a wait_until task calling wait_until) lands in
        # a fresh list and is drained in the next round, against the same deadline.
        while self._tasks:
            tasks, self._tasks = self._tasks, None
            _, pending = await asyncio.wait(tasks, timeout=remaining())
            if pending:
                for task in pending:
                    task.cancel()
                _log.warning(
                    "request %s: %d wait_until task(s) were still running at the end of "
                    "the wall time budget (wall_ms = %d from the request start) and were "
                    "cancelled",
                    self.request_id,
                    len(pending),
                    wall_ms,
                )
        self._finished = True

    def __repr__(self) -> str:
        return f"<Context request_id={self.request_id!r}>"


@dataclass(slots=True)
class Invocation:
    """The result of ``Invoker.invoke``: what to send, and how the request ended.

    ``response`` is sent as-is (its body may stream); ``outcome`` and ``error`` (the
    exception behind a non-ok outcome, else None) feed logs, metrics and metering;
    ``usage`` is what the request consumed; ``cold_start`` is true when the request had
    to wait for a worker to be forked for a deployment scaled to zero. After the
    response has been written (or the client has gone), the node must
    ``await finish()``: that tells a still streaming ASGI app the response is over and
    awaits the request's ``wait_until`` work within its wall budget. ``finish`` never
    raises (failures are logged) except for cancellation, may take up to the rest of
    the wall budget, and runs only once.
    """

    response: Response
    outcome: Outcome
    error: BaseException | None
    usage: Usage
    request_id: str
    after: Callable[[], Awaitable[None]] | None = None
    cold_start: bool = False

    async def finish(self) -> None:
        """Run the after-response step (see the class docstring); idempotent."""
        after = self.after
        if after is not None:
            self.after = None
            await after()


@runtime_checkable
class Invoker(Protocol):
    """How the node runs a deployment's requests, whatever the isolation mode."""

    async def start(self) -> None:
        """Prepare to serve (ASGI lifespan startup...); raises ``EntrypointError`` on failure."""
        ...

    async def invoke(self, request: Request, *, request_id: str) -> Invocation:
        """Run the handler for one request; errors become an error response, not raises."""
        ...

    async def stop(self) -> None:
        """Drain pending wait_until work (bounded), then shut down (lifespan)."""
        ...


class InProcessInvoker:
    """``Invoker`` running the handler on the current event loop (``mode = "inprocess"``).

    Fast, for trusted single-tenant code: wall time is enforced by cancellation, CPU
    time only measured and memory not enforced (see ``InProcessLimits``). ``debug``
    adds exception details and tracebacks to error bodies (dev mode only). ``region``
    is passed to each request's ``Context``.
    """

    def __init__(
        self,
        entry: Entry,
        env: Env,
        limits: RuntimeLimits,
        *,
        clock: Clock | None = None,
        debug: bool = False,
        region: Any = None,
    ) -> None:
        self.entry = entry
        self.env = env
        self.limits = limits
        self._handler = entry.handler
        self._enforcer = InProcessLimits(limits, clock=clock)
        self._debug = debug
        self._region = region
        self._lifespan: AsgiLifespan | None = None
        # Every unfinished wait_until task of every request, for stop().
        self._pending: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        """Run the ASGI lifespan startup, if the entry is an ASGI app (once per worker)."""
        if isinstance(self._handler, AsgiHandler) and self._lifespan is None:
            lifespan = self._handler.lifespan()
            await lifespan.startup()
            self._lifespan = lifespan  # only a started lifespan is shut down by stop()

    async def invoke(self, request: Request, *, request_id: str) -> Invocation:
        """Run the handler under the limits; see ``Invoker`` and ``Invocation``."""
        ctx = Context(request_id, region=self._region)
        ctx._registry = self._pending
        usage = self._enforcer.begin()
        after = partial(self._after, ctx, usage)
        try:
            response = await self._enforcer.run(usage, self._handler(request, self.env, ctx))
        except asyncio.CancelledError:
            # The node gave up on the request (client gone, shutdown); its wait_until
            # work is still drained within its budget, in the background.
            drain = asyncio.ensure_future(after())
            self._pending.add(drain)
            drain.add_done_callback(self._pending.discard)
            raise
        except (Exception, SystemExit) as exc:
            # SystemExit too: a handler calling sys.exit() must not stop the node.
            return self._failed(exc, request_id, usage, after)
        if not isinstance(response, Response):
            got = "None" if response is None else type(response).__name__
            wrong = HandlerError(f"fetch returned {got}; return an edgerun.Response")
            return self._failed(wrong, request_id, usage, after, traceback=False)
        error = ctx._error
        outcome = Outcome.OK if error is None else Outcome.EXCEPTION
        return Invocation(response, outcome, error, usage, request_id, after)

    async def stop(self) -> None:
        """Wait (up to ``wall_ms``) for pending wait_until work, then lifespan shutdown."""
        if self._pending:
            _, pending = await asyncio.wait(set(self._pending), timeout=self.limits.wall_s)
            for task in pending:
                task.cancel()
            if pending:
                _log.warning(
                    "stopping: cancelled %d wait_until task(s) still running after %d ms",
                    len(pending),
                    self.limits.wall_ms,
                )
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            try:
                async with asyncio.timeout(self.limits.wall_s):
                    await lifespan.shutdown()
            except TimeoutError:
                _log.error(
                    "the ASGI app's lifespan shutdown did not finish within %d ms; cancelled",
                    self.limits.wall_ms,
                )

    async def _after(self, ctx: Context, usage: Usage) -> None:
        if ctx._tasks is None and ctx._sent_callbacks is None:
            ctx._finished = True  # the usual case: nothing was deferred
            return
        await ctx._finish(partial(self._enforcer.remaining, usage), self.limits.wall_ms)

    def _failed(
        self,
        exc: BaseException,
        request_id: str,
        usage: Usage,
        after: Callable[[], Awaitable[None]],
        *,
        traceback: bool = True,
    ) -> Invocation:
        """The error response and invocation for a failed request, logged by severity."""
        if isinstance(exc, RequestError | NotFound):
            _log.info("request %s: %s (%s)", request_id, exc.message, exc.code)
        elif isinstance(exc, LimitExceeded):
            _log.warning("request %s: %s", request_id, exc.message)
        elif not traceback:
            _log.error("request %s: %s", request_id, exc)
        else:
            _log.error("request %s: the handler raised", request_id, exc_info=exc)
        status, body = to_http(exc, request_id=request_id, debug=self._debug)
        response = Response.json(body, status=status, headers={REQUEST_ID_HEADER: request_id})
        return Invocation(response, Outcome.of(exc), exc, usage, request_id, after)
