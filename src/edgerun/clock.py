"""Time as an injected dependency: everything that reads the clock takes a ``Clock``.

``SystemClock`` is the real thing; ``FakeClock`` is advanced by hand so tests of TTLs
and timeouts never sleep.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of wall time (``time()``, seconds since the epoch) and monotonic time."""

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and ``time.monotonic()``."""

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on the process's monotonic clock."""
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to, for deterministic tests.

    Both readings start at ``start`` (default 1,700,000,000: a plausible epoch time)
    and move together by ``advance(seconds)``.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._mono = 0.0

    def time(self) -> float:
        """The fake epoch time."""
        return self._now

    def monotonic(self) -> float:
        """The fake monotonic time (starts at 0)."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance by {seconds})")
        self._now += seconds
        self._mono += seconds

    def set(self, epoch: float) -> None:
        """Jump the epoch reading to ``epoch`` (not earlier than now)."""
        self.advance(epoch - self._now)
