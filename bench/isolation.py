"""Isolation measurements that are not a steady wrk load: cold starts, memory, noise.

Used by bench/run.py for groups (g) cold start, (h) memory and (i) noisy neighbour
(bench/README.md defines each). Everything here talks plain HTTP/1.1 to a node started
by the harness and reads ``/__edgerun/pools`` (local callers only) for the pool's state
and pids; memory comes from ``/proc/PID/smaps_rollup``.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import WrkError, WrkResult, parse_wrk

__all__ = [
    "ColdStarts",
    "MemoryUse",
    "NewDeployments",
    "Noise",
    "cold_starts",
    "get",
    "memory_use",
    "new_deployments",
    "node_json",
    "percentile",
    "wait_for_pool",
]

_URL = re.compile(r"http://([^/:]+):(\d+)/?")
_POLL_S = 0.002
"""How often a brand-new node is probed before it answers (bounds the error of (g))."""


class IsolationError(RuntimeError):
    """The node answered something unexpected, or a pool never reached the wanted state."""


def _host_port(url: str) -> tuple[str, int]:
    match = _URL.match(url)
    if match is None:
        raise IsolationError(f"unsupported URL {url!r}")
    return match.group(1), int(match.group(2))


def get(url: str, path: str = "/", timeout_s: float = 10.0) -> tuple[int, bytes]:
    """One ``GET path`` on a new connection; returns (status, body). Raises OSError."""
    host, port = _host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def node_json(url: str, endpoint: str) -> dict[str, Any]:
    """``/__edgerun/<endpoint>`` of the node at ``url`` as a dict (its ``deployments``)."""
    status, body = get(url, f"/__edgerun/{endpoint}")
    if status != 200:
        raise IsolationError(f"/__edgerun/{endpoint} answered {status}: {body[:200]!r}")
    data: dict[str, Any] = json.loads(body)["deployments"]
    return data


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty sample: a value that occurred."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def wait_for_pool(
    url: str, deployment: str, *, zero: bool, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Poll ``/__edgerun/pools`` until ``deployment``'s pool is at zero workers (``zero``)
    or has workers all idle; return that pool's stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        pool: dict[str, Any] | None = node_json(url, "pools").get(deployment)
        if pool is None:
            raise IsolationError(f"/__edgerun/pools has no isolated pool named {deployment!r}")
        workers = pool["workers"]
        settled = pool["forking"] == 0 and pool["queued"] == 0
        if zero and settled and not workers:
            return pool
        if not zero and settled and workers and all(w["inflight"] == 0 for w in workers):
            return pool
        if time.monotonic() > deadline:
            want = "zero workers" if zero else "idle workers"
            raise IsolationError(f"pool {deployment} did not reach {want} in {timeout_s:.0f}s")
        time.sleep(0.01)


# -- (g) cold start of a scaled-to-zero pool ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColdStarts:
    """Trials of (g): ``cold_ms`` per first request after scale-to-zero, ``warm_ms`` for
    the request right after it (same worker, now warm), ``counted`` cold starts the node
    recorded meanwhile (should equal the number of trials)."""

    cold_ms: list[float]
    warm_ms: list[float]
    counted: int
    zygote_kept: bool


def cold_starts(url: str, deployment: str, trials: int, expect_body: bytes) -> ColdStarts:
    """Time ``trials`` cold starts of ``deployment``.

    Each trial waits (polling ``/__edgerun/pools``) until the pool is at zero workers,
    then times one ``GET /`` on a new loopback connection from before the connect until
    the whole 200 body has been read; then times one more request (warm).
    """
    first = wait_for_pool(url, deployment, zero=True)
    cold: list[float] = []
    warm: list[float] = []
    kept = True
    for _ in range(trials):
        pool = wait_for_pool(url, deployment, zero=True)
        kept = kept and pool["zygote"] is not None
        for sample in (cold, warm):
            t0 = time.perf_counter()
            status, body = get(url)
            elapsed = time.perf_counter() - t0
            if status != 200 or body != expect_body:
                raise IsolationError(f"GET / answered {status} {body[:200]!r}")
            sample.append(elapsed * 1e3)
    counted = wait_for_pool(url, deployment, zero=True)["cold_starts"] - first["cold_starts"]
    return ColdStarts(cold, warm, counted, kept)


# -- (g) brand-new deployment: a fresh node process ---------------------------------------


@dataclass(frozen=True, slots=True)
class NewDeployments:
    """Trials of (g)'s brand-new deployment: from spawning ``edgerun node PROJECT`` to its
    first 200 (``first_ms``) and to its ``edgerun: ready`` line (``ready_ms``)."""

    first_ms: list[float]
    ready_ms: list[float]


def _drain(stream: Any, ready: list[float], tail: collections.deque[str]) -> None:
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        if not ready and "edgerun: ready on" in line:
            ready.append(time.perf_counter())


def new_deployments(
    project: Path, trials: int, *, cpu: int, state_root: Path, free_port: Any
) -> NewDeployments:
    """Start a fresh node on ``project`` ``trials`` times (new state directory each time,
    pinned to core ``cpu``) and time each until ``GET /`` answers 200.

    The node gets a port chosen up front and is probed every 2 ms (a refused connect
    costs microseconds), so no log parsing sits on the timed path. Each node is killed
    (SIGKILL to its process group: zygote and workers included) after its first 200;
    stopping is not timed.
    """
    first: list[float] = []
    ready_at: list[float] = []
    for i in range(trials):
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        cmd = [
            "taskset", "-c", str(cpu), sys.executable, "-m", "edgerun", "node", str(project),
            "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_root / f"n{i}"),
        ]  # fmt: skip
        ready: list[float] = []
        tail: collections.deque[str] = collections.deque(maxlen=20)
        t0 = time.perf_counter()
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        reader = threading.Thread(target=_drain, args=(process.stdout, ready, tail), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    status, body = get(url, timeout_s=30.0)
                except OSError:
                    if process.poll() is not None:
                        reader.join(1.0)
                        raise IsolationError(
                            f"node exited with {process.returncode}: " + "\n".join(tail)
                        ) from None
                    if time.perf_counter() - t0 > 60:
                        raise IsolationError("node did not answer within 60 s") from None
                    time.sleep(_POLL_S)
                    continue
                t1 = time.perf_counter()
                if status != 200:
                    raise IsolationError(f"first GET / answered {status} {body[:200]!r}")
                break
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            reader.join(5.0)
        first.append((t1 - t0) * 1e3)
        if ready:
            ready_at.append((ready[0] - t0) * 1e3)
    return NewDeployments(first, ready_at)


# -- (h) memory -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """One process's memory from ``/proc/PID/smaps_rollup``, in KiB.

    ``uss`` (unique set size) = Private_Clean + Private_Dirty: what killing the process
    would free. ``pss`` shares every shared page among the processes mapping it, so the
    PSS of a zygote and its workers sums to what they use together.
    """

    pid: int
    rss: int
    pss: int
    uss: int
    swap: int = 0
    fields: dict[str, int] = field(default_factory=dict)


def memory_use(pid: int) -> MemoryUse:
    """Read ``/proc/PID/smaps_rollup`` (needs the same uid or root). Raises OSError."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[-1] == "kB":
                values[parts[0][:-1]] = int(parts[1])
    if "Pss" not in values:
        raise OSError(f"/proc/{pid}/smaps_rollup has no Pss line")
    return MemoryUse(
        pid=pid,
        rss=values.get("Rss", 0),
        pss=values["Pss"],
        uss=values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
        swap=values.get("Swap", 0),
        fields=values,
    )


# -- (i) the noisy neighbour's load ---------------------------------------------------------


class Noise:
    """A background ``wrk`` on ``url`` with ``connections`` clients, pinned to ``cpu``.

    Started before the measured load and stopped (SIGINT: wrk then prints its summary)
    right after it; ``stop()`` returns what wrk saw, e.g. every answer a 503.
    """

    def __init__(self, url: str, *, connections: int, cpu: int, max_s: int) -> None:
        cmd = [
            "taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{max_s}s",
            "--latency", "--timeout", "10s", url,
        ]  # fmt: skip
        self.connections = connections
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stop(self) -> WrkResult:
        """Stop wrk and parse its summary. Raises ``WrkError`` if it printed none."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            out, err = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        try:
            return parse_wrk(out, self.connections)
        except WrkError as exc:
            raise WrkError(f"noise wrk: {exc} {err.strip()}") from None
