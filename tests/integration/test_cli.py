"""The edgerun CLI as a user runs it: subprocesses, real files, real nodes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def edgerun(*args: str, input: str | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "edgerun", *args],
        capture_output=True,
        text=True,
        input=input,
        cwd=cwd,
        timeout=60,
    )


def _all_commands() -> list[list[str]]:
    """Every command path of the CLI, walked from the app itself (new ones included)."""
    import typer.main

    from edgerun.cli import app

    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append(path)
        # Groups have subcommands (typer bundles its own click, so no isinstance check).
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _all_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgerun")
def test_every_command_has_help(command):
    r = edgerun(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout


def test_init_creates_a_project_that_runs(tmp_path, edgerun_node):
    r = edgerun("init", "hello-edge", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    project = tmp_path / "hello-edge"
    assert 'name = "hello-edge"' in (project / "edgerun.toml").read_text()
    node = edgerun_node(project, country="DE")
    first = node.client.get("/x").json()
    assert first["message"] == "Hello from edgerun"
    assert first["country"] == "DE"
    assert first["visits"] == 1
    assert node.client.get("/x").json()["visits"] == 2


def test_init_refuses_bad_name_and_existing_dir(tmp_path):
    r = edgerun("init", "Bad_Name", cwd=tmp_path)
    assert r.returncode == 1
    assert "invalid project name" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    r = edgerun("init", "taken", cwd=tmp_path)
    assert r.returncode == 1 and "not empty" in r.stderr


def _project(tmp_path: Path, toml: str, app: str = "") -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "edgerun.toml").write_text(toml)
    (project / "app.py").write_text(
        app
        or (
            "from edgerun import Response\n"
            "async def fetch(request, env):\n"
            "    return Response.json({'secret_len': len(env.TOKEN), 'repr': repr(env.TOKEN)})\n"
        )
    )
    return project


def test_bad_config_names_file_line_and_reason_without_traceback(tmp_path):
    project = _project(tmp_path, 'name = "p"\n\n[limits]\ncpu_msec = 5\n')
    r = edgerun("dev", str(project), "--port", "0")
    assert r.returncode == 1
    assert "edgerun.toml:4" in r.stderr
    assert "cpu_msec" in r.stderr and "cpu_ms" in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_flag_shows_traceback(tmp_path):
    project = _project(tmp_path, 'name = "p"\n\n[limits]\ncpu_msec = 5\n')
    r = edgerun("--debug", "dev", str(project), "--port", "0")
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_kv_cli_round_trip_and_errors(tmp_path):
    project = _project(tmp_path, 'name = "p"\n[[kv]]\nbinding = "KV"\n')
    base = ["--binding", "KV", str(project)]
    assert (
        edgerun("kv", "put", "greeting", "hello", *base, "--metadata", '{"v": 1}').returncode == 0
    )
    got = edgerun("kv", "get", "greeting", *base)
    assert got.returncode == 0 and got.stdout == "hello\n"
    listed = json.loads(edgerun("kv", "list", *base, "--json").stdout)
    assert listed["keys"] == [{"name": "greeting", "expiration": None, "metadata": {"v": 1}}]
    assert edgerun("kv", "put", '["a", 1]', "x", *base, "--tuple").returncode == 0
    listed = json.loads(
        edgerun("kv", "list", *base, "--json", "--tuple", "--prefix", '["a"]').stdout
    )
    assert [k["name"] for k in listed["keys"]] == [["a", 1]]
    assert edgerun("kv", "delete", "greeting", *base).returncode == 0
    missing = edgerun("kv", "get", "greeting", *base)
    assert missing.returncode == 1 and "not found" in missing.stderr

    too_long = edgerun("kv", "put", "k" * 600, "v", *base)
    assert too_long.returncode == 1
    assert "512" in too_long.stderr and "Traceback" not in too_long.stderr
    bad_ttl = edgerun("kv", "put", "k", "v", *base, "--ttl", "0")
    assert bad_ttl.returncode == 1 and "Traceback" not in bad_ttl.stderr
    no_binding = edgerun("kv", "get", "k", "--binding", "NOPE", str(project))
    assert no_binding.returncode == 1 and "no [[kv]] binding named 'NOPE'" in no_binding.stderr


def test_secret_put_list_delete_never_prints_values(tmp_path, edgerun_node):
    project = _project(tmp_path, 'name = "p"\n')
    state = tmp_path / "state"
    r = edgerun(
        "secret", "put", "TOKEN", str(project), "--state-dir", str(state), input="s3cr3t-value\n"
    )
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-value" not in r.stdout + r.stderr
    mode = stat.S_IMODE(os.stat(state / "secrets.json").st_mode)
    assert mode == 0o600
    listed = edgerun("secret", "list", str(project), "--state-dir", str(state))
    assert listed.stdout.split() == ["TOKEN"]
    assert "s3cr3t-value" not in listed.stdout

    node = edgerun_node(project, state_dir=state)
    body = node.client.get("/").json()
    assert body["secret_len"] == len("s3cr3t-value")
    assert "s3cr3t-value" not in body["repr"]
    assert "s3cr3t-value" not in "".join(node.output)

    assert (
        edgerun("secret", "delete", "TOKEN", str(project), "--state-dir", str(state)).returncode
        == 0
    )
    gone = edgerun("secret", "delete", "TOKEN", str(project), "--state-dir", str(state))
    assert gone.returncode == 1 and "no secret named" in gone.stderr
    bad = edgerun("secret", "put", "1bad", str(project), "--state-dir", str(state), input="v")
    assert bad.returncode == 1 and "invalid secret name" in bad.stderr


TOKEN_APP = """
import secrets
from edgerun import Response

TOKEN = secrets.token_hex(8) + "{suffix}"

async def fetch(request, env):
    return Response(TOKEN)
"""


def _poll(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


def test_dev_with_its_log_inside_the_project_reloads_only_on_source_edits(tmp_path):
    # `edgerun dev > dev.log 2>&1` in the project: every log line was a file change,
    # every reload wrote a line, so it reloaded forever.
    import re

    import httpx

    project = _project(tmp_path, 'name = "tok"\n', TOKEN_APP.format(suffix="-v1"))
    log_path = project / "dev.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "dev", str(project), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=project,
        )
    try:

        def logged() -> str:
            return log_path.read_text()

        def ready() -> str | None:
            assert proc.poll() is None, f"edgerun dev exited:\n{logged()}"
            text = logged()
            found = re.search(r"edgerun: ready on (http://\S+)", text)
            return found.group(1) if found and "edgerun: watching" in text else None

        url = _poll(ready, "edgerun dev to be ready and watching")
        with httpx.Client(base_url=url, timeout=10) as client:

            def steady(window: float = 2.0) -> set[str]:
                # Absence of a reload can only be shown over a window: keep requesting
                # (each writes an access-log line into the project) for longer than
                # watchfiles' 1.6 s debounce; a reload would change the token.
                import time

                seen: set[str] = set()
                end = time.monotonic() + window
                while time.monotonic() < end:
                    seen.add(client.get("/").text)
                return seen

            first = steady()
            assert len(first) == 1 and first.pop().endswith("-v1"), logged()
            assert "edgerun.access" in logged()

            def token_ends(suffix: str) -> str | None:
                text = client.get("/").text
                return text if text.endswith(suffix) else None

            (project / "app.py").write_text(TOKEN_APP.format(suffix="-v2"))
            v2 = _poll(lambda: token_ends("-v2"), "the edit to app.py to be served")
            # More log lines, and the "reloaded" line itself: the token must not move.
            assert steady() == {v2}, logged()
        assert logged().count("edgerun: reloaded") == 1, logged()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_dev_watch_filter_takes_sources_and_leaves_state_logs_and_caches(tmp_path):
    from edgerun.node.run import SourceFilter

    project = _project(tmp_path, 'name = "f"\n')
    state = project / "var" / "state"
    keep = SourceFilter({project: state})
    assert keep(None, str(project / "app.py"))
    assert keep(None, str(project / "edgerun.toml"))
    assert keep(None, str(project / "static" / "index.html"))  # staged, so it counts
    assert not keep(None, str(state / "kv.sqlite3"))
    assert not keep(None, str(project / ".edgerun" / "kv.sqlite3"))
    assert not keep(None, str(project / "dev.log"))
    assert not keep(None, str(project / "pkg" / "__pycache__" / "m.cpython-312.pyc"))
    assert not keep(None, str(project / ".git" / "index"))
    assert not keep(None, str(tmp_path / "elsewhere.py"))
