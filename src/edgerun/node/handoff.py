"""The node's side of connection handoff: which connections go to which worker.

``NodeHandoff`` is the ``Diverter`` of the node's HTTP protocol. At each request head
that starts a connection's stream afresh, it checks whether the request may skip the
node from now on -- plain HTTP, a peer whose ip and geo do not depend on headers (no
trusted proxy, not dev), not a node endpoint, routed to an isolated deployment with
``[scaling] handoff`` on, no split or forced version for it -- and if so hands the
connection, with the bytes already read, to one of the deployment's workers
(``IsolatedInvoker.adopt``). Anything else is served the usual way, by the dispatcher.
See ``runtime.isolate.handoff`` for the mechanism.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from edgerun.node.deployment import Deployment
from edgerun.node.front import NODE_PATHS, host_for_url
from edgerun.node.protocol import NodeHttpToolsProtocol
from edgerun.runtime.isolate.invoker import IsolatedInvoker
from edgerun.runtime.isolate.protocol import Adopt, geo_fields
from edgerun.security.limits import HttpLimits

if TYPE_CHECKING:
    from edgerun.node.app import Node

__all__ = ["NodeHandoff"]

_log = logging.getLogger("edgerun.node")


class _Plan:
    __slots__ = ("deployment", "message")

    def __init__(self, deployment: Deployment, message: Adopt) -> None:
        self.deployment = deployment
        self.message = message


class NodeHandoff:
    """Decides which connections a worker serves directly, and hands them over."""

    def __init__(self, node: Node, limits: HttpLimits) -> None:
        self.node = node
        self._http: list[int | float] = list(dataclasses.astuple(limits))
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        """Whether some deployment takes handed-off connections (see ``Diverter``)."""
        return self.node.handoff_possible

    def plan(self, protocol: NodeHttpToolsProtocol) -> _Plan | None:
        """See ``Diverter.plan``."""
        node = self.node
        if protocol.scheme != "http" or not node.geo.per_peer:
            return None
        # As the dispatcher sees it: the raw path, and the Host (else the server address).
        path = protocol.raw_path().decode("latin-1")
        if path.startswith(NODE_PATHS) or protocol.version_header:
            return None
        hosts = protocol._hosts
        deployment = node.route(host_for_url(hosts[0] if hosts else None, protocol.server), path)
        if deployment is None:
            return None
        invoker = deployment.invoker
        if not isinstance(invoker, IsolatedInvoker) or not invoker.pool.settings.handoff:
            return None
        if not invoker.pool.can_adopt():
            return None
        headers: list[tuple[str, str]] = []
        if node.versions is not None:
            fixed = node.versions.fixed(deployment)
            if fixed is None:
                return None
            headers = fixed
        client = protocol.client
        ip, geo = node.geo.resolve(client[0] if client else None)
        message = Adopt(
            0,
            0,
            b"",
            ip,
            geo_fields(geo),
            node.route_list(deployment),
            headers,
            False,
            self._http,
            node.access_log,
        )
        return _Plan(deployment, message)

    def divert(self, protocol: NodeHttpToolsProtocol, plan: object, data: bytes) -> None:
        """See ``Diverter.divert``: hand over in the background."""
        assert isinstance(plan, _Plan)
        plan.message.data = data
        task = asyncio.get_running_loop().create_task(self._hand_over(protocol, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over(self, protocol: NodeHttpToolsProtocol, plan: _Plan) -> None:
        invoker = plan.deployment.invoker
        assert isinstance(invoker, IsolatedInvoker)
        try:
            taken = await invoker.adopt(
                protocol, plan.message, self.node.usage_sink(plan.deployment)
            )
        except Exception as exc:
            # No worker could be had (overloaded, crashed at start): the proxy path
            # answers this request with the right error.
            _log.info("connection not handed to %s: %s", plan.deployment.name, exc)
            taken = False
        if not taken:
            protocol.resume(plan.message.data, divert=False)
