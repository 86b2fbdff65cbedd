"""The control plane's HTTP JSON API, as a handler of ``edgerun.http`` requests.

Mounted under ``/__edgerun/control`` both by ``edgerun control`` (its own server) and
inside ``edgerun node --embedded-control`` (the node's port), so a client only ever
needs ``--to http://host:port``. Every call needs ``authorization: Bearer <token>``:
missing or unknown -> 401 ``unauthorized``, wrong scope -> 403 ``forbidden``. Errors
are the usual ``{"error": {"code", "message"}}`` envelope (bundle errors add
``member``).

=======  =========================================  =======  ============================
method   path under /__edgerun/control/v1           scope    does
=======  =========================================  =======  ============================
GET      /whoami                                    any      the token's name and scope
POST     /versions?message=M&activate=1             deploy   upload a .tar.gz; 201 new / 200 known
GET      /projects                                  read     every project's state
GET      /projects/P/versions                       read     versions, newest first
POST     /projects/P/promote  {"version"}           deploy   set the active version
POST     /projects/P/rollback {"version"?}          deploy   previous (or given) version
PUT      /projects/P/split {"weights", "key"?}      deploy   weighted sticky split
DELETE   /projects/P/split                          deploy   back to the active version
GET      /projects/P/secrets                        read     secret names (never values)
PUT      /projects/P/secrets/NAME {"value"}         deploy   set a secret
DELETE   /projects/P/secrets/NAME                   deploy   delete a secret
GET      /usage                                     read     usage summed over nodes
POST     /tokens {"scope", "name"?}                 admin    create a token (shown once)
GET      /state?after=N&wait=S                      node     long-poll the desired state
GET      /versions/V/bundle                         node     the uploaded .tar.gz
GET      /projects/P/secret-values                  node     secret values, for env
POST     /usage {"node", "deployments"}             node     a node's usage report
=======  =========================================  =======  ============================

``/state`` answers at once when the revision is past ``after``, else waits up to
``wait`` seconds (max 30) for a change: nodes learn of a deploy within one round trip.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from edgerun.control.store import ControlError, ControlState
from edgerun.control.tokens import Principal, allows
from edgerun.edge.split import SplitError
from edgerun.errors import EdgerunError, NotFound, error_body
from edgerun.http import Request, Response
from edgerun.security.bundle import BundleError

__all__ = ["CONTROL_PREFIX", "ControlApi", "merge_usage"]

CONTROL_PREFIX: Final = "/__edgerun/control"
"""Where the API is mounted, on its own server and inside a node alike."""

_V1: Final = CONTROL_PREFIX + "/v1"
_MAX_WAIT_S: Final = 30.0
_PROJECT = r"(?P<project>[a-z0-9][a-z0-9-]{0,62})"

UsageSource = Callable[[], dict[str, dict[str, Any]]]
Handler = Callable[["ControlApi", Request, Principal, dict[str, str]], Awaitable[Response]]


class _Unauthorized(EdgerunError):
    code = "unauthorized"
    status = 401


class _Forbidden(EdgerunError):
    code = "forbidden"
    status = 403


class ControlApi:
    """Answers ``/__edgerun/control/v1/*`` from a ``ControlState`` (SQLite or JetStream).

    ``local_usage`` (the embedding node's meter) is added to the usage nodes report.
    Create it inside the event loop that serves it (long-polls wait on that loop).
    """

    def __init__(self, store: ControlState, *, local_usage: UsageSource | None = None) -> None:
        self.store = store
        self.local_usage = local_usage
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._closed = False
        store.add_listener(self._on_change)

    def close(self) -> None:
        """Release every waiting long-poll now (server shutdown must not wait for them)."""
        self._closed = True
        self._wake()

    def _on_change(self, _revision: int) -> None:
        # Store writes may happen in a worker thread (bundle extraction).
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def authenticate(self, request: Request) -> Principal | None:
        """The principal of the request's bearer token, or None."""
        auth = request.headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.store.verify_token(token.strip())

    async def handle(self, request: Request) -> Response:
        """Answer one API request (any path under ``CONTROL_PREFIX``); never raises."""
        try:
            for method, pattern, scope, handler in _ROUTES:
                match = pattern.fullmatch(request.path)
                if match is None:
                    continue
                if request.method != method:
                    continue
                principal = self.authenticate(request)
                if principal is None:
                    raise _Unauthorized(
                        "a valid token is required: authorization: Bearer <token> "
                        "(create one with `edgerun token create`)"
                    )
                if not allows(principal.scope, scope):
                    raise _Forbidden(
                        f"this needs a {scope!r} token; {principal.name!r} has scope "
                        f"{principal.scope!r}"
                    )
                return await handler(self, request, principal, match.groupdict())
            if any(p.fullmatch(request.path) for _, p, _, _ in _ROUTES):
                return _error(405, "method_not_allowed", f"{request.method} is not allowed here")
            raise NotFound(f"no control endpoint {request.path}")
        except BundleError as exc:
            return _error(exc.status, exc.code, exc.message, member=exc.member)
        except SplitError as exc:
            return _error(400, "split_invalid", str(exc))
        except EdgerunError as exc:
            return _error(exc.status, exc.code, exc.message)

    # -- handlers ---------------------------------------------------------------------

    async def _whoami(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        return Response.json({"name": who.name, "scope": who.scope})

    async def _upload(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        data = await r.body()
        message = r.query.get("message", "")
        activate = r.query.get("activate", "1") not in ("0", "false", "no")
        # Extraction and fsync can take a while for big bundles: keep the loop free.
        record, created = await asyncio.to_thread(
            self.store.add_version, data, author=who.name, message=message, activate=activate
        )
        state = self.store.project(record.project)
        body = {"version": record.as_dict(), "created": created, "project": state.as_dict()}
        return Response.json(body, status=201 if created else 200)

    async def _projects(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        return Response.json({"projects": {p.name: p.as_dict() for p in self.store.projects()}})

    async def _versions(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        state = self.store.project(m["project"])
        versions = [
            {**v.as_dict(), "active": v.id == state.active}
            for v in self.store.versions(m["project"])
        ]
        return Response.json({"project": state.as_dict(), "versions": versions})

    async def _promote(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        version = _field(await _json(r), "version", str)
        state = self.store.promote(m["project"], version, author=who.name)
        return Response.json({"project": state.as_dict()})

    async def _rollback(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        body = await _json(r) if await r.body() else {}
        version = body.get("version")
        if version is not None and not isinstance(version, str):
            raise ControlError("version must be a string")
        state = self.store.rollback(m["project"], version, author=who.name)
        return Response.json({"project": state.as_dict()})

    async def _put_split(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        body = await _json(r)
        weights = _field(body, "weights", dict)
        key = body.get("key", "cookie")
        if not isinstance(key, str):
            raise ControlError("key must be a string: 'cookie' or 'header:<name>'")
        state = self.store.set_split(m["project"], weights, key=key)
        return Response.json({"project": state.as_dict()})

    async def _delete_split(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        state = self.store.set_split(m["project"], None)
        return Response.json({"project": state.as_dict()})

    async def _secret_names(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        return Response.json({"secrets": self.store.secret_names(m["project"])})

    async def _put_secret(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        value = _field(await _json(r), "value", str)
        self.store.put_secret(m["project"], m["name"], value)
        return Response.json({"stored": m["name"]})

    async def _delete_secret(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        if not self.store.delete_secret(m["project"], m["name"]):
            raise NotFound(f"{m['project']} has no secret named {m['name']!r}")
        return Response.json({"deleted": m["name"]})

    async def _secret_values(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        return Response.json({"secrets": self.store.secret_values(m["project"])})

    async def _usage(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        snapshots = dict(self.store.reported_usage())
        if self.local_usage is not None:
            snapshots["local"] = self.local_usage()
        return Response.json({"deployments": merge_usage(snapshots.values())})

    async def _report_usage(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        body = await _json(r)
        node = _field(body, "node", str)
        self.store.report_usage(node[:200], _field(body, "deployments", dict))
        return Response.json({"ok": True})

    async def _create_token(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        body = await _json(r)
        name = body.get("name")
        token, owner = self.store.create_token(
            _field(body, "scope", str), name if isinstance(name, str) else None
        )
        return Response.json({"token": token, "name": owner.name, "scope": owner.scope}, 201)

    async def _state(self, r: Request, who: Principal, _: dict[str, str]) -> Response:
        after = _int(r.query.get("after", "-1"), "after")
        wait = min(max(float(_int(r.query.get("wait", "0"), "wait")), 0.0), _MAX_WAIT_S)
        if self.store.revision <= after and wait > 0 and not self._closed:
            changed = self._changed
            if self.store.revision <= after:  # re-check: no await between check and wait
                try:
                    async with asyncio.timeout(wait):
                        await changed.wait()
                except TimeoutError:
                    pass
        return Response.json(self.state())

    def state(self) -> dict[str, Any]:
        """The desired state of every project plus the store revision it reflects."""
        revision = self.store.revision
        projects = {p.name: p.as_dict() for p in self.store.projects()}
        return {"revision": revision, "projects": projects}

    async def _bundle(self, r: Request, who: Principal, m: dict[str, str]) -> Response:
        data = await asyncio.to_thread(self.store.bundle_archive(m["version"]).read_bytes)
        return Response(data, headers={"content-type": "application/gzip"})


def _route(method: str, path: str, scope: str, handler: Handler) -> tuple[Any, ...]:
    return (method, re.compile(_V1 + path), scope, handler)


_VERSION = r"(?P<version>v[0-9a-f]{12})"
_NAME = r"(?P<name>[A-Za-z_][A-Za-z0-9_]{0,127})"
_ROUTES: Final[list[tuple[str, re.Pattern[str], str, Handler]]] = [
    _route("GET", "/whoami", "read", ControlApi._whoami),
    _route("POST", "/versions", "deploy", ControlApi._upload),
    _route("GET", "/projects", "read", ControlApi._projects),
    _route("GET", f"/projects/{_PROJECT}/versions", "read", ControlApi._versions),
    _route("POST", f"/projects/{_PROJECT}/promote", "deploy", ControlApi._promote),
    _route("POST", f"/projects/{_PROJECT}/rollback", "deploy", ControlApi._rollback),
    _route("PUT", f"/projects/{_PROJECT}/split", "deploy", ControlApi._put_split),
    _route("DELETE", f"/projects/{_PROJECT}/split", "deploy", ControlApi._delete_split),
    _route("GET", f"/projects/{_PROJECT}/secrets", "read", ControlApi._secret_names),
    _route("PUT", f"/projects/{_PROJECT}/secrets/{_NAME}", "deploy", ControlApi._put_secret),
    _route("DELETE", f"/projects/{_PROJECT}/secrets/{_NAME}", "deploy", ControlApi._delete_secret),
    _route("GET", f"/projects/{_PROJECT}/secret-values", "node", ControlApi._secret_values),
    _route("GET", "/usage", "read", ControlApi._usage),
    _route("POST", "/usage", "node", ControlApi._report_usage),
    _route("POST", "/tokens", "admin", ControlApi._create_token),
    _route("GET", "/state", "node", ControlApi._state),
    _route("GET", f"/versions/{_VERSION}/bundle", "node", ControlApi._bundle),
]


def merge_usage(snapshots: Any) -> dict[str, dict[str, Any]]:
    """Sum per-deployment usage snapshots (``UsageMeter.snapshot()`` shapes) from many nodes."""
    total: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for name, usage in snapshot.items():
            into = total.setdefault(name, {})
            for key, value in usage.items():
                if isinstance(value, dict):
                    counts = into.setdefault(key, {})
                    for k, v in value.items():
                        counts[k] = counts.get(k, 0) + v
                elif isinstance(value, int | float):
                    into[key] = round(into.get(key, 0) + value, 3)
    return dict(sorted(total.items()))


async def _json(request: Request) -> dict[str, Any]:
    body = await request.json()
    if not isinstance(body, dict):
        raise ControlError("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise ControlError(f"{name!r} is required and must be a {kind.__name__}")
    return value


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ControlError(f"{name} must be an integer, got {value[:40]!r}") from None


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response.json(error_body(code, message, **extra), status=status)
