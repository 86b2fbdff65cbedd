"""S1 — why edge: serve user records from the edge KV, loading misses from the origin.

GET /?userId=42 -> the user as JSON. The first request for an id misses the KV, loads
from the (deliberately slow) origin and stores the JSON for CACHE_TTL_S seconds; later
requests are answered from the KV. ``x-cache: HIT|MISS`` says which happened.
"""

import asyncio
import json

from edgerun import Context, Env, Request, Response

ORIGIN_DELAY_S = 0.2  # stands in for a round trip to a far-away database


async def load_user_from_origin(user_id: str) -> dict[str, object]:
    """The slow central backend the edge cache protects."""
    await asyncio.sleep(ORIGIN_DELAY_S)
    return {"id": user_id, "name": f"user-{user_id}", "plan": "free"}


async def fetch(request: Request, env: Env, ctx: Context) -> Response:
    """Answer from KV on a hit; on a miss load, store with a TTL, and answer."""
    user_id = request.query.get("userId")
    if not user_id:
        return Response.json(
            {"error": {"code": "missing_user_id", "message": "pass ?userId=..."}}, status=400
        )
    key = f"user:{user_id}"
    cached = await env.KV.get(key, type="json")
    if cached is not None:
        return Response.json(cached, headers={"x-cache": "HIT"})
    user = await load_user_from_origin(user_id)
    await env.KV.put(key, json.dumps(user), expiration_ttl=int(env.CACHE_TTL_S))
    return Response.json(user, headers={"x-cache": "MISS"})
