"""Baseline (d): a bare ASGI app doing one stdlib sqlite3 point read per request.

The database path comes from ``BENCH_SQLITE_PATH``; bench/run.py creates it (WAL,
table ``t(key, value)``, key ``k`` = ``v``) before starting uvicorn. The connection is
opened at import because the baseline runs with lifespan off.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

_SELECT = "SELECT value FROM t WHERE key = ?"
_conn = sqlite3.connect(os.environ["BENCH_SQLITE_PATH"], check_same_thread=False)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with the value stored under key ``k``."""
    if scope["type"] != "http":
        return
    row = _conn.execute(_SELECT, ("k",)).fetchone()
    body = bytes(row[0]) if row is not None else b""
    await send(
        {
            "type": "http.response.start",
            "status": 200 if row is not None else 404,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
