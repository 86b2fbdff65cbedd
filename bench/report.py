"""Results of one bench run: ratios against the same run's baselines, the table, the JSON.

Ratios are always computed between measurements of the same run on the same machine,
never against numbers from elsewhere: absolute requests/s vary between machines and
runs, the ratio to a baseline measured minutes earlier varies much less.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from scenarios import GROUPS, TARGETS, Target

__all__ = ["CONTENDED", "Failure", "Measurement", "Results", "format_latency"]

CONTENDED = 0.05
"""Other processes' CPU share (of one core) above which a measurement is flagged."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One scenario at one concurrency (``connections`` is None for in-process timing).

    For HTTP scenarios ``rps`` is requests/s and latencies are wrk's percentiles; for
    the in-process micro-benchmark ``rps`` is calls/s and latencies are per call.
    ``errors`` counts socket errors and non-2xx answers seen by wrk. ``server_cpu``,
    ``client_cpu`` and ``other_cpu`` are the shares of one core used by the server's
    processes, by wrk, and by every other process on the two benchmark cores.
    """

    key: str
    group: str
    label: str
    connections: int | None
    rps: float
    p50_us: float
    p99_us: float
    count: int
    errors: int = 0
    server_cpu: float | None = None
    client_cpu: float | None = None
    other_cpu: float | None = None
    baseline: str | None = None
    reference: str | None = None
    runs: tuple[dict[str, Any], ...] = ()
    kind: str = "http"
    """``http`` (wrk), ``micro`` (in process), ``trials`` (timed one by one: ``count`` is
    the number of trials, latencies their p50/p99) or ``memory`` (no latency at all)."""
    trials: str = ""
    """What the conns column shows for ``trials`` / ``memory`` rows (e.g. ``50 trials``)."""
    note: str = ""
    """Shown in the comparison column instead of ratios (cold start vs warm, memory)."""
    extra: dict[str, float] = field(default_factory=dict)
    """Further numbers of ``trials`` / ``memory`` rows (``uss_mib`` ...), also in the JSON."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A scenario that could not be measured, with the reason and where its log is."""

    key: str
    group: str
    label: str
    message: str
    log: str | None = None


@dataclass
class Results:
    """Everything measured in one run, in the order it was measured."""

    measurements: list[Measurement] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def find(self, key: str | None, connections: int | None) -> Measurement | None:
        """The measurement of ``key`` at ``connections``, if it was taken."""
        for m in self.measurements:
            if m.key == key and m.connections == connections:
                return m
        return None

    def compare(self, m: Measurement, other_key: str | None) -> dict[str, float] | None:
        """``m`` relative to ``other_key`` at the same concurrency: req/s ratio, added latency."""
        other = self.find(other_key, m.connections)
        if other is None or other.rps <= 0:
            return None
        ratios = {
            "rps_ratio": m.rps / other.rps,
            "p50_added_ms": (m.p50_us - other.p50_us) / 1e3,
            "p99_added_ms": (m.p99_us - other.p99_us) / 1e3,
        }
        if m.server_cpu and other.server_cpu:
            # Requests per CPU-second of the server: robust to another process taking
            # part of the server's core, which lowers req/s but not the cost per request.
            ratios["rps_per_cpu_ratio"] = (m.rps / m.server_cpu) / (other.rps / other.server_cpu)
        return ratios

    def target_value(self, target: Target) -> float | None:
        """The measured value ``target`` is judged on, or None if it was not measured."""
        m = self.find(target.key, target.connections)
        if m is None:
            return None
        if target.metric == "p50_us":
            return m.p50_us
        if target.metric == "uss_mib":
            return m.extra.get("uss_mib")
        vs = self.compare(m, m.baseline)
        return None if vs is None else vs[target.metric]

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The whole run as a JSON-ready dict (see bench/README.md for the fields)."""
        measurements = []
        for m in self.measurements:
            row = asdict(m)
            row["vs_baseline"] = self.compare(m, m.baseline)
            row["vs_reference"] = self.compare(m, m.reference)
            measurements.append(row)
        targets = []
        for t in TARGETS:
            value = self.target_value(t)
            targets.append(
                {
                    "scenario": t.key,
                    "connections": t.connections,
                    "metric": t.metric,
                    "limit": t.limit,
                    "at_least": t.at_least,
                    "text": t.text,
                    "value": value,
                    "met": None if value is None else t.met(value),
                }
            )
        return {
            "meta": meta,
            "measurements": measurements,
            "failures": [asdict(f) for f in self.failures],
            "targets": targets,
        }

    def write_json(self, path: Path, meta: dict[str, Any]) -> None:
        """Write ``to_json(meta)`` to ``path``, creating its directory."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(self.to_json(meta), indent=2, ensure_ascii=False) + "\n", "utf-8"
        )

    def table(self, labels: dict[str, str]) -> Table:
        """A rich table: one row per measurement (and per failure), grouped by scenario.

        ``labels`` maps each scenario key to its display name (used to name references);
        its order is the row order.
        """
        table = Table(title="edgerun benchmarks (ratios vs baselines measured in this run)")
        table.add_column("scenario")
        table.add_column("conns", justify="right")
        table.add_column("req/s", justify="right")
        table.add_column("p50", justify="right")
        table.add_column("p99", justify="right")
        table.add_column("CPU srv/wrk/other", justify="right")
        table.add_column("vs baseline")
        table.add_column("target")
        table.add_column("met", justify="center")
        baselines = {m.baseline for m in self.measurements}
        for group, title in GROUPS.items():
            rows = _rows_of(group, self.measurements, self.failures, list(labels))
            if not rows:
                continue
            table.add_section()
            table.add_row(Text(f"({group}) {title}", style="bold"))
            for row in rows:
                if isinstance(row, Failure):
                    table.add_row(
                        f"  {row.label}", "", "", "", "", "", Text(row.message, style="red")
                    )
                    continue
                self._add_measurement(table, row, row.key in baselines, labels)
        return table

    def _add_measurement(
        self, table: Table, m: Measurement, is_baseline: bool, labels: dict[str, str]
    ) -> None:
        micro = m.kind == "micro"
        vs_cell = Text("baseline" if is_baseline else "", style="dim")
        vs = self.compare(m, m.baseline) if m.kind in ("http", "micro") else None
        if m.note:
            vs_cell = Text(m.note)
        elif vs is not None:
            unit = "calls/s" if micro else "req/s"
            lines = [f"{vs['rps_ratio']:.2f}x {unit}"]
            # (i) compares one deployment's latency with and without a neighbour whose
            # CPU also counts as the server's, so per CPU-s means nothing there and the
            # added p99 matters at every concurrency.
            noisy = m.group == "i"
            if "rps_per_cpu_ratio" in vs and m.connections != 1 and not noisy:
                lines.append(f"{vs['rps_per_cpu_ratio']:.2f}x per CPU-s")
            if micro:
                lines.append(f"{vs['p50_added_ms'] * 1e3:+.1f} µs p50")
            elif m.connections == 1 or noisy:
                lines.append(f"{vs['p99_added_ms']:+.2f} ms p99")
                lines.append(f"{vs['p50_added_ms']:+.2f} ms p50")
            ref = self.compare(m, m.reference)
            if ref is not None and m.reference is not None:
                # A label reads "server · app"; the server part is enough to name it.
                server = labels.get(m.reference, m.reference).split(" · ")[0]
                lines.append(f"{ref['rps_ratio']:.2f}x {server}")
            vs_cell = Text("\n".join(lines))
        target_cells = [t for t in TARGETS if t.key == m.key and t.connections == m.connections]
        target_text = "\n".join(t.text for t in target_cells)
        met = Text()
        for i, t in enumerate(target_cells):
            value = self.target_value(t)
            if i:
                met.append("\n")
            if value is None:
                met.append("?", style="yellow")
            elif t.met(value):
                met.append("yes", style="green")
            else:
                met.append("no", style="bold red")
        rps = f"{m.rps:,.0f}" if m.kind in ("http", "micro") else ""
        if m.errors:
            rps += f" ({m.errors:,} err)"
        conns = "in-proc" if micro else str(m.connections)
        if m.kind in ("trials", "memory"):
            conns = m.trials
        latency = m.kind != "memory"
        table.add_row(
            f"  {m.label}",
            conns,
            Text(rps, style="red" if m.errors else ""),
            format_latency(m.p50_us) if latency else "",
            format_latency(m.p99_us) if latency else "",
            _cpu_cell(m),
            vs_cell,
            target_text,
            met,
        )


def _rows_of(
    group: str,
    measurements: Iterable[Measurement],
    failures: Iterable[Failure],
    order: list[str],
) -> list[Measurement | Failure]:
    """The rows of ``group``, scenarios in ``order`` (baselines first), failures in place."""
    rows: list[Measurement | Failure] = [m for m in measurements if m.group == group]
    rows.extend(f for f in failures if f.group == group)

    def position(row: Measurement | Failure) -> tuple[int, int]:
        rank = order.index(row.key) if row.key in order else len(order)
        conns = row.connections if isinstance(row, Measurement) else None
        return rank, -(conns or 0)

    return sorted(rows, key=position)


def _cpu_cell(m: Measurement) -> Text:
    if m.server_cpu is None or m.client_cpu is None or m.other_cpu is None:
        return Text("")
    # Yellow: another process took CPU on the benchmark cores (req/s and p99 suffer),
    # or wrk itself was saturated (then wrk, not the server, was the limit).
    warn = m.other_cpu > CONTENDED or m.client_cpu > 0.95
    return Text(
        f"{m.server_cpu:.0%}/{m.client_cpu:.0%}/{m.other_cpu:.0%}",
        style="yellow" if warn else "",
    )


def format_latency(us: float) -> str:
    """Format a latency in µs with a unit that keeps 2-3 significant digits."""
    if us < 100:
        return f"{us:.1f} µs"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1e3:.2f} ms"
    return f"{us / 1e6:.2f} s"
