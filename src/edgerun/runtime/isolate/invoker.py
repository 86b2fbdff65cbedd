"""``IsolatedInvoker``: the ``Invoker`` of ``mode = "isolated"`` (DESIGN §6).

Each request goes to a worker process of the deployment's ``Pool`` over the framed
protocol; the node enforces the wall limit (503 ``exceeded_wall``, the worker is
cancelled and retired), the worker enforces CPU and memory (503 ``exceeded_cpu`` /
``exceeded_memory``), and a worker that dies answers its requests 502
``worker_crashed``. ``invoke`` never raises for any of these: like
``InProcessInvoker`` it returns an ``Invocation`` with an error response and the
``Outcome``; ``Invocation.finish`` waits for the worker's final accounting (CPU and
wall milliseconds) of a streamed response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from edgerun.clock import Clock, SystemClock
from edgerun.errors import HandlerError, LimitExceeded, WorkerCrashed, WorkerError, to_http
from edgerun.http import Headers, Request, Response
from edgerun.runtime.invoke import REQUEST_ID_HEADER, Invocation
from edgerun.runtime.isolate.handoff import Client
from edgerun.runtime.isolate.pool import Call, Pool, PoolSettings, UsageSink
from edgerun.runtime.isolate.protocol import Adopt, Body, Cancel, Head, Spec, Start, geo_fields
from edgerun.runtime.limits import Usage
from edgerun.runtime.outcome import Outcome

__all__ = ["IsolatedInvoker"]

_log = logging.getLogger("edgerun.isolate")

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods whose request is run again when its worker dies before answering."""


class IsolatedInvoker:
    """Runs a deployment's requests in worker processes forked from its zygote.

    ``spec`` describes the deployment (code, env values, limits, identity);
    ``command`` starts a zygote program (``[python, "-m", "edgerun.node.worker_main"]``
    from the node); ``settings`` are the autoscaling knobs. ``start()`` raises
    ``EntrypointError`` when the code cannot be loaded.
    """

    def __init__(
        self,
        spec: Spec,
        settings: PoolSettings,
        command: Sequence[str],
        *,
        clock: Clock | None = None,
        debug: bool = False,
    ) -> None:
        self.spec = spec
        self.pool = Pool(spec, settings, command)
        self._clock: Clock = clock or SystemClock()
        self._debug = debug
        self._wall_s = spec.wall_ms / 1000
        self._retrying = asyncio.Lock()

    async def start(self) -> None:
        """Start the zygote (the entry module is imported there) and ``min_workers``."""
        await self.pool.start()

    async def stop(self) -> None:
        """Close the workers (each drains its ``wait_until`` work), stop the zygote."""
        await self.pool.stop(self._wall_s + 1.0)

    def stats(self) -> dict[str, Any]:
        """The pool's state for ``/__edgerun/pools``."""
        return self.pool.stats()

    async def adopt(self, client: Client, message: Adopt, usage: UsageSink) -> bool:
        """Hand a client connection to a worker (``handoff``); False: serve it here.

        ``usage`` receives the usage of the requests workers serve directly.
        """
        self.pool.usage_sink = usage
        taken = await self.pool.adopt(client, message)
        if taken and message.cold:
            _log.info("connection handed to a new worker: cold start of %s", self.spec.name)
        return taken

    async def flush_usage(self) -> None:
        """Collect the usage workers counted for directly served requests."""
        await self.pool.flush()

    def give_all(self) -> None:
        """Take every handed-off connection back (the node's routes changed)."""
        self.pool.give_all()

    async def invoke(self, request: Request, *, request_id: str) -> Invocation:
        """Run one request in a worker; see ``Invoker`` and the module docstring.

        A request the node holds whole (its body fully received), with an idempotent
        method, whose worker died before a response head came back is run once more
        on another worker; a second crash answers 502 ``worker_crashed``.
        """
        return await self._invoke(request, request_id, Usage(self._clock.monotonic()), False)

    async def _invoke(
        self, request: Request, request_id: str, usage: Usage, retried: bool
    ) -> Invocation:
        try:
            worker, cold = await self.pool.acquire()
        except WorkerError as exc:
            return self._failed(exc, request_id, usage)
        if cold:
            _log.info("request %s: cold start of %s", request_id, self.spec.name)
        call = Call(worker, worker.new_id(), request_id, usage.started)
        loop = worker.loop
        call.timer = loop.call_later(self._wall_s, self._wall_expired, call)
        body = request._body
        fixed = body.fixed
        geo = request.geo
        start = Start(
            call.id,
            request.method,
            request.url,
            request.headers._items,
            request.ip,
            geo_fields(geo),
            request_id,
            request.headers.get("traceparent") or "",
            fixed if fixed is not None else b"",
            fixed is None,
        )
        worker.start([start], call)
        self.pool.watch()
        pump = None
        if fixed is None:
            pump = asyncio.ensure_future(_pump(request, call))
        try:
            head = await call.head
        except asyncio.CancelledError:
            if not call.finished.done():
                worker.cancel(call)
            raise
        except WorkerError as exc:
            if (
                not retried
                and type(exc) is WorkerCrashed
                and fixed is not None
                and request.method in _IDEMPOTENT
            ):
                # Most often the worker died of a neighbour's request: nothing of this
                # one reached the client and running it again changes nothing, so the
                # client gets its answer. Once only: if this request is the cause, the
                # second crash answers it.
                _log.info("request %s: worker crashed before answering; retrying", request_id)
                # One retry at a time: the culprit is among the retried requests, and
                # retried together they would all land on the next worker and die with
                # it again. Serialised, each innocent one runs without the culprit.
                async with self._retrying:
                    return await self._invoke(request, request_id, usage, True)
            return self._failed(exc, request_id, usage, cold=cold)
        finally:
            if pump is not None and (call.finished.done() or not call.head.done()):
                pump.cancel()
        response = self._response(head, call)
        invocation = Invocation(response, Outcome.OK, None, usage, request_id, None, cold)
        if call.finished.done():
            self._settle(invocation, call)
        else:

            async def after() -> None:
                # A body never read (the client left first) must not hold back the
                # worker's other responses (see WorkerConn.unqueue).
                worker.unqueue(call, call.queued)
                await asyncio.wait([call.finished], timeout=self._wall_s)
                self._settle(invocation, call)

            invocation.after = after
        return invocation

    def _response(self, head: Head, call: Call) -> Response:
        headers = Headers(head.headers)  # validated: the worker is not trusted
        if not head.more:
            return Response(head.body, status=head.status, headers=headers)
        return Response(call.body(), status=head.status, headers=headers)

    def _settle(self, invocation: Invocation, call: Call) -> None:
        """Copy the worker's final accounting (or the failure) into ``invocation``."""
        usage = invocation.usage
        done = call.done
        if done is not None:
            usage.cpu_ms = done.cpu_ms
            usage.wall_ms = done.wall_ms
            outcome = Outcome(done.outcome)
            invocation.outcome = outcome
            if outcome is Outcome.WORKER_CRASHED or outcome.value.startswith("exceeded_"):
                invocation.error = outcome.error(done.message)
            elif outcome is not Outcome.OK:
                # The handler's exception stayed in the worker; its code and message
                # are what crossed the process boundary.
                remote = HandlerError(done.message)
                remote.code = done.code or "internal"
                invocation.error = remote
            return
        usage.wall_ms = (self._clock.monotonic() - usage.started) * 1000
        if call.finished.done():
            exc = call.finished.result()
            if exc is not None:
                invocation.outcome = Outcome.of(exc)
                invocation.error = exc

    def _wall_expired(self, call: Call) -> None:
        if call.finished.done():
            return
        worker = call.worker
        error = LimitExceeded(
            "wall",
            f"the request ran longer than its wall time limit (wall_ms = {self.spec.wall_ms}); "
            "make it faster or raise [limits] wall_ms in edgerun.toml",
        )
        _log.warning(
            "request %s: %s (worker %d of %s)",
            call.request_id,
            error.message,
            worker.pid,
            self.spec.name,
        )
        worker.send(Cancel(call.id))
        worker.finish_call(call, error)
        self.pool.retire(worker, f"request {call.request_id} exceeded its wall time")

    def _failed(
        self, exc: WorkerError, request_id: str, usage: Usage, *, cold: bool = False
    ) -> Invocation:
        if isinstance(exc, LimitExceeded | WorkerCrashed):
            pass  # already logged where it was detected, with the worker's pid
        else:
            _log.warning("request %s: %s", request_id, exc.message)
        usage.wall_ms = (self._clock.monotonic() - usage.started) * 1000
        status, body = to_http(exc, request_id=request_id, debug=self._debug)
        response = Response.json(body, status=status, headers={REQUEST_ID_HEADER: request_id})
        return Invocation(response, Outcome.of(exc), exc, usage, request_id, None, cold)


async def _pump(request: Request, call: Call) -> None:
    """Stream the request body to the worker as ``Body`` frames."""
    worker = call.worker
    try:
        async for chunk in request.stream():
            if call.finished.done():
                return
            worker.send(Body(call.id, chunk, True))
    except Exception as exc:
        # The client's body failed (too large, too slow, gone): the handler sees the
        # body end; the node's HTTP layer answers the client.
        _log.info("request %s: request body aborted: %s", call.request_id, exc)
    worker.send(Body(call.id, b"", False))
