"""Isolation benchmarks: the same bare hello handler as bench/projects/hello."""

from edgerun import Context, Env, Request, Response


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Answer every request with ``hello``."""
    return Response("hello")
