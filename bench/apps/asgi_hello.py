"""Baseline (a): a bare ASGI hello app for plain uvicorn; no framework, no edgerun."""

from __future__ import annotations

from typing import Any

_BODY = b"hello"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_BODY)).encode()),
    ],
}
_END = {"type": "http.response.body", "body": _BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with ``hello``; ignore other scope types."""
    if scope["type"] != "http":
        return
    await send(_START)
    await send(_END)
