"""Isolated mode against a real node: limits, crashes, file isolation, autoscaling."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

HOG = """
import asyncio, os, sys
from edgerun import Response

async def fetch(request, env, ctx):
    path = request.path
    if path == "/pid":
        return Response.json({"pid": os.getpid()})
    if path == "/spin":
        while True:
            pass
    if path == "/spin-swallow":
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    if path == "/spin-c":
        return Response(str(sum(range(10**12))))
    if path == "/work":
        n = 0
        for i in range(300_000):
            n += i
        return Response(str(n))
    if path == "/sleep":
        await asyncio.sleep(float(request.query.get("s", "10")))
        return Response("slept")
    if path == "/hog":
        block = bytearray(int(request.query["mb"]) * 1024 * 1024)
        return Response(str(len(block)))
    if path == "/exit":
        os._exit(1)
    if path == "/spin-stream":
        async def body():
            yield b"first chunk"
            while True:
                pass
        return Response(body())
    if path == "/read":
        try:
            with open(request.query["file"], "rb") as fh:
                return Response.json({"read": len(fh.read())})
        except OSError as exc:
            return Response.json({"error": type(exc).__name__})
    if path == "/env":
        environ = sorted(os.environ)
        return Response.json({"env": sorted(env), "uid": os.getuid(), "environ": environ})
    return Response("ok")
"""


def project(root: Path, name: str, toml: str = "", app: str = HOG) -> Path:
    p = root / name
    p.mkdir(parents=True)
    (p / "edgerun.toml").write_text(f'name = "{name}"\nmain = "app.py"\n{textwrap.dedent(toml)}')
    (p / "app.py").write_text(app)
    return p


def two(tmp_path, edgerun_node, limits: str):
    a = project(tmp_path, "a", f'routes = ["a.test/*"]\n[limits]\n{limits}')
    b = project(tmp_path, "b", 'routes = ["b.test/*"]\n')
    node = edgerun_node([a, b], command="node")
    return node


def get(node, path: str, host: str = "a.test", **kw):
    return node.client.get(path, headers={"host": host}, **kw)


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


def assert_recovered(node):
    assert get(node, "/").text == "ok"
    assert get(node, "/", host="b.test").text == "ok"


@pytest.mark.parametrize("path", ["/spin", "/spin-swallow", "/spin-c"])
def test_cpu_loop_is_503_exceeded_cpu_and_the_node_recovers(tmp_path, edgerun_node, path):
    node = two(tmp_path, edgerun_node, "cpu_ms = 50\n")
    # B keeps being served while A burns CPU.
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(get(node, "/", host="b.test").status_code))
    t.start()
    r = get(node, path)
    t.join()
    assert r.status_code == 503
    assert error_code(r) == "exceeded_cpu"
    assert results == [200]
    assert_recovered(node)


@pytest.mark.parametrize("handoff", ["true", "false"])
def test_a_streamed_body_that_spins_is_cut_off_at_the_cpu_limit(tmp_path, edgerun_node, handoff):
    # The body's generator is the handler's code too, whichever way the worker is reached.
    node = two(tmp_path, edgerun_node, f"cpu_ms = 50\n[scaling]\nhandoff = {handoff}\n")
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        node.client.stream("GET", "/spin-stream", headers={"host": "a.test"}) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            received += chunk
    assert received == b"first chunk"
    # Stopped by the worker's own CPU meter (which retires the worker), not by the
    # node's watchdog killing a worker that never yields.
    node.wait_for_line(r"retired: .*(streamed response|exceeded_cpu)")
    assert not any("without yielding" in line for line in node.output)
    assert_recovered(node)


def test_cpu_limit_twin_raised_limit_lets_the_work_finish(tmp_path, edgerun_node):
    low = two(tmp_path / "low", edgerun_node, "cpu_ms = 1\nfirst_request_cpu_ms = 1\n")
    assert error_code(get(low, "/work")) == "exceeded_cpu"
    high = two(tmp_path / "high", edgerun_node, "cpu_ms = 5000\n")
    r = get(high, "/work")
    assert r.status_code == 200 and r.text == str(sum(range(300_000)))


BURN = """
import time
from edgerun import Response

def burn(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass

async def fetch(request, env, ctx):
    burn(int(request.query.get("ms", "0")))
    return Response("burnt")
"""


def test_a_workers_first_request_may_pay_first_use_costs(tmp_path, edgerun_node):
    # Default cpu_ms = 50: the first request of the worker (a lazy import, a TLS
    # context) gets first_request_cpu_ms = 1000; the next one does not.
    p = project(tmp_path, "warm", "[scaling]\nmax_workers = 1\n", app=BURN)
    node = edgerun_node(p, command="node")
    assert node.client.get("/", params={"ms": "300"}).text == "burnt"
    r = node.client.get("/", params={"ms": "300"})
    assert r.status_code == 503 and error_code(r) == "exceeded_cpu"
    assert "raise [limits] cpu_ms" in r.json()["error"]["message"]


def test_a_lowered_first_request_budget_fails_the_same_first_request(tmp_path, edgerun_node):
    p = project(
        tmp_path,
        "cold",
        "[limits]\nfirst_request_cpu_ms = 100\n[scaling]\nmax_workers = 1\n",
        app=BURN,
    )
    node = edgerun_node(p, command="node")
    r = node.client.get("/", params={"ms": "300"})
    assert r.status_code == 503 and error_code(r) == "exceeded_cpu"
    message = r.json()["error"]["message"]
    assert "first request" in message and "raise [limits] first_request_cpu_ms" in message


def test_wall_limit_and_its_twin(tmp_path, edgerun_node):
    node = two(tmp_path, edgerun_node, "wall_ms = 200\n")
    r = get(node, "/sleep", params={"s": "10"})
    assert r.status_code == 503 and error_code(r) == "exceeded_wall"
    assert_recovered(node)
    ok = two(tmp_path / "twin", edgerun_node, "wall_ms = 5000\n")
    assert get(ok, "/sleep", params={"s": "0.3"}).text == "slept"


def test_memory_hog_and_its_twin(tmp_path, edgerun_node):
    node = two(tmp_path, edgerun_node, "memory_mb = 64\ncpu_ms = 5000\n")
    r = get(node, "/hog", params={"mb": "256"})
    assert r.status_code == 503 and error_code(r) == "exceeded_memory"
    assert_recovered(node)
    big = two(tmp_path / "twin", edgerun_node, "memory_mb = 1024\ncpu_ms = 5000\n")
    assert get(big, "/hog", params={"mb": "256"}).text == str(256 * 1024 * 1024)


TREE_HOG = """
import subprocess
from edgerun import Response

async def fetch(request, env, ctx):
    # The worker holds most of its budget, then starts a process that wants more: each
    # stays under its own address-space limit, together they pass memory_mb. (tail -c
    # keeps the last N bytes of its input in memory.)
    block = bytearray(int(request.query["mb"]) * 1024 * 1024)
    size = int(request.query["child_mb"]) * 1024 * 1024
    done = subprocess.run(
        ["/bin/sh", "-c", f"head -c {size} /dev/zero | tail -c {size} > /dev/null"]
    )
    return Response(f"{len(block)} {done.returncode}")
"""


def test_memory_cgroup_bounds_a_worker_with_the_processes_it_starts(tmp_path, edgerun_node):
    from edgerun.runtime.isolate.memcg import MemoryCgroups

    cgroups = MemoryCgroups.detect()
    if cgroups is not None:
        cgroups.close()
    # One worker: the deployment's cgroup holds 128 MiB + 32 MiB. The worker takes 120
    # MiB and its child 60: the worker, the larger, is what the OOM killer stops.
    scaling = "[scaling]\nmax_workers = 1\n"
    limits = "memory_mb = 128\ncpu_ms = 5000\n"
    p = project(tmp_path, "tree", f"[limits]\n{limits}{scaling}", app=TREE_HOG)
    node = edgerun_node(p, command="node")
    r = node.client.get("/", params={"mb": "120", "child_mb": "60"})
    if cgroups is None:
        # No memory cgroup on this host: only the per-process rlimit holds, and each
        # process stays under it.
        assert r.status_code == 200 and r.text == f"{120 * 1024 * 1024} 0"
    else:
        assert r.status_code == 503 and error_code(r) == "exceeded_memory"
        assert "processes it started" in r.json()["error"]["message"]
    assert node.client.get("/", params={"mb": "1", "child_mb": "1"}).status_code == 200
    # The twin: the same work within a larger budget.
    roomy_toml = f"[limits]\nmemory_mb = 512\ncpu_ms = 5000\n{scaling}"
    big = project(tmp_path / "twin", "tree", roomy_toml, app=TREE_HOG)
    roomy = edgerun_node(big, command="node")
    r = roomy.client.get("/", params={"mb": "120", "child_mb": "60"})
    assert r.status_code == 200 and r.text == f"{120 * 1024 * 1024} 0"


def test_os_exit_is_502_worker_crashed(tmp_path, edgerun_node):
    node = two(tmp_path, edgerun_node, "")
    r = get(node, "/exit")
    assert r.status_code == 502 and error_code(r) == "worker_crashed"
    assert_recovered(node)


def test_sigkill_from_outside_fails_the_in_flight_request(tmp_path, edgerun_node):
    node = two(tmp_path, edgerun_node, "")
    pid = get(node, "/pid").json()["pid"]
    box: list[httpx.Response] = []
    t = threading.Thread(target=lambda: box.append(get(node, "/sleep", params={"s": "30"})))
    t.start()
    # The request is in flight once the pool shows it (an observable, not a sleep).
    while not any(w["inflight"] for w in pools(node)["a"]["workers"]):
        pass
    os.kill(pid, signal.SIGKILL)
    t.join()
    assert box[0].status_code == 502 and error_code(box[0]) == "worker_crashed"
    assert_recovered(node)


def pools(node) -> dict:
    return node.client.get("/__edgerun/pools").json()["deployments"]


def test_a_deployment_cannot_read_another_deployments_files(tmp_path, edgerun_node):
    if os.geteuid() != 0:
        # Per-deployment uids need a node running as root, as CI does: there, a
        # non-root run is a broken setup, not a reason to pass quietly.
        if os.environ.get("CI"):
            pytest.fail("CI must run the suite as root to test per-deployment uids")
        # Elsewhere, what a node that is not root does: workers keep its uid.
        alone = edgerun_node(project(tmp_path, "a", ""), command="node")
        assert alone.client.get("/env").json()["uid"] == os.getuid()
        return
    kv = '[[kv]]\nbinding = "STORE"\n'
    a = project(tmp_path, "a", f'routes = ["a.test/*"]\n{kv}')
    b = project(tmp_path, "b", f'routes = ["b.test/*"]\n[vars]\nONLY_B = "1"\n{kv}')
    node = edgerun_node([a, b], command="node")
    b_state = node.state_dir / "b"
    a_state = node.state_dir / "a"
    # Opening the bindings creates each KV file.
    assert get(node, "/").text == "ok" and get(node, "/", host="b.test").text == "ok"
    (b_state / "secrets.json").write_text('{"TOKEN": "s3cret"}')
    for target in (b_state / "kv.sqlite3", b_state / "secrets.json", b_state / "code" / "app.py"):
        r = get(node, "/read", params={"file": str(target)})
        # Under /tmp, B's state is not even in A's mount namespace (its /tmp is private).
        assert r.json()["error"] in {"PermissionError", "FileNotFoundError"}, target
    # The twin: A reads its own KV file.
    assert "read" in get(node, "/read", params={"file": str(a_state / "kv.sqlite3")}).json()
    info = get(node, "/env").json()
    assert info["env"] == ["STORE"]
    assert info["uid"] != 0
    assert set(info["environ"]) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH"}


def test_pool_scales_up_under_load_then_to_zero_and_cold_starts(tmp_path, edgerun_node):
    p = project(
        tmp_path,
        "s",
        "[limits]\nmax_concurrency = 4\n[scaling]\ntarget_concurrency = 1\nmax_workers = 3\n"
        "idle_s = 0.3\n",
    )
    node = edgerun_node(p, command="node")
    statuses: list[int] = []

    def slow() -> None:
        statuses.append(node.client.get("/sleep", params={"s": "0.5"}).status_code)

    threads = [threading.Thread(target=slow) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    started = [line for line in node.output if "of s started" in line]
    assert len(started) >= 2
    node.wait_for_line(r"pool of s scaled to zero", timeout=30)
    assert pools(node)["s"]["workers"] == []
    assert node.client.get("/").text == "ok"
    node.wait_for_line(r"cold start of s")


def test_a_state_dir_inside_the_project_is_not_staged_into_itself(tmp_path, edgerun_node):
    # `edgerun node DIR --state-dir DIR/state`: staging copied the state dir (and
    # the copy being made inside it) into the copy, until RecursionError.
    from edgerun.testing.plugin import _searchable

    p = project(tmp_path, "inside")
    state = p / "state"
    state.mkdir()
    _searchable(state)  # so a root node drops the workers' uid and stages the code
    node = edgerun_node(p, command="node", state_dir=state)
    r = node.client.get("/env")
    assert r.status_code == 200
    if os.geteuid() == 0:
        assert r.json()["uid"] != 0  # the staged (isolated) path was taken
        assert not (state / "code" / "state").exists()
