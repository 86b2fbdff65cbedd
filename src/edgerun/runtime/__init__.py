"""Run one request: load the entry point, invoke it under limits, drain ``wait_until``.

The node uses ``load_entry`` to import a project's main module, builds an ``Env`` of
its bindings and vars, and runs requests through an ``Invoker``
(``InProcessInvoker`` here; worker processes in the isolated mode). Every request ends
in an ``Outcome``. This package imports only edgerun's leaves (types, errors, http,
clock) and binding protocols, never a binding backend or the node.
"""

from edgerun.runtime.asgi import AsgiHandler, AsgiLifespan
from edgerun.runtime.env import Env
from edgerun.runtime.invoke import (
    REQUEST_ID_HEADER,
    Context,
    InProcessInvoker,
    Invocation,
    Invoker,
)
from edgerun.runtime.limits import InProcessLimits, LimitEnforcer, RuntimeLimits, Usage
from edgerun.runtime.loader import (
    Entry,
    EntryKind,
    ScheduledHandler,
    WorkerEntrypoint,
    load_entry,
    unload,
)
from edgerun.runtime.outcome import Outcome

__all__ = [
    "REQUEST_ID_HEADER",
    "AsgiHandler",
    "AsgiLifespan",
    "Context",
    "Entry",
    "EntryKind",
    "Env",
    "InProcessInvoker",
    "InProcessLimits",
    "Invocation",
    "Invoker",
    "LimitEnforcer",
    "Outcome",
    "RuntimeLimits",
    "ScheduledHandler",
    "Usage",
    "WorkerEntrypoint",
    "load_entry",
    "unload",
]
