"""S5 — collect analytics events into KV under ordered tuple keys.

POST /api/analytics with a JSON event stores it, with the server's timestamp, the
client's user agent and IP, under ``("analytics", timestamp_ms, uuid)``; tuple keys are
ordered, so GET /api/analytics lists the newest events by prefix. Other paths are 404;
a body that is not JSON is a 400 (raised by ``request.json()``).
"""

import json
import time
import uuid

from edgerun import Env, Request, Response

PATH = "/api/analytics"


async def fetch(request: Request, env: Env) -> Response:
    """Store (POST) or list (GET) analytics events."""
    if request.path != PATH:
        return Response.json({"error": {"code": "not_found", "message": "no such path"}}, 404)
    if request.method == "POST":
        event = await request.json()
        ts = int(time.time() * 1000)
        key = ("analytics", ts, str(uuid.uuid4()))
        record = {
            "event": event,
            "timestamp": ts,
            "user_agent": request.headers.get("user-agent"),
            "ip": request.ip,
        }
        await env.EVENTS.put(key, json.dumps(record))
        return Response.json({"stored": list(key)}, status=201)
    if request.method == "GET":
        limit = min(int(request.query.get("limit", "100")), 1000)
        listed = await env.EVENTS.list(prefix=("analytics",), limit=limit)
        events = [json.loads(await env.EVENTS.get(k.name) or "null") for k in listed.keys]
        return Response.json({"events": [e for e in events if e is not None]})
    return Response.json(
        {"error": {"code": "method_not_allowed", "message": "use GET or POST"}},
        status=405,
        headers={"allow": "GET, POST"},
    )
