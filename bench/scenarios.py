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
    "GROUPS",
    "MICRO_BASELINE",
    "MICRO_KV",
    "MICRO_LABELS",
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
}

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
)  # fmt: skip

MICRO_BASELINE = "e.sqlite"
MICRO_KV = "e.kv"
MICRO_LABELS = {
    MICRO_BASELINE: "bare sqlite3 point read (WAL)",
    MICRO_KV: "await kv.get() (sqlite backend)",
}

Metric = Literal["rps_ratio", "p99_added_ms", "p50_us"]


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
)


def select(groups: str | None) -> tuple[tuple[ServerSpec, ...], bool]:
    """The specs for comma-separated ``groups`` (all if None) and whether to run (e).

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
    return tuple(s for s in SPECS if s.key in keys), "e" in wanted
