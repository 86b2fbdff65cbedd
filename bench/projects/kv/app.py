"""Benchmark (d): read one KV key per request and answer with its value."""

from edgerun import Context, Env, Request, Response


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Answer with the value of key ``k`` (``v``)."""
    value = await env.KV.get("k")
    if value is None:
        # bench/run.py seeds the key with `edgerun kv put` before starting the node;
        # storing it here too keeps the project usable when served by hand.
        value = "v"
        await env.KV.put("k", value)
    return Response(value)
