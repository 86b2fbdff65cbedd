"""A new edgerun project: a fetch handler with a KV-backed visit counter."""

from edgerun import Context, Env, Request, Response


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Greet the caller by country and count visits per path in KV."""
    key = f"visits:{request.path}"
    visits = int(await env.KV.get(key) or 0) + 1
    await env.KV.put(key, str(visits))
    return Response.json(
        {
            "message": f"{env.GREETING} from edgerun",
            "path": request.path,
            "country": request.geo.country,
            "visits": visits,
        }
    )
