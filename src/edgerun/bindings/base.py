"""What every binding shares: the ``Binding`` protocol and opening/closing a set of them.

A binding is the object user code sees on ``env`` (``env.KV``, ``env.DB``...). Each kind
has the same life cycle: open from config, use, ``await close()``. The node opens all
of a deployment's bindings with ``open_all`` and releases them with ``close_all``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Binding", "close_all", "open_all"]

_log = logging.getLogger("edgerun.bindings")


@runtime_checkable
class Binding(Protocol):
    """An opened binding: anything that can release its resources with ``await close()``.

    ``close()`` must be idempotent (a second call does nothing) and must not raise for
    a binding that is already closed.
    """

    async def close(self) -> None:
        """Release the binding's connections, files and tasks."""
        ...


B = TypeVar("B", bound=Binding)


async def open_all(openers: Mapping[str, Callable[[], Awaitable[B]]]) -> dict[str, B]:
    """Open every binding, in mapping order, and return them under the same names.

    All or nothing: if an opener raises (or the call is cancelled), the bindings opened
    so far are closed (see ``close_all``) and the original exception propagates, so a
    deployment that fails to start leaks no connections.
    """
    opened: dict[str, B] = {}
    try:
        for name, opener in openers.items():
            opened[name] = await opener()
    except BaseException:
        await close_all(opened)
        raise
    return opened


async def close_all(bindings: Mapping[str, Binding]) -> None:
    """Close every binding, last opened first; never raises for a failing ``close()``.

    A binding whose ``close()`` raises is logged (with its name and traceback) and the
    rest are still closed: one broken connection must not keep the others open.
    Cancellation (``BaseException``) is not swallowed.
    """
    for name, binding in reversed(list(bindings.items())):
        try:
            await binding.close()
        except Exception:
            _log.exception("closing binding %r failed", name)
