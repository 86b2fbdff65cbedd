"""Make a node serve what the control plane says: hot swaps, splits, forced previews.

``ControlSync.apply(state)`` takes the control plane's desired state (``/state``: per
project the active version, an optional split and a secrets revision) and brings the
node there: it opens a ``Deployment`` for every version that must serve (reusing the
ones already open), hands the active one to ``Node.replace`` (atomic for new requests;
the old one drains, then closes) and closes split variants no longer needed once
their in-flight requests are done. Applies are serialised; a failing version (bad
entry point) is logged and the project keeps serving what it served.

Two ways to follow a control plane (:func:`attach_control`):

- embedded (``edgerun node --embedded-control``): the store's change listener wakes a
  loop in this process, which applies the new state directly;
- remote (``edgerun node --control URL --token T``, a ``node``-scoped token): a loop
  long-polls ``GET /v1/state?after=<revision>&wait=20``, so a change arrives within
  one round trip, downloads bundles it lacks (validated again on this side) and
  reports this node's usage after each poll.

Each project's KV data and secrets live in ``<state_dir>/projects/<name>/``, shared by
all its versions; secrets are written there from the control plane before a version
opens (a secrets change reopens the project's versions so ``env`` sees it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from edgerun.config import load_project
from edgerun.control.api import CONTROL_PREFIX, ControlApi
from edgerun.control.secrets import SecretStore
from edgerun.control.store import ControlState, ControlStore
from edgerun.control.tokens import Principal, allows
from edgerun.edge.split import COOKIE, COOKIE_MAX_AGE_S, Split
from edgerun.errors import EdgerunError
from edgerun.http import Request
from edgerun.node.app import Node
from edgerun.node.deployment import Deployment
from edgerun.node.versions import VERSION_HEADER
from edgerun.security.bundle import unpack_bundle

__all__ = ["ControlLink", "ControlSource", "ControlSync", "LocalSource", "RemoteSource"]

log = logging.getLogger("edgerun.sync")

_MAX_PREVIEWS = 2  # forced-version deployments kept open per project
# Retries of a project whose new version failed to open for a reason that may pass:
# 0.2 + 0.4 + 0.8 + 1.6 s of backoff, within a JetStream leader election.
_APPLY_ATTEMPTS = 5
_APPLY_BACKOFF_S = 0.2
_TOKEN_CACHE_S = 30.0
_POLL_WAIT_S = 20


class ControlSource(Protocol):
    """Where a node gets bundles, secret values and token checks from."""

    async def bundle_dir(self, version: str) -> Path:
        """The extracted bundle of ``version`` on this machine."""
        ...

    async def secrets(self, project: str) -> dict[str, str]:
        """The secret values of ``project``."""
        ...

    async def verify(self, token: str) -> Principal | None:
        """The owner of an API token, or None."""
        ...


class LocalSource:
    """A control store in this process (``--embedded-control``)."""

    def __init__(self, store: ControlState) -> None:
        self.store = store

    async def bundle_dir(self, version: str) -> Path:
        """The store's own extracted copy."""
        return self.store.bundle_dir(version)

    async def secrets(self, project: str) -> dict[str, str]:
        """Straight from the store."""
        return self.store.secret_values(project)

    async def verify(self, token: str) -> Principal | None:
        """Straight from the store."""
        return self.store.verify_token(token)


class RemoteSource:
    """A control plane reached over HTTP with a ``node`` token; bundles cached locally."""

    def __init__(self, url: str, token: str, cache_dir: Path) -> None:
        self.base = url.rstrip("/") + CONTROL_PREFIX + "/v1"
        self.cache_dir = cache_dir
        self.client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60.0)
        )
        self._verified: dict[str, tuple[Principal | None, float]] = {}

    async def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` under the API; raise ``httpx.HTTPStatusError`` on a non-2xx."""
        r = await self.client.get(self.base + path, params=params)
        r.raise_for_status()
        return r.json()

    async def bundle_dir(self, version: str) -> Path:
        """Download, validate and extract the bundle once; later calls hit the cache."""
        path = self.cache_dir / version
        if path.is_dir():
            return path
        r = await self.client.get(f"{self.base}/versions/{version}/bundle")
        r.raise_for_status()
        bundle = await asyncio.to_thread(unpack_bundle, r.content, self.cache_dir)
        if bundle.version != version:
            raise RuntimeError(f"the control plane sent {bundle.version} for {version}")
        return bundle.path

    async def secrets(self, project: str) -> dict[str, str]:
        """Fetched from the node-only endpoint."""
        data = await self.get_json(f"/projects/{project}/secret-values")
        return dict(data["secrets"])

    async def verify(self, token: str) -> Principal | None:
        """Asks ``/whoami`` with that token; answers are cached for 30 s."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._verified.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        r = await self.client.get(
            self.base + "/whoami", headers={"authorization": f"Bearer {token}"}
        )
        principal = None
        if r.status_code == 200:
            body = r.json()
            principal = Principal(body["name"], body["scope"])
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified[key] = (principal, now + _TOKEN_CACHE_S)
        return principal

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()


@dataclass
class _Project:
    """What this node serves for one control-managed project."""

    active: str
    deployments: dict[str, Deployment]  # by version; includes the active (the primary)
    split: Split | None
    secrets_rev: int
    previews: OrderedDict[str, Deployment] = field(default_factory=OrderedDict)

    def version_of(self, deployment: Deployment) -> str | None:
        for version, d in (*self.deployments.items(), *self.previews.items()):
            if d is deployment:
                return version
        return None


class ControlSync:
    """Applies desired state to a ``Node``; also its ``VersionChooser``."""

    def __init__(
        self,
        node: Node,
        source: ControlSource,
        state_dir: Path,
        *,
        debug: bool,
        nats_url: str | None = None,
    ) -> None:
        self.node = node
        self.source = source
        self.state_dir = state_dir
        self.debug = debug
        self.nats_url = nats_url  # for deployments' KV namespaces on NATS
        self.revision = -1
        self._projects: dict[str, _Project] = {}
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    # -- applying state ---------------------------------------------------------------

    async def apply(self, state: dict[str, Any]) -> None:
        """Bring the node to ``state`` (the ``/state`` document); see the module docstring."""
        async with self._lock:
            for name, desired in state["projects"].items():
                if desired.get("active") is None:
                    continue
                await self._apply_with_retries(name, desired)
            self.revision = int(state["revision"])

    async def _apply_with_retries(self, name: str, desired: dict[str, Any]) -> None:
        """Apply one project; retry failures that may pass (a NATS leader election, a
        dropped connection) with backoff, but not a bad bundle or config, which stays
        bad. On giving up the previous version keeps serving."""
        for attempt in range(_APPLY_ATTEMPTS):
            try:
                await self._apply_project(name, desired)
                return
            except Exception as exc:
                failure = exc
                if isinstance(exc, EdgerunError) or attempt + 1 == _APPLY_ATTEMPTS:
                    break
                log.warning("applying %s failed (%r); retrying", name, exc)
                await asyncio.sleep(_APPLY_BACKOFF_S * 2**attempt)
        log.error(
            "cannot serve %s as the control plane asks; keeping the old",
            name,
            exc_info=failure,
        )

    async def _apply_project(self, name: str, desired: dict[str, Any]) -> None:
        active: str = desired["active"]
        raw_split = desired.get("split")
        split = (
            Split.create(raw_split["weights"], key=raw_split.get("key", "cookie"), salt=name)
            if raw_split
            else None
        )
        needed = {active, *(split.versions if split else ())}
        current = self._projects.get(name)
        secrets_rev = int(desired.get("secrets_rev", 0))
        reuse: dict[str, Deployment] = {}
        if current is not None and current.secrets_rev == secrets_rev:
            reuse = {**current.previews, **current.deployments}
        else:
            await self._write_secrets(name)
        old_primary = current.deployments.get(current.active) if current else None
        opened: dict[str, Deployment] = {}
        for version in sorted(needed):
            candidate = reuse.get(version)
            # Node.replace closes the old primary: never keep it as a mere variant.
            if candidate is None or (candidate is old_primary and version != active):
                candidate = await self._open(name, version)
            opened[version] = candidate
        if (
            current is not None
            and current.active == active
            and current.split == split
            and current.deployments == opened
        ):
            return
        kept = set(map(id, opened.values()))
        stale = []
        if current is not None:
            for d in (*current.deployments.values(), *current.previews.values()):
                if id(d) not in kept and d is not old_primary:
                    stale.append(d)
        # Publish the table and swap the primary with no await in between, so a request
        # never sees the new split with the old primary or the reverse.
        self._projects[name] = _Project(active, opened, split, secrets_rev)
        await self.node.replace(opened[active])
        for d in stale:
            self._close_later(d)
        shares = " split " + ",".join(f"{v}={w}" for v, w in split.weights.items()) if split else ""
        # A stable stdout line: tests and scripts wait for it instead of polling.
        print(f"edgerun: serving {name} {active}{shares}", flush=True)

    async def _open(self, project: str, version: str) -> Deployment:
        root = await self.source.bundle_dir(version)
        config = load_project(root)
        if config.name != project:
            raise RuntimeError(f"version {version} is project {config.name}, not {project}")
        return await Deployment.open(
            config, state_dir=self._project_dir(project), debug=self.debug, nats_url=self.nats_url
        )

    def _project_dir(self, project: str) -> Path:
        return self.state_dir / "projects" / project

    async def _write_secrets(self, project: str) -> None:
        values = await self.source.secrets(project)
        store = SecretStore(self._project_dir(project))
        for name in set(store.names()) - set(values):
            store.delete(name)
        for name, value in values.items():
            store.put(name, value)

    def _close_later(self, deployment: Deployment) -> None:
        task = asyncio.get_running_loop().create_task(deployment.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close split variants and previews (the node closes the primaries)."""
        async with self._lock:
            for project in self._projects.values():
                primary = project.deployments.get(project.active)
                for d in (*project.deployments.values(), *project.previews.values()):
                    if d is not primary:
                        self._close_later(d)
            self._projects.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- choosing a version per request ------------------------------------------------

    def fixed(self, deployment: Deployment) -> list[tuple[str, str]] | None:
        """See ``VersionChooser.fixed``."""
        project = self._projects.get(deployment.name)
        if project is None:
            return []
        if project.split is not None:
            return None
        return [(VERSION_HEADER, project.version_of(deployment) or project.active)]

    async def choose(
        self, deployment: Deployment, request: Request
    ) -> tuple[Deployment, list[tuple[str, str]]]:
        """Split, forced-preview and version-header logic (see ``node.versions``)."""
        project = self._projects.get(deployment.name)
        if project is None:
            return deployment, []
        forced = request.headers.get(VERSION_HEADER)
        if forced:
            chosen = await self._forced(deployment.name, project, forced, request)
            if chosen is not None:
                return chosen, [(VERSION_HEADER, forced)]
        split = project.split
        if split is None:
            version = project.version_of(deployment) or project.active
            return deployment, [(VERSION_HEADER, version)]
        assignment = split.assign(request.cookies.get(COOKIE), request.headers.get)
        chosen = project.deployments.get(assignment.version, deployment)
        headers = [(VERSION_HEADER, assignment.version)]
        if assignment.set_cookie is not None:
            secure = "; Secure" if request.scheme == "https" else ""
            headers.append(
                (
                    "set-cookie",
                    f"{COOKIE}={assignment.set_cookie}; Max-Age={COOKIE_MAX_AGE_S}; Path=/; "
                    f"HttpOnly; SameSite=Lax{secure}",
                )
            )
        return chosen, headers

    async def _forced(
        self, name: str, project: _Project, version: str, request: Request
    ) -> Deployment | None:
        """The forced version for a holder of a ``read`` token, else None (header ignored)."""
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            principal = await self.source.verify(token.strip())
        except Exception:
            log.exception("cannot verify a token for a forced version")
            return None
        if principal is None or not allows(principal.scope, "read"):
            return None
        if version in project.deployments:
            return project.deployments[version]
        if version in project.previews:
            project.previews.move_to_end(version)
            return project.previews[version]
        async with self._lock:
            current = self._projects.get(name)
            if current is None:
                return None
            if version in current.previews:
                return current.previews[version]
            try:
                deployment = await self._open(name, version)
            except Exception as exc:
                log.info("forced version %s of %s is not available: %s", version, name, exc)
                return None
            current.previews[version] = deployment
            while len(current.previews) > _MAX_PREVIEWS:
                _, evicted = current.previews.popitem(last=False)
                self._close_later(evicted)
            return deployment


@dataclass
class ControlLink:
    """A running connection between a node and a control plane; ``close()`` ends it."""

    sync: ControlSync
    tasks: list[asyncio.Task[None]]
    api: ControlApi | None = None
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Stop watching and close what the sync opened."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.sync.close()
        for fn in self.on_close:
            await fn()


async def attach_control(
    node: Node,
    *,
    state_dir: Path,
    embedded: bool,
    url: str | None = None,
    token: str | None = None,
    debug: bool = False,
) -> ControlLink:
    """Connect ``node`` to a control plane and return the running link.

    Embedded: a store under ``state_dir/control``, its API in ``link.api`` (the caller
    mounts it at ``/__edgerun/control`` on the node's port). Remote: ``url`` + a
    ``node``-scoped ``token``. The current state is applied before returning, so the
    node is ready to serve it; raises ``ValueError`` for a remote link without both.
    """
    if embedded:
        store = ControlStore(state_dir / "control")
        api = ControlApi(store, local_usage=node.usage.snapshot)
        sync = ControlSync(node, LocalSource(store), state_dir, debug=debug)
        await sync.apply(api.state())
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_change(_revision: int) -> None:
            loop.call_soon_threadsafe(wake.set)

        store.add_listener(on_change)
        task = loop.create_task(_follow_local(sync, api, wake))
        link = ControlLink(sync, [task], api)

        async def close_store() -> None:
            store.close()

        link.on_close.append(close_store)
        return link
    if not url or not token:
        raise ValueError("a remote control plane needs both --control URL and --token")
    source = RemoteSource(url, token, state_dir / "bundles")
    sync = ControlSync(node, source, state_dir, debug=debug)
    await sync.apply(await source.get_json("/state"))
    task = asyncio.get_running_loop().create_task(_follow_remote(sync, source, node))
    return ControlLink(sync, [task], None, [source.close])


async def _follow_local(sync: ControlSync, api: ControlApi, wake: asyncio.Event) -> None:
    while True:
        await wake.wait()
        wake.clear()
        await sync.apply(api.state())


async def _follow_remote(sync: ControlSync, source: RemoteSource, node: Node) -> None:
    node_id = f"{os.uname().nodename}:{os.getpid()}"
    backoff = 0.5
    while True:
        try:
            state = await source.get_json("/state", after=sync.revision, wait=_POLL_WAIT_S)
            if int(state["revision"]) != sync.revision:
                await sync.apply(state)
            await source.client.post(
                source.base + "/usage", json={"node": node_id, "deployments": node.usage.snapshot()}
            )
            backoff = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("control plane poll failed (%s); retrying in %.1fs", exc, backoff)
            # A pause between retries of an unreachable server, not a synchronisation.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
