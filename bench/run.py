"""``make bench``: edgerun's request path against bare baselines measured in the same run.

Scenarios (bench/README.md explains each and how to read the ratios):
(a) raw uvicorn + bare ASGI hello, the baseline; (b) the node serving a hello fetch
handler on uvicorn and on granian (fast mode), plus bare granian RSGI as the fast-mode
reference; (c) a Starlette app through the node vs on plain uvicorn; (d) a KV read per
request through the node vs a bare sqlite3 read on plain uvicorn; (e) ``kv.get`` in
process vs a bare sqlite3 point read; isolation: (f) hello in isolated workers vs in
process vs (a); (g) cold start of a scaled-to-zero pool and of a brand-new node; (h)
memory of idle workers and the zygote; (i) hello's latency while a neighbour deployment
burns CPU into its limit.

wrk runs on one core, the servers on the other (``taskset -c``); all servers stay up
for the whole run, idle except the one under load. Results print as a table and go
to bench/results/latest.json. Exit status: 0 when every scenario ran (targets are
reported, not enforced), 1 when one could not run, 2 when wrk or taskset is missing
or the arguments are wrong, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from cpustat import CpuMeter, CpuShares, busy_fraction
from isolation import (
    IsolationError,
    MemoryUse,
    Noise,
    cold_starts,
    get,
    memory_use,
    new_deployments,
    node_json,
    percentile,
    wait_for_pool,
)
from kv_micro import create_point_db
from loadgen import WrkError, WrkResult, run_wrk
from report import CONTENDED, Failure, Measurement, Results, format_latency
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text
from scenarios import (
    BENCH_DIR,
    COLDSTART_DEPLOYMENT,
    COLDSTART_PROJECT,
    ISOLATION_LABELS,
    MEMORY_DEPLOYMENT,
    MEMORY_PROJECT,
    MICRO_BASELINE,
    MICRO_KV,
    MICRO_LABELS,
    NOISY_CLIENTS,
    NOISY_PROJECTS,
    NOISY_SPECS,
    PROJECTS_DIR,
    SPECS,
    ServerSpec,
    select,
)
from servers import RunningServer, ServerError, ServerPool, check_response, free_port

RESULTS_DIR = BENCH_DIR / "results"
IDLE = 0.1
"""Busy share of the benchmark cores below which the machine counts as quiet."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and where to measure; filled from the command line."""

    duration_s: int
    warmup_s: int
    rounds: int
    client_cpu: int
    server_cpu: int
    micro_batches: int
    quick: bool
    cold_trials: int = 50
    new_trials: int = 30


def _display(path: Path) -> str:
    """``path`` relative to the repository when inside it, so no machine path gets written."""
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark edgerun against baselines measured in the same run.",
    )
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds per measurement (whole seconds)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per server")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved rounds over all servers; each point reports the median (default 2)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round of 1 s points, 1 s warm-up"
    )
    parser.add_argument(
        "--only", metavar="GROUPS", help="comma-separated groups to run, e.g. b,e (default: all)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the two cores to be < 10%% busy (shared machines)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=50,
        help="cold starts of a scaled-to-zero pool timed by (g) (default 50; --quick: 10)",
    )
    parser.add_argument(
        "--new-trials",
        type=int,
        default=30,
        help="brand-new node starts timed by (g), ~1 s each (default 30; --quick: 3)",
    )
    parser.add_argument("--client-cpu", type=int, help="core for wrk (default: first allowed)")
    parser.add_argument("--server-cpu", type=int, help="core for servers (default: second)")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="where to write the results (default: bench/results/latest.json)",
    )
    args = parser.parse_args(argv)
    if (
        args.duration < 1
        or args.warmup < 0
        or args.rounds < 1
        or min(args.trials, args.new_trials) < 1
    ):
        parser.error("--duration must be >= 1, --warmup >= 0, --rounds and the trials >= 1")
    return args


def _missing_tools() -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed; install it with `apt-get install wrk`"
    if shutil.which("taskset") is None:
        return (
            "taskset is not installed; install it with `apt-get install util-linux` "
            "(and wrk with `apt-get install wrk`)"
        )
    return None


def _pick_cpus(client: int | None, server: int | None, console: Console) -> tuple[int, int]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        console.print(
            "[yellow]warning:[/] only one core available: wrk and the servers share it, "
            "so absolute numbers mean little (ratios still compare like with like)"
        )
        return allowed[0], allowed[0]
    return (
        client if client is not None else allowed[0],
        server if server is not None else allowed[1],
    )


def _wait_idle(cpus: set[int], patience_s: float, console: Console) -> float:
    """Sample how busy ``cpus`` are; with ``patience_s`` > 0, wait until below ``IDLE``.

    Returns the last busy fraction seen (it goes into the JSON either way).
    """
    deadline = time.monotonic() + patience_s
    busy = busy_fraction(cpus)
    with console.status("waiting for the benchmark cores to be idle") as status:
        while busy > IDLE and time.monotonic() < deadline:
            status.update(f"waiting for the benchmark cores to be idle ({busy:.0%} busy)")
            busy = busy_fraction(cpus)
    return busy


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for dist in ("edgerun", "uvicorn", "granian", "starlette", "uvloop", "httptools"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (wrk.stdout or wrk.stderr).strip().splitlines()
    versions["wrk"] = first[0].split("Copyright")[0].strip() if first else "unknown"
    return versions


class Bench:
    """One run: starts each server, loads it with wrk, records results, stops it."""

    def __init__(self, settings: Settings, console: Console, progress: Progress, tmp: Path):
        self.settings = settings
        self.console = console
        self.progress = progress
        self.task = progress.add_task("starting", total=None)
        self.tmp = tmp
        self.pool = ServerPool(cpu=settings.server_cpu, log_dir=RESULTS_DIR / "logs")
        self.cpus = {settings.client_cpu, settings.server_cpu}
        self.results = Results()

    def steps(self, specs: tuple[ServerSpec, ...], micro: bool, extras: tuple[str, ...]) -> int:
        """Progress steps of a run: one start per server, one per point per round, (e),
        two for (g), one for (h), one start and one per point per round for (i)."""
        points = sum(len(s.connections) for s in specs)
        noisy = sum(len(s.connections) for s in NOISY_SPECS) * self.settings.rounds + 1
        extra = {"g": 2, "h": 1, "i": noisy}
        return (
            len(specs)
            + self.settings.rounds * points
            + (1 if micro else 0)
            + sum(extra[g] for g in extras)
        )

    def _status(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def _start(self, spec: ServerSpec) -> RunningServer:
        name = spec.key.replace(".", "-")
        if spec.kind == "edgerun":
            state = self.tmp / name
            project = str(spec.app_dir)
            if spec.seed_kv:
                self._seed_kv(project, state)
            argv = [
                "node", project, "--host", "127.0.0.1", "--port", "0",
                "--server", spec.node_server, "--state-dir", str(state),
            ]  # fmt: skip
            return self.pool.start_edgerun(name, argv)
        env: dict[str, str] = {}
        if spec.sqlite_db:
            db = self.tmp / f"{name}.sqlite3"
            create_point_db(db)
            env["BENCH_SQLITE_PATH"] = str(db)
        port = free_port()
        if spec.kind == "uvicorn":
            argv = [
                "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--http", "httptools", "--loop", "uvloop", "--lifespan", "off",
                "--no-access-log", "--log-level", "warning",
                "--app-dir", str(spec.app_dir), spec.target,
            ]  # fmt: skip
        else:
            # HTTP/1 only and no websockets, as the node configures its embedded granian,
            # so the reference differs from fast mode by edgerun's own work alone.
            argv = [
                "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1",
                "--no-ws", "--log-level", "warning", spec.target,
            ]  # fmt: skip
        return self.pool.start_listening(name, argv, port=port, cwd=spec.app_dir, env=env)

    def _seed_kv(self, project: str, state: Path) -> None:
        # Through the CLI, as a user would: it writes the same file the node reads.
        cmd = [
            sys.executable, "-m", "edgerun", "kv", "put", "k", "v", project,
            "--binding", "KV", "--state-dir", str(state),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise ServerError(f"`edgerun kv put` failed ({done.returncode}): {output}")

    def _wrk(self, url: str, connections: int, seconds: int) -> WrkResult:
        return run_wrk(
            url, connections=connections, duration_s=seconds, cpu=self.settings.client_cpu
        )

    def start_all(self, specs: tuple[ServerSpec, ...]) -> dict[str, RunningServer]:
        """Start, check and warm up every server; return those that answered correctly.

        A server that fails to start or answers wrongly becomes a ``Failure`` row and is
        stopped; the others go on. Idle servers cost no CPU, so keeping them all up lets
        the rounds interleave baseline and candidate measurements.
        """
        s = self.settings
        running: dict[str, RunningServer] = {}
        for spec in specs:
            title = f"({spec.group}) {spec.label}"
            server: RunningServer | None = None
            try:
                self._status(f"{title}: starting")
                server = self._start(spec)
                check_response(server.url, spec.expect_body)
                if s.warmup_s:
                    self._status(f"{title}: warm-up {s.warmup_s}s")
                    self._wrk(server.url, max(spec.connections), s.warmup_s)
                running[spec.key] = server
            except (ServerError, WrkError, OSError, subprocess.SubprocessError) as exc:
                self._fail(spec.key, spec.group, spec.label, exc, server)
                if isinstance(exc, ServerError) and exc.server is not None:
                    server = exc.server
                if server is not None:
                    server.stop()
            self.progress.advance(self.task)
        return running

    def measure_all(self, specs: tuple[ServerSpec, ...]) -> None:
        """Measure every started server at each concurrency, ``rounds`` times, interleaved.

        Interleaving (and reversing the order every other round) spreads slow drift of
        the machine (thermal, other tenants) over baseline and candidate alike, so it
        cancels in the ratios instead of favouring whoever ran first. Each point reports
        the median over rounds. Every server is stopped afterwards in all cases.
        """
        s = self.settings
        try:
            running = self.start_all(specs)
            live = [spec for spec in specs if spec.key in running]
            runs: dict[tuple[str, int], list[tuple[WrkResult, CpuShares]]] = {}
            for round_no in range(s.rounds):
                order = live if round_no % 2 == 0 else live[::-1]
                for spec in order:
                    if spec.key not in running:
                        continue  # died in an earlier round
                    server = running[spec.key]
                    for conns in spec.connections:
                        rnd = f", round {round_no + 1}/{s.rounds}" if s.rounds > 1 else ""
                        self._status(
                            f"({spec.group}) {spec.label}: {conns} conn, {s.duration_s}s{rnd}"
                        )
                        meter = CpuMeter(self.cpus, server.process.pid)
                        try:
                            meter.start()
                            result = self._wrk(server.url, conns, s.duration_s)
                            shares = meter.stop()
                        except WrkError as exc:
                            self._fail(spec.key, spec.group, spec.label, exc, server)
                            running.pop(spec.key).stop()
                            break
                        finally:
                            self.progress.advance(self.task)
                        runs.setdefault((spec.key, conns), []).append((result, shares))
            for spec in live:
                if spec.key not in running:
                    continue
                for conns in spec.connections:
                    m = _combine(spec, conns, runs[(spec.key, conns)])
                    self.results.measurements.append(m)
                    self.console.print(
                        f"  [green]✓[/] ({spec.group}) {spec.label} @{conns}: "
                        f"{m.rps:,.0f} req/s, p50 {format_latency(m.p50_us)}, "
                        f"p99 {format_latency(m.p99_us)}"
                        + (f" [red]({m.errors} errors)[/]" if m.errors else "")
                    )
        finally:
            self.pool.stop_all()

    def _fail(
        self,
        key: str,
        group: str,
        label: str,
        exc: BaseException,
        server: RunningServer | None = None,
    ) -> None:
        if isinstance(exc, ServerError) and exc.server is not None:
            server = exc.server
        log = _display(server.log_path) if server is not None else None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        tail = server.log_tail() if server is not None else ""
        if tail:
            # The last line of a traceback is usually the reason; show it in the table.
            message = f"{message}: {tail.splitlines()[-1]}"
        self.results.failures.append(Failure(key, group, label, message, log))
        # Text objects, not markup: tracebacks are full of [brackets].
        self.console.print(Text(f"  ✗ ({group}) {label}: {message}", style="red"))
        if tail:
            self.console.print(Text(tail, style="dim"), highlight=False)
        if log:
            self.console.print(Text(f"  full log: {log}", style="dim"))

    def measure_micro(self) -> None:
        """Run the in-process KV micro-benchmark (e) pinned to the (idle) server core."""
        self._status("(e) KV get in process")
        s = self.settings
        cmd = [
            "taskset", "-c", str(s.server_cpu), sys.executable, str(BENCH_DIR / "kv_micro.py"),
            "--batches", str(s.micro_batches), "--batch-size", "50",
            "--warmup", str(max(50, s.micro_batches // 10)),
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
            data: dict[str, dict[str, Any]] = json.loads(done.stdout)
        except (subprocess.SubprocessError, ValueError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            err = RuntimeError(f"kv_micro.py failed: {exc} {detail.strip()[-500:]}")
            self._fail(MICRO_KV, "e", MICRO_LABELS[MICRO_KV], err)
            return
        finally:
            self.progress.advance(self.task)
        for key, side in ((MICRO_BASELINE, "sqlite"), (MICRO_KV, "kv")):
            summary = data.get(side, {"error": "no result"})
            if "error" in summary:
                self._fail(key, "e", MICRO_LABELS[key], RuntimeError(summary["error"]))
                continue
            m = Measurement(
                key=key,
                group="e",
                label=MICRO_LABELS[key],
                connections=None,
                rps=summary["calls_per_s"],
                p50_us=summary["p50_us"],
                p99_us=summary["p99_us"],
                count=int(summary["calls"]),
                baseline=MICRO_BASELINE if key == MICRO_KV else None,
                runs=(summary,),
                kind="micro",
            )
            self.results.measurements.append(m)
            self.console.print(
                f"  [green]✓[/] (e) {m.label}: p50 {format_latency(m.p50_us)}, "
                f"p99 {format_latency(m.p99_us)}"
            )

    # -- isolation: (g) cold start, (h) memory, (i) noisy neighbour ------------------------

    def measure_extras(self, extras: tuple[str, ...]) -> None:
        """Run the isolation groups that are not wrk rounds, each on its own node."""
        for group in extras:
            try:
                {"g": self.measure_cold, "h": self.measure_memory, "i": self.measure_noisy}[group]()
            finally:
                self.pool.stop_all()

    def _start_node(self, name: str, projects: tuple[Path, ...]) -> RunningServer:
        argv = [
            "node", *map(str, projects), "--host", "127.0.0.1", "--port", "0",
            "--state-dir", str(self.tmp / name),
        ]  # fmt: skip
        server = self.pool.start_edgerun(name, argv)
        check_response(server.url, b"hello")
        return server

    def _trials_row(
        self, key: str, samples_ms: list[float], note: str, extra: dict[str, float]
    ) -> Measurement:
        p50 = statistics.median(samples_ms)
        p99 = percentile(samples_ms, 0.99)
        m = Measurement(
            key=key,
            group=key.split(".")[0],
            label=ISOLATION_LABELS[key],
            connections=None,
            rps=0.0,
            p50_us=p50 * 1e3,
            p99_us=p99 * 1e3,
            count=len(samples_ms),
            kind="trials",
            trials=f"{len(samples_ms)} trials",
            note=note,
            extra={"p50_ms": p50, "p99_ms": p99, "max_ms": max(samples_ms)} | extra,
            runs=({"samples_ms": [round(x, 3) for x in samples_ms]},),
        )
        self.results.measurements.append(m)
        self.console.print(
            f"  [green]✓[/] ({m.group}) {m.label}: p50 {format_latency(m.p50_us)}, "
            f"p99 {format_latency(m.p99_us)} over {m.count} trials"
        )
        return m

    def measure_cold(self) -> None:
        """(g) Cold start of a scaled-to-zero pool, then of a brand-new node + project."""
        s = self.settings
        key = "g.cold"
        server: RunningServer | None = None
        try:
            self._status(f"(g) {ISOLATION_LABELS[key]}: {s.cold_trials} trials")
            server = self._start_node("g-coldstart", (COLDSTART_PROJECT,))
            run = cold_starts(server.url, COLDSTART_DEPLOYMENT, s.cold_trials, b"hello")
        except _ERRORS as exc:
            self._fail(key, "g", ISOLATION_LABELS[key], exc, server)
        else:
            warm_p50 = statistics.median(run.warm_ms)
            cold_p50 = statistics.median(run.cold_ms)
            zygote = "zygote kept" if run.zygote_kept else "zygote was NOT kept"
            note = (
                f"warm request right after: p50 {warm_p50:.2f} ms, "
                f"p99 {percentile(run.warm_ms, 0.99):.2f} ms\n"
                f"cold start adds {cold_p50 - warm_p50:+.2f} ms p50\n"
                f"node counted {run.counted}/{len(run.cold_ms)} cold starts ({zygote})"
            )
            self._trials_row(
                key,
                run.cold_ms,
                note,
                {"warm_p50_ms": warm_p50, "counted": float(run.counted)},
            )
        finally:
            self.progress.advance(self.task)
            if server is not None:
                server.stop()
        key = "g.new"
        try:
            self._status(f"(g) {ISOLATION_LABELS[key]}: {s.new_trials} trials")
            new = new_deployments(
                PROJECTS_DIR / "hello-isolated",
                s.new_trials,
                cpu=s.server_cpu,
                state_root=self.tmp / "g-new",
                free_port=free_port,
            )
        except _ERRORS as exc:
            self._fail(key, "g", ISOLATION_LABELS[key], exc)
        else:
            extra: dict[str, float] = {}
            note = "fresh node process on a new state dir"
            if new.ready_ms:
                ready_p50 = statistics.median(new.ready_ms)
                gap = [f - r for f, r in zip(new.first_ms, new.ready_ms, strict=False)]
                extra = {"ready_p50_ms": ready_p50, "ready_to_200_p50_ms": statistics.median(gap)}
                note += (
                    f"\nready line at p50 {ready_p50:.0f} ms,\n"
                    f"first 200 p50 {statistics.median(gap):.1f} ms after it"
                )
            self._trials_row(key, new.first_ms, note, extra)
        finally:
            self.progress.advance(self.task)

    def measure_memory(self) -> None:
        """(h) PSS/USS of each idle worker, the zygote and the node, after some load."""
        s = self.settings
        server: RunningServer | None = None
        key = "h.worker"
        try:
            self._status("(h) memory: load, then idle")
            server = self._start_node("h-memory", (MEMORY_PROJECT,))
            # Load at 64 connections grows the pool to max_workers and has every worker
            # run the handler (touching, so un-sharing, its share of the zygote's pages).
            self._wrk(server.url, 64, max(1, s.warmup_s))
            wait_for_pool(server.url, MEMORY_DEPLOYMENT, zero=False)
            time.sleep(0.5)
            pool = wait_for_pool(server.url, MEMORY_DEPLOYMENT, zero=False)
            workers = [memory_use(w["pid"]) for w in pool["workers"]]
            zygote = memory_use(pool["zygote"]) if pool["zygote"] is not None else None
            node = memory_use(server.process.pid)
        except _ERRORS as exc:
            self._fail(key, "h", ISOLATION_LABELS[key], exc, server)
            return
        finally:
            self.progress.advance(self.task)
            if server is not None:
                server.stop()
        total_pss = sum(w.pss for w in workers) + (zygote.pss if zygote else 0)
        self._memory_row(
            "h.worker",
            workers,
            f"{len(workers)} idle",
            f"\nzygote + workers together: PSS {_mib(total_pss):.1f} MiB",
        )
        if zygote is not None:
            self._memory_row("h.zygote", [zygote], "1")
        else:
            err = IsolationError("/__edgerun/pools reports no live zygote")
            self._fail("h.zygote", "h", ISOLATION_LABELS["h.zygote"], err)
        self._memory_row("h.node", [node], "1")

    def _memory_row(self, key: str, procs: list[MemoryUse], shown: str, more: str = "") -> None:
        uss = [_mib(p.uss) for p in procs]
        pss = [_mib(p.pss) for p in procs]
        rss = [_mib(p.rss) for p in procs]
        many = len(procs) > 1
        note = (
            f"USS {statistics.median(uss):.1f} MiB"
            + (f" (max {max(uss):.1f})" if many else "")
            + f" · PSS {statistics.median(pss):.1f} MiB"
            + (f" (max {max(pss):.1f})" if many else "")
            + f" · RSS {statistics.median(rss):.1f} MiB"
            + more
        )
        m = Measurement(
            key=key,
            group="h",
            label=ISOLATION_LABELS[key],
            connections=None,
            rps=0.0,
            p50_us=0.0,
            p99_us=0.0,
            count=len(procs),
            kind="memory",
            trials=shown,
            note=note,
            # The target is judged on the largest worker: every idle worker must fit.
            extra={
                "uss_mib": max(uss),
                "uss_median_mib": statistics.median(uss),
                "pss_median_mib": statistics.median(pss),
                "rss_median_mib": statistics.median(rss),
            },
            runs=tuple(dataclasses.asdict(p) for p in procs),
        )
        self.results.measurements.append(m)
        self.console.print(f"  [green]✓[/] (h) {m.label}: {note.splitlines()[0]}")

    def measure_noisy(self) -> None:
        """(i) hello's latency with the burner deployment idle vs hammered, same node."""
        s = self.settings
        quiet, noisy = NOISY_SPECS
        server: RunningServer | None = None
        try:
            self._status("(i) noisy neighbour: starting")
            server = self._start_node("i-noisy", NOISY_PROJECTS)
            status, body = get(server.url, "/burn", timeout_s=30.0)
            code = json.loads(body).get("error", {}).get("code") if status == 503 else None
            if code != "exceeded_cpu":
                raise IsolationError(
                    f"GET /burn answered {status} {body[:200]!r}; expected 503 exceeded_cpu"
                )
            if s.warmup_s:
                self._wrk(server.url, 64, s.warmup_s)
        except _ERRORS as exc:
            self._fail(quiet.key, "i", quiet.label, exc, server)
            self.progress.advance(self.task, 1 + s.rounds * 4)
            if server is not None:
                server.stop()
            return
        self.progress.advance(self.task)
        runs: dict[tuple[str, int], list[tuple[WrkResult, CpuShares]]] = {}
        noise_runs: list[WrkResult] = []
        try:
            for round_no in range(s.rounds):
                order = NOISY_SPECS if round_no % 2 == 0 else NOISY_SPECS[::-1]
                for spec in order:
                    for conns in spec.connections:
                        self._status(f"(i) {spec.label}: {conns} conn, {s.duration_s}s")
                        noise: Noise | None = None
                        if spec is noisy:
                            noise = Noise(
                                server.url + "burn",
                                connections=NOISY_CLIENTS,
                                cpu=s.client_cpu,
                                max_s=s.duration_s + 30,
                            )
                            time.sleep(0.2 if s.quick else 0.5)  # burners first
                        meter = CpuMeter(self.cpus, server.process.pid)
                        try:
                            meter.start()
                            result = self._wrk(server.url, conns, s.duration_s)
                            shares = meter.stop()
                        finally:
                            self.progress.advance(self.task)
                            if noise is not None:
                                noise_runs.append(noise.stop())
                        runs.setdefault((spec.key, conns), []).append((result, shares))
            usage = node_json(server.url, "usage").get("bench-burner", {})
        except _ERRORS as exc:
            self._fail(noisy.key, "i", noisy.label, exc, server)
            return
        finally:
            server.stop()
        for spec in NOISY_SPECS:
            for conns in spec.connections:
                m = _combine(spec, conns, runs[(spec.key, conns)])
                self.results.measurements.append(m)
                self.console.print(
                    f"  [green]✓[/] (i) {spec.label} @{conns}: {m.rps:,.0f} req/s, "
                    f"p50 {format_latency(m.p50_us)}, p99 {format_latency(m.p99_us)}"
                    + (f" [red]({m.errors} errors)[/]" if m.errors else "")
                )
        total = sum(r.requests for r in noise_runs)
        not_ok = sum(r.non_2xx + r.socket_errors for r in noise_runs)
        errors = usage.get("errors", {})
        shown = ", ".join(f"{n:,} {code}" for code, n in errors.items()) or "none"
        m = Measurement(
            key="i.burner",
            group="i",
            label=ISOLATION_LABELS["i.burner"],
            connections=None,
            rps=0.0,
            p50_us=statistics.median(r.p50_us for r in noise_runs),
            p99_us=statistics.median(r.p99_us for r in noise_runs),
            count=total,
            kind="trials",
            trials=f"{NOISY_CLIENTS} clients",
            note=(
                f"{total:,} requests while measured, {not_ok:,} not 2xx\n"
                f"node usage errors (whole run): {shown}"
            ),
            extra={"requests": float(total), "not_2xx": float(not_ok)}
            | {f"usage_{code}": float(n) for code, n in errors.items()},
            runs=tuple(dataclasses.asdict(r) for r in noise_runs),
        )
        self.results.measurements.append(m)
        self.console.print(f"  [green]✓[/] (i) {m.label}: {m.note.splitlines()[0]}")


_ERRORS = (
    ServerError,
    IsolationError,
    WrkError,
    OSError,
    subprocess.SubprocessError,
    KeyError,
    ValueError,
)


def _mib(kib: int) -> float:
    return kib / 1024


def _combine(
    spec: ServerSpec, connections: int, runs: list[tuple[WrkResult, CpuShares]]
) -> Measurement:
    """Median of each metric over the rounds (one round: that run).

    ``runs`` pairs each wrk result with the CPU shares measured meanwhile.
    """
    results = [r for r, _ in runs]
    return Measurement(
        key=spec.key,
        group=spec.group,
        label=spec.label,
        connections=connections,
        rps=statistics.median(r.rps for r in results),
        p50_us=statistics.median(r.p50_us for r in results),
        p99_us=statistics.median(r.p99_us for r in results),
        count=sum(r.requests for r in results),
        errors=sum(r.socket_errors + r.non_2xx for r in results),
        server_cpu=statistics.median(c.server for _, c in runs),
        client_cpu=statistics.median(r.client_cpu for r in results),
        other_cpu=statistics.median(c.others for _, c in runs),
        baseline=spec.baseline,
        reference=spec.reference,
        runs=tuple(dataclasses.asdict(r) | {"cpu": dataclasses.asdict(c)} for r, c in runs),
    )


def _on_sigterm(_signum: int, _frame: FrameType | None) -> NoReturn:
    # Unwind like Ctrl-C so every `finally` stops the servers it started.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print the table, write the JSON; return the exit status."""
    args = _parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # Piped or captured: rich would assume 80 columns and wrap every cell.
        console = Console(width=150)
    if (problem := _missing_tools()) is not None:
        Console(stderr=True).print(f"[bold red]error:[/] {problem}")
        return 2
    try:
        specs, micro, extras = select(args.only)
    except ValueError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        return 2
    client_cpu, server_cpu = _pick_cpus(args.client_cpu, args.server_cpu, console)
    duration = 1 if args.quick else args.duration
    settings = Settings(
        duration_s=duration,
        warmup_s=min(args.warmup, 1) if args.quick else args.warmup,
        rounds=1 if args.quick else args.rounds,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        micro_batches=400 * duration,
        quick=args.quick,
        cold_trials=min(args.trials, 10) if args.quick else args.trials,
        new_trials=min(args.new_trials, 3) if args.quick else args.new_trials,
    )
    # The harness itself (rich's refresh, the checks) stays off the server's core.
    os.sched_setaffinity(0, {client_cpu})
    signal.signal(signal.SIGTERM, _on_sigterm)
    busy = _wait_idle({client_cpu, server_cpu}, args.wait_idle, console)
    if busy > IDLE:
        console.print(
            f"[yellow]warning:[/] cores {client_cpu},{server_cpu} were {busy:.0%} busy before "
            "the run (other processes): expect noisier numbers"
        )
    console.print(
        f"wrk on core {client_cpu}, servers on core {server_cpu}; {settings.duration_s}s per "
        f"point after {settings.warmup_s}s warm-up"
        + (f", median of {settings.rounds} interleaved rounds" if settings.rounds > 1 else "")
    )
    started = dt.datetime.now(dt.UTC)
    interrupted = False
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    with tempfile.TemporaryDirectory(prefix="edgerun-bench-") as tmp, progress:
        # Searchable by others (not listable): isolated workers drop to an unprivileged
        # user only when they can reach their deployment's state directory, as in
        # production; under a 0700 temp directory they would stay root.
        os.chmod(tmp, 0o711)
        bench = Bench(settings, console, progress, Path(tmp))
        progress.update(bench.task, total=bench.steps(specs, micro, extras))
        try:
            bench.measure_all(specs)
            bench.measure_extras(extras)
            if micro:
                bench.measure_micro()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bench.pool.stop_all()
    results = bench.results
    labels = {s.key: s.label for s in (*SPECS, *NOISY_SPECS)} | MICRO_LABELS | ISOLATION_LABELS
    console.print()
    console.print(results.table(labels))
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "complete": not interrupted,
        "duration_s": settings.duration_s,
        "warmup_s": settings.warmup_s,
        "rounds": settings.rounds,
        "quick": settings.quick,
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "cpu_count": os.cpu_count(),
        "busy_before": round(busy, 3),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": _versions(),
    }
    contended = [m for m in results.measurements if (m.other_cpu or 0) > CONTENDED]
    if contended:
        http = [m for m in results.measurements if m.other_cpu is not None]
        names = (
            "every measurement"
            if len(contended) == len(http)
            else ", ".join(f"{m.label} @{m.connections}" for m in contended)
        )
        worst = max(m.other_cpu or 0 for m in contended)
        console.print(
            f"[yellow]note:[/] other processes used > {CONTENDED:.0%} of a core (up to "
            f"{worst:.0%}) on the benchmark cores during {names}. req/s and p99 there are "
            "understated; the per CPU-s ratios hold better, or rerun on a quiet machine "
            "(--wait-idle)."
        )
    results.write_json(args.json, meta)
    met = [t for t in results.to_json(meta)["targets"] if t["met"] is not None]
    console.print(
        f"targets met: {sum(bool(t['met']) for t in met)}/{len(met)} measured"
        f"  ·  results: {_display(args.json)}"
    )
    if interrupted:
        console.print("[yellow]interrupted: the results above are partial[/]")
        return 130
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
