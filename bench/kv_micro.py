"""Micro-benchmark (e): one KV ``get`` through the binding vs a bare sqlite3 point read.

Run as a script (bench/run.py starts it pinned to the idle server core) it prints one
JSON object: ``{"sqlite": SUMMARY, "kv": SUMMARY}`` where a summary holds ``p50_us``,
``p99_us``, ``mean_us``, ``calls_per_s`` and ``calls``, or ``{"error": MESSAGE}`` when
that side could not run. A single call takes microseconds, close to the clock's own
cost, so calls are timed in batches and the percentiles are over per-batch means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["create_point_db", "measure", "summarize"]

SELECT = "SELECT value FROM t WHERE key = ?"


def create_point_db(path: Path) -> None:
    """Create a WAL SQLite file at ``path`` holding table ``t`` with ``k`` = ``v``.

    Used by the micro-benchmark and by the (d) baseline app, so both read the same shape.
    """
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
        )
        conn.execute("INSERT OR REPLACE INTO t (key, value) VALUES ('k', ?)", (b"v",))
        conn.commit()
    finally:
        conn.close()


def summarize(per_call_ns: list[float], batch_size: int) -> dict[str, float]:
    """Reduce per-batch mean call times (ns) to p50/p99/mean in µs and calls per second."""
    cuts = statistics.quantiles(per_call_ns, n=100, method="inclusive")
    mean = statistics.fmean(per_call_ns)
    return {
        "p50_us": cuts[49] / 1e3,
        "p99_us": cuts[98] / 1e3,
        "mean_us": mean / 1e3,
        "calls_per_s": 1e9 / mean,
        "calls": float(len(per_call_ns) * batch_size),
    }


def _time_sqlite(path: Path, batches: int, batch_size: int, warmup: int) -> list[float]:
    conn = sqlite3.connect(path)
    execute = conn.execute  # bound once: attribute lookups are a visible share of 3 µs
    clock = time.perf_counter_ns
    samples: list[float] = []
    try:
        for i in range(warmup + batches):
            start = clock()
            for _ in range(batch_size):
                execute(SELECT, ("k",)).fetchone()
            elapsed = clock() - start
            if i >= warmup:
                samples.append(elapsed / batch_size)
    finally:
        conn.close()
    return samples


async def _time_kv(path: Path, batches: int, batch_size: int, warmup: int) -> list[float]:
    from edgerun.bindings.kv import open_kv

    kv = open_kv("bench", backend="sqlite", path=path)
    try:
        await kv.put("k", "v")
        if (got := await kv.get("k")) != "v":
            raise RuntimeError(f"kv.get('k') returned {got!r} after kv.put('k', 'v')")
        get = kv.get
        clock = time.perf_counter_ns
        samples: list[float] = []
        for i in range(warmup + batches):
            start = clock()
            for _ in range(batch_size):
                await get("k")
            elapsed = clock() - start
            if i >= warmup:
                samples.append(elapsed / batch_size)
        return samples
    finally:
        await kv.close()


def _run(main: Callable[[], Coroutine[Any, Any, list[float]]]) -> list[float]:
    # The node runs on uvloop; use it here too so the binding sees the same loop.
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except ImportError:
        return asyncio.run(main())


def measure(batches: int, batch_size: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Time both reads in fresh temporary databases; see the module docstring for the shape."""
    result: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgerun-bench-") as tmp:
        bare = Path(tmp) / "bare.sqlite3"
        create_point_db(bare)
        result["sqlite"] = summarize(_time_sqlite(bare, batches, batch_size, warmup), batch_size)
        kv_path = Path(tmp) / "kv.sqlite3"
        try:
            samples = _run(lambda: _time_kv(kv_path, batches, batch_size, warmup))
        except Exception as exc:  # an unfinished binding must not hide the baseline
            result["kv"] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            result["kv"] = summarize(samples, batch_size)
    return result


def main() -> None:
    """Command-line entry: print the JSON summary of one measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=200, help="batches to discard first")
    args = parser.parse_args()
    print(json.dumps(measure(args.batches, args.batch_size, args.warmup)))


if __name__ == "__main__":
    main()
