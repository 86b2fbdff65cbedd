"""The edgerun exception tree, with stable codes and one mapping to HTTP.

Every error a user can cause is one of these; each carries a stable ``code`` (used
in JSON error bodies, logs and metrics) and an HTTP ``status``::

    EdgerunError                      internal               500
    ├── ConfigError                   config_invalid         500  (file, line, reason)
    ├── RequestError                  bad_request            400
    │   ├── MalformedJSON             malformed_json         400
    │   ├── RequestTimeout            request_timeout        408
    │   ├── PayloadTooLarge           payload_too_large      413
    │   ├── URITooLong                uri_too_long           414
    │   └── HeadersTooLarge           headers_too_large      431
    ├── NotFound                      not_found              404
    ├── BindingError                  binding_error          500
    │   ├── KVError                   kv_error               500
    │   │   ├── KVValidationError     kv_invalid             400
    │   │   ├── KVConflict            kv_conflict            409
    │   │   └── KVUnavailable         kv_unavailable         503
    │   └── CacheError                cache_error            500
    ├── HandlerError                  handler_error          500
    │   └── EntrypointError           entrypoint_invalid     500
    └── WorkerError                   worker_error           503
        ├── LimitExceeded             exceeded_<kind>        503
        ├── Overloaded                overloaded             503
        └── WorkerCrashed             worker_crashed         502

``to_http`` is the single place that turns any exception into a status and a JSON
error body; everything else (the node, the runtime, the CLI) goes through it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BindingError",
    "CacheError",
    "ConfigError",
    "EdgerunError",
    "EntrypointError",
    "HandlerError",
    "HeadersTooLarge",
    "KVConflict",
    "KVError",
    "KVUnavailable",
    "KVValidationError",
    "LimitExceeded",
    "MalformedJSON",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RequestError",
    "RequestTimeout",
    "URITooLong",
    "WorkerCrashed",
    "WorkerError",
    "error_body",
    "to_http",
]


class EdgerunError(Exception):
    """Base of every error edgerun raises on purpose; ``code`` and ``status`` are stable."""

    code: str = "internal"
    status: int = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.__class__.__doc__ or self.code


class ConfigError(EdgerunError):
    """A project or regions file is invalid: names the file, the line and what to change."""

    code = "config_invalid"

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}")


class RequestError(EdgerunError):
    """The client sent a request edgerun will not serve."""

    code = "bad_request"
    status = 400


class MalformedJSON(RequestError):
    """The request body is not valid JSON; raised by ``await request.json()``."""

    code = "malformed_json"


class RequestTimeout(RequestError):
    """The client was too slow sending its headers or body."""

    code = "request_timeout"
    status = 408


class PayloadTooLarge(RequestError):
    """The request body exceeds the node's body-size cap."""

    code = "payload_too_large"
    status = 413


class URITooLong(RequestError):
    """The request target exceeds the node's URL-length cap."""

    code = "uri_too_long"
    status = 414


class HeadersTooLarge(RequestError):
    """The request headers exceed the node's total header-size cap."""

    code = "headers_too_large"
    status = 431


class NotFound(EdgerunError):
    """No project on this node serves the requested host and path."""

    code = "not_found"
    status = 404


class BindingError(EdgerunError):
    """A binding (KV, cache, ...) failed or was used wrongly."""

    code = "binding_error"


class KVError(BindingError):
    """A KV operation failed."""

    code = "kv_error"


class KVValidationError(KVError):
    """A KV key, value, metadata or TTL breaks a documented limit; the message quotes both."""

    code = "kv_invalid"
    status = 400


class KVConflict(KVError):
    """A conditional KV write lost: the key is no longer at the revision it was checked
    against (or exists when it was required not to). Read it again and retry."""

    code = "kv_conflict"
    status = 409


class KVUnavailable(KVError):
    """The KV backend cannot be reached right now; retry later."""

    code = "kv_unavailable"
    status = 503


class CacheError(BindingError):
    """A Cache API call was used wrongly (e.g. caching a non-GET request)."""

    code = "cache_error"


class HandlerError(EdgerunError):
    """The user's handler raised or returned something that is not a response."""

    code = "handler_error"


class EntrypointError(HandlerError):
    """The project's module has no usable entry point, or ``main`` names a missing object."""

    code = "entrypoint_invalid"


class WorkerError(EdgerunError):
    """The worker running the request could not complete it."""

    code = "worker_error"
    status = 503


class LimitExceeded(WorkerError):
    """A request went over one of its limits (``kind`` is cpu, wall or memory)."""

    status = 503

    def __init__(self, kind: str, message: str = "") -> None:
        self.kind = kind
        self.code = f"exceeded_{kind}"
        super().__init__(message or f"the request exceeded its {kind} limit")


class Overloaded(WorkerError):
    """Every worker of the deployment is at its concurrency limit and the queue is full."""

    code = "overloaded"
    status = 503


class WorkerCrashed(WorkerError):
    """The worker process died while handling the request."""

    code = "worker_crashed"
    status = 502


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """Build the JSON error envelope ``{"error": {"code", "message", ...}}``."""
    return {"error": {"code": code, "message": message, **extra}}


def to_http(
    exc: BaseException, *, request_id: str | None = None, debug: bool = False
) -> tuple[int, dict[str, Any]]:
    """Map any exception to ``(status, json_body)``.

    ``EdgerunError`` keeps its own status, code and message. Anything else is a bug in
    user code: 500 ``internal`` with a generic message, plus the traceback when
    ``debug`` is true (dev mode only; production never leaks internals).
    """
    extra: dict[str, Any] = {}
    if request_id is not None:
        extra["request_id"] = request_id
    if isinstance(exc, EdgerunError):
        status, code, message = exc.status, exc.code, exc.message
    else:
        status, code = 500, "internal"
        message = "the handler raised an unexpected exception"
    if debug and not isinstance(exc, RequestError | NotFound):
        import traceback

        extra["exception"] = f"{type(exc).__name__}: {exc}"
        extra["traceback"] = "".join(traceback.format_exception(exc))
    return status, error_body(code, message, **extra)
