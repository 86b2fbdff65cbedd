"""The Cloudflare Python Workers surface, so Workers code runs on edgerun unmodified.

A file written for Workers imports from ``workers``::

    from workers import WorkerEntrypoint, Response

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({"hello": self.env.NAME})

The top-level ``workers`` module re-exports this one. ``Request`` and ``Response`` are
edgerun's own classes (``Response(body, status=..., headers=...)``,
``Response.json(...)``, ``await request.text()`` / ``json()``), so a Workers handler
returns exactly what the runtime expects. Only this core surface exists so far.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from edgerun.http import Request, Response
from edgerun.runtime.loader import WorkerEntrypoint

__all__ = ["Request", "Response", "WorkerEntrypoint", "handler"]

F = TypeVar("F", bound=Callable[..., object])


def handler(fn: F) -> F:
    """Accepted for older Workers code (``@handler async def on_fetch(request, env)``).

    Returns ``fn`` unchanged: edgerun finds ``on_fetch`` by name, no registration needed.
    """
    return fn
