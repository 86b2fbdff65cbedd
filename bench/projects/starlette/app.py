"""Benchmark (c): a one-route Starlette app, served by the node and by plain uvicorn."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request: Request) -> PlainTextResponse:
    """Answer ``GET /`` with ``hello``."""
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)])
