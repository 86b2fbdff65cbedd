"""Who used the benchmark's cores: the server, wrk, or someone else (from /proc).

On a shared machine another process can take part of a core during a measurement,
lowering req/s and adding milliseconds to p99 without the server being any slower.
``CpuMeter`` measures, over one interval, the CPU time of the server's process group,
of wrk (the harness's children) and of everything else on the two cores, so the
report can tell "slower" from "starved".
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["CpuMeter", "CpuShares", "busy_fraction", "core_seconds", "group_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK")


def core_seconds(cpus: Collection[int]) -> tuple[float, float]:
    """Cumulative (busy, total) seconds of ``cpus`` since boot, from /proc/stat."""
    busy = total = 0
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                # user nice system idle iowait irq softirq steal
                ticks = [int(f) for f in fields[:8]]
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / _TICKS, total / _TICKS


def busy_fraction(cpus: Collection[int], seconds: float = 1.0) -> float:
    """How busy ``cpus`` are over the next ``seconds`` (0..1); -1 if /proc is unreadable."""
    try:
        busy0, total0 = core_seconds(cpus)
        time.sleep(seconds)
        busy1, total1 = core_seconds(cpus)
    except (OSError, ValueError, IndexError):
        return -1.0
    return (busy1 - busy0) / max(1e-9, total1 - total0)


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of group ``pgid``."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # Fields after "(comm)": state ppid pgrp ...; utime is the 12th, stime the 13th.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


def _own_and_children_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass(frozen=True, slots=True)
class CpuShares:
    """CPU used during one interval, in shares of one core (1.0 = a whole core)."""

    server: float
    harness: float
    """The harness and its finished children (wrk, taskset)."""
    others: float
    """Everything else that ran on the two benchmark cores."""


class CpuMeter:
    """Measures ``CpuShares`` between ``start()`` and ``stop()`` for one server group."""

    def __init__(self, cpus: Collection[int], server_pgid: int) -> None:
        self.cpus = cpus
        self.pgid = server_pgid
        self._start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def _sample(self) -> tuple[float, float, float, float]:
        busy, _ = core_seconds(self.cpus)
        return (
            time.monotonic(),
            busy,
            group_cpu_seconds(self.pgid),
            _own_and_children_seconds(),
        )

    def start(self) -> None:
        """Begin the interval."""
        self._start = self._sample()

    def stop(self) -> CpuShares:
        """End the interval and return the shares used during it.

        Children count once they have exited, so call this after wrk has finished.
        """
        t1, busy1, server1, own1 = self._sample()
        t0, busy0, server0, own0 = self._start
        wall = max(1e-9, t1 - t0)
        server = server1 - server0
        own = own1 - own0
        others = max(0.0, (busy1 - busy0) - server - own)
        return CpuShares(server=server / wall, harness=own / wall, others=others / wall)
