"""What bench/run.py measures: the servers, what each is compared with, and the targets.

A ``ServerSpec`` is one server serving one app; it is measured at each of its
``connections``. ``baseline`` names the spec its ratios are computed against (measured in
the same run); ``reference`` names an extra spec shown next to it for context. The
targets are the ones from the performance issue and are only reported, never asserted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "BENCH_DIR",
    "COLDSTART_DEPLOYMENT",
    "COLDSTART_PROJECT",
    "EXTRA_GROUPS",
    "GROUPS",
    "ISOLATION_LABELS",
    "MEMORY_DEPLOYMENT",
    "MEMORY_PROJECT",
    "MICRO_BASELINE",
    "MICRO_KV",
    "MICRO_LABELS",
    "NOISY_CLIENTS",
    "NOISY_PROJECTS",
    "NOISY_QUIET",
    "NOISY_SPECS",
    "PROJECTS_DIR",
    "SPECS",
    "TARGETS",
    "ServerSpec",
    "Target",
    "select",
]

BENCH_DIR = Path(__file__).resolve().parent
APPS_DIR = BENCH_DIR / "apps"
PROJECTS_DIR = BENCH_DIR / "projects"

GROUPS: dict[str, str] = {
    "a": "baseline: raw uvicorn",
    "b": "edgerun node: hello fetch handler",
    "c": "Starlette app: node vs plain uvicorn",
    "d": "KV read per request: node vs bare sqlite3 on uvicorn",
    "e": "KV get in process: binding vs bare sqlite3",
    "f": "isolation: hello in worker processes vs in-process vs raw uvicorn",
    "g": "cold start: first request to a scaled-to-zero / brand-new deployment",
    "h": "memory: idle workers and zygote (smaps_rollup)",
    "i": "noisy neighbour: hello while another deployment burns CPU",
}

EXTRA_GROUPS = ("g", "h", "i")
"""Groups measured by bench/isolation.py rather than by the wrk rounds over ``SPECS``."""

Kind = Literal["uvicorn", "granian", "edgerun"]


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server + app to load with wrk at each of ``connections``.

    ``kind`` says how to start it: ``uvicorn`` / ``granian`` serve ``target``
    (``module:attr``) from ``app_dir``; ``edgerun`` runs ``python -m edgerun node`` on the
    project directory ``app_dir`` with ``--server node_server``.
    """

    key: str
    group: str
    label: str
    kind: Kind
    app_dir: Path
    target: str = ""
    node_server: Literal["uvicorn", "granian"] = "uvicorn"
    expect_body: bytes = b"hello"
    baseline: str | None = None
    reference: str | None = None
    connections: tuple[int, ...] = (64, 1)
    seed_kv: bool = False
    sqlite_db: bool = False


SPECS: tuple[ServerSpec, ...] = (
    ServerSpec(
        "a.uvicorn", "a", "uvicorn · bare ASGI hello", "uvicorn", APPS_DIR, "asgi_hello:app"
    ),
    ServerSpec(
        "b.node", "b", "node · uvicorn (default)", "edgerun",
        PROJECTS_DIR / "hello", node_server="uvicorn", baseline="a.uvicorn",
    ),
    ServerSpec(
        "b.node-fast", "b", "node · granian (fast mode)", "edgerun",
        PROJECTS_DIR / "hello", node_server="granian", baseline="a.uvicorn",
        reference="b.granian",
    ),
    ServerSpec(
        "b.granian", "b", "bare granian · RSGI hello (fast-mode ref)", "granian",
        APPS_DIR, "rsgi_hello:app", baseline="a.uvicorn",
    ),
    ServerSpec(
        "c.uvicorn", "c", "uvicorn · Starlette app", "uvicorn",
        PROJECTS_DIR / "starlette", "app:app",
    ),
    ServerSpec(
        "c.node", "c", "node · same Starlette app", "edgerun",
        PROJECTS_DIR / "starlette", baseline="c.uvicorn",
    ),
    ServerSpec(
        "d.uvicorn", "d", "uvicorn · ASGI + sqlite3 read", "uvicorn",
        APPS_DIR, "asgi_sqlite:app", expect_body=b"v", sqlite_db=True,
    ),
    ServerSpec(
        "d.node", "d", "node · env.KV.get per request", "edgerun",
        PROJECTS_DIR / "kv", expect_body=b"v", baseline="d.uvicorn", seed_kv=True,
    ),
    ServerSpec(
        "f.isolated", "f", "node · hello in isolated workers", "edgerun",
        PROJECTS_DIR / "hello-isolated", baseline="a.uvicorn", reference="f.inprocess",
    ),
    ServerSpec(
        "f.inprocess", "f", "in-process node · same hello", "edgerun",
        PROJECTS_DIR / "hello-inprocess", baseline="a.uvicorn",
    ),
)  # fmt: skip

# (i): one node serving hello-isolated (routes */*) next to the burner (routes */burn).
NOISY_PROJECTS = (PROJECTS_DIR / "hello-isolated", PROJECTS_DIR / "burner")
NOISY_CLIENTS = 4
"""Concurrent clients hammering the burner; each request holds one burner worker."""
NOISY_QUIET = "i.quiet"
NOISY_SPECS: tuple[ServerSpec, ...] = (
    ServerSpec(
        NOISY_QUIET, "i", "hello, neighbour idle", "edgerun", NOISY_PROJECTS[0],
    ),
    ServerSpec(
        "i.noisy", "i", f"hello, neighbour burning ({NOISY_CLIENTS} clients)", "edgerun",
        NOISY_PROJECTS[0], baseline=NOISY_QUIET,
    ),
)  # fmt: skip

COLDSTART_PROJECT = PROJECTS_DIR / "coldstart"
COLDSTART_DEPLOYMENT = "bench-coldstart"
MEMORY_PROJECT = PROJECTS_DIR / "hello-pool"
MEMORY_DEPLOYMENT = "bench-hello-pool"
ISOLATION_LABELS = {
    "g.cold": "scaled to zero → first 200 (fork from zygote)",
    "g.new": "brand-new deployment: node start → first 200",
    "h.worker": "idle worker (each)",
    "h.zygote": "zygote",
    "h.node": "node process (for scale)",
    "i.burner": "the neighbour: burner deployment",
}

MICRO_BASELINE = "e.sqlite"
MICRO_KV = "e.kv"
MICRO_LABELS = {
    MICRO_BASELINE: "bare sqlite3 point read (WAL)",
    MICRO_KV: "await kv.get() (sqlite backend)",
}

Metric = Literal["rps_ratio", "p99_added_ms", "p50_us", "uss_mib"]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue: ``metric`` of ``key`` at ``connections`` vs ``limit``."""

    key: str
    connections: int | None
    metric: Metric
    limit: float
    at_least: bool
    text: str

    def met(self, value: float) -> bool:
        """Whether ``value`` meets this target."""
        return value >= self.limit if self.at_least else value <= self.limit


TARGETS: tuple[Target, ...] = (
    Target("b.node", 64, "rps_ratio", 0.9, True, "≥ 0.9x baseline req/s"),
    Target("b.node", 1, "p99_added_ms", 1.0, False, "≤ 1 ms p99 added"),
    Target("b.node-fast", 64, "rps_ratio", 1.3, True, "≥ 1.3x baseline req/s"),
    Target("b.node-fast", 1, "p99_added_ms", 1.0, False, "≤ 1 ms p99 added"),
    Target("c.node", 64, "rps_ratio", 0.9, True, "within 10% of plain uvicorn"),
    Target(MICRO_KV, None, "p50_us", 20.0, False, "p50 ≤ 20 µs"),
    Target("f.isolated", 64, "rps_ratio", 0.6, True, "≥ 0.6x baseline req/s"),
    Target("g.cold", None, "p50_us", 10_000.0, False, "p50 ≤ 10 ms"),
    Target("h.worker", None, "uss_mib", 10.0, False, "USS ≤ 10 MiB (largest)"),
)


def select(groups: str | None) -> tuple[tuple[ServerSpec, ...], bool, tuple[str, ...]]:
    """The specs for comma-separated ``groups`` (all if None), whether to run (e), and
    which of the ``EXTRA_GROUPS`` (g, h, i) to run.

    A spec's baseline and reference are always included, so every ratio printed has
    its denominator measured in the same run.
    """
    wanted = {g.strip() for g in groups.split(",")} if groups else set(GROUPS)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown scenario group(s) {sorted(unknown)}; use {','.join(GROUPS)}")
    keys = {s.key for s in SPECS if s.group in wanted}
    while True:  # until closed under baseline/reference (a reference has a baseline too)
        needed = {
            k for s in SPECS if s.key in keys for k in (s.baseline, s.reference) if k is not None
        }
        if needed <= keys:
            break
        keys |= needed
    extras = tuple(g for g in EXTRA_GROUPS if g in wanted)
    return tuple(s for s in SPECS if s.key in keys), "e" in wanted, extras
