"""One project loaded on this node: its config, bindings, env and invoker.

``Deployment.open`` wires a validated ``ProjectConfig`` into a running handler. In
``mode = "isolated"`` (the default) it starts an ``IsolatedInvoker``: a zygote process
that imports the code and forks workers, each opening the deployment's bindings
itself. In ``mode = "inprocess"`` bindings are opened here (each deployment sees only
its own), vars and secrets are added to ``env``, the entry point is loaded and run on
the node's loop. ``close`` waits for in-flight requests, then stops the invoker and
closes the bindings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edgerun.bindings.base import Binding, close_all
from edgerun.clock import Clock, SystemClock
from edgerun.config import ProjectConfig
from edgerun.control.secrets import SecretStore
from edgerun.node import firewall, wiring
from edgerun.node.state import StateDir
from edgerun.runtime.env import Env
from edgerun.runtime.invoke import InProcessInvoker, Invoker
from edgerun.runtime.isolate.invoker import IsolatedInvoker
from edgerun.runtime.limits import RuntimeLimits
from edgerun.runtime.loader import load_entry

__all__ = ["Deployment"]


class Deployment:
    """A project serving on this node; count in-flight requests to drain on swap."""

    def __init__(
        self,
        config: ProjectConfig,
        invoker: Invoker,
        bindings: dict[str, Binding],
        state: StateDir,
    ) -> None:
        self.config = config
        self.invoker = invoker
        self.bindings = bindings
        self.state = state
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        """The project name from ``edgerun.toml``."""
        return self.config.name

    @classmethod
    async def open(
        cls,
        config: ProjectConfig,
        *,
        state_dir: Path,
        clock: Clock | None = None,
        debug: bool = False,
        nats_url: str | None = None,
    ) -> Deployment:
        """Open the bindings, build ``env``, load and start the entry point.

        ``nats_url`` is the node's NATS server: KV namespaces without an explicit
        backend live there (see ``wiring.binding_specs``).

        Raises ``EntrypointError`` for a module without a usable handler and whatever
        a binding raises while opening (already-opened bindings are closed first).
        """
        clock = clock or SystemClock()
        # Absolute: workers chdir into their state dir, where a relative path would
        # point somewhere else.
        state = StateDir(Path(state_dir).resolve()).ensure()
        if config.mode == "isolated":
            spec = wiring.isolated_spec(
                config, state.path, SecretStore(state.path).load(), debug=debug, nats_url=nats_url
            )
            if spec.uid is not None:
                # Before the zygote starts: its first line of user code is confined too.
                urls = [str(b.options["url"]) for b in spec.bindings if b.options.get("url")]
                await asyncio.to_thread(
                    firewall.apply_outbound, spec.uid, config.network.outbound, urls
                )
            isolated = IsolatedInvoker(
                spec,
                wiring.pool_settings(config),
                wiring.zygote_command(spec.bindings),
                clock=clock,
                debug=debug,
            )
            await isolated.start()
            return cls(config, isolated, {}, state)
        bindings = await wiring.open_bindings(
            wiring.binding_specs(config, nats_url=nats_url), state.path, clock
        )
        try:
            values: dict[str, Any] = dict(config.vars)
            values.update(SecretStore(state.path).load())
            values.update(bindings)
            entry = load_entry(config.root, config.main)
            limits = RuntimeLimits(
                cpu_ms=config.limits.cpu_ms,
                wall_ms=config.limits.wall_ms,
                memory_mb=config.limits.memory_mb,
            )
            invoker = InProcessInvoker(entry, Env(values), limits, clock=clock, debug=debug)
            await invoker.start()
        except BaseException:
            await close_all(bindings)
            raise
        return cls(config, invoker, bindings, state)

    def enter(self) -> None:
        """Count a request in (called by the dispatcher before invoking)."""
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        """Count a request out, after its response and deferred work are done."""
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def close(self, *, drain_timeout_s: float = 30.0) -> None:
        """Wait for in-flight requests (bounded), then stop the invoker and bindings."""
        try:
            async with asyncio.timeout(drain_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            pass
        try:
            await self.invoker.stop()
        finally:
            await close_all(self.bindings)
