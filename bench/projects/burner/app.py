"""Benchmark (i): a handler that never yields; the node's cpu_ms limit must stop it."""

from edgerun import Context, Env, Request, Response


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Burn CPU forever; the node answers 503 ``exceeded_cpu`` and replaces the worker."""
    while True:
        pass
    return Response("unreachable")
