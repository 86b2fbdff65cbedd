"""Request ids: random, unpredictable, and cheap to make on the per-request path."""

from __future__ import annotations

import os

__all__ = ["new_request_id"]


class _RequestIds:
    """Random 16-hex-digit ids from a buffer refilled by one ``urandom`` call per 256 ids.

    Still unpredictable (the OS CSPRNG), without a system call per request.
    """

    __slots__ = ("_buf", "_pos")

    _BATCH = 256 * 8

    def __init__(self) -> None:
        self._buf = b""
        self._pos = self._BATCH

    def __call__(self) -> str:
        pos = self._pos
        if pos >= self._BATCH:
            self._buf = os.urandom(self._BATCH)
            pos = 0
        self._pos = pos + 8
        return self._buf[pos : pos + 8].hex()


new_request_id = _RequestIds()
"""``new_request_id()``: a random 16-hex-digit request id."""
