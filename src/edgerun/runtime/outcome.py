"""How one request ended: the ``Outcome`` enum shared by HTTP errors, logs, metrics, metering.

Every invocation ends in exactly one outcome. The value is a short stable string, so it
can be used directly as a metric label, a log field or a usage-metering column.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from edgerun.errors import LimitExceeded, WorkerCrashed, WorkerError

__all__ = ["Outcome"]


class Outcome(StrEnum):
    """How a request ended (a ``str`` enum: ``Outcome.OK == "ok"``).

    ``ok`` means the handler returned a response (whatever its status); ``exception``
    means it raised (or returned something that is not a response); the ``exceeded_*``
    values are limit violations (HTTP 503); ``worker_crashed`` is a dead worker
    process (HTTP 502); ``canceled`` is a request abandoned before it finished
    (the client went away or the node is shutting down).
    """

    OK = "ok"
    EXCEPTION = "exception"
    EXCEEDED_CPU = "exceeded_cpu"
    EXCEEDED_WALL = "exceeded_wall"
    EXCEEDED_MEMORY = "exceeded_memory"
    WORKER_CRASHED = "worker_crashed"
    CANCELED = "canceled"

    @classmethod
    def of(cls, exc: BaseException | None) -> Outcome:
        """The outcome a request has when it ended with ``exc`` (``None`` -> ``ok``).

        ``LimitExceeded(kind)`` maps to ``exceeded_<kind>``, ``WorkerCrashed`` to
        ``worker_crashed``, ``asyncio.CancelledError`` to ``canceled`` and anything
        else to ``exception``.
        """
        if exc is None:
            return cls.OK
        if isinstance(exc, LimitExceeded):
            try:
                return cls(f"exceeded_{exc.kind}")
            except ValueError:
                return cls.EXCEPTION
        if isinstance(exc, WorkerCrashed):
            return cls.WORKER_CRASHED
        if isinstance(exc, asyncio.CancelledError):
            return cls.CANCELED
        return cls.EXCEPTION

    def error(self, message: str = "") -> WorkerError:
        """The ``edgerun.errors`` exception to answer with for a limit or crash outcome.

        ``exceeded_<kind>`` gives ``LimitExceeded(kind)`` (503, code ``exceeded_<kind>``)
        and ``worker_crashed`` gives ``WorkerCrashed`` (502); pass the result to
        ``edgerun.errors.to_http``. Raises ``ValueError`` for ``ok``, ``exception`` and
        ``canceled``, which have no error of their own (the handler's exception, or
        nothing, is the error).
        """
        if self is Outcome.WORKER_CRASHED:
            return WorkerCrashed(message or "the worker running this request crashed")
        if self.value.startswith("exceeded_"):
            return LimitExceeded(self.value.removeprefix("exceeded_"), message)
        raise ValueError(f"outcome {self.value!r} has no error of its own")
