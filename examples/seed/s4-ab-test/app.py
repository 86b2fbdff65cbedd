"""S4 — A/B testing at the edge, sticky per client.

A new client is assigned group A or B at random and gets an ``HttpOnly; Secure``
cookie; a returning client keeps its group (the seed snippet re-rolled it on every
request). The answer may be cached by the browser for 300 s but never by a shared
cache (it is per-client), hence ``private``.
"""

import secrets

from edgerun import Env, Request, Response

COOKIE = "ab_group"
GROUPS = ("A", "B")
COOKIE_MAX_AGE_S = 30 * 24 * 3600


async def fetch(request: Request, env: Env) -> Response:
    """Reuse the group from the cookie when valid; otherwise assign one."""
    group = request.cookies.get(COOKIE)
    returning = group in GROUPS
    if not returning:
        group = secrets.choice(GROUPS)
    response = Response.json(
        {"experiment": env.EXPERIMENT, "group": group, "returning": returning},
        headers={"cache-control": "private, max-age=300"},
    )
    if not returning:
        response.set_cookie(
            COOKIE, group, max_age=COOKIE_MAX_AGE_S, httponly=True, secure=True, samesite="lax"
        )
    return response
