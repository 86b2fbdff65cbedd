"""Run the `edgerun` CLI as a user would, for the integration tests (not a test module)."""

from __future__ import annotations

import subprocess
import sys


def run_cli(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgerun ARGS``; with ``check``, a non-zero exit fails the test."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgerun", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"edgerun {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc
