"""The edgerun demo: try /, /visits, /time (cached for 10 s) and /echo (POST JSON)."""

import time

from edgerun import Context, Env, Request, Response


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Route a few demo paths; everything else gets a greeting."""
    if request.path == "/visits":
        visits = int(await env.KV.get("visits") or 0) + 1
        await env.KV.put("visits", str(visits))
        return Response.json({"visits": visits})
    if request.path == "/time":
        if (hit := await env.CACHE.match(request)) is not None:
            return hit
        response = Response.json(
            {"generated_at": time.time()}, headers={"cache-control": "max-age=10"}
        )
        await env.CACHE.put(request, response.clone())
        return response
    if request.path == "/echo" and request.method == "POST":
        return Response.json({"you_sent": await request.json()})
    return Response.json(
        {
            "message": f"{env.GREETING} from the edge",
            "ip": request.ip,
            "country": request.geo.country,
            "city": request.geo.city,
            "try": ["/visits", "/time", "POST /echo"],
        }
    )
