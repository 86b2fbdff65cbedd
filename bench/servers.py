"""Start the servers under test as subprocesses pinned to one core, and always stop them.

Each server runs in its own session (process group), so a Ctrl-C on the terminal does
not reach it half-way through a measurement, and ``stop`` can end the server together
with any workers it forked (granian workers, edgerun's isolated worker pool).
``ServerPool`` remembers everything it started so the harness can stop it all in a
``finally``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RunningServer",
    "ServerError",
    "ServerPool",
    "check_response",
    "free_port",
]

_READY = re.compile(r"edgerun: ready on http://(\S+):(\d+)")
# The node may fork a zygote and import user code before it listens.
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


class ServerError(RuntimeError):
    """A server did not start, died, or answered something unexpected.

    ``server`` is the server concerned when there is one, so the caller can quote the
    end of its output and point at its log file.
    """

    def __init__(self, message: str, server: RunningServer | None = None) -> None:
        super().__init__(message)
        self.server = server


@dataclass
class RunningServer:
    """A server subprocess listening on ``url``; its output goes to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    _stopped: bool = field(default=False, repr=False)

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the server's output (for error messages)."""
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after a grace period."""
        if self._stopped:
            return
        self._stopped = True
        pgid = self.process.pid  # start_new_session=True made the server its group leader
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(_STOP_TIMEOUT_S)
        # Workers can outlive a leader that exited on SIGTERM; they are still in the group.
        _signal_group(pgid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_response(url: str, expect_body: bytes, timeout_s: float = 10.0) -> None:
    """GET ``url`` once and require status 200 with body ``expect_body``.

    Run before timing, so a scenario that answers 404 or 500 quickly is reported as
    broken instead of as fast. Raises ``ServerError`` with what came back.
    """
    match = re.fullmatch(r"http://([^/:]+):(\d+)(/.*)?", url)
    if match is None:
        raise ServerError(f"unsupported URL {url!r}")
    conn = http.client.HTTPConnection(match.group(1), int(match.group(2)), timeout=timeout_s)
    try:
        conn.request("GET", match.group(3) or "/")
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise ServerError(f"GET {url} failed: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200 or body != expect_body:
        raise ServerError(
            f"GET {url} answered {response.status} {body[:300]!r}; expected 200 {expect_body!r}"
        )


@dataclass
class ServerPool:
    """Starts pinned server subprocesses and stops every one of them on ``stop_all``."""

    cpu: int
    log_dir: Path
    running: list[RunningServer] = field(default_factory=list)

    def _spawn(
        self, name: str, argv: Sequence[str], *, cwd: Path | None, env: Mapping[str, str]
    ) -> RunningServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        cmd = ["taskset", "-c", str(self.cpu), sys.executable, *argv]
        with log_path.open("wb") as log:
            # Output goes to a file, not a pipe: nobody has to keep draining it while
            # wrk runs, and it is still there to quote when something fails.
            process = subprocess.Popen(
                cmd,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = RunningServer(name, process, log_path)
        self.running.append(server)
        return server

    def start_listening(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunningServer:
        """Start ``python ARGV`` that listens on 127.0.0.1:``port``; wait until it accepts.

        For servers without a ready line (plain uvicorn, granian): a TCP connect is
        retried until it succeeds. Raises ``ServerError`` with the server's output if it
        exits or does not accept within the start timeout.
        """
        server = self._spawn(name, argv, cwd=cwd, env=env or {})
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if server.process.poll() is not None:
                raise ServerError(f"{name} exited with {server.process.returncode}", server)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerError(f"{name} did not accept on port {port}", server) from None
                time.sleep(0.05)
        server.url = f"http://127.0.0.1:{port}/"
        return server

    def start_edgerun(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> RunningServer:
        """Start ``python -m edgerun ARGV`` (with ``--port 0``) and wait for its ready line.

        Raises ``ServerError`` with the node's output if it exits or stays silent past
        the start timeout.
        """
        server = self._spawn(name, ["-m", "edgerun", *argv], cwd=None, env=env or {})
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            match = _READY.search(server.log_path.read_text("utf-8", errors="replace"))
            if match is not None:
                server.url = f"http://{match.group(1)}:{match.group(2)}/"
                return server
            if server.process.poll() is not None:
                raise ServerError(f"{name} exited with {server.process.returncode}", server)
            if time.monotonic() > deadline:
                raise ServerError(f"{name} printed no ready line", server)
            time.sleep(0.05)

    def stop_all(self) -> None:
        """Stop every server this pool started (safe to call more than once)."""
        while self.running:
            self.running.pop().stop()
