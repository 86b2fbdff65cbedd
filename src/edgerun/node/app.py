"""The node's dispatcher: route a request to a deployment and run it.

Server-neutral: the ASGI and RSGI front ends build an ``edgerun.http.Request`` and
call ``Node.dispatch``, which answers node endpoints (``/healthz``), resolves the
client's ip and geo (trusted proxies only), picks the deployment by route, and invokes
it. It returns the response plus an ``after`` callback the front end awaits once the
response is sent (deferred ``wait_until`` work and in-flight accounting).

Deployments are swapped atomically (``Node.replace``): requests already running keep
the old deployment object, new ones get the new one, and the old one is closed when it
has drained.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from edgerun.edge.geo import GeoResolver
from edgerun.edge.routes import RouteTable
from edgerun.errors import NotFound, to_http
from edgerun.http import Request, Response
from edgerun.node.deployment import Deployment

__all__ = ["Node"]

log = logging.getLogger("edgerun.node")
access_log = logging.getLogger("edgerun.access")

After = Callable[[], Awaitable[None]]
_HEALTH_BODY = b'{"status":"ok"}'


def new_request_id() -> str:
    """A random 16-hex-digit request id (cheap: one urandom call)."""
    return os.urandom(8).hex()


class Node:
    """Hosts deployments on one edge node and dispatches requests to them."""

    def __init__(self, *, geo: GeoResolver | None = None, debug: bool = False) -> None:
        self.geo = geo or GeoResolver()
        self.debug = debug
        self._deployments: dict[str, Deployment] = {}
        self._routes: RouteTable[Deployment] = RouteTable([])
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def deployments(self) -> dict[str, Deployment]:
        """The deployments now serving, by project name."""
        return dict(self._deployments)

    def _rebuild_routes(self) -> None:
        pairs = [(route, d) for d in self._deployments.values() for route in d.config.routes]
        self._routes = RouteTable(pairs)

    async def replace(self, deployment: Deployment) -> None:
        """Serve ``deployment`` (adding it, or swapping out the one of the same name).

        The swap is atomic for new requests; the previous deployment is closed in the
        background once its in-flight requests are done.
        """
        old = self._deployments.get(deployment.name)
        self._deployments[deployment.name] = deployment
        self._rebuild_routes()
        if old is not None and old is not deployment:
            task = asyncio.get_running_loop().create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every deployment (waiting for in-flight requests)."""
        deployments = list(self._deployments.values())
        self._deployments.clear()
        self._rebuild_routes()
        for d in deployments:
            await d.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def dispatch(self, request: Request) -> tuple[Response, After | None]:
        """Answer one request; see the module docstring for the contract."""
        path = request.path
        if path == "/healthz":
            return Response(_HEALTH_BODY, headers={"content-type": "application/json"}), None
        request_id = new_request_id()
        ip, geo = self.geo.resolve(request.ip, request.headers.get, request.headers.getlist)
        request.ip = ip
        request.geo = geo
        host = request.host
        deployment = self._routes.match(host, path)
        if deployment is None:
            exc = NotFound(f"no project on this node serves {host}{path}")
            status, body = to_http(exc, request_id=request_id)
            return Response.json(body, status=status, headers=_rid(request_id)), None
        deployment.enter()
        try:
            invocation = await deployment.invoker.invoke(request, request_id=request_id)
        except BaseException as exc:
            deployment.leave()
            log.exception("request %s: the invoker failed", request_id)
            status, body = to_http(exc, request_id=request_id, debug=self.debug)
            return Response.json(body, status=status, headers=_rid(request_id)), None
        response = invocation.response
        response.headers.set("x-edgerun-request-id", request_id)

        async def after() -> None:
            try:
                await invocation.finish()
            finally:
                deployment.leave()

        return response, after


def _rid(request_id: str) -> dict[str, str]:
    return {"x-edgerun-request-id": request_id}
