"""Micro-benchmark: Cache API ``match`` (a hit) and ``put`` on the memory and SQLite stores.

Run as a script, it prints one JSON object ``{"memory": {"match": S, "put": S},
"sqlite": {...}}`` with ``kv_micro.summarize`` summaries (p50/p99/mean in µs). Calls
are timed in batches, as in ``kv_micro``, because one call is a few microseconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kv_micro import _run, summarize

from edgerun.bindings.cache import Cache, CacheStore, MemoryCacheStore, SqliteCacheStore
from edgerun.http import Response

__all__ = ["measure"]

URL = "https://bench.test/item"
BODY = b"x" * 1024


def _response() -> Response:
    return Response(BODY, headers={"cache-control": "max-age=3600", "content-type": "text/plain"})


async def _time(store: CacheStore, batches: int, batch_size: int, warmup: int) -> dict[str, Any]:
    cache = Cache(store=store)
    clock = time.perf_counter_ns
    put_samples: list[float] = []
    match_samples: list[float] = []
    for i in range(warmup + batches):
        responses = [_response() for _ in range(batch_size)]
        start = clock()
        for response in responses:
            await cache.put(URL, response)
        put_ns = clock() - start
        start = clock()
        for _ in range(batch_size):
            if await cache.match(URL) is None:
                raise RuntimeError("the benchmark entry was not stored")
        match_ns = clock() - start
        if i >= warmup:
            put_samples.append(put_ns / batch_size)
            match_samples.append(match_ns / batch_size)
    return {
        "match": summarize(match_samples, batch_size),
        "put": summarize(put_samples, batch_size),
    }


def measure(batches: int, batch_size: int, warmup: int) -> dict[str, Any]:
    """Time both stores (SQLite in a fresh temporary file); shape in the module docstring."""
    result: dict[str, Any] = {}
    result["memory"] = _run(lambda: _time(MemoryCacheStore(), batches, batch_size, warmup))
    with tempfile.TemporaryDirectory(prefix="edgerun-bench-") as tmp:
        store = SqliteCacheStore(Path(tmp) / "cache.sqlite3")
        try:
            result["sqlite"] = _run(lambda: _time(store, batches, batch_size, warmup))
        finally:
            store.close()
    return result


def main() -> None:
    """Command-line entry: print the JSON summary of one measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=40, help="batches to discard first")
    args = parser.parse_args()
    print(json.dumps(measure(args.batches, args.batch_size, args.warmup)))


if __name__ == "__main__":
    main()
