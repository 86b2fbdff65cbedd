"""Run the control plane as its own server: ``edgerun control``.

It reuses the node's HTTP server adapter (``node.server.serve``), so the control API
gets the same parser hardening, caps and graceful shutdown as the edge. The API is
mounted at ``/__edgerun/control`` (as inside ``edgerun node --embedded-control``),
``/healthz`` answers for load balancers, anything else is 404. The body cap is the
bundle cap plus room for the tar overhead, so a bundle is refused by the bundle
validator (with its own message) before the HTTP layer refuses it.

With ``nats_url`` the state lives in NATS JetStream (``control.jetstream``) and
``state_dir`` only caches bundles: several control processes may serve the same state,
and a restarted one loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edgerun.control.api import CONTROL_PREFIX, ControlApi
from edgerun.control.store import ControlState, ControlStore
from edgerun.errors import error_body
from edgerun.http import Request, Response
from edgerun.node.server import After, serve
from edgerun.security.bundle import BundleLimits
from edgerun.security.limits import HttpLimits

__all__ = ["run_control"]


async def run_control(
    *,
    host: str,
    port: int,
    state_dir: Path,
    on_ready: Callable[[str, int], None],
    bundle_limits: BundleLimits | None = None,
    nats_url: str | None = None,
) -> None:
    """Serve the control API for the store in ``state_dir`` (or NATS) until SIGINT/SIGTERM."""
    limits = bundle_limits or BundleLimits()
    store: ControlState
    if nats_url:
        from edgerun.control.jetstream import JetStreamControlStore

        # Connecting blocks (the store has its own loop): keep this loop free meanwhile.
        store = await asyncio.to_thread(
            JetStreamControlStore, nats_url, state_dir, bundle_limits=limits
        )
    else:
        store = ControlStore(state_dir, bundle_limits=limits)
    api = ControlApi(store)

    async def dispatch(request: Request) -> tuple[Response, After | None]:
        if request.path.startswith(CONTROL_PREFIX):
            return await api.handle(request), None
        if request.path == "/healthz":
            return Response.json({"status": "ok"}), None
        return Response.json(error_body("not_found", "see /__edgerun/control/v1"), 404), None

    stop = asyncio.Event()

    async def release() -> None:
        await stop.wait()
        api.close()

    releaser = asyncio.create_task(release())
    try:
        await serve(
            dispatch,
            host=host,
            port=port,
            limits=HttpLimits(max_body_bytes=limits.max_compressed_bytes + 1024 * 1024),
            on_ready=on_ready,
            shutdown=stop,
        )
    finally:
        releaser.cancel()
        store.close()
