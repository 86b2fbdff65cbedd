"""Follow control state kept in NATS JetStream: ``edgerun node --control-nats URL``.

The node needs no HTTP access to the control plane, only to NATS: it watches the
control projects bucket (see ``control.jetstream``) and hands every change to the same
:class:`~edgerun.node.sync.ControlSync` the HTTP follower uses, so hot swaps, splits and
forced previews behave identically. A new version's bundle is fetched from the object
store once, validated with ``security.bundle`` exactly as on upload, and extracted
under ``<state_dir>/bundles/<version>``; secret values are read from the secrets bucket
(NATS access is the node's credential for them) and token checks for forced versions
read the tokens bucket.

The watcher is an ordered consumer: after a NATS outage it resumes where it stopped
and the node keeps serving its last-known deployments meanwhile. Usage snapshots are
written to the usage bucket periodically, so ``edgerun usage --remote`` sums these
nodes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from edgerun.control.jetstream import ControlBuckets, usage_key
from edgerun.control.tokens import Principal
from edgerun.node.app import Node
from edgerun.node.sync import ControlLink, ControlSync
from edgerun.security.bundle import unpack_bundle

__all__ = ["NatsSource", "attach_nats_control"]

log = logging.getLogger("edgerun.sync")

_USAGE_EVERY_S: Final = 15.0


class NatsSource:
    """A ``ControlSource`` reading the control buckets; bundles cached in ``cache_dir``."""

    def __init__(self, buckets: ControlBuckets, cache_dir: Path) -> None:
        self.buckets = buckets
        self.cache_dir = cache_dir
        self._fetching: dict[str, asyncio.Lock] = {}

    async def bundle_dir(self, version: str) -> Path:
        """Fetch, validate and extract the bundle once; later calls hit the cache."""
        path = self.cache_dir / version
        if path.is_dir():
            return path
        # A split and a forced preview may ask for the same new version at once.
        async with self._fetching.setdefault(version, asyncio.Lock()):
            if path.is_dir():
                return path
            data = await self.buckets.fetch_bundle(version)
            bundle = await asyncio.to_thread(unpack_bundle, data, self.cache_dir)
        self._fetching.pop(version, None)
        if bundle.version != version:
            raise RuntimeError(f"NATS holds {bundle.version} under {version}")
        return bundle.path

    async def secrets(self, project: str) -> dict[str, str]:
        """Read from the secrets bucket."""
        return await self.buckets.secret_values(project)

    async def verify(self, token: str) -> Principal | None:
        """Checked against the tokens bucket (hashes only)."""
        return await self.buckets.verify_token(token)


async def attach_nats_control(
    node: Node,
    *,
    state_dir: Path,
    url: str,
    debug: bool = False,
    nats_url: str | None = None,
    prefix: str = "edgerun",
) -> ControlLink:
    """Follow the control state on the NATS server at ``url``; return the running link.

    The current state is applied before returning (the node is ready to serve it).
    ``nats_url`` is passed to deployments for KV namespaces on NATS.
    """
    buckets = await ControlBuckets.connect(url, prefix=prefix, name="edgerun-node")
    source = NatsSource(buckets, state_dir / "bundles")
    sync = ControlSync(node, source, state_dir, debug=debug, nats_url=nats_url)
    kv = await buckets.js.key_value(buckets.bucket("projects"))
    watcher: Any = await kv.watch(">", include_history=False)  # nats-py: untyped
    docs: dict[str, dict[str, Any]] = {}
    try:
        revision = await _read_initial(watcher, docs)
        await sync.apply(_state(revision, docs))
    except BaseException:
        await buckets.close()
        raise
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(_follow(sync, watcher, docs)),
        loop.create_task(_report_usage(buckets, node)),
    ]

    async def stop() -> None:
        with contextlib.suppress(Exception):
            await watcher.stop()
        await buckets.close()

    return ControlLink(sync, tasks, None, [stop])


async def _read_initial(watcher: Any, docs: dict[str, dict[str, Any]]) -> int:
    """Load the current documents (up to the watcher's end-of-initial-values marker)."""
    revision = 0
    while (entry := await watcher.updates(timeout=None)) is not None:
        revision = max(revision, _take(entry, docs))
    return revision


def _take(entry: Any, docs: dict[str, dict[str, Any]]) -> int:
    """Apply one watch entry to ``docs``; return its revision."""
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        docs.pop(entry.key, None)
    else:
        try:
            docs[entry.key] = json.loads(entry.value)
        except ValueError:
            log.error("ignoring a malformed control document for %s", entry.key)
    return int(entry.revision or 0)


def _state(revision: int, docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    projects = {
        name: {
            "active": doc.get("active"),
            "split": doc.get("split"),
            "secrets_rev": doc.get("secrets_rev", 0),
        }
        for name, doc in docs.items()
    }
    return {"revision": revision, "projects": projects}


async def _follow(sync: ControlSync, watcher: Any, docs: dict[str, dict[str, Any]]) -> None:
    while True:
        entry = await watcher.updates(timeout=None)
        if entry is None:
            continue
        revision = _take(entry, docs)
        # More changes already pending (a burst): take them all, then apply once.
        while entry is not None and entry.delta:
            entry = await watcher.updates(timeout=None)
            if entry is not None:
                revision = _take(entry, docs)
        await sync.apply(_state(revision, docs))


async def _report_usage(buckets: ControlBuckets, node: Node) -> None:
    node_id = f"{os.uname().nodename}:{os.getpid()}"
    key = usage_key(node_id)
    while True:
        # A reporting period, not a synchronisation: usage is eventually consistent.
        await asyncio.sleep(_USAGE_EVERY_S)
        try:
            await buckets.write("usage", key, json.dumps(node.usage.snapshot()).encode())
        except Exception as exc:
            log.warning("cannot report usage to NATS (%s); will retry", exc)
