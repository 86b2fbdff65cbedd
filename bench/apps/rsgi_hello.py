"""Reference for fast mode (b): a bare RSGI hello app on granian's own server."""

from __future__ import annotations

from typing import Any

_HEADERS = [("content-type", "text/plain; charset=utf-8")]


async def app(scope: Any, protocol: Any) -> None:
    """Answer every HTTP request with ``hello`` (RSGI: granian sets content-length)."""
    if scope.proto != "http":
        return
    protocol.response_str(200, _HEADERS, "hello")
