"""InProcessInvoker: responses, error mapping, the wall limit, wait_until after the response."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from edgerun.errors import KVUnavailable
from edgerun.http import Request, Response
from edgerun.runtime import (
    REQUEST_ID_HEADER,
    Context,
    Entry,
    Env,
    InProcessInvoker,
    Invoker,
    Outcome,
    RuntimeLimits,
)


def entry_of(handler) -> Entry:
    return Entry(handler, "fetch", module=sys.modules[__name__])


def invoker_of(handler, *, wall_ms: int = 30_000, debug: bool = False, env: Env | None = None):
    return InProcessInvoker(
        entry_of(handler), env or Env(), RuntimeLimits(wall_ms=wall_ms), debug=debug
    )


async def invoke(invoker: InProcessInvoker, request: Request | None = None, rid: str = "rid-1"):
    return await invoker.invoke(request or Request("GET", "http://example.com/"), request_id=rid)


def error_of(body: bytes) -> dict:
    import json

    return json.loads(body)["error"]


# -- success ---------------------------------------------------------------------------------


async def test_success_returns_the_response_untouched():
    async def fetch(request, env, ctx):
        return Response("hi " + env.NAME, headers={"x-mine": "1"})

    invoker = invoker_of(fetch, env=Env(vars={"NAME": "bob"}))
    assert isinstance(invoker, Invoker)
    await invoker.start()
    invocation = await invoke(invoker)
    assert invocation.outcome is Outcome.OK
    assert invocation.error is None
    assert invocation.request_id == "rid-1"
    assert invocation.response.status == 200
    assert await invocation.response.text() == "hi bob"
    # The node adds the request-id header to successful responses; the runtime does not.
    assert REQUEST_ID_HEADER not in invocation.response.headers
    assert invocation.usage.cpu_ms >= 0
    await invocation.finish()
    await invoker.stop()


async def test_a_streamed_response_is_returned_as_is():
    async def chunks():
        yield b"a"
        yield b"b"

    streamed = Response(chunks())

    async def fetch(request, env, ctx):
        return streamed

    invocation = await invoke(invoker_of(fetch))
    assert invocation.response is streamed
    assert [c async for c in invocation.response.stream()] == [b"a", b"b"]


async def test_workers_response_is_accepted():
    import workers

    async def fetch(request, env, ctx):
        return workers.Response.json({"ok": True})

    invocation = await invoke(invoker_of(fetch))
    assert invocation.outcome is Outcome.OK
    assert await invocation.response.json_body() == {"ok": True}


async def test_context_carries_the_request_id():
    async def fetch(request, env, ctx):
        ctx.pass_through_on_exception()  # Workers compatibility: accepted, no effect
        return Response(f"{ctx.request_id} {ctx.region} {ctx.span}")

    invocation = await invoke(invoker_of(fetch), rid="abc123")
    assert await invocation.response.text() == "abc123 None None"


# -- errors ------------------------------------------------------------------------------------


async def test_handler_exception_becomes_a_500_json_with_the_request_id(caplog):
    async def fetch(request, env, ctx):
        raise ZeroDivisionError("secret internals")

    invocation = await invoke(invoker_of(fetch), rid="rid-err")
    response = invocation.response
    assert response.status == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers[REQUEST_ID_HEADER] == "rid-err"
    error = error_of(await response.body())
    assert error["code"] == "internal"
    assert error["request_id"] == "rid-err"
    assert "secret internals" not in str(error)  # production bodies do not leak internals
    assert invocation.outcome is Outcome.EXCEPTION
    assert isinstance(invocation.error, ZeroDivisionError)
    logged = [r for r in caplog.records if r.name == "edgerun.runtime" and r.exc_info]
    assert logged and "rid-err" in logged[0].getMessage()


async def test_debug_mode_adds_the_traceback():
    async def fetch(request, env, ctx):
        raise ValueError("visible in dev")

    invocation = await invoke(invoker_of(fetch, debug=True))
    error = error_of(await invocation.response.body())
    assert "ValueError: visible in dev" in error["exception"]
    assert "raise ValueError" in error["traceback"]


@pytest.mark.parametrize(
    ("returned", "shown"),
    [({"not": "a response"}, "dict"), (None, "None"), ("text", "str")],
)
async def test_returning_something_that_is_not_a_response(returned, shown):
    async def fetch(request, env, ctx):
        return returned

    invocation = await invoke(invoker_of(fetch))
    assert invocation.response.status == 500
    assert invocation.outcome is Outcome.EXCEPTION
    error = error_of(await invocation.response.body())
    assert error["code"] == "handler_error"
    assert error["message"] == f"fetch returned {shown}; return an edgerun.Response"


async def test_malformed_json_is_a_400():
    async def fetch(request, env, ctx):
        return Response.json(await request.json())

    invocation = await invoke(invoker_of(fetch), Request("POST", "http://e.com/", body=b"{oops"))
    assert invocation.response.status == 400
    assert error_of(await invocation.response.body())["code"] == "malformed_json"
    assert invocation.outcome is Outcome.EXCEPTION


async def test_edgerun_errors_keep_their_status_and_code():
    async def fetch(request, env, ctx):
        raise KVUnavailable("kv backend down, retry later")

    invocation = await invoke(invoker_of(fetch))
    assert invocation.response.status == 503
    error = error_of(await invocation.response.body())
    assert error == {
        "code": "kv_unavailable",
        "message": "kv backend down, retry later",
        "request_id": "rid-1",
    }


async def test_sys_exit_in_a_handler_does_not_stop_the_node():
    async def fetch(request, env, ctx):
        sys.exit(3)

    invocation = await invoke(invoker_of(fetch))
    assert invocation.response.status == 500
    assert isinstance(invocation.error, SystemExit)


async def test_cancelling_invoke_propagates():
    entered = asyncio.Event()
    never = asyncio.Event()

    async def fetch(request, env, ctx):
        entered.set()
        await never.wait()

    invoker = invoker_of(fetch)
    task = asyncio.ensure_future(invoke(invoker))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await invoker.stop()


# -- the wall limit ----------------------------------------------------------------------------


async def slow_fetch(request, env, ctx):
    # The workload: a handler that takes ~50 ms of waiting.
    await asyncio.sleep(0.05)
    return Response("finally")


async def test_wall_limit_answers_503_exceeded_wall():
    invocation = await invoke(invoker_of(slow_fetch, wall_ms=5), rid="rid-wall")
    assert invocation.response.status == 503
    assert invocation.outcome is Outcome.EXCEEDED_WALL
    error = error_of(await invocation.response.body())
    assert error["code"] == "exceeded_wall"
    assert "wall_ms = 5" in error["message"]
    assert error["request_id"] == "rid-wall"


async def test_wall_limit_raised_lets_the_same_handler_finish():
    invocation = await invoke(invoker_of(slow_fetch, wall_ms=10_000))
    assert invocation.outcome is Outcome.OK
    assert await invocation.response.text() == "finally"


async def test_a_handlers_own_timeout_is_not_a_limit_violation():
    async def fetch(request, env, ctx):
        async with asyncio.timeout(0):
            await asyncio.Event().wait()

    invocation = await invoke(invoker_of(fetch))
    assert invocation.response.status == 500
    assert invocation.outcome is Outcome.EXCEPTION
    assert isinstance(invocation.error, TimeoutError)


# -- wait_until ------------------------------------------------------------------------------------


async def test_wait_until_work_runs_after_the_response_and_is_drained_by_finish():
    gate = asyncio.Event()
    done: list[str] = []

    async def background():
        await gate.wait()
        done.append("stored")

    async def fetch(request, env, ctx):
        ctx.wait_until(background())
        return Response("sent first")

    invoker = invoker_of(fetch)
    invocation = await invoke(invoker)
    assert await invocation.response.text() == "sent first"
    assert done == []  # the response exists while the work is still pending
    gate.set()
    await invocation.finish()
    assert done == ["stored"]
    await invocation.finish()  # a second call does nothing
    await invoker.stop()


async def test_wait_until_failure_is_logged_with_the_request_id(caplog):
    async def broken():
        raise RuntimeError("kv put failed")

    async def fetch(request, env, ctx):
        ctx.wait_until(broken())
        return Response("ok")

    invocation = await invoke(invoker_of(fetch), rid="rid-bg")
    assert invocation.response.status == 200  # the client never sees background failures
    await invocation.finish()
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "rid-bg" in failures[0].getMessage()
    assert "wait_until" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "kv put failed" in str(failures[0].exc_info[1])


async def test_wait_until_is_bounded_by_wall_ms_and_cancelled(caplog):
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck():
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fetch(request, env, ctx):
        ctx.wait_until(stuck())
        return Response("ok")

    invocation = await invoke(invoker_of(fetch, wall_ms=20), rid="rid-slow")
    await invocation.finish()
    async with asyncio.timeout(5):
        await cancelled.wait()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rid-slow" in warnings[0].getMessage()
    assert "wall_ms = 20" in warnings[0].getMessage()


async def test_wait_until_within_a_raised_wall_limit_completes(caplog):
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def work():
        await gate.wait()
        finished.set()

    async def fetch(request, env, ctx):
        ctx.wait_until(work())
        gate.set()  # the same work, now able to finish within the budget
        return Response("ok")

    invocation = await invoke(invoker_of(fetch, wall_ms=10_000))
    await invocation.finish()
    assert finished.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_wait_until_accepts_tasks_and_futures_and_rejects_the_rest():
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    seen = []

    async def fetch(request, env, ctx):
        ctx.wait_until(asyncio.ensure_future(asyncio.sleep(0, "task")))
        ctx.wait_until(future)
        with pytest.raises(TypeError, match="coroutine, task or future"):
            ctx.wait_until(lambda: None)
        return Response("ok")

    invocation = await invoke(invoker_of(fetch))
    loop.call_soon(future.set_result, "future")
    future.add_done_callback(lambda f: seen.append(f.result()))
    await invocation.finish()
    assert seen == ["future"]


async def test_wait_until_work_also_drains_after_an_error_response():
    ran = asyncio.Event()

    async def work():
        ran.set()

    async def fetch(request, env, ctx):
        ctx.wait_until(work())
        raise ValueError("after scheduling")

    invocation = await invoke(invoker_of(fetch))
    assert invocation.response.status == 500
    await invocation.finish()
    assert ran.is_set()


async def test_stop_drains_work_of_requests_not_yet_finished():
    gate = asyncio.Event()
    done = []

    async def work():
        await gate.wait()
        done.append(1)

    async def fetch(request, env, ctx):
        ctx.wait_until(work())
        return Response("ok")

    invoker = invoker_of(fetch)
    await invoke(invoker)  # never finished: the node is shutting down
    gate.set()
    await invoker.stop()
    assert done == [1]


def test_context_standalone_defaults():
    ctx = Context("r-9")
    assert (ctx.request_id, ctx.region, ctx.span) == ("r-9", None, None)
    assert repr(ctx) == "<Context request_id='r-9'>"


async def test_wall_limit_holds_for_concurrent_and_successive_requests():
    never = asyncio.Event()

    async def fetch(request, env, ctx):
        if request.path == "/stuck":
            await never.wait()
        return Response("fast")

    invoker = invoker_of(fetch, wall_ms=20)
    for _ in range(2):  # the shared deadline timer re-arms after firing
        paths = ["/stuck", "/fast", "/stuck", "/fast"]
        results = await asyncio.gather(
            *(invoke(invoker, Request("GET", f"http://e.com{p}"), rid=p) for p in paths)
        )
        assert [r.outcome for r in results] == [
            Outcome.EXCEEDED_WALL,
            Outcome.OK,
            Outcome.EXCEEDED_WALL,
            Outcome.OK,
        ]
    # The request task is left clean: no cancellation is still pending on it.
    assert asyncio.current_task().cancelling() == 0


async def test_a_handler_swallowing_the_wall_cancellation_leaves_the_task_clean():
    async def fetch(request, env, ctx):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return Response("swallowed")

    invocation = await invoke(invoker_of(fetch, wall_ms=5))
    assert await invocation.response.text() == "swallowed"
    assert asyncio.current_task().cancelling() == 0
