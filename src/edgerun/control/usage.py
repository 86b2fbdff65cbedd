"""Usage metering: what each deployment consumed, for pay-per-use accounting.

The node counts every request (after its response and deferred work are done):
requests, CPU-ms, wall-ms, bytes in and out, cold starts and errors by code.
``UsageMeter.snapshot()`` is what ``/__edgerun/usage`` and ``edgerun usage``
report. Counters only grow while the node runs (a pull model like Prometheus: nothing
is reset on read, so a reader that fails loses nothing).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeploymentUsage", "UsageMeter"]


@dataclass(slots=True)
class DeploymentUsage:
    """Running totals for one deployment."""

    requests: int = 0
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    cold_starts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (CPU and wall time rounded to 0.001 ms)."""
        return {
            "requests": self.requests,
            "cpu_ms": round(self.cpu_ms, 3),
            "wall_ms": round(self.wall_ms, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "cold_starts": self.cold_starts,
            "outcomes": dict(sorted(self.outcomes.items())),
            "errors": dict(sorted(self.errors.items())),
        }


class UsageMeter:
    """Per-deployment usage totals of this node."""

    def __init__(self) -> None:
        self._by_deployment: dict[str, DeploymentUsage] = {}

    def count(
        self,
        deployment: str,
        outcome: str,
        cpu_ms: float,
        wall_ms: float,
        bytes_in: int,
        bytes_out: int,
        cold_start: bool,
        error_code: str | None,
    ) -> None:
        """Fold one finished request into ``deployment``'s totals.

        ``outcome`` is the runtime's Outcome value (``ok``, ``exceeded_cpu``...);
        ``error_code`` the JSON error code of an error response, else None. Called on
        the node's per-request path, so it only adds into the running totals.
        """
        usage = self._by_deployment.get(deployment)
        if usage is None:
            usage = self._by_deployment[deployment] = DeploymentUsage()
        usage.requests += 1
        usage.cpu_ms += cpu_ms
        usage.wall_ms += wall_ms
        usage.bytes_in += bytes_in
        usage.bytes_out += bytes_out
        if cold_start:
            usage.cold_starts += 1
        usage.outcomes[outcome] += 1
        if error_code is not None:
            usage.errors[error_code] += 1

    def merge(
        self,
        deployment: str,
        outcome: str,
        requests: int,
        cpu_ms: float,
        wall_ms: float,
        bytes_in: int,
        bytes_out: int,
        cold_starts: int,
        error_code: str | None,
    ) -> None:
        """Fold ``requests`` requests counted elsewhere (a worker) into the totals."""
        usage = self._by_deployment.get(deployment)
        if usage is None:
            usage = self._by_deployment[deployment] = DeploymentUsage()
        usage.requests += requests
        usage.cpu_ms += cpu_ms
        usage.wall_ms += wall_ms
        usage.bytes_in += bytes_in
        usage.bytes_out += bytes_out
        usage.cold_starts += cold_starts
        usage.outcomes[outcome] += requests
        if error_code is not None:
            usage.errors[error_code] += requests

    def get(self, deployment: str) -> DeploymentUsage:
        """The totals of ``deployment`` (zeros if it has served nothing)."""
        return self._by_deployment.get(deployment) or DeploymentUsage()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every deployment's totals, JSON-ready, sorted by name."""
        return {name: u.as_dict() for name, u in sorted(self._by_deployment.items())}
