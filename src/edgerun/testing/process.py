"""Run a real edgerun node as a subprocess for tests, on a free port.

``start_node`` launches ``python -m edgerun dev|node ... --port 0``, waits for the
node's ready line (no sleeping: it reads the process's output until the line
arrives), and returns a ``RunningNode`` with its base URL and an httpx client.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["NodeStartError", "RunningNode", "start_node"]

_READY = re.compile(r"edgerun: ready on (http://\S+)")


class NodeStartError(RuntimeError):
    """The node process exited or did not print its ready line in time."""


@dataclass
class RunningNode:
    """A node process serving on ``url``; ``client`` is an httpx client bound to it."""

    url: str
    process: subprocess.Popen[str]
    state_dir: Path
    client: httpx.Client
    output: list[str] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        """Block until the node prints a line matching ``pattern`` (regex); return it."""
        rx = re.compile(pattern)
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                tail = "".join(self.output)[-4000:]
                raise NodeStartError(
                    f"no line matching {pattern!r} within {timeout}s; output ends:\n{tail}"
                ) from None
            if line is None:
                raise NodeStartError(f"node exited; output:\n{''.join(self.output)}")
            if rx.search(line):
                return line

    def stop(self, timeout: float = 15.0) -> int:
        """Stop the node with SIGTERM (SIGKILL after ``timeout``); return its exit code."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _pump(proc: subprocess.Popen[str], sink: list[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)
        lines.put(line)
    lines.put(None)


def start_node(
    projects: Sequence[str | os.PathLike[str]],
    *,
    state_dir: str | os.PathLike[str],
    command: str = "dev",
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    cwd: str | os.PathLike[str] | None = None,
) -> RunningNode:
    """Start ``edgerun <command> PROJECTS --port 0 --state-dir STATE_DIR ARGS``.

    ``command`` is ``dev`` (one project, dev geo headers honoured; reload off unless
    ``--reload`` is in ``args``) or ``node``; ``cwd`` is the process's working directory
    (relative ``state_dir`` and project paths are resolved from it). Raises
    ``NodeStartError`` with the process output if it exits or is not ready within
    ``timeout`` seconds.
    """
    cmd = [
        sys.executable,
        "-m",
        "edgerun",
        command,
        *map(str, projects),
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
    ]
    if command == "dev" and "--reload" not in args:
        cmd.append("--no-reload")
    cmd.extend(args)
    proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=proc_env, cwd=cwd
    )
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, output, lines), daemon=True).start()
    node = RunningNode("", proc, Path(state_dir), httpx.Client(), output, lines)
    try:
        match = _READY.search(node.wait_for_line(_READY.pattern, timeout))
    except NodeStartError:
        node.stop()
        raise
    assert match is not None
    node.url = match.group(1)
    node.client = httpx.Client(base_url=node.url, timeout=30.0)
    return node
