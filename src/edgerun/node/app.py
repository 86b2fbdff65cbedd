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
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edgerun.control.api import CONTROL_PREFIX
from edgerun.control.usage import UsageMeter
from edgerun.edge.geo import GeoResolver
from edgerun.edge.routes import RouteTable
from edgerun.errors import EdgerunError, NotFound, error_body, to_http
from edgerun.http import Request, Response
from edgerun.node.deployment import Deployment
from edgerun.node.ids import new_request_id
from edgerun.node.versions import VersionChooser
from edgerun.runtime.invoke import Invocation
from edgerun.runtime.isolate.invoker import IsolatedInvoker

__all__ = ["Node"]

log = logging.getLogger("edgerun.node")
access_log = logging.getLogger("edgerun.access")

After = Callable[[], Awaitable[None]]
NODE_PREFIX = "/__edgerun"
"""Paths under this prefix are the node's own endpoints, never routed to a project."""
_HEALTH_BODY = b'{"status":"ok"}'


class Node:
    """Hosts deployments on one edge node and dispatches requests to them."""

    def __init__(
        self, *, geo: GeoResolver | None = None, debug: bool = False, access_log: bool = False
    ) -> None:
        self.geo = geo or GeoResolver()
        self.debug = debug
        self.access_log = access_log
        self.usage = UsageMeter()
        self._deployments: dict[str, Deployment] = {}
        self._routes: RouteTable[Deployment] = RouteTable([])
        self._route_pairs: list[tuple[str, Deployment]] = []
        self._route_lists: dict[str, list[tuple[str, bool]]] = {}
        self.handoff_possible = False
        """True while some deployment's workers take handed-off connections."""
        self._closing: set[asyncio.Task[None]] = set()
        # Set when the node follows a control plane (node.sync): which version of a
        # project serves a request, and the embedded control API, if any.
        self.versions: VersionChooser | None = None
        self.control: Callable[[Request], Awaitable[Response]] | None = None

    @property
    def deployments(self) -> dict[str, Deployment]:
        """The deployments now serving, by project name."""
        return dict(self._deployments)

    def _rebuild_routes(self) -> None:
        pairs = [(route, d) for d in self._deployments.values() for route in d.config.routes]
        self._routes = RouteTable(pairs)
        self._route_pairs = pairs
        self._route_lists = {}
        self.handoff_possible = any(
            isinstance(d.invoker, IsolatedInvoker) and d.invoker.pool.settings.handoff
            for d in self._deployments.values()
        )
        # Workers holding connections check requests against the old routes: take
        # the connections back, they are routed afresh at their next request.
        for d in self._deployments.values():
            give_all = getattr(d.invoker, "give_all", None)
            if give_all is not None:
                give_all()

    def route(self, host: str | None, path: str) -> Deployment | None:
        """The deployment whose route matches ``host`` and ``path``, if any."""
        return self._routes.match(host, path)

    def route_list(self, deployment: Deployment) -> list[tuple[str, bool]]:
        """Every route pattern on the node, with whether it is ``deployment``'s (for a
        worker that must recognise requests that belong elsewhere)."""
        found = self._route_lists.get(deployment.name)
        if found is None:
            found = [(route, d is deployment) for route, d in self._route_pairs]
            self._route_lists[deployment.name] = found
        return found

    def usage_sink(self, deployment: Deployment) -> Callable[[list[Any]], None]:
        """Where a deployment's workers report the usage of requests they served."""
        name = deployment.name
        merge = self.usage.merge

        def sink(rows: list[Any]) -> None:
            for outcome, requests, cpu_ms, wall_ms, bytes_in, bytes_out, cold, code in rows:
                merge(
                    name,
                    outcome,
                    requests,
                    cpu_ms,
                    wall_ms,
                    bytes_in,
                    bytes_out,
                    cold,
                    code or None,
                )

        return sink

    async def flush_usage(self) -> None:
        """Collect the usage workers have counted but not yet reported."""
        flushes = []
        for d in list(self._deployments.values()):
            flush = getattr(d.invoker, "flush_usage", None)
            if flush is not None:
                flushes.append(flush())
        if flushes:
            await asyncio.gather(*flushes, return_exceptions=True)

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
        if self.control is not None and path.startswith(CONTROL_PREFIX):
            return await self.control(request), None
        if path.startswith(NODE_PREFIX) or path == "/healthz":
            if path == f"{NODE_PREFIX}/usage" and _is_local(request):
                await self.flush_usage()
            return self._node_endpoint(request, path), None
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
        version_headers: list[tuple[str, str]] = []
        if self.versions is not None:
            deployment, version_headers = await self.versions.choose(deployment, request)
        deployment.enter()
        try:
            invocation = await deployment.invoker.invoke(request, request_id=request_id)
        except BaseException as exc:
            deployment.leave()
            log.exception("request %s: the invoker failed", request_id)
            status, body = to_http(exc, request_id=request_id, debug=self.debug)
            return Response.json(body, status=status, headers=_rid(request_id)), None
        response = invocation.response
        # A constant name and a hex id: nothing for Headers.set to check.
        response.headers._put("x-edgerun-request-id", request_id)
        for name, value in version_headers:
            response.headers.add(name, value)

        async def after() -> None:
            try:
                await invocation.finish()
            finally:
                deployment.leave()
                self._account(deployment.name, request, invocation)

        return response, after

    def _account(self, name: str, request: Request, invocation: Invocation) -> None:
        """Meter a finished request and write its access-log line."""
        response = invocation.response
        bytes_in = request._body.size
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            bytes_in = max(bytes_in, int(declared))
        error = invocation.error
        usage = invocation.usage
        outcome = str(invocation.outcome)
        cold_start = invocation.cold_start
        # A few additions into the running totals, no per-request record object.
        self.usage.count(
            name,
            outcome,
            usage.cpu_ms,
            usage.wall_ms,
            bytes_in,
            response._body.size,
            cold_start,
            None
            if error is None
            else (error.code if isinstance(error, EdgerunError) else "internal"),
        )
        if self.access_log:
            access_log.info(
                "%s %s %s %s%s %d %s wall=%.1fms cpu=%.1fms%s",
                invocation.request_id,
                name,
                request.method,
                request.host,
                request.path,
                response.status,
                outcome,
                usage.wall_ms,
                usage.cpu_ms,
                " cold_start" if cold_start else "",
            )

    def _node_endpoint(self, request: Request, path: str) -> Response:
        """``/healthz`` for anyone; ``/__edgerun/*`` for local callers only."""
        if path == "/healthz":
            return Response(_HEALTH_BODY, headers={"content-type": "application/json"})
        if not _is_local(request):
            body = error_body("forbidden", "node endpoints answer local callers only")
            return Response.json(body, status=403)
        if path == f"{NODE_PREFIX}/usage":
            return Response.json({"deployments": self.usage.snapshot()})
        if path == f"{NODE_PREFIX}/pools":
            return Response.json({"deployments": _pools(self._deployments)})
        body = error_body("not_found", f"no node endpoint {path}")
        return Response.json(body, status=404)


def _pools(deployments: dict[str, Deployment]) -> dict[str, Any]:
    """Worker pools by deployment (isolated mode only): zygote, workers, queue."""
    out: dict[str, Any] = {}
    for name, deployment in deployments.items():
        stats = getattr(deployment.invoker, "stats", None)
        if callable(stats):
            out[name] = stats()
    return out


def _rid(request_id: str) -> dict[str, str]:
    return {"x-edgerun-request-id": request_id}


def _is_local(request: Request) -> bool:
    """True for a loopback peer that is not relaying someone else's request."""
    if request.ip is None or "x-forwarded-for" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.ip).is_loopback
    except ValueError:
        return False
