"""Drive ``wrk`` pinned to one core and parse what it prints.

wrk is a closed-loop generator: each connection sends its next request as soon as the
previous answer arrives, so requests/s measures the server's throughput at that
concurrency and the latency distribution (``--latency``) is what one client sees.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import subprocess
import time
from dataclasses import dataclass

__all__ = ["WrkError", "WrkResult", "parse_wrk", "run_wrk"]

_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk failed, or printed something this module cannot read."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (µs) and error counts."""

    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_us: float
    p75_us: float
    p90_us: float
    p99_us: float
    socket_errors: int
    non_2xx: int
    client_cpu: float = 0.0
    """Share of one core wrk used (0..1): near 1.0 means wrk, not the server, was the limit."""


def _to_us(value: str, unit: str) -> float:
    return float(value) * _UNIT_US[unit]


def parse_wrk(text: str, connections: int) -> WrkResult:
    """Parse the output of ``wrk --latency`` into a ``WrkResult``.

    Raises ``WrkError`` quoting the output when requests/s or the 50/99 percentiles
    are missing (wrk prints no distribution when it completed no request).
    """
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    percentiles = {float(p): _to_us(v, u) for p, v, u in _PERCENTILE.findall(text)}
    if rps is None or total is None or not {50.0, 99.0} <= percentiles.keys():
        raise WrkError(f"cannot parse wrk output:\n{text.strip()}")
    errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        connections=connections,
        duration_s=_to_us(total.group(2), total.group(3)) / 1e6,
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_us=percentiles[50.0],
        p75_us=percentiles.get(75.0, percentiles[50.0]),
        p90_us=percentiles.get(90.0, percentiles[99.0]),
        p99_us=percentiles[99.0],
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(url: str, *, connections: int, duration_s: int, cpu: int) -> WrkResult:
    """Run ``wrk`` on core ``cpu`` against ``url`` for ``duration_s`` whole seconds.

    One wrk thread: the load generator gets exactly one core, the server the other,
    so neither steals cycles from the other. Raises ``WrkError`` if wrk fails.
    """
    cmd = [
        "taskset", "-c", str(cpu),
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "5s",
        url,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout}")
    result = parse_wrk(done.stdout, connections)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dataclasses.replace(result, client_cpu=used / wall if wall > 0 else 0.0)
