"""Deploy latency: from `edgerun deploy` start to the first 200 served by the new version.

Starts `edgerun node --embedded-control` on a free port (fresh temp state), creates a
deploy token, then 20 times: rewrites a small project with a new marker, runs the
real `edgerun deploy` CLI, and polls the node until a response carries the new
marker. Prints p50/p90/max over the 20 deploys and the target (p50 <= 1 s).

Usage: python bench/deploy_latency.py [--deploys 20] [--mode isolated|inprocess]
Not part of `make bench`'s main run (it spawns ~20 CLI processes).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edgerun.testing.process import start_node

CLI = [sys.executable, "-m", "edgerun"]
APP = """
from edgerun import Response
async def fetch(request, env, ctx):
    return Response.json({{"marker": {marker!r}}})
"""


def main() -> None:
    """Run the benchmark and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--mode", choices=["isolated", "inprocess"], default="isolated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "state"
        token = subprocess.run(
            [*CLI, "token", "create", "--scope", "deploy", "--state-dir", str(state / "control")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        node = start_node([], state_dir=state, command="node", args=["--embedded-control"])
        project = root / "bench-app"
        project.mkdir()
        (project / "edgerun.toml").write_text(
            f'name = "bench-app"\nmain = "app.py"\nmode = "{args.mode}"\n'
        )
        samples: list[float] = []
        try:
            with httpx.Client(base_url=node.url, timeout=30) as client:
                for i in range(args.deploys):
                    marker = f"deploy-{i}"
                    (project / "app.py").write_text(APP.format(marker=marker))
                    start = time.perf_counter()
                    subprocess.run(
                        [
                            *CLI,
                            "deploy",
                            str(project),
                            "--to",
                            node.url,
                            "--token",
                            token,
                            "-m",
                            marker,
                        ],
                        capture_output=True,
                        check=True,
                    )
                    while True:
                        r = client.get("/")
                        if r.status_code == 200 and r.json().get("marker") == marker:
                            break
                    samples.append(time.perf_counter() - start)
        finally:
            node.stop()
    samples.sort()
    p50 = statistics.median(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    print(f"deploy latency over {len(samples)} deploys ({args.mode} mode):")
    print(f"  p50 {p50 * 1000:.0f} ms  p90 {p90 * 1000:.0f} ms  max {samples[-1] * 1000:.0f} ms")
    print(f"  target p50 <= 1000 ms: {'met' if p50 <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
