"""Shapes named once: handler signatures and the ASGI callables.

These are aliases only (no behaviour), so every layer can import them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgerun.http import Request, Response

__all__ = ["ASGIApp", "Handler", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The normalised handler every entry-point style is adapted to by runtime/loader.py:
# ``await handler(request, env, ctx)`` returns a Response.
Handler = Callable[["Request", Any, Any], Awaitable["Response"]]
