"""Run an edge node: load projects, serve them, and (in dev) reload on change.

This is what ``edgerun dev`` and ``edgerun node`` call. Projects are validated before
anything listens, so a bad ``edgerun.toml`` fails fast with file, line and reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgerun.config import ProjectConfig, load_project
from edgerun.edge.geo import GeoResolver
from edgerun.errors import EdgerunError
from edgerun.node.app import Node
from edgerun.node.deployment import Deployment
from edgerun.node.handoff import NodeHandoff
from edgerun.node.server import serve
from edgerun.node.state import default_state_dir
from edgerun.node.wiring import SKIP_PATTERNS
from edgerun.runtime.loader import unload
from edgerun.security.limits import HttpLimits

__all__ = ["NodeOptions", "run_node"]

log = logging.getLogger("edgerun.node")


@dataclass(frozen=True)
class NodeOptions:
    """Everything ``run_node`` needs; the CLI fills it from its flags."""

    projects: Sequence[Path]
    host: str = "127.0.0.1"
    port: int = 8787
    server: Literal["uvicorn", "granian"] = "uvicorn"
    state_dir: Path | None = None
    dev: bool = False
    reload: bool = False
    debug: bool = False
    country: str | None = None
    region: str | None = None
    pop: str | None = None
    trusted_proxies: Sequence[str] = ()
    trust_geo_headers: bool = False
    access_log: bool = False
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # Following a control plane (node.sync): embedded in this process, or remote.
    embedded_control: bool = False
    control_url: str | None = None
    control_token: str | None = None
    # Following control state kept in NATS JetStream (node.nats_sync), no HTTP needed.
    control_nats: str | None = None
    # Scale-out: the NATS server holding KV namespaces without an explicit backend,
    # and the edge region this node serves (stamped as request.geo.pop unless --pop
    # names the location). ``region`` above is the dev geo subdivision, unrelated.
    nats_url: str | None = None
    edge_region: str | None = None


def _state_for(config: ProjectConfig, opts: NodeOptions) -> Path:
    if opts.state_dir is None:
        return default_state_dir(config.root)
    if len(opts.projects) == 1:
        return opts.state_dir
    # Several projects under one --state-dir each get their own subdirectory, so a
    # deployment never sees another's KV file or secrets.
    return opts.state_dir / config.name


async def _open(config: ProjectConfig, opts: NodeOptions) -> Deployment:
    return await Deployment.open(
        config, state_dir=_state_for(config, opts), debug=opts.debug, nats_url=opts.nats_url
    )


async def run_node(opts: NodeOptions, *, on_ready: Callable[[str, int], None]) -> None:
    """Load every project, then serve until SIGINT/SIGTERM.

    Raises ``ConfigError``/``EntrypointError`` before listening if a project is bad.
    """
    if opts.state_dir is not None:
        # Resolved once, here: deployments and workers chdir, the CLI user does not.
        opts = dataclasses.replace(opts, state_dir=opts.state_dir.resolve())
    configs = [load_project(p) for p in opts.projects]
    geo = GeoResolver(
        trusted_proxies=opts.trusted_proxies,
        trust_geo_headers=opts.trust_geo_headers,
        dev=opts.dev,
        dev_country=opts.country,
        dev_region=opts.region,
        pop=opts.pop or opts.edge_region,
    )
    node = Node(geo=geo, debug=opts.debug, access_log=opts.access_log)
    for config in configs:
        await node.replace(await _open(config, opts))
    link = await _attach_control(node, opts)
    stop = asyncio.Event()
    releaser = asyncio.create_task(_release_on_stop(stop, link)) if link is not None else None
    watcher: asyncio.Task[None] | None = None
    if opts.reload:
        watcher = asyncio.create_task(_watch(node, configs, opts))
    try:
        await serve(
            node.dispatch,
            host=opts.host,
            port=opts.port,
            server=opts.server,
            limits=opts.http_limits,
            on_ready=on_ready,
            shutdown=stop,
            diverter=NodeHandoff(node, opts.http_limits),
        )
    finally:
        if watcher is not None:
            watcher.cancel()
        if releaser is not None:
            releaser.cancel()
        if link is not None:
            await link.close()
        await node.close()


async def _attach_control(node: Node, opts: NodeOptions) -> Any:
    """Connect the node to its control plane, if the options name one (else None)."""
    nats_control = _control_nats(opts)
    if nats_control is not None:
        from edgerun.node.nats_sync import attach_nats_control

        nats_link = await attach_nats_control(
            node,
            state_dir=opts.state_dir or Path(".edgerun"),
            url=nats_control,
            debug=opts.debug,
            nats_url=opts.nats_url,
        )
        node.versions = nats_link.sync
        return nats_link
    if not (opts.embedded_control or opts.control_url):
        return None
    from edgerun.node.sync import attach_control

    link = await attach_control(
        node,
        state_dir=opts.state_dir or Path(".edgerun"),
        embedded=opts.embedded_control,
        url=opts.control_url,
        token=opts.control_token,
        debug=opts.debug,
    )
    if link.api is not None:
        node.control = link.api.handle
    node.versions = link.sync
    return link


def _control_nats(opts: NodeOptions) -> str | None:
    """The NATS server whose control state the node follows, if any.

    ``--control-nats URL`` explicitly; otherwise a node given only ``--nats URL`` (no
    project directories, no other control plane) follows the control state there too,
    since a node with nothing to serve can only mean that.
    """
    if opts.control_nats:
        return opts.control_nats
    if opts.nats_url and not opts.projects and not (opts.embedded_control or opts.control_url):
        return opts.nats_url
    return None


async def _release_on_stop(stop: asyncio.Event, link: Any) -> None:
    # Long-polling nodes would hold a graceful shutdown for their whole wait: answer
    # them as soon as the shutdown starts.
    await stop.wait()
    if link.api is not None:
        link.api.close()


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class SourceFilter:
    """The dev watcher's filter: only changes to what a deployment is made of count.

    That is the project's sources and config: every file the staged bundle would hold
    (``wiring.SKIP_PATTERNS`` excluded), minus the project's state dir, ``*.log`` and
    the files the node's own stdout and stderr go to. Without those exclusions
    ``edgerun dev > dev.log`` inside the project reloads on every log line it writes,
    and each reload writes another.
    """

    def __init__(self, roots: Mapping[Path, Path]) -> None:
        """``roots``: each project root with its state dir (either may be relative)."""
        self._roots = {root.resolve(): state.resolve() for root, state in roots.items()}
        self._own_output: set[tuple[int, int]] = set()
        for fd in (1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                self._own_output.add(_file_id(st))

    def __call__(self, _change: object, path: str) -> bool:
        """Whether a change to ``path`` should reload its project."""
        p = Path(path).resolve()
        for root, state in self._roots.items():
            if not p.is_relative_to(root):
                continue
            if p == state or p.is_relative_to(state):
                return False
            parts = p.relative_to(root).parts
            if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in SKIP_PATTERNS):
                return False
            if p.name.endswith(".log"):
                return False
            return not self._is_own_output(p)
        return False

    def _is_own_output(self, path: Path) -> bool:
        if not self._own_output:
            return False
        try:
            # A log redirected under any other name (dev.out) is still recognised.
            return _file_id(path.stat()) in self._own_output
        except OSError:  # deleted meanwhile: it was not our output, which stays open
            return False


async def _watch(node: Node, configs: list[ProjectConfig], opts: NodeOptions) -> None:
    """Reload a project when a file under its root changes, keeping the port open.

    A broken edit (bad config, syntax error) is reported and the previous version
    keeps serving, so a typo never takes the dev server down.
    """
    from watchfiles import awatch

    roots = {c.root.resolve(): c for c in configs}
    interesting = SourceFilter({root: _state_for(c, opts) for root, c in roots.items()})

    announced = False
    # yield_on_timeout makes awatch yield an empty set once its watcher is running, so
    # "watching" is printed only when an edit made from then on is sure to be seen.
    async for changes in awatch(
        *roots, watch_filter=interesting, yield_on_timeout=True, rust_timeout=500
    ):
        if not announced:
            announced = True
            print(f"edgerun: watching for changes in {len(roots)} project(s)", flush=True)
        if not changes:
            continue
        changed = {Path(p).resolve() for _, p in changes}
        for root, old in roots.items():
            if not any(root in p.parents or p == root for p in changed):
                continue
            try:
                config = load_project(old.file)
                unload(root)
                deployment = await _open(config, opts)
            except EdgerunError as exc:
                log.error(
                    "reload of %s failed, still serving the previous version: %s", old.name, exc
                )
                continue
            except Exception:
                log.exception("reload of %s failed, still serving the previous version", old.name)
                continue
            await node.replace(deployment)
            roots[root] = config
            log.info("reloaded %s", config.name)
            print(f"edgerun: reloaded {config.name}", flush=True)
