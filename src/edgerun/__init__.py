"""edgerun: a self-hosted edge serverless platform for Python.

Write ``async def fetch(request, env, ctx)`` (or an ASGI app), run it with
``edgerun dev``, and get KV, caches and geo as bindings on ``env``.

Names are imported lazily (PEP 562) so ``import edgerun`` stays cheap for the CLI and
for worker processes that only need a few of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgerun.bindings.cache import Cache, CacheStorage
    from edgerun.bindings.kv import KVNamespace
    from edgerun.clock import Clock, FakeClock, SystemClock
    from edgerun.errors import EdgerunError
    from edgerun.http import Geo, Headers, QueryParams, Request, Response, Secret
    from edgerun.runtime.env import Env
    from edgerun.runtime.invoke import Context
    from edgerun.runtime.outcome import Outcome

__all__ = [
    "Cache",
    "CacheStorage",
    "Clock",
    "Context",
    "EdgerunError",
    "Env",
    "FakeClock",
    "Geo",
    "Headers",
    "KVNamespace",
    "Outcome",
    "QueryParams",
    "Request",
    "Response",
    "Secret",
    "SystemClock",
    "__version__",
    "caches",
]

__version__ = "0.1.0"

_LAZY = {
    "Cache": "edgerun.bindings.cache",
    "CacheStorage": "edgerun.bindings.cache",
    "KVNamespace": "edgerun.bindings.kv",
    "Clock": "edgerun.clock",
    "FakeClock": "edgerun.clock",
    "SystemClock": "edgerun.clock",
    "EdgerunError": "edgerun.errors",
    "Geo": "edgerun.http",
    "Headers": "edgerun.http",
    "QueryParams": "edgerun.http",
    "Request": "edgerun.http",
    "Response": "edgerun.http",
    "Secret": "edgerun.http",
    "Env": "edgerun.runtime.env",
    "Context": "edgerun.runtime.invoke",
    "Outcome": "edgerun.runtime.outcome",
}


def __getattr__(name: str) -> Any:
    if name == "caches":
        # The process-wide Cache API storage (``caches.default``), created on first use.
        from edgerun.bindings.cache import CacheStorage

        value: Any = CacheStorage()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
