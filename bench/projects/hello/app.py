"""Benchmark (b): a fetch handler that does nothing but answer, so the node is all we time."""

from edgerun import Context, Env, Request, Response


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Answer every request with ``hello``."""
    return Response("hello")
