"""ASGI apps as handlers: Starlette, FastAPI, streaming both ways, lifespan, failures."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from edgerun.errors import EntrypointError, HandlerError
from edgerun.http import Geo, Request
from edgerun.runtime import (
    AsgiHandler,
    AsgiLifespan,
    Context,
    Entry,
    Env,
    InProcessInvoker,
    Outcome,
    RuntimeLimits,
)


def entry_for(app) -> Entry:
    return Entry(AsgiHandler(app), "asgi", module=None, asgi_app=app)  # type: ignore[arg-type]


@pytest.fixture
async def started_invoker():
    """``await started_invoker(app, env)``: a started invoker, stopped after the test."""
    invokers: list[InProcessInvoker] = []

    async def start(app, env: Env | None = None) -> InProcessInvoker:
        invoker = InProcessInvoker(entry_for(app), env or Env(), RuntimeLimits())
        await invoker.start()
        invokers.append(invoker)
        return invoker

    yield start
    for invoker in invokers:
        await invoker.stop()


# -- Starlette -----------------------------------------------------------------------------


def starlette_app() -> Starlette:
    async def user(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(
            {
                "id": request.path_params["user_id"],
                "q": request.query_params.getlist("q"),
                "url": str(request.url),
                "client": request.client.host if request.client else None,
                "agent": request.headers["user-agent"],
                "env": request.scope["env"].API_VERSION,
                "country": request.scope["edgerun.request"].geo.country,
            }
        )

    async def echo(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"got": await request.json()}, status_code=201)

    return Starlette(
        routes=[Route("/users/{user_id}", user), Route("/echo", echo, methods=["POST"])]
    )


async def test_starlette_routes_path_params_query_and_scope(started_invoker):
    invoker = await started_invoker(starlette_app(), Env(vars={"API_VERSION": "7"}))
    request = Request(
        "GET",
        "https://api.example.com:8443/users/42?q=a&q=b",
        headers={"User-Agent": "tests"},
        ip="203.0.113.9",
        geo=Geo(country="KR"),
    )
    invocation = await invoker.invoke(request, request_id="r1")
    assert invocation.outcome is Outcome.OK
    assert invocation.response.status == 200
    assert invocation.response.content is not None  # sent in one piece: a fixed body
    assert await invocation.response.json_body() == {
        "id": "42",
        "q": ["a", "b"],
        "url": "https://api.example.com:8443/users/42?q=a&q=b",
        "client": "203.0.113.9",
        "agent": "tests",
        "env": "7",
        "country": "KR",
    }
    assert invocation.response.headers["content-type"] == "application/json"
    await invocation.finish()


async def test_starlette_json_body_and_404(started_invoker):
    invoker = await started_invoker(starlette_app())
    post = Request("POST", "http://example.com/echo", body=b'{"a": [1, 2]}')
    invocation = await invoker.invoke(post, request_id="r1")
    assert invocation.response.status == 201
    assert await invocation.response.json_body() == {"got": {"a": [1, 2]}}
    missing = await invoker.invoke(Request("GET", "http://example.com/nope"), request_id="r2")
    assert missing.response.status == 404


async def test_request_body_is_fed_in_chunks_as_it_arrives(started_invoker):
    gate = asyncio.Event()
    seen: list[tuple[bytes, bool]] = []

    async def upload():
        yield b"first"
        await gate.wait()
        yield b"second"

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append((message["body"], message["more_body"]))
            if message["body"] == b"first":
                gate.set()  # the second chunk can only exist after the first was received
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    invoker = await started_invoker(app)
    request = Request("POST", "http://example.com/up", body=upload())
    invocation = await invoker.invoke(request, request_id="r1")
    assert await invocation.response.body() == b"done"
    assert seen == [(b"first", True), (b"second", True), (b"", False)]


async def test_receive_reports_disconnect_only_after_the_response_completes(started_invoker):
    messages = []
    response_sent = False

    async def app(scope, receive, send):
        nonlocal response_sent
        if scope["type"] != "http":
            return  # no lifespan support
        messages.append(await receive())  # the (empty) body
        listening = asyncio.Event()

        async def listen():
            listening.set()
            message = await receive()
            messages.append((message, response_sent))

        listener = asyncio.ensure_future(listen())
        await listening.wait()  # the listener is now blocked in receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        response_sent = True
        await send({"type": "http.response.body", "body": b""})
        await listener

    invoker = await started_invoker(app)
    invocation = await invoker.invoke(Request("GET", "http://example.com/"), request_id="r1")
    await invocation.finish()
    assert messages == [
        {"type": "http.request", "body": b"", "more_body": False},
        ({"type": "http.disconnect"}, True),  # delivered only once the response was sent
    ]


# -- streaming responses -----------------------------------------------------------------------


def streaming_app(framework: str, gate: asyncio.Event, produced: list[int]):
    async def chunks():
        produced.append(1)
        yield b"one,"
        await gate.wait()
        produced.append(2)
        yield b"two"

    if framework == "fastapi":
        api = FastAPI()

        @api.get("/stream")
        async def stream_route() -> StreamingResponse:
            return StreamingResponse(chunks(), media_type="text/plain")

        return api

    async def stream(request: StarletteRequest) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    return Starlette(routes=[Route("/stream", stream)])


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_streaming_response_chunks_arrive_incrementally(framework, started_invoker):
    gate = asyncio.Event()
    produced: list[int] = []
    invoker = await started_invoker(streaming_app(framework, gate, produced))
    invocation = await invoker.invoke(Request("GET", "http://example.com/stream"), request_id="r1")
    response = invocation.response
    assert response.status == 200
    assert response.content is None  # a streamed body, not a buffered one
    assert response.headers["content-type"].startswith("text/plain")
    stream = response.stream()
    assert await anext(stream) == b"one,"
    # The first chunk reached us while the app could not yet have made the second.
    assert produced == [1]
    gate.set()
    assert [chunk async for chunk in stream] == [b"two"]
    assert produced == [1, 2]
    await invocation.finish()


async def test_an_abandoned_stream_stops_the_app_at_finish(caplog, started_invoker):
    stopped = asyncio.Event()

    async def forever():
        try:
            while True:
                yield b"tick"
        finally:
            stopped.set()

    async def stream(request: StarletteRequest) -> StreamingResponse:
        return StreamingResponse(forever())

    invoker = await started_invoker(Starlette(routes=[Route("/", stream)]))
    invocation = await invoker.invoke(Request("GET", "http://example.com/"), request_id="r1")
    assert await anext(invocation.response.stream()) == b"tick"
    # The client went away: the node is done with the response and finishes the request.
    with caplog.at_level(logging.WARNING):
        await invocation.finish()
    # The app got OSError from send() at once (no wall-budget timeout, nothing logged);
    # its generator is closed by the event loop's async-generator finalizer.
    assert not caplog.records
    async with asyncio.timeout(5):
        await stopped.wait()


async def test_app_failing_mid_stream_ends_the_stream_with_an_error(caplog, started_invoker):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("broken generator")

    invoker = await started_invoker(app)
    invocation = await invoker.invoke(Request("GET", "http://example.com/"), request_id="r-mid")
    stream = invocation.response.stream()
    assert await anext(stream) == b"partial"
    with pytest.raises(HandlerError, match="failed while streaming"):
        await anext(stream)
    await invocation.finish()
    failures = [r for r in caplog.records if r.name == "edgerun.runtime" and r.exc_info]
    assert any("r-mid" in r.getMessage() for r in failures)


# -- FastAPI -------------------------------------------------------------------------------


class Item(BaseModel):
    name: str
    price: float


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, object]:
        if item_id == 0:
            raise HTTPException(status_code=404, detail="no item 0")
        return {"item_id": item_id, "q": q}

    @api.post("/items")
    async def create_item(item: Item) -> dict[str, object]:
        return {"created": item.name, "with_tax": round(item.price * 1.1, 2)}

    @api.get("/boom")
    async def boom() -> None:
        raise ValueError("kaboom")

    return api


async def test_fastapi_path_query_json_and_validation(started_invoker):
    invoker = await started_invoker(fastapi_app())
    got = await invoker.invoke(Request("GET", "http://e.com/items/5?q=hi"), request_id="r1")
    assert got.response.status == 200
    assert await got.response.json_body() == {"item_id": 5, "q": "hi"}

    body = json.dumps({"name": "pen", "price": 10}).encode()
    created = await invoker.invoke(
        Request(
            "POST", "http://e.com/items", body=body, headers={"content-type": "application/json"}
        ),
        request_id="r2",
    )
    assert await created.response.json_body() == {"created": "pen", "with_tax": 11.0}

    not_found = await invoker.invoke(Request("GET", "http://e.com/items/0"), request_id="r3")
    assert not_found.response.status == 404
    invalid = await invoker.invoke(Request("GET", "http://e.com/items/abc"), request_id="r4")
    assert invalid.response.status == 422


async def test_fastapi_unhandled_exception_keeps_its_500_and_reports_the_error(
    caplog, started_invoker
):
    invoker = await started_invoker(fastapi_app())
    invocation = await invoker.invoke(Request("GET", "http://e.com/boom"), request_id="r-boom")
    assert invocation.response.status == 500
    assert invocation.outcome is Outcome.EXCEPTION
    assert isinstance(invocation.error, ValueError)
    assert any(
        "r-boom" in r.getMessage() and r.exc_info for r in caplog.records if r.levelname == "ERROR"
    )


# -- failures before the response --------------------------------------------------------------


async def test_app_raising_before_the_response_becomes_a_500(started_invoker):
    async def app(scope, receive, send):
        raise KeyError("before start")

    invocation = await (await started_invoker(app)).invoke(
        Request("GET", "http://e.com/"), request_id="r1"
    )
    assert invocation.response.status == 500
    assert invocation.outcome is Outcome.EXCEPTION
    assert isinstance(invocation.error, KeyError)


async def test_app_returning_without_a_response_is_a_handler_error():
    async def app(scope, receive, send):
        return None

    handler = AsgiHandler(app)
    with pytest.raises(HandlerError, match="without sending a response"):
        await handler(Request("GET", "http://e.com/"), Env(), Context("r"))


# -- lifespan ----------------------------------------------------------------------------------


async def test_lifespan_runs_once_per_worker_and_its_state_reaches_requests(started_invoker):
    calls: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette):
        calls.append("startup")
        yield {"db": "connection-1"}
        calls.append("shutdown")

    async def home(request: StarletteRequest) -> PlainTextResponse:
        request.state.mine = "per-request"  # must not leak into the next request
        return PlainTextResponse(request.state.db)

    async def leak(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse(str(getattr(request.state, "mine", None)))

    app = Starlette(routes=[Route("/", home), Route("/leak", leak)], lifespan=lifespan)
    invoker = await started_invoker(app)
    assert calls == ["startup"]
    for n in range(5):
        invocation = await invoker.invoke(Request("GET", "http://e.com/"), request_id=f"r{n}")
        assert await invocation.response.text() == "connection-1"
        await invocation.finish()
    leaked = await invoker.invoke(Request("GET", "http://e.com/leak"), request_id="r-leak")
    assert await leaked.response.text() == "None"
    assert calls == ["startup"]
    await invoker.stop()
    assert calls == ["startup", "shutdown"]
    await invoker.stop()  # stopping twice (here and at teardown) shuts down once
    assert calls == ["startup", "shutdown"]


async def test_fastapi_lifespan_state(started_invoker):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield {"greeting": "hello from lifespan"}

    api = FastAPI(lifespan=lifespan)

    @api.get("/")
    async def home(request: StarletteRequest) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    invoker = await started_invoker(api)
    invocation = await invoker.invoke(Request("GET", "http://e.com/"), request_id="r1")
    assert await invocation.response.json_body() == {"greeting": "hello from lifespan"}


async def test_lifespan_startup_failure_raises_entrypoint_error():
    @asynccontextmanager
    async def lifespan(app: Starlette):
        raise ConnectionError("database unreachable")
        yield  # pragma: no cover

    invoker = InProcessInvoker(entry_for(Starlette(lifespan=lifespan)), Env(), RuntimeLimits())
    with pytest.raises(EntrypointError, match=r"(?s)lifespan startup failed.*database unreachable"):
        await invoker.start()


async def test_apps_without_lifespan_support_are_fine(caplog, started_invoker):
    async def app(scope, receive, send):
        assert scope["type"] == "http", "only http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    lifespan = AsgiLifespan(app)
    with caplog.at_level(logging.ERROR):
        await lifespan.startup()
        assert lifespan.supported is False
        await lifespan.shutdown()
    assert not caplog.records
    invoker = await started_invoker(app)
    invocation = await invoker.invoke(Request("GET", "http://e.com/"), request_id="r1")
    assert await invocation.response.body() == b"ok"


async def test_lifespan_shutdown_failure_is_logged_not_raised(caplog):
    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        raise RuntimeError("flush failed")

    lifespan_runner = AsgiLifespan(Starlette(lifespan=lifespan))
    await lifespan_runner.startup()
    assert lifespan_runner.supported
    await lifespan_runner.shutdown()
    assert any("flush failed" in r.getMessage() for r in caplog.records)
